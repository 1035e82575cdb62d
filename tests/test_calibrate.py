"""``python -m training.calibrate`` end to end on tiny data."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from helpers import phantom_dataset

from training import calibrate as calibrate_command
from training.models import build_model, save_checkpoint
from training.models.ensemble import load_ensemble


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> tuple[Path, Path]:
    """Phantoms of two organs, and an untrained model that names two of them as validated."""
    root = tmp_path_factory.mktemp("calibrate")
    data = phantom_dataset(root / "phantoms")
    model = build_model("swin_micro_upernet", input_size=64)
    meta = {
        "pixel_size_um": 2.0,
        "tile_size": 64,
        "thresholds": {"kidney": 0.5, "lung": 0.43},  # off the grid: still a candidate
        "min_area_um2": {"kidney": 300.0},
        "training": {"val_ids": ["kidney0", "kidney2", "lung1"]},
    }
    save_checkpoint(root / "m.pt", model, meta)
    return root, data


def manifest(root: Path, name: str, **extra: object) -> Path:
    path = root / name
    content = {"name": "tiny", "members": [{"checkpoint": "m.pt"}], **extra}
    text = json.dumps(content) if path.suffix == ".json" else yaml.safe_dump(content)
    path.write_text(text)
    return path


def test_calibrate_keeps_or_improves_dice_and_writes_the_manifest(workspace, capsys):
    root, data = workspace
    path = manifest(root, "ens.yaml", min_area_um2={"spleen": 100.0})
    out = root / "calibration.json"
    args = ["--data", str(data), "--model", str(path), "--split-of", str(root / "m.pt")]
    assert calibrate_command.main([*args, "--write", "--out", str(out)]) == 0
    results = json.loads(out.read_text())["organs"]
    assert {organ: r["images"] for organ, r in results.items()} == {"kidney": 2, "lung": 1}
    assert results["lung"]["threshold_before"] == 0.43
    assert results["kidney"]["min_area_um2_before"] == 300.0
    for organ, result in results.items():
        assert result["dice"] >= result["dice_before"], organ
        assert result["score"] == result["dice"], organ  # not colon: the score is the Dice
        assert 0 <= result["background_dice"] <= 1 and 0 < result["all_ftu_dice"] < 1, organ
    printed = capsys.readouterr().out
    assert "Dice before" in printed and "0.43 ->" in printed
    lung_line = next(line for line in printed.splitlines() if line.startswith("lung "))
    lung = results["lung"]
    assert lung_line.endswith(f"{lung['background_dice']:>10.4f} {lung['all_ftu_dice']:>7.4f}")

    written = yaml.safe_load(path.read_text())
    assert written["name"] == "tiny" and written["members"] == [{"checkpoint": "m.pt"}]
    assert written["min_area_um2"]["spleen"] == 100.0  # an organ not seen keeps its value
    ensemble = load_ensemble(path)  # the written values round-trip and come first
    for organ, result in results.items():
        assert ensemble.threshold(organ) == result["threshold"]
        assert ensemble.min_area_um2(organ) == result["min_area_um2"]

    # calibrating again starts from the written values (the engine uses them) and keeps them
    assert calibrate_command.main([*args, "--organ", "lung", "--out", str(out)]) == 0
    again = json.loads(out.read_text())["organs"]
    assert list(again) == ["lung"]
    lung = again["lung"]
    assert (lung["threshold_before"], lung["min_area_um2_before"]) == (
        results["lung"]["threshold"],
        results["lung"]["min_area_um2"],
    )
    assert lung["dice_before"] == lung["dice"] == results["lung"]["dice"]


def test_a_checkpoint_cannot_be_written_to(workspace, capsys):
    root, data = workspace
    args = ["--data", str(data), "--model", str(root / "m.pt"), "--write"]
    assert calibrate_command.main(args) == 2
    assert "is a checkpoint: list it in a manifest" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"thresholds": {"kidney": 1.5}}, r"'thresholds' for kidney must be a number in \[0, 1\]"),
        ({"thresholds": {"liver": 0.5}}, r"unknown organ\(s\) \['liver'\]"),
        ({"min_area_um2": {"lung": -10}}, "'min_area_um2' for lung must be a number >= 0"),
    ],
)
def test_bad_manifest_values_are_refused(workspace, capsys, extra, message):
    root, data = workspace
    path = manifest(root, "bad.json", **extra)
    before = path.read_text()
    assert calibrate_command.main(["--data", str(data), "--model", str(path), "--write"]) == 2
    assert re.search(message, capsys.readouterr().err)
    with pytest.raises(ValueError, match=message):
        load_ensemble(path)
    assert path.read_text() == before


def test_writing_calibration_keeps_the_manifest_comments(tmp_path, monkeypatch):
    from training.models import ensemble as ensemble_module

    path = tmp_path / "ens.yaml"
    path.write_text(
        "# our kidney ensemble, see the wiki\n"
        "members:\n"
        "- checkpoint: m.pt  # trained on batch 3\n"
        "thresholds:\n"
        "  kidney: 0.5  # old\n"
        "  lung: 0.4\n"
        "# lung was tuned by hand\n"
        "name: tiny\n"
    )
    results = {"kidney": {"threshold": 0.55, "min_area_um2": 4000.0}}
    calibrate_command.write_calibration(path, results)
    text = path.read_text()
    for kept in ("# our kidney ensemble", "# trained on batch 3", "# lung was tuned by hand"):
        assert kept in text
    written = yaml.safe_load(text)
    assert written["thresholds"] == {"kidney": 0.55, "lung": 0.4}
    assert written["min_area_um2"] == {"kidney": 4000.0}  # a new key, at the end
    assert written["name"] == "tiny" and written["members"] == [{"checkpoint": "m.pt"}]
    assert list(written) == ["members", "thresholds", "name", "min_area_um2"]

    # where the text cannot be edited in place, the values still come out right (comments lost)
    monkeypatch.setattr(ensemble_module, "_replace_yaml_keys", lambda text, updates: text)
    calibrate_command.write_calibration(path, {"lung": {"threshold": 0.6, "min_area_um2": 0.0}})
    written = yaml.safe_load(path.read_text())
    assert written["thresholds"] == {"kidney": 0.55, "lung": 0.6}

    json_path = manifest(tmp_path, "ens.json")
    calibrate_command.write_calibration(json_path, results)
    assert json.loads(json_path.read_text())["thresholds"] == {"kidney": 0.55}
