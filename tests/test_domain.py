"""The domain check: descriptions of training data in checkpoints, and the distance of a slide.

The model is a copy of the bundled general CoaT member (trained on phantoms and real kidney), so
its encoder features mean something; its description is made here from HPA phantoms.
"""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import phantom_dataset

from training.data.records import DataSpec, load_records
from training.domain import FAR, FeatureTap, check_slide
from training.domain.__main__ import main as domain_main
from training.models import CheckpointError, load_checkpoint, read_checkpoint, save_checkpoint
from training.models.ensemble import Member, load_ensemble
from training.slides import Slide, write_pyramid
from training.synthetic import STAIN_VECTORS, make_phantom

BUNDLED = Path(__file__).resolve().parents[1] / "training" / "models" / "default"
# a PAS-like pair: haematoxylin as H&E's, the magenta of periodic acid-Schiff for eosin
PAS_VECTORS = [[0.644, 0.717, 0.267], [0.175, 0.972, 0.154]]


def phantom_folder(folder: Path, domain: str = "hpa", seeds: range = range(3)) -> Path:
    """Kidney and lung phantoms of ``domain``'s stain, 1024 px at 0.4 um/px."""
    return phantom_dataset(folder, ("kidney", "lung"), 1024, 0.4, seeds, **_stain(domain))


def _stain(domain: str) -> dict:
    return {} if domain == "hpa" else {"stain_vectors": STAIN_VECTORS[domain]}


@pytest.fixture(scope="module")
def bare(tmp_path_factory) -> Path:
    """The bundled CoaT member without its description, as checkpoints from before it were."""
    model, meta = load_checkpoint(BUNDLED / "coat_daformer.pt")
    del meta["architecture"], meta["domain"]
    return save_checkpoint(tmp_path_factory.mktemp("bare") / "coat.pt", model, meta, half=True)


def described_copy(source: Path, data: Path, out: Path) -> Path:
    """``source`` (an undescribed checkpoint) described on ``data`` by the command a user
    runs."""
    assert domain_main(["describe", str(source), "--data", str(data),
                        "--out", str(out)]) == 0  # fmt: skip
    return out


def phantom_slide(organ: str = "kidney", seed: int = 9, **overrides) -> Slide:
    """A phantom unseen in training (another seed), 1024 px at 0.4 um/px."""
    return Slide.from_array(make_phantom(organ, "hpa", 1024, seed, **overrides)[0], 0.4)


@pytest.fixture(scope="module")
def hpa_data(tmp_path_factory) -> Path:
    return phantom_folder(tmp_path_factory.mktemp("domain") / "hpa")


@pytest.fixture(scope="module")
def described(bare, hpa_data, tmp_path_factory) -> Path:
    return described_copy(bare, hpa_data, tmp_path_factory.mktemp("described") / "coat.pt")


@pytest.mark.parametrize("organ", ["kidney", "spleen"])
def test_a_phantom_in_the_training_stain_is_near_and_a_restained_one_far(described, organ):
    members = load_ensemble(described).members
    near = check_slide(phantom_slide(organ), members)
    assert near.known and not near.far and near.message is None
    assert near.distance <= 1
    for vectors in (STAIN_VECTORS["hubmap"], PAS_VECTORS):
        far = check_slide(phantom_slide(organ, stain_vectors=vectors), members)
        assert far.far and far.distance > 1
        assert far.parts["stain"] > FAR["stain"]  # the stain vectors themselves moved
        assert far.message == (
            "this slide's stain is unlike anything the model was trained on: review the "
            "result, or adapt the model"
        )
        assert "far: this slide's stain" in far.line("x.tiff")


def test_a_slide_at_another_pixel_size_is_named_so(described):
    image = make_phantom("kidney", "hpa", 512, 9, pixel_size_um=1.6)[0]
    check = check_slide(Slide.from_array(image, 1.6), load_ensemble(described).members)
    assert check.far and check.parts["pixel_size"] == pytest.approx(2.0)
    assert "pixel size (1.6 um; the training images' 0.4 to 0.4)" in check.message


