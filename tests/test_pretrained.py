"""Pretrained encoder weights from a local file, loaded through timm's own route."""

from __future__ import annotations

import re

import pytest
import timm
import torch

from training.models import build_model, list_models
from training.models.registry import CONFIGS, ENCODER_FAMILIES, timm_encoder

FULL = {"swin_tiny_upernet", "swin_small_upernet", "coat_lite_medium_daformer", "swin_unet_tiny"}
# the configurations whose encoder is a timm backbone (ImageNet files fit only those)
TIMM = [n for n in list_models() if ENCODER_FAMILIES[CONFIGS[n]["encoder"]].build is timm_encoder]


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any of timm's download routes fails the test: weights come from local files only."""
    import timm.models._builder as builder

    def refuse(*args, **kwargs):
        raise AssertionError("timm tried to fetch weights from the network")

    for name in ("load_state_dict_from_url", "load_state_dict_from_hf", "download_cached_file"):
        monkeypatch.setattr(builder, name, refuse)


def donor_state(name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """A classifier state dict of the model's timm encoder (as ImageNet files hold), with its
    weights moved off their initial values so that a loaded tensor is told from a fresh one."""
    config = CONFIGS[name]
    torch.manual_seed(seed)
    donor = timm.create_model(config["encoder"], **config["encoder_args"])
    with torch.no_grad():
        for tensor in donor.state_dict().values():  # shared modules appear twice: same storage
            if tensor.is_floating_point():
                tensor.add_(torch.rand_like(tensor))
    return {k: v.clone() for k, v in donor.state_dict().items()}


def donor_key(encoder_key: str) -> str:
    """The classifier's name of a features-only encoder tensor: timm's feature wrappers keep
    CoaT's backbone under ``model.`` and flatten Swin's ``layers.0`` into ``layers_0``."""
    key = encoder_key.removeprefix("model.")
    return re.sub(r"^layers_(\d+)\.", r"layers.\1.", key)


def assert_loaded(model: torch.nn.Module, donor: dict[str, torch.Tensor]) -> None:
    own = model.encoder.model.state_dict()
    assert own
    for key, value in own.items():
        assert donor_key(key) in donor, key
        torch.testing.assert_close(value, donor[donor_key(key)], msg=key)


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in FULL else n for n in TIMM]
)
def test_every_encoder_tensor_loads_for_every_registered_model(tmp_path, name):
    # 224 px: every Swin stage keeps the window the donor was built with, so no table is resized
    donor = donor_state(name)
    path = tmp_path / "imagenet.pth"
    torch.save(donor, path)
    model = build_model(name, input_size=224, pretrained=path)
    assert_loaded(model, donor)


@pytest.mark.parametrize("wrap", ["safetensors", "state_dict", "model", "module.", "headless"])
def test_weight_file_formats(tmp_path, wrap):
    from safetensors.torch import save_file

    donor = donor_state("coat_micro_daformer")
    path = tmp_path / "weights.pth"
    if wrap == "safetensors":
        path = tmp_path / "weights.safetensors"
        save_file({k: v.contiguous() for k, v in donor.items()}, str(path))
    elif wrap in ("state_dict", "model"):
        torch.save({wrap: donor, "epoch": 3}, path)
    elif wrap == "module.":  # saved from a DistributedDataParallel model
        torch.save({f"module.{k}": v for k, v in donor.items()}, path)
    else:
        torch.save({k: v for k, v in donor.items() if not k.startswith("head.")}, path)
    assert_loaded(build_model("coat_micro_daformer", input_size=64, pretrained=path), donor)


def test_original_swin_layout_is_remapped_by_timm(tmp_path):
    # Microsoft's Swin files put each patch merging at the end of a stage and carry buffers that
    # timm recomputes; timm's checkpoint filter moves them (a plain key match would miss them)
    donor = donor_state("swin_micro_upernet")
    original = {}
    for key, value in donor.items():
        match = re.match(r"layers\.(\d+)\.downsample\.(.*)", key)
        if match:
            key = f"layers.{int(match[1]) - 1}.downsample.{match[2]}"
        original[key.replace("head.fc.", "head.")] = value
    original["layers.0.blocks.0.attn.relative_position_index"] = torch.zeros(64, 64).long()
    torch.save({"model": original}, tmp_path / "swin_original.pth")
    model = build_model(
        "swin_micro_upernet", input_size=64, pretrained=tmp_path / "swin_original.pth"
    )
    # built at 64 px the coarse stages have smaller windows: timm resizes those position tables
    own = model.encoder.model.state_dict()
    kept = [k for k in own if "relative_position_bias_table" not in k]
    for key in kept:
        torch.testing.assert_close(own[key], donor[donor_key(key)], msg=key)
    assert len(kept) > len(own) // 2


def test_weights_that_do_not_fit_are_refused_with_the_reason(tmp_path):
    donor = donor_state("coat_micro_daformer")
    with pytest.raises(FileNotFoundError, match="never downloads weights"):
        build_model("coat_micro_daformer", pretrained=tmp_path / "absent.pth")

    partial = {k: v for k, v in donor.items() if not k.startswith("serial_blocks4.")}
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match=r"partial\.pth does not fit .*serial_blocks4"):
        build_model("coat_micro_daformer", input_size=64, pretrained=tmp_path / "partial.pth")

    torch.save(donor_state("swin_micro_upernet"), tmp_path / "swin.pth")
    with pytest.raises(ValueError, match=r"swin\.pth does not fit the encoder coat_lite_tiny"):
        build_model("coat_micro_daformer", input_size=64, pretrained=tmp_path / "swin.pth")

    resized = dict(donor, **{"patch_embed2.proj.bias": torch.zeros(7)})
    torch.save(resized, tmp_path / "wider.pth")
    with pytest.raises(ValueError, match="size mismatch"):
        build_model("coat_micro_daformer", input_size=64, pretrained=tmp_path / "wider.pth")

    torch.save({k: v for k, v in donor.items() if k.startswith("head.")}, tmp_path / "head.pth")
    with pytest.raises(ValueError, match="only a classifier head"):
        build_model("coat_micro_daformer", input_size=64, pretrained=tmp_path / "head.pth")

    (tmp_path / "text.pth").write_text("not weights")
    with pytest.raises(ValueError, match=r"text\.pth is not a readable weights file"):
        build_model("coat_micro_daformer", input_size=64, pretrained=tmp_path / "text.pth")

    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "numbers.pth")
    with pytest.raises(ValueError, match="no state dict of tensors"):
        build_model("coat_micro_daformer", input_size=64, pretrained=tmp_path / "numbers.pth")


def test_the_encoder_keeps_no_copy_of_the_file(tmp_path):
    torch.save(donor_state("swin_micro_upernet"), tmp_path / "w.pth")
    model = build_model("swin_micro_upernet", input_size=64, pretrained=tmp_path / "w.pth")
    for module in model.modules():
        assert "state_dict" not in (getattr(module, "pretrained_cfg", None) or {})
