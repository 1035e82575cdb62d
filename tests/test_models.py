from __future__ import annotations

import json
import pickle
import zipfile

import pytest
import torch
import yaml
from torch import nn

from training.models import (
    CheckpointError,
    build_model,
    list_models,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from training.models.ensemble import load_ensemble
from training.models.registry import CONFIGS

SMALL = ["swin_micro_upernet", "coat_micro_daformer"]


def test_registry_lists_full_and_small_configurations():
    names = list_models()
    assert {"swin_tiny_upernet", "swin_small_upernet", "coat_lite_medium_daformer"} <= set(names)
    assert set(SMALL) <= set(names)
    with pytest.raises(ValueError, match="unknown model 'unet'"):
        build_model("unet")
    with pytest.raises(TypeError, match="unknown argument"):
        build_model("swin_micro_upernet", colour="red")


@pytest.mark.parametrize("name", SMALL)
def test_small_models_give_full_size_logits_and_aux(name):
    model = build_model(name, input_size=128).eval()
    x = torch.randn(2, 3, 128, 128)
    with torch.inference_mode():
        logits = model(x)
    assert logits.shape == (2, 1, 128, 128)
    model.train()
    main, aux = model.forward_with_aux(x)
    assert main.shape == (2, 1, 128, 128)
    assert len(aux) == 4 and all(a.shape == (2, 1, 128, 128) for a in aux)
    # the encoder hands NCHW features to the decoder at strides 4..32 (Swin's are NHWC in timm)
    features = model.encoder(x)
    assert [f.shape[1] for f in features] == model.encoder.channels
    assert [f.shape[-1] for f in features] == [32, 16, 8, 4]


def test_gradients_reach_the_encoder():
    model = build_model("swin_micro_upernet", input_size=64)
    main, aux = model.forward_with_aux(torch.randn(1, 3, 64, 64))
    (main.mean() + sum(a.mean() for a in aux)).backward()
    assert model.encoder.model.patch_embed.proj.weight.grad is not None


@pytest.mark.parametrize("name", SMALL)
def test_checkpoint_round_trip(tmp_path, name):
    model = build_model(name, input_size=96).eval()
    path = save_checkpoint(
        tmp_path / "m.pt", model, {"pixel_size_um": 1.6, "thresholds": {"lung": 0.3}}
    )
    loaded, meta = load_checkpoint(path)
    x = torch.randn(1, 3, 96, 96)
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x), model(x))
    assert meta["pixel_size_um"] == 1.6 and meta["tile_size"] == 96
    assert meta["thresholds"] == {"lung": 0.3}
    assert meta["architecture"]["name"] == name
    assert meta["mean"] and meta["std"] and meta["organs"]


def test_a_half_checkpoint_is_half_the_size_and_loads_as_float32(tmp_path):
    model = build_model("coat_micro_daformer", input_size=96).eval()
    with torch.no_grad():  # values float16 cannot hold: past its range, and too small
        model.aux_heads[0].weight[0, 0] = 1e6
        model.aux_heads[1].weight.fill_(1e-7)
    full = save_checkpoint(tmp_path / "full.pt", model)
    half = save_checkpoint(tmp_path / "half.pt", model, half=True)
    assert half.stat().st_size < 0.6 * full.stat().st_size
    state = read_checkpoint(half)["state_dict"]
    assert state["aux_heads.0.weight"].dtype == state["aux_heads.1.weight"].dtype == torch.float32
    assert state["head.1.weight"].dtype == state["decoder.fuse.0.weight"].dtype == torch.float16
    loaded, _ = load_checkpoint(half)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    x = torch.randn(1, 3, 96, 96)
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0.05)


class Payload:
    def __reduce__(self):
        return (print, ("this ran from a checkpoint",))


def test_pickle_carrying_code_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save({"format": "napari-ftu-checkpoint", "payload": Payload()}, path)
    with pytest.raises(CheckpointError, match="was refused: it holds Python objects"):
        load_checkpoint(path)
    assert "this ran" not in capsys.readouterr().out
    with open(tmp_path / "raw.pkl", "wb") as handle:
        pickle.dump(Payload(), handle)
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "raw.pkl")
    assert "this ran" not in capsys.readouterr().out


