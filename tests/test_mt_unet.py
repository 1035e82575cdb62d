"""MT-UNet (training.models.mt_unet): the structure the paper prescribes, on small inputs."""

from __future__ import annotations

import pytest
import torch

from training.models import build_model, load_checkpoint, save_checkpoint
from training.models.mt_attention import (
    ExternalAttention,
    GaussianAxialAttention,
    LGGSelfAttention,
    MixedTransformerModule,
)


@pytest.fixture(scope="module")
def micro():
    torch.manual_seed(0)
    return build_model("mt_unet_micro").eval()


def test_full_configuration_has_the_papers_parameter_count():
    with torch.device("meta"):
        model = build_model("mt_unet")
    count = sum(p.numel() for p in model.parameters())
    modules = [m for m in model.modules() if isinstance(m, MixedTransformerModule)]
    widths = [m.norm1.normalized_shape[0] for m in modules]
    # two MTMs per stage: encoder 256, 512, bottleneck 1024, decoder 512 and 512 (2 x 256)
    assert widths == [256, 256, 512, 512, 1024, 1024, 512, 512, 512, 512]
    # the official model also holds a 28 x 28 x 256 position embedding and an unused output
    # layer in each axial attention; its head has 4 classes where ours has 1 plus 4 aux heads
    ours = sum(p.numel() for p in [*model.head.parameters(), *model.aux_heads.parameters()])
    official = count - ours + (64 * 4 + 4) + 784 * 256 + sum(c * c + c for c in widths)
    assert round(official / 1e6, 2) == 79.07  # Table 1 of the paper: 79.07 M


def test_micro_is_a_cpu_model(micro):
    count = sum(p.numel() for p in micro.parameters())
    assert 0.5e6 < count < 3e6