def test_describe_keeps_everything_else_in_the_checkpoint(bare, described, hpa_data, tmp_path):
    before, after = read_checkpoint(bare), read_checkpoint(described)
    assert after["architecture"] == before["architecture"]
    assert {k: v for k, v in after["meta"].items() if k != "domain"} == before["meta"]
    for key, tensor in before["state_dict"].items():  # as stored: float16 stays float16
        assert after["state_dict"][key].dtype == tensor.dtype
        assert torch.equal(after["state_dict"][key], tensor)
    domain = after["meta"]["domain"]
    assert domain["images"] == 6 and domain["tiles"] <= 64 and len(domain["stains"]) == 1
    assert len(domain["features"]["mean"]) == load_checkpoint(described)[0].encoder.channels[-1]
    # in place, atomically: a failed run leaves the file as it was, and no temporary behind
    copy = shutil.copy(described, tmp_path / "copy.pt")
    data = Path(copy).read_bytes()
    assert domain_main(["describe", str(copy), "--data", str(tmp_path / "nowhere")]) == 2
    assert Path(copy).read_bytes() == data
    assert domain_main(["describe", str(copy), "--data", str(hpa_data)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy.pt"]
    assert read_checkpoint(copy)["meta"]["domain"] == domain


def test_the_description_round_trips_through_save_and_load(described, tmp_path):
    model, meta = load_checkpoint(described)
    save_checkpoint(tmp_path / "again.pt", model, meta)
    assert load_checkpoint(tmp_path / "again.pt")[1]["domain"] == meta["domain"]


def _tamper(domain: dict, how: str) -> dict:
    domain = {**domain, "stains": [dict(g) for g in domain["stains"]]}
    features = dict(domain["features"])
    if how == "code":
        domain["loader"] = "os.system('rm -rf ~')"
    elif how == "nan":
        features["mean"] = [float("nan"), *features["mean"][1:]]
    elif how == "string":
        domain["stains"][0]["od_mean"] = ["0.1", 0.2, 0.3]
    elif how == "shape":
        domain["stains"][0]["stain_vectors"] = domain["stains"][0]["stain_vectors"][:1]
    elif how == "channels":  # consistent in itself, but not this model's encoder
        features = {"mean": features["mean"][:-1], "std": features["std"][:-1]}
    elif how == "groups":
        domain["stains"] = domain["stains"] * 9
    elif how == "spread":
        domain["stains"][0]["stain_spread_deg"] = 0.0
    domain["features"] = features
    return domain


@pytest.mark.parametrize(
    "how", ["code", "nan", "string", "shape", "channels", "groups", "spread"]
)  # fmt: skip
def test_a_tampered_description_is_refused_in_one_line(described, tmp_path, how):
    payload = read_checkpoint(described)
    payload["meta"]["domain"] = _tamper(payload["meta"]["domain"], how)
    torch.save(payload, tmp_path / "tampered.pt")
    with pytest.raises(CheckpointError, match=r"^tampered\.pt: meta\.domain refused: ") as info:
        load_checkpoint(tmp_path / "tampered.pt")
    assert "\n" not in str(info.value)


def test_a_checkpoint_without_a_description_gives_unknown(bare, described, caplog):
    undescribed = Member(*load_checkpoint(bare), name="bare.pt")
    assert "domain" not in undescribed.meta
    caplog.set_level(logging.INFO, logger="training.domain")
    check = check_slide(phantom_slide(stain_vectors=PAS_VECTORS), [undescribed])
    assert not check.known and not check.far and check.message is None
    assert check.line("x.tiff") == (
        "x.tiff: domain distance unknown (the model has no description of its data)"
    )
    assert "bare.pt: no description of the training data" in caplog.text
    # beside a described member, that member alone is checked against
    with_one = check_slide(phantom_slide(), [undescribed, load_ensemble(described).members[0]])
    assert with_one.known and with_one.member == "coat.pt"


def test_an_ensemble_is_near_when_near_to_one_of_its_members(bare, described, tmp_path):
    hubmap_data = phantom_folder(tmp_path / "hubmap", "hubmap")
    hubmap = described_copy(bare, hubmap_data, tmp_path / "hubmap.pt")
    members = [*load_ensemble(described).members, *load_ensemble(hubmap).members]
    restained = phantom_slide(stain_vectors=STAIN_VECTORS["hubmap"])
    check = check_slide(restained, members)
    assert not check.far and check.member == "hubmap.pt"
    assert check_slide(restained, members[:1]).far


def test_the_features_a_run_records_are_those_of_its_tiles(described):
    from training.inference import run

    ensemble = load_ensemble(described)
    slide = phantom_slide()
    with FeatureTap(ensemble.members) as tap:
        result = run(slide, ensemble, "kidney")
    (features,) = tap.features.values()
    assert features.shape == (result.tiles_run, ensemble.members[0].model.encoder.channels[-1])
    assert not ensemble.members[0].model.encoder._forward_hooks  # the hooks are gone
    recorded = check_slide(slide, ensemble.members, tap.features)
    computed = check_slide(slide, ensemble.members)
    assert recorded.far == computed.far
    assert recorded.parts["features"] == pytest.approx(computed.parts["features"], rel=0.2)


def test_training_stores_a_description_in_its_checkpoints(tmp_path, monkeypatch, caplog):
    from helpers import phantom_dataset

    from training import train as train_command

    data = phantom_dataset(tmp_path / "data")
    out = tmp_path / "run"
    args = ["--data", str(data), "--out", str(out), "--tile", "64", "--pixel-size", "2.0",
            "--batch-size", "2", "--samples-per-epoch", "4", "--workers", "0", "--no-progress",
            "--model", "swin_micro_upernet", "--epochs", "1"]  # fmt: skip
    assert train_command.main(args) == 0
    images = len(load_records([DataSpec(data)]))
    for name in ("best.pt", "last.pt"):
        model, meta = load_checkpoint(out / name)
        domain = meta["domain"]
        # the images it trained on, not those it validated on
        assert domain["images"] == meta["training"]["train_images"] < images
        assert len(domain["features"]["mean"]) == model.encoder.channels[-1]
        assert domain["stains"][0]["pixel_size_um"] == [2.0, 2.0]
    checked = check_slide(
        Slide.from_array(make_phantom("kidney", "hpa", 128, 0, pixel_size_um=2.0)[0], 2.0),
        [Member(model, meta, name="last.pt")],
    )
    assert checked.known and np.isfinite(checked.distance)

    # fine-tuned from it, where describing fails: no description, not the --init's stale one
    def fail(*args, **kwargs):
        raise ValueError("no tissue")

    import training.domain

    monkeypatch.setattr(training.domain, "describe_checkpoint", fail)
    tuned = [*args[:3], str(tmp_path / "tuned"), *args[4:-4], "--init", str(out / "best.pt")]
    assert train_command.main([*tuned, "--epochs", "1"]) == 0
    assert "best.pt: no description of the training data stored: no tissue" in caplog.text
    for name in ("best.pt", "last.pt"):
        assert "domain" not in load_checkpoint(tmp_path / "tuned" / name)[1]


def test_segment_prints_one_domain_line_per_slide(bare, described, tmp_path, caplog):
    from napari_ftu.cli import main

    image = make_phantom("kidney", "hpa", 1024, 9)[0]
    near = write_pyramid(tmp_path / "near.tiff", image, 0.4)
    image = make_phantom("kidney", "hpa", 1024, 9, stain_vectors=PAS_VECTORS)[0]
    far = write_pyramid(tmp_path / "far.tiff", image, 0.4)
    caplog.set_level(logging.INFO)  # the lines come from training.inference.batch
    args = ["segment", str(near), str(far), "--organ", "kidney", "--out", str(tmp_path / "out")]
    assert main([*args, "--model", str(described), "--quiet"]) == 0
    lines = [r.getMessage() for r in caplog.records if "domain distance" in r.getMessage()]
    assert len(lines) == 2
    assert lines[0].startswith("near.tiff: domain distance ") and "near the model's" in lines[0]
    assert lines[1].startswith("far.tiff: domain distance ")
    assert lines[1].endswith("far: this slide's stain is unlike anything the model was trained "
                             "on: review the result, or adapt the model")  # fmt: skip
    caplog.clear()
    undescribed = ["--model", str(bare), "--out", str(tmp_path / "bare")]
    assert main([*args[:-2], *undescribed, "--quiet"]) == 0
    assert "near.tiff: domain distance unknown" in caplog.text


def test_the_recorded_features_stay_bounded_and_spread_over_the_slide(described):
    from training.inference import run

    ensemble = load_ensemble(described)
    slide = Slide.from_array(make_phantom("kidney", "hpa", 2400, 9)[0], 0.4)
    with FeatureTap(ensemble.members) as tap:
        everything = run(slide, ensemble, "kidney", batch_size=2)
    with FeatureTap(ensemble.members, limit=6) as bounded:
        run(slide, ensemble, "kidney", batch_size=2)
    (all_features,), (kept,) = tap.features.values(), bounded.features.values()
    assert len(all_features) == everything.tiles_run > 12
    assert 3 <= len(kept) <= 6 + 2
    # from the whole slide: tiles of its second half are among those kept, not only the first
    rows = [np.flatnonzero(np.isclose(all_features, row).all(axis=1))[0] for row in kept]
    assert max(rows) >= everything.tiles_run // 2


def test_a_slide_normalised_to_the_training_stain_is_checked_as_the_model_sees_it(
    described, tmp_path, caplog
):
    from napari_ftu.cli import main

    image = make_phantom("kidney", "hpa", 1024, 9, stain_vectors=PAS_VECTORS)[0]
    slide = write_pyramid(tmp_path / "pas.tiff", image, 0.4)
    reference = write_pyramid(tmp_path / "ref.tiff", make_phantom("kidney", "hpa", 512, 4)[0], 0.4)
    caplog.set_level(logging.INFO)  # the lines come from training.inference.batch
    args = ["segment", str(slide), "--organ", "kidney", "--model", str(described), "--quiet"]
    stain = ["--stain", "macenko", "--stain-reference", str(reference)]
    assert main([*args, "--out", str(tmp_path / "raw")]) == 0
    assert main([*args, *stain, "--out", str(tmp_path / "normalised")]) == 0
    raw, normalised = [r.getMessage() for r in caplog.records if "domain" in r.getMessage()]
    assert "far: this slide's stain" in raw

    def stain_part(line: str) -> float:
        return float(re.search(r"[(,] stain ([0-9.e+-]+)", line).group(1))

    # the stain vectors the models saw are the reference's (the optical density, which the
    # normaliser shifts a little, may still be unlike these phantoms, which never vary)
    assert stain_part(raw) > FAR["stain"] > stain_part(normalised)