def test_foreign_damaged_and_mismatched_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "absent.pt")
    bare = tmp_path / "bare.pt"
    torch.save(nn.Linear(2, 2).state_dict(), bare)
    with pytest.raises(CheckpointError, match="not a napari-ftu checkpoint"):
        load_checkpoint(bare)
    good = save_checkpoint(tmp_path / "good.pt", build_model("swin_micro_upernet", input_size=64))
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(damaged)
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "text.pt")

    payload = read_checkpoint(good)
    payload["format_version"] = 99
    torch.save(payload, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match="format version 99"):
        load_checkpoint(tmp_path / "future.pt")

    coat = save_checkpoint(tmp_path / "coat.pt", build_model("coat_micro_daformer", input_size=64))
    payload = read_checkpoint(coat)
    payload["state_dict"] = read_checkpoint(good)["state_dict"]  # weights of another architecture
    torch.save(payload, tmp_path / "other_arch.pt")
    with pytest.raises(CheckpointError, match=r"weights do not fit the architecture: .* missing"):
        load_checkpoint(tmp_path / "other_arch.pt")

    payload = read_checkpoint(good)
    payload["architecture"]["args"]["decoder_channels"] = 32
    torch.save(payload, tmp_path / "shape.pt")
    with pytest.raises(CheckpointError, match="wrong shape"):
        load_checkpoint(tmp_path / "shape.pt")

    payload = read_checkpoint(good)
    payload["architecture"]["name"] = "mystery_net"
    torch.save(payload, tmp_path / "unknown.pt")
    with pytest.raises(CheckpointError, match="unknown model 'mystery_net'"):
        load_checkpoint(tmp_path / "unknown.pt")
    assert zipfile.is_zipfile(good)


def test_ensemble_manifest_with_a_lung_specialist(tmp_path):
    save_checkpoint(tmp_path / "general.pt", build_model("swin_micro_upernet", input_size=64))
    save_checkpoint(
        tmp_path / "lung.pt",
        build_model("coat_micro_daformer", input_size=64),
        {"pixel_size_um": 0.8, "thresholds": {"lung": 0.2}},
    )
    manifest = {
        "members": [
            {"checkpoint": "general.pt"},
            {"checkpoint": "lung.pt", "weight": 3, "organs": ["lung"]},
        ]
    }
    (tmp_path / "ens.json").write_text(json.dumps(manifest))
    (tmp_path / "ens.yaml").write_text(
        "members:\n  - checkpoint: general.pt\n  - checkpoint: lung.pt\n    weight: 3\n"
        "    organs: [lung]\n"
    )
    for name in ("ens.json", "ens.yaml"):
        ensemble = load_ensemble(tmp_path / name)
        assert [m.name for m in ensemble.for_organ("lung")] == ["general.pt", "lung.pt"]
        assert [m.name for m in ensemble.for_organ("kidney")] == ["general.pt"]
        assert ensemble.threshold("lung") == pytest.approx((0.5 + 3 * 0.2) / 4)
    (tmp_path / "bad.json").write_text(
        json.dumps({"members": [{"checkpoint": "lung.pt", "organs": ["liver"]}]})
    )
    with pytest.raises(ValueError, match=r"member 1: unknown organ\(s\) \['liver'\]"):
        load_ensemble(tmp_path / "bad.json")
    (tmp_path / "empty.yaml").write_text("members: []\n")
    with pytest.raises(ValueError, match="non-empty 'members'"):
        load_ensemble(tmp_path / "empty.yaml")
    only_lung = {"members": [{"checkpoint": "lung.pt", "organs": ["lung"]}]}
    (tmp_path / "lung_only.json").write_text(json.dumps(only_lung))
    with pytest.raises(ValueError, match="no ensemble member applies to organ 'kidney'"):
        load_ensemble(tmp_path / "lung_only.json").for_organ("kidney")


@pytest.fixture
def two_members(tmp_path, micro_swin):
    """A general model (lung min area 1000 um²) and a lung specialist (200 um², weight 3)."""
    save_checkpoint(tmp_path / "general.pt", micro_swin, {"min_area_um2": {"lung": 1000}})
    save_checkpoint(
        tmp_path / "lung.pt",
        micro_swin,
        {"thresholds": {"lung": 0.2}, "min_area_um2": {"lung": 200}},
    )
    return [
        {"checkpoint": "general.pt"},
        {"checkpoint": "lung.pt", "weight": 3, "organs": ["lung"]},
    ]


