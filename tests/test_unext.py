"""UNeXt (``training.models.unext``): the structure the paper prescribes, and what the product
needs of every model (non-square tiles, refusals, gradients everywhere, half-size bundles)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from training.models import CheckpointError, build_model, load_checkpoint, save_checkpoint
from training.models.checkpoint import read_checkpoint
from training.models.unext import shift_tokens


def _parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_the_full_configuration_is_the_papers_size_and_cost():
    model = build_model("unext").eval()
    # the paper: 1.47 M parameters, 0.57 GFLOPs (multiply-adds) for a 256 px image
    assert 1.45e6 < _parameters(model) < 1.49e6
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(torch.randn(1, 3, 256, 256))
    assert 0.54e9 < counter.get_total_flops() / 2 < 0.60e9
    assert model.encoder.channels == [16, 32, 128, 160, 256]


def test_the_micro_configuration_is_cpu_sized():
    model = build_model("unext_micro")
    assert 0.5e6 < _parameters(model) < 3e6
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model.eval()(torch.randn(1, 3, 256, 256))
    assert counter.get_total_flops() / 2 < 0.3e9  # under half the full model's


def test_features_at_strides_2_to_32_and_aux_maps_per_decoder_level():
    model = build_model("unext_micro", input_size=64).train()
    x = torch.randn(2, 3, 256, 192)
    features = model.encoder(x)
    assert model.encoder.reductions == [2, 4, 8, 16, 32]
    assert [f.shape[1] for f in features] == model.encoder.channels == [8, 16, 64, 160, 256]
    assert [tuple(f.shape[-2:]) for f in features] == [
        (256 // r, 192 // r) for r in model.encoder.reductions
    ]
    fused, levels = model.decoder(features)
    assert fused.shape == (2, 8, 256, 192)  # the head sits at full resolution
    assert [tuple(level.shape[1:]) for level in levels] == [
        (160, 16, 12),
        (64, 32, 24),
        (16, 64, 48),
        (8, 128, 96),
    ]
    assert model.decoder.level_channels == [160, 64, 16, 8]
    main, aux = model.forward_with_aux(x)
    assert main.shape == (2, 1, 256, 192)
    assert len(aux) == 4 and all(a.shape == (2, 1, 256, 192) for a in aux)


@pytest.mark.parametrize("skip", range(4))
def test_every_skip_reaches_the_output(skip):
    model = build_model("unext_micro", input_size=64).eval()
    with torch.inference_mode():
        features = model.encoder(torch.randn(1, 3, 64, 96))
        fused, _ = model.decoder(features)
        changed = list(features)
        changed[skip] = features[skip] + 1.0
        refused, _ = model.decoder(changed)
    assert not torch.allclose(fused, refused)


def _official_shift(x: torch.Tensor, groups: int, dim: int) -> torch.Tensor:
    """The official code's shift on NCHW (pad, chunk the channels, roll, crop back)."""
    pad = groups // 2
    height, width = x.shape[-2:]
    padded = F.pad(x, (pad, pad, pad, pad))
    chunks = torch.chunk(padded, groups, 1)
    rolled = torch.cat(
        [torch.roll(c, s, dim) for c, s in zip(chunks, range(-pad, pad + 1), strict=True)], 1
    )
    return rolled.narrow(2, pad, height).narrow(3, pad, width)


@pytest.mark.parametrize("axis", [2, 3])
def test_shift_is_the_papers_zero_filled_roll_of_channel_groups(axis):
    x = torch.randn(2, 10, 7, 9)  # NCHW, 10 channels in 5 groups of 2
    nhwc_dim = {2: 1, 3: 2}[axis]
    ours = shift_tokens(x.permute(0, 2, 3, 1), 5, dim=nhwc_dim).permute(0, 3, 1, 2)
    torch.testing.assert_close(ours, _official_shift(x, 5, axis), rtol=0, atol=0)
    # the first group moves two tokens back, the middle one stays, the last two forward
    impulse = torch.zeros(1, 4, 5, 10)  # NHWC
    impulse[0, 2, 2, :] = 1
    moved = shift_tokens(impulse, 5, dim=2)
    assert [int(moved[0, 2, :, c].argmax()) for c in range(0, 10, 2)] == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("size", [(250, 256), (256, 200), (16, 64)])
def test_sizes_it_cannot_take_are_refused_in_one_line(size):
    model = build_model("unext_micro", input_size=64).eval()
    with pytest.raises(ValueError) as caught, torch.inference_mode():
        model(torch.randn(1, 3, *size))
    message = str(caught.value)
    assert "\n" not in message
    assert "multiples of 32" in message and f"{size[0]} x {size[1]}" in message


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"embed_dims": [8, 16, 64, 160]}, "embed_dims of 5 widths"),
        ({"shift_size": 4}, "odd shift_size"),
        ({"embed_dims": [8, 16, 4, 160, 256]}, "at least 5"),
    ],
)
def test_arguments_unext_cannot_build_are_refused(args, message):
    with pytest.raises(ValueError, match=message):
        build_model("unext_micro", encoder_args=args)


def test_no_imagenet_weights_and_no_foreign_arguments(tmp_path):
    weights = tmp_path / "encoder.pth"
    torch.save({}, weights)
    with pytest.raises(ValueError, match="trained from scratch"):
        build_model("unext_micro", pretrained=weights)
    with pytest.raises(TypeError, match="not an architecture argument"):
        build_model("unext_micro", encoder_args={"checkpoint_path": str(weights)})
    with pytest.raises(TypeError, match="unknown argument"):
        build_model("unext_micro", decoder_channels=64)


def test_a_checkpoint_with_unbuildable_arguments_is_refused(tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", build_model("unext_micro", input_size=64))
    payload = read_checkpoint(path)
    payload["architecture"]["args"]["encoder_args"]["shift_size"] = 2
    torch.save(payload, tmp_path / "tampered.pt")
    with pytest.raises(CheckpointError, match=r"cannot be built here: .*odd shift_size"):
        load_checkpoint(tmp_path / "tampered.pt")


def test_every_parameter_gets_a_gradient_from_forward_with_aux():
    # DDP (find_unused_parameters=False) needs a gradient for every parameter in every step
    model = build_model("unext_micro", input_size=64, encoder_args={"drop_path_rate": 0.1})
    main, aux = model.train().forward_with_aux(torch.randn(2, 3, 64, 64))
    (main.mean() + sum(a.mean() for a in aux)).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing


def test_channels_last_inference_mode_and_half_checkpoint_agree(tmp_path):
    torch.manual_seed(0)
    model = build_model("unext_micro", input_size=64).eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.inference_mode():
        expected = model(x)
        fast = model.to(memory_format=torch.channels_last)
        torch.testing.assert_close(
            fast(x.contiguous(memory_format=torch.channels_last)), expected, rtol=1e-4, atol=1e-4
        )
    half = save_checkpoint(tmp_path / "half.pt", model, half=True)
    assert read_checkpoint(half)["state_dict"]["encoder.blocks.0.mlp.fc1.weight"].dtype == (
        torch.float16
    )
    loaded, _ = load_checkpoint(half)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x), expected, rtol=0, atol=0.05)