def test_features_finest_first_at_strides_1_to_32_on_a_non_square_tile(micro):
    x = torch.randn(1, 3, 128, 96)
    with torch.inference_mode():
        features = micro.encoder(x)
    assert micro.encoder.reductions == [1, 2, 4, 8, 16, 32]
    assert [f.shape[1] for f in features] == micro.encoder.channels == [8, 16, 32, 32, 128, 256]
    sides = [(128 // s, 96 // s) for s in (1, 2, 4, 8, 16, 32)]
    assert [tuple(f.shape[-2:]) for f in features] == sides
    with torch.inference_mode():
        assert micro(x).shape == (1, 1, 128, 96)


def test_grids_that_are_not_whole_windows_are_padded(micro):
    # 96 x 160: token grids of 6 x 10 at stride 16 and 3 x 5 at stride 32, windows of 4
    with torch.inference_mode():
        logits = micro(torch.randn(1, 3, 96, 160))
    assert logits.shape == (1, 1, 96, 160) and torch.isfinite(logits).all()


def test_every_skip_reaches_the_output(micro):
    with torch.inference_mode():
        features = micro.encoder(torch.randn(1, 3, 128, 96))
        fused, _ = micro.decoder(features)
        for level in range(len(features)):
            changed = [f.clone() for f in features]
            changed[level][:, :, :4, :4] += 1.0
            assert not torch.allclose(micro.decoder(changed)[0], fused), f"level {level} unused"


def test_deep_supervision_taps_every_decoder_stage_and_every_parameter_learns():
    model = build_model("mt_unet_micro", input_size=64)
    main, aux = model.forward_with_aux(torch.randn(2, 3, 64, 64))
    assert model.decoder.level_channels == [16, 32, 64, 128]
    assert len(aux) == 4 and all(a.shape == (2, 1, 64, 64) for a in aux)
    (main.mean() + sum(a.mean() for a in aux)).backward()
    # DDP needs every parameter in the graph of a forward with aux
    assert [n for n, p in model.named_parameters() if p.grad is None] == []


def test_sizes_the_model_cannot_take_are_refused_in_one_line(micro):
    with pytest.raises(ValueError) as info:
        micro(torch.randn(1, 3, 256, 200))
    assert str(info.value) == (
        "mt_unet takes inputs whose sides are multiples of 32; got 256 x 200"
    )
    with pytest.raises(ValueError, match="has no ImageNet encoder file") as info:
        build_model("mt_unet_micro", pretrained="weights.pth")
    assert "\n" not in str(info.value)


def test_local_attention_stays_in_its_window_and_the_global_path_reaches_everywhere():
    torch.manual_seed(0)
    lgg = LGGSelfAttention(dim=8, num_heads=2, window=4).eval()
    x = torch.randn(1, 10, 7, 8)  # a grid of 3 x 2 windows once padded
    far = x.clone()
    far[:, 9, 2] += 1.0  # in the window at row 2, column 0
    with torch.no_grad():
        local = [lgg.local(torch.nn.functional.pad(t, (0, 0, 0, 1, 0, 2))) for t in (x, far)]
        torch.testing.assert_close(local[0][:, :2], local[1][:, :2])  # other window rows
        torch.testing.assert_close(local[0][:, 2, 1], local[1][:, 2, 1])  # other window
        assert not torch.allclose(local[0][:, 2, 0], local[1][:, 2, 0])
        assert lgg(x).shape == x.shape
        # the global path: axial, a window reaches the windows of its row and its column
        assert not torch.allclose(lgg(x)[:, 0, 0], lgg(far)[:, 0, 0])


def test_the_gaussian_width_decides_how_far_global_attention_reaches():
    attention = GaussianAxialAttention(4)
    with torch.no_grad():  # logits only from the Gaussian, values the tokens themselves
        attention.qkv.weight.zero_()
        attention.qkv.bias.zero_()
        attention.qkv.weight[8:].copy_(torch.eye(4))
    x = torch.randn(1, 3, 5, 4)
    attention.log_sigma.data.fill_(-3.0)  # narrow: each token attends to itself
    torch.testing.assert_close(attention(x), 2 * x, rtol=0, atol=1e-5)
    attention.log_sigma.data.fill_(6.0)  # wide: the row mean plus the column mean
    wide = x.mean(dim=2, keepdim=True) + x.mean(dim=1, keepdim=True)
    torch.testing.assert_close(attention(x), wide, rtol=0, atol=1e-4)


def test_external_attention_memories_are_shared_and_double_normalised():
    attention = ExternalAttention(dim=8, num_heads=2, units=5, expansion=2)
    # one pair of memories for every sample and all 4 heads (of 8 * 2 / 4 channels)
    assert attention.memory_k.weight.shape == (5, 4) and attention.memory_v.weight.shape == (4, 5)
    captured = {}
    attention.memory_v.register_forward_hook(lambda m, i, o: captured.update(attn=i[0]))
    attention(torch.randn(2, 3, 4, 8))
    attn = captured["attn"]  # (batch, heads, tokens, units)
    torch.testing.assert_close(attn.sum(-1), torch.ones(attn.shape[:-1]), rtol=0, atol=1e-5)


def test_channels_last_inference_and_a_float16_bundle(tmp_path, micro):
    x = torch.randn(2, 3, 96, 128)
    with torch.inference_mode():
        expected = micro(x)
        torch.testing.assert_close(
            micro(x.to(memory_format=torch.channels_last)), expected, rtol=1e-4, atol=1e-4
        )
    path = save_checkpoint(tmp_path / "half.pt", micro, {"tile_size": 256}, half=True)
    loaded, meta = load_checkpoint(path)
    assert meta["architecture"]["name"] == "mt_unet_micro"
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x), expected, rtol=0, atol=0.05)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"depths": [1, 1]}, "widths and depths must have one entry per MTM stage"),
        ({"num_heads": 3}, "MTM width 32 is not divisible by num_heads 3"),
        ({"window_size": "4"}, "window_size must be a positive int"),
    ],
)
def test_a_checkpoint_with_inconsistent_architecture_arguments_is_refused(tmp_path, args, message):
    from training.models import CheckpointError

    path = save_checkpoint(tmp_path / "m.pt", build_model("mt_unet_micro", input_size=64))
    payload = torch.load(path, weights_only=True)
    payload["architecture"]["args"]["encoder_args"].update(args)
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match=message) as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value)