def test_ensemble_min_area_and_the_manifests_own_values(tmp_path, two_members):
    (tmp_path / "ens.json").write_text(json.dumps({"members": two_members}))
    ensemble = load_ensemble(tmp_path / "ens.json")
    assert ensemble.min_area_um2("lung") == pytest.approx((1000 + 3 * 200) / 4)
    assert ensemble.min_area_um2("kidney") == 0.0  # no member has one
    calibrated = {
        "members": two_members,
        "thresholds": {"kidney": 0.3},
        "min_area_um2": {"lung": 50, "kidney": 4000},
    }
    (tmp_path / "calibrated.yaml").write_text(yaml.safe_dump(calibrated))
    ensemble = load_ensemble(tmp_path / "calibrated.yaml")  # the manifest's own come first
    assert ensemble.threshold("kidney") == 0.3
    assert ensemble.threshold("lung") == pytest.approx((0.5 + 3 * 0.2) / 4)  # not in it: members'
    assert ensemble.min_area_um2("lung") == 50.0 and ensemble.min_area_um2("kidney") == 4000.0


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("thresholds", {"liver": 0.5}, r"'thresholds' names unknown organ\(s\) \['liver'\]"),
        ("thresholds", {"kidney": 1.5}, r"'thresholds' for kidney must be a number in \[0, 1\]"),
        ("thresholds", {"kidney": "high"}, r"in \[0, 1\]; got 'high'"),
        ("thresholds", [0.5], "must be a dict from organs"),
        ("min_area_um2", {"kidney": -5}, "'min_area_um2' for kidney must be a number >= 0"),
        ("min_area_um2", {"lung": True}, "for lung must be a number >= 0"),
    ],
)
def test_bad_calibrated_values_in_a_manifest_are_refused(tmp_path, two_members, key, value, match):
    (tmp_path / "bad.json").write_text(json.dumps({"members": two_members, key: value}))
    with pytest.raises(ValueError, match=rf"bad\.json: .*{match}"):
        load_ensemble(tmp_path / "bad.json")


# --- tile sizes -----------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [64, 96, 160, 256])
def test_a_swin_model_takes_other_multiples_of_32(size):
    model = build_model("swin_micro_upernet", input_size=128).eval()
    with torch.inference_mode():
        logits = model(torch.randn(1, 3, size, size))
    assert logits.shape == (1, 1, size, size)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("size", [320, 384])
def test_swin_at_another_size_matches_timm_built_for_that_size(size):
    # built at 256, every stage's window is 8 as in a model built at 320 or 384, so timm's own
    # fixed-size model (attention masks precomputed for that size) is the reference; at 320 the
    # coarser stages are padded to whole windows
    import timm

    model = build_model("swin_micro_upernet", input_size=256).eval()
    reference = timm.create_model(
        "swin_tiny_patch4_window7_224",
        features_only=True,
        img_size=size,
        **CONFIGS["swin_micro_upernet"]["encoder_args"],
    ).eval()
    reference.load_state_dict(model.encoder.model.state_dict())
    x = torch.randn(1, 3, size, size)
    with torch.inference_mode():
        ours = model.encoder(x)
        theirs = [f.permute(0, 3, 1, 2) for f in reference(x)]
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.slow
def test_full_swin_tiny_takes_768_px_tiles_by_default():
    # 768 / 32 = 24 is no multiple of the window (7): timm pads the last stage to 28
    import timm

    model = build_model("swin_tiny_upernet").eval()
    assert model.config["input_size"] == 768
    reference = timm.create_model("swin_tiny_patch4_window7_224", features_only=True, img_size=768)
    reference.load_state_dict(model.encoder.model.state_dict())
    x = torch.randn(1, 3, 768, 768)
    with torch.inference_mode():
        ours = model.encoder(x)
        for a, b in zip(ours, reference.eval()(x), strict=True):
            torch.testing.assert_close(a, b.permute(0, 3, 1, 2))
        logits = model(x)
    assert [f.shape[-1] for f in ours] == [192, 96, 48, 24]
    assert logits.shape == (1, 1, 768, 768) and torch.isfinite(logits).all()


def test_coat_takes_only_the_size_it_was_built_for():
    model = build_model("coat_micro_daformer", input_size=128).eval()
    with torch.inference_mode():
        assert model(torch.randn(1, 3, 128, 128)).shape == (1, 1, 128, 128)
        with pytest.raises(ValueError, match=r"takes only 128 x 128 px .* input_size=96"):
            model(torch.randn(1, 3, 96, 96))
    with pytest.raises(ValueError, match="multiples of 32"):
        build_model("swin_micro_upernet", input_size=64)(torch.randn(1, 3, 80, 80))


def test_feature_layout_comes_from_timm_not_from_the_name():
    # swinv2_cr is named like Swin but returns NCHW features; timm's Swin returns NHWC
    from training.models.encoders import TimmEncoder

    encoder = TimmEncoder(
        "swinv2_cr_tiny_ns_224", 64, embed_dim=32, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8)
    )
    features = encoder(torch.randn(1, 3, 64, 64))
    assert not encoder.channels_last_output
    assert [f.shape[1] for f in features] == encoder.channels == [32, 64, 128, 256]
    assert build_model("swin_micro_upernet", input_size=64).encoder.channels_last_output


