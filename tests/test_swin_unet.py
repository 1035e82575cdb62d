"""Swin-Unet: the structure the paper prescribes, mirrored off the built Swin encoder."""

from __future__ import annotations

import pytest
import torch

from training.models import build_model, load_checkpoint, save_checkpoint
from training.models.encoders import TimmEncoder
from training.models.registry import CONFIGS
from training.models.swin_unet import SwinUnetDecoder


@pytest.fixture(scope="module")
def micro():
    torch.manual_seed(0)
    return build_model("swin_unet_micro")


def parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def drop_path(block: torch.nn.Module) -> float:
    return getattr(block.drop_path1, "drop_prob", 0.0)  # Identity where the rate is 0


def test_parameter_counts_of_the_micro_and_the_papers_swin_t():
    assert 1.5e6 < parameters(build_model("swin_unet_micro")) < 3e6
    with torch.device("meta"):
        full = build_model("swin_unet_tiny")
    # the paper's Swin-T "lite" (depths 2, 2, 2, 2), as the literature quotes it: 27.17 M
    assert round(parameters(full) / 1e6, 2) == 27.17
    assert full.config["input_size"] == 768
    assert full.encoder.channels == [96, 192, 384, 768]
    heads = [s.blocks[0].attn.num_heads for s in full.decoder.stages]
    assert heads == [12, 6, 3]  # mirrored: levels 16, 8, 4 of the encoder's 3, 6, 12, 24


def test_feature_strides_and_channels_on_a_non_square_input(micro):
    x = torch.randn(1, 3, 96, 160)
    features = micro.encoder(x)
    assert micro.encoder.reductions == [4, 8, 16, 32]
    assert [f.shape[1:] for f in features] == [
        (32, 24, 40),
        (64, 12, 20),
        (128, 6, 10),
        (256, 3, 5),
    ]
    fused, levels = micro.decoder(features)
    # the final x4 patch expanding brings the fused map to full resolution at C channels
    assert fused.shape == (1, micro.decoder.out_channels, 96, 160) and fused.shape[1] == 32
    assert [f.shape[1:] for f in levels] == [f.shape[1:] for f in features]
    assert micro.decoder.level_channels == micro.encoder.channels


def test_patch_expanding_doubles_then_rearranges_to_half_the_channels(micro):
    decoder = micro.decoder
    assert decoder.first_expand.expand.weight.shape == (512, 256)  # 8C -> 16C, to 4C at x2
    assert [e.expand.weight.shape for e in decoder.expands] == [(256, 128), (128, 64)]
    assert decoder.final_expand.expand.weight.shape == (512, 32)  # C -> 16C, to C at x4
    x = torch.randn(2, 3, 5, 256)
    out = decoder.first_expand(x)
    assert out.shape == (2, 6, 10, 128)
    # each token's expanded channels fill its own 2x2 patch: a token changes only its patch
    y = x.clone()
    y[:, 1, 2] += 1
    changed = (decoder.first_expand(y) - out).abs().sum(dim=(0, 3)) > 0
    assert changed.nonzero().tolist() == [[2, 4], [2, 5], [3, 4], [3, 5]]


def test_decoder_stages_mirror_the_encoders_read_off_the_built_model():
    model = build_model(
        "swin_unet_micro",
        input_size=128,
        encoder_args={"depths": [3, 1, 2, 1], "window_size": 4, "mlp_ratio": 2},
    )
    encoder_stages = [
        m for m in model.encoder.modules() if type(m).__name__ == "SwinTransformerStage"
    ]
    for ours, theirs in zip(model.decoder.stages, reversed(encoder_stages[:-1]), strict=True):
        assert len(ours.blocks) == len(theirs.blocks)
        for a, b in zip(ours.blocks, theirs.blocks, strict=True):
            assert (a.dim, a.attn.num_heads, a.window_size, a.shift_size, a.mlp_ratio) == (
                b.dim,
                b.attn.num_heads,
                b.window_size,
                b.shift_size,
                b.mlp_ratio,
            )
            assert a.dynamic_mask and drop_path(a) == drop_path(b)
    assert any(drop_path(b) > 0 for s in model.decoder.stages for b in s.blocks)
    assert [len(s.blocks) for s in model.decoder.stages] == [2, 1, 3]
    assert model.decoder.stages[-1].blocks[1].shift_size == (2, 2)