# --- what a checkpoint may ask for ----------------------------------------------------------------


def forbid_timm(monkeypatch) -> list:
    """Record calls of timm.create_model and refuse them (a refusal must come before any build)."""
    import timm

    calls = []

    def create_model(*args, **kwargs):
        calls.append((args, kwargs))
        raise RuntimeError("timm.create_model was called")

    monkeypatch.setattr(timm, "create_model", create_model)
    return calls


CRAFTED_ARGS = [
    ({"encoder_args": {"checkpoint_path": "/tmp/other.pth"}}, "encoder_args.checkpoint_path"),
    (
        {"encoder_args": {"pretrained_cfg_overlay": {"file": "/tmp/other.pth"}}},
        "encoder_args.pretrained_cfg_overlay",
    ),
    ({"encoder_args": {"pretrained": True}}, "encoder_args.pretrained"),
    ({"encoder_args": {"features_only": False}}, "encoder_args.features_only"),
    ({"encoder": "resnet50"}, "encoder of swin_micro_upernet .* cannot be changed"),
    ({"encoder": "hf-hub:someone/model"}, "encoder of swin_micro_upernet"),
    ({"decoder": "daformer"}, "decoder of swin_micro_upernet .* cannot be changed"),
    ({"pretrained": "/tmp/imagenet.pth"}, "architecture.args.pretrained is refused"),
    ({"encoder_args": {"depths": "1,1,2,1"}}, "encoder_args.depths must be a list"),
    ({"encoder_args": {"embed_dim": "32"}}, "encoder_args.embed_dim must be a positive int"),
    ({"encoder_args": {"embed_dim": 10**9}}, "encoder_args.embed_dim must be a positive int"),
    ({"encoder_args": {"window_size": True}}, "encoder_args.window_size"),
    ({"encoder_args": {"embed_dims": [32, 64, 128, 256]}}, "not an architecture argument"),
    ({"input_size": "64"}, "input_size must be a positive int"),
    ({"input_size": 100}, "input_size must be a multiple of 32"),
    ({"decoder_channels": -4}, "decoder_channels must be a positive int"),
    ({"colour": "red"}, r"unknown argument\(s\) for swin_micro_upernet: colour"),
    ({"encoder_args": ["embed_dim", 32]}, "encoder_args must be a dict"),
]


@pytest.mark.parametrize(("args", "match"), CRAFTED_ARGS)
def test_a_checkpoint_cannot_choose_code_or_files(tmp_path, monkeypatch, args, match):
    good = save_checkpoint(tmp_path / "good.pt", build_model("swin_micro_upernet", input_size=64))
    payload = read_checkpoint(good)
    payload["architecture"]["args"].update(args)
    torch.save(payload, tmp_path / "crafted.pt")
    timm_calls = forbid_timm(monkeypatch)
    with pytest.raises(CheckpointError, match=rf"crafted\.pt: .*{match}"):
        load_checkpoint(tmp_path / "crafted.pt")
    assert timm_calls == []


def test_build_model_accepts_only_architecture_numbers():
    with pytest.raises(TypeError, match=r"encoder_args.checkpoint_path is not an architecture"):
        build_model("swin_micro_upernet", encoder_args={"checkpoint_path": "x.pth"})
    with pytest.raises(ValueError, match=r"encoder of coat_micro_daformer .* cannot be changed"):
        build_model("coat_micro_daformer", encoder="coat_lite_medium")
    with pytest.raises(TypeError, match=r"encoder_args.serial_depths must be a list"):
        build_model("coat_micro_daformer", encoder_args={"serial_depths": 2})
    with pytest.raises(ValueError, match=r"encoder_args.drop_path_rate must be a number in"):
        build_model("coat_micro_daformer", encoder_args={"drop_path_rate": 1.5})
    # repeating the registry's own encoder and decoder (as saved checkpoints do) is fine
    model = build_model(
        "swin_micro_upernet",
        encoder="swin_tiny_patch4_window7_224",
        decoder="upernet",
        input_size=64,
        encoder_args={"depths": (1, 1, 1, 1), "mlp_ratio": 2.0, "drop_path_rate": 0.1},
    )
    assert model.config["encoder_args"]["depths"] == (1, 1, 1, 1)
    assert CONFIGS["swin_micro_upernet"]["encoder_args"]["depths"] == [1, 1, 2, 1]


# --- checkpoint metadata --------------------------------------------------------------------------


BAD_META = [
    ("tile_size", 100, "a positive multiple of 32"),
    ("tile_size", "64", "a positive multiple of 32"),
    ("tile_size", 0, "a positive multiple of 32"),
    ("tile_size", True, "a positive multiple of 32"),
    ("pixel_size_um", -0.5, "positive finite number"),
    ("pixel_size_um", float("nan"), "positive finite number"),
    ("pixel_size_um", float("inf"), "positive finite number"),
    ("pixel_size_um", "0.5", "positive finite number"),
    ("pixel_size_um", None, "positive finite number"),
    ("thresholds", {"liver": 0.5}, "organs among"),
    ("thresholds", {"lung": 1.5}, r"numbers in \[0, 1\]"),
    ("thresholds", {"lung": "high"}, r"numbers in \[0, 1\]"),
    ("thresholds", [0.5, 0.5], "a dict"),
    ("min_area_um2", {"liver": 100.0}, "organs among"),
    ("min_area_um2", {"kidney": -1.0}, ">= 0"),
    ("min_area_um2", {"kidney": float("inf")}, ">= 0"),
    ("min_area_um2", {"kidney": "big"}, ">= 0"),
    ("min_area_um2", [100.0], "a dict"),
    ("mean", [0.5, 0.5], "3 numbers"),
    ("mean", ["a", "b", "c"], "3 finite numbers"),
    ("std", [0.2, 0.0, 0.2], "each above 0"),
    ("std", [0.2, float("nan"), 0.2], "3 finite numbers"),
    ("organs", ["lung", "liver"], "organs among"),
    ("organs", [], "non-empty list"),
    ("organs", "lung", "non-empty list"),
    ("organs", [["lung"]], "non-empty list"),
    ("training", "yesterday", "a dict"),
]


@pytest.fixture(scope="module")
def micro_swin() -> nn.Module:
    return build_model("swin_micro_upernet", input_size=64)


@pytest.mark.parametrize(("field", "value", "match"), BAD_META)
def test_checkpoint_metadata_is_checked_at_load(tmp_path, micro_swin, field, value, match):
    payload = read_checkpoint(save_checkpoint(tmp_path / "good.pt", micro_swin))
    payload["meta"][field] = value
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=rf"bad\.pt: meta\.{field} .*{match}"):
        load_checkpoint(tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=rf"again\.pt: meta\.{field}"):
        save_checkpoint(tmp_path / "again.pt", micro_swin, {field: value})
    assert not (tmp_path / "again.pt").exists()


def test_tile_size_must_fit_the_model(tmp_path):
    # CoaT takes only its build size; Swin takes any multiple of 32
    coat = save_checkpoint(tmp_path / "coat.pt", build_model("coat_micro_daformer", input_size=64))
    payload = read_checkpoint(coat)
    payload["meta"]["tile_size"] = 128
    torch.save(payload, tmp_path / "coat128.pt")
    with pytest.raises(CheckpointError, match=r"coat128\.pt: meta\.tile_size 128 .* takes only 64"):
        load_checkpoint(tmp_path / "coat128.pt")
    swin = build_model("swin_micro_upernet", input_size=64)
    path = save_checkpoint(tmp_path / "swin.pt", swin, {"tile_size": 256})
    loaded, meta = load_checkpoint(path)
    assert meta["tile_size"] == 256
    with torch.inference_mode():
        assert loaded(torch.randn(1, 3, 256, 256)).shape == (1, 1, 256, 256)


def test_numpy_numbers_in_meta_are_saved_as_plain_numbers(tmp_path, micro_swin):
    import numpy as np

    meta = {"pixel_size_um": np.float32(0.8), "thresholds": {"lung": np.float64(0.3)}}
    meta["tile_size"] = np.int64(64)
    path = save_checkpoint(
        tmp_path / "np.pt", build_model("swin_micro_upernet", input_size=64), meta
    )
    _, loaded = load_checkpoint(path)
    assert loaded["pixel_size_um"] == pytest.approx(0.8) and type(loaded["pixel_size_um"]) is float
    assert loaded["thresholds"] == {"lung": 0.3} and loaded["tile_size"] == 64


def test_a_checkpoint_without_min_areas_loads_with_none(tmp_path, micro_swin):
    path = save_checkpoint(tmp_path / "m.pt", micro_swin, {"min_area_um2": {"kidney": 4000}})
    assert load_checkpoint(path)[1]["min_area_um2"] == {"kidney": 4000.0}
    payload = read_checkpoint(path)
    del payload["meta"]["min_area_um2"]  # as written before minimum areas were calibrated
    torch.save(payload, tmp_path / "old.pt")
    assert load_checkpoint(tmp_path / "old.pt")[1]["min_area_um2"] == {}