def test_a_decoder_stage_takes_padded_non_square_grids_like_timms_fixed_size_stage(micro):
    # built at 256 px the stride-16 level is 16 x 16; at 320 x 384 px it is 20 x 24, which the
    # window (8) pads to 24 x 24 with a shift mask computed per input: timm's stage built for
    # that grid (its mask precomputed) is the reference
    from timm.models.swin_transformer import SwinTransformerStage

    ours = micro.decoder.stages[0].eval()
    reference = SwinTransformerStage(
        dim=128,
        out_dim=128,
        input_resolution=(20, 24),
        depth=2,
        downsample=False,
        num_heads=4,
        window_size=8,
    ).eval()
    reference.load_state_dict(ours.state_dict())
    assert reference.blocks[0].attn_mask is None and reference.blocks[1].attn_mask is not None
    x = torch.randn(1, 20, 24, 128)
    with torch.inference_mode():
        torch.testing.assert_close(ours(x), reference(x))


@pytest.mark.parametrize("level", [0, 1, 2])
def test_every_skip_connection_reaches_the_output(micro, level):
    micro.eval()
    with torch.inference_mode():
        features = micro.encoder(torch.randn(1, 3, 64, 96))
        fused, _ = micro.decoder(features)
        changed = list(features)
        changed[level] = changed[level] + torch.randn_like(changed[level])
        assert not torch.allclose(micro.decoder(changed)[0], fused)


def test_sizes_it_cannot_take_are_refused_in_one_line(micro):
    with pytest.raises(ValueError) as error:
        micro(torch.randn(1, 3, 200, 256))
    message = str(error.value)
    assert "\n" not in message and "multiples of 32" in message and "200 x 256" in message


def test_a_non_swin_encoder_is_refused_with_the_reason():
    coat = TimmEncoder("coat_lite_tiny", 64, embed_dims=[8, 16, 24, 32], serial_depths=[1] * 4)
    with pytest.raises(ValueError, match=r"mirrors a Swin encoder .* coat_lite_tiny has 0 Swin"):
        SwinUnetDecoder(coat)


def test_every_parameter_gets_a_gradient_from_forward_with_aux(micro):
    # DDP without find_unused_parameters needs every parameter in the training forward
    micro.train().zero_grad()
    x = torch.randn(2, 3, 64, 96).contiguous(memory_format=torch.channels_last)
    main, aux = micro.forward_with_aux(x)
    assert len(aux) == 4 and all(a.shape == main.shape == (2, 1, 64, 96) for a in aux)
    (main.mean() + sum(a.mean() for a in aux)).backward()
    missing = [n for n, p in micro.named_parameters() if p.grad is None or not p.grad.any()]
    assert not missing
    micro.zero_grad()


def test_channels_last_inference_mode_and_a_float16_checkpoint(micro, tmp_path):
    micro.eval()
    x = torch.randn(2, 3, 96, 64)
    with torch.inference_mode():
        expected = micro(x)
        torch.testing.assert_close(micro(x.contiguous(memory_format=torch.channels_last)), expected)
    loaded, _ = load_checkpoint(save_checkpoint(tmp_path / "half.pt", micro, half=True))
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    with torch.inference_mode():
        torch.testing.assert_close(loaded.eval()(x), expected, atol=2e-2, rtol=0)


def test_a_swin_file_of_other_depths_is_refused_with_the_reason(tmp_path):
    # the paper's encoder is Swin-T with depths 2, 2, 2, 2; ImageNet's Swin-T has 2, 2, 6, 2:
    # timm's checkpoint filter fails on the extra blocks before any strict load
    import timm

    args = {**CONFIGS["swin_unet_micro"]["encoder_args"], "depths": [1, 1, 3, 1]}
    donor = timm.create_model("swin_tiny_patch4_window7_224", **args)
    torch.save(donor.state_dict(), tmp_path / "deeper.pth")
    with pytest.raises(ValueError, match=r"deeper\.pth does not fit the encoder swin_tiny"):
        build_model("swin_unet_micro", input_size=64, pretrained=tmp_path / "deeper.pth")
