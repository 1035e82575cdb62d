from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import ndimage

from napari_ftu._torchrun import rank_device
from napari_ftu.cli import main, open_slides
from training.data.catalog import read_catalog, upsert_row
from training.data.rle import decode, encode
from training.inference import SegmentationResult, resize_labels
from training.inference.outputs import result_row
from training.models import build_model, save_checkpoint
from training.slides import open_slide, write_pyramid
from training.synthetic import make_phantom


def segment_args(slides, model, out, *options: str, quiet: bool = True) -> list[str]:
    """Arguments of a (quiet) kidney ``napari-ftu segment`` run, with ``options`` added."""
    return [
        "segment",
        *map(str, slides),
        "--organ",
        "kidney",
        "--model",
        str(model),
        "--out",
        str(out),
        *(["--quiet"] if quiet else []),
        *options,
    ]


def torchrun(*args: str) -> list[str]:
    """The command line of ``torchrun --nproc_per_node=2 -m napari_ftu.cli ARGS``."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    return [*launcher, "--nproc_per_node=2", "-m", "napari_ftu.cli", *args]


def worktree_env() -> dict[str, str]:
    """The environment of a torchrun test: one thread per rank, this checkout's packages."""
    root = str(Path(__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    model = build_model("swin_micro_upernet", input_size=64)
    save_checkpoint(root / "model.pt", model, {"pixel_size_um": 1.6})
    slides = []
    for seed, size in ((0, 320), (1, 256)):
        image, _, _ = make_phantom("kidney", size=size, seed=seed)
        slides.append(write_pyramid(root / f"slide{seed}.tiff", image, 0.4, tile=128))
    data = slides[0].read_bytes()
    (root / "broken.tiff").write_bytes(data[: len(data) // 2])  # a slide cut short in a copy
    return root, slides


def test_segment_writes_rows_labels_and_geojson(workspace, tmp_path):
    root, slides = workspace
    out = tmp_path / "out"
    args = segment_args(
        slides,
        root / "model.pt",
        out,
        "--threshold",
        "0",
        "--labels-tiff",
        "--geojson",
        "--no-tissue-detection",
    )
    assert main(args) == 0
    frame = read_catalog(out)
    assert list(frame["id"]) == ["slide0", "slide1"]
    row = frame.iloc[0]
    assert (row["img_height"], row["img_width"]) == (320, 320) and row["pixel_size"] == 0.4
    mask = decode(row["rle"], (320, 320))
    assert mask.all()  # threshold 0 keeps every pixel
    with open_slide(out / "slide0.labels.tiff") as labels:
        assert labels.shape[:2] == (80, 80) and labels.pixel_size_um == pytest.approx(1.6)
        assert labels.metadata["format"] == "ome"
    geojson = json.loads((out / "slide0.geojson").read_text())
    assert geojson["type"] == "FeatureCollection" and len(geojson["features"]) == 1
    ring = np.array(geojson["features"][0]["geometry"]["coordinates"][0])
    assert ring[0].tolist() == ring[-1].tolist()
    assert ring[:, 0].min() <= 4 and ring[:, 0].max() >= 316  # level-0 pixel coordinates (x, y)
    assert geojson["features"][0]["properties"]["classification"]["name"] == "glomerulus"

    # results are not overwritten unless asked: a second run refuses, train.csv keeps its rows
    assert main(args) == 2
    assert list(read_catalog(out)["id"]) == ["slide0", "slide1"]


def test_segment_writes_an_overlay_png(workspace, tmp_path):
    root, slides = workspace
    # threshold 0: one object covering the slide, whatever the untrained weights say; its outline
    # runs along the image's edge
    args = segment_args(slides[:1], root / "model.pt", tmp_path, "--threshold", "0", "--overlay")
    assert main(args) == 0
    with Image.open(tmp_path / "slide0.overlay.png") as png:
        overlay = np.asarray(png)
    assert overlay.shape == (320, 320, 3)
    with open_slide(slides[0]) as slide:
        original = slide.read_region(0, 0, 320, 320)
    mask = decode(read_catalog(tmp_path).loc[0, "rle"], (320, 320)).astype(bool)
    changed = (overlay != original).any(axis=-1)
    assert mask.any() and changed.any()
    near_mask = ndimage.binary_dilation(mask, iterations=2)
    assert not (changed & ~near_mask).any()  # outlines only, drawn on the FTUs' borders
    assert not changed[ndimage.binary_erosion(mask, iterations=3)].any()  # insides untouched
    assert main(args) == 2  # an existing overlay is not replaced


def test_segment_empty_mask(workspace, tmp_path):
    root, slides = workspace
    assert main(segment_args(slides[1:], root / "model.pt", tmp_path, "--threshold", "1")) == 0
    assert read_catalog(tmp_path).loc[0, "rle"] == ""


def test_segment_bad_input_exits_non_zero(workspace, tmp_path, capsys):
    root, slides = workspace
    assert main(segment_args([tmp_path / "absent.tiff"], root / "model.pt", tmp_path)) == 2
    assert "absent.tiff: no such file" in capsys.readouterr().err
    (tmp_path / "broken.pt").write_text("nope")
    assert main(segment_args(slides[:1], tmp_path / "broken.pt", tmp_path)) == 2
    assert "not a readable checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["segment", str(slides[0]), "--organ", "liver", "--model", "m.pt", "--out", "x"])


@pytest.mark.slow
def test_torchrun_shares_slides_and_rank_zero_merges(workspace, tmp_path):
    root, slides = workspace
    command = torchrun(
        *segment_args(slides, root / "model.pt", tmp_path, "--threshold", "0", "--geojson")
    )
    done = subprocess.run(command, env=worktree_env(), timeout=300, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    frame = read_catalog(tmp_path)
    assert sorted(frame["id"]) == ["slide0", "slide1"]
    assert (tmp_path / "slide0.geojson").is_file() and (tmp_path / "slide1.geojson").is_file()


def test_segment_with_stain_normalisation(workspace, tmp_path, capsys):
    root, slides = workspace
    reference, _, _ = make_phantom("kidney", size=256, seed=5)
    write_pyramid(tmp_path / "reference.tiff", reference, 0.4)
    options = ("--stain", "vahadane", "--stain-reference", str(tmp_path / "reference.tiff"))
    assert main(segment_args(slides[1:], root / "model.pt", tmp_path / "out", *options)) == 0
    assert list(read_catalog(tmp_path / "out")["id"]) == ["slide1"]

    glass = tmp_path / "glass.png"
    Image.fromarray(np.full((64, 64, 3), 245, np.uint8)).save(glass)
    bad = ("--stain-reference", str(glass))
    assert main(segment_args(slides[1:], root / "model.pt", tmp_path / "bad", *bad)) == 2
    assert "too little stained tissue" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        main(segment_args(slides[1:], root / "model.pt", tmp_path / "bad", "--stain", "macenko"))
    assert exited.value.code == 2 and "--stain needs --stain-reference" in capsys.readouterr().err


def test_min_area_defaults_to_the_models_for_the_organ(workspace, tmp_path):
    _, slides = workspace
    model = build_model("swin_micro_upernet", input_size=64)
    calibrated = tmp_path / "calibrated.pt"
    save_checkpoint(calibrated, model, {"pixel_size_um": 1.6, "min_area_um2": {"kidney": 1e5}})
    # threshold 0: one object covering the slide (102 um square, 10486 um²)
    common = ("--threshold", "0", "--no-tissue-detection")
    assert main(segment_args(slides[1:], calibrated, tmp_path / "model", *common)) == 0
    row = read_catalog(tmp_path / "model").iloc[0]
    assert not decode(row["rle"], (256, 256)).any()  # under the model's 1e5 um²: dropped
    given = (*common, "--min-area-um2", "0")
    assert main(segment_args(slides[1:], calibrated, tmp_path / "given", *given)) == 0
    assert decode(read_catalog(tmp_path / "given").iloc[0]["rle"], (256, 256)).all()


def fake_result(slide_shape: tuple[int, int]) -> SegmentationResult:
    return SegmentationResult(None, 1.6, 4.0, slide_shape, "kidney", 0.5, 0, 0)


def test_result_row_encodes_level0_without_building_it():
    rng = np.random.default_rng(0)
    labels = np.zeros((4096, 4096), np.int32)
    for index, (y, x, h, w) in enumerate(rng.integers(0, 4096, (40, 4)) % [4096, 4096, 300, 300]):
        labels[y : y + h, x : x + w] = index + 1
    shape = (16384, 16384)  # level-0 labels would be 1 GiB of int32
    tracemalloc.start()
    try:
        row = result_row("big", fake_result(shape), labels, 0.4)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < shape[0] * shape[1] / 4
    assert (row["img_height"], row["img_width"]) == shape

    small = labels[1000:1013, 2000:2011]  # a non-integer ratio, and the same size
    for shape in ((50, 37), small.shape):
        row = result_row("small", fake_result(shape), small, 0.4)
        assert row["rle"] == encode(resize_labels(small, shape) > 0)


def test_a_bad_slide_costs_only_its_own_results(workspace, tmp_path, capsys):
    root, slides = workspace
    bad = root / "broken.tiff"
    assert main(segment_args([bad, *slides], root / "model.pt", tmp_path)) == 1
    assert sorted(read_catalog(tmp_path)["id"]) == ["slide0", "slide1"]
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and f"error: {bad}: broken.tiff is truncated" in errors[0]


@pytest.mark.slow
def test_torchrun_rank_with_a_bad_slide_neither_hangs_nor_loses_the_others(workspace, tmp_path):
    """Rank 0 gets the broken slide and slide1, rank 1 gets slide0: every rank reaches the
    gather, the good slides' rows are written, the exit status says something failed."""
    root, slides = workspace
    bad = root / "broken.tiff"
    command = torchrun(*segment_args([bad, *slides], root / "model.pt", tmp_path))
    done = subprocess.run(command, env=worktree_env(), timeout=300, capture_output=True, text=True)
    assert done.returncode != 0
    assert sorted(read_catalog(tmp_path)["id"]) == ["slide0", "slide1"]
    assert f"{bad}: broken.tiff is truncated" in done.stderr


def test_cuda_spreads_torchrun_ranks_over_the_gpus():
    assert rank_device("cuda", 0, gpu_count=4) == "cuda:0"
    assert rank_device("cuda", 3, gpu_count=4) == "cuda:3"
    assert rank_device("cuda", 5, gpu_count=4) == "cuda:1"  # more ranks than GPUs: in turn
    assert rank_device("cuda:2", 1, gpu_count=4) == "cuda:2"  # an explicit GPU is kept
    assert rank_device("cpu", 1, gpu_count=4) == "cpu"
    assert rank_device("cuda", 1, gpu_count=0) == "cuda"  # no GPU: torch says so, clearly


def test_existing_results_are_refused_before_any_work(workspace, tmp_path, capsys, monkeypatch):
    root, slides = workspace
    outputs = ("--labels-tiff", "--geojson", "--threshold", "0.5")
    assert main(segment_args(slides[:1], root / "model.pt", tmp_path, *outputs)) == 0
    capsys.readouterr()
    before = (tmp_path / "train.csv").read_text()

    import training.models.ensemble

    def no_work(*args, **kwargs):
        raise AssertionError("the model was loaded although the results exist")

    with monkeypatch.context() as patch:
        patch.setattr(training.models.ensemble, "load_ensemble", no_work)
        assert main(segment_args(slides, root / "model.pt", tmp_path, *outputs)) == 2
    err = capsys.readouterr().err
    for what in ("slide0.labels.tiff exists", "slide0.geojson exists", "train.csv: row slide0"):
        assert what in err
    assert "slide1" not in err and "--overwrite" in err
    assert (tmp_path / "train.csv").read_text() == before
    assert not (tmp_path / "slide1.labels.tiff").exists()

    # --overwrite replaces them; the replaced row is kept in train.backup.csv
    again = segment_args(slides, root / "model.pt", tmp_path, *outputs[:-1], "0", "--overwrite")
    assert main(again) == 0
    frame = read_catalog(tmp_path).set_index("id")
    assert sorted(frame.index) == ["slide0", "slide1"]
    assert decode(frame.loc["slide0", "rle"], (320, 320)).all()  # threshold 0 this time
    assert list(pd.read_csv(tmp_path / "train.backup.csv")["id"]) == ["slide0"]
    assert (tmp_path / "slide1.labels.tiff").is_file()


def test_progress_bar_appears_once_the_tile_count_is_known(workspace, tmp_path, capsys):
    root, slides = workspace
    assert main(segment_args(slides[1:], root / "model.pt", tmp_path, quiet=False)) == 0
    err = capsys.readouterr().err
    assert "slide1.tiff: 100%" in err
    assert not re.search(r"slide1\.tiff: 0tile", err)  # what a bar without a total prints


def test_launcher_opens_the_viewer_for_missing_files_too(tmp_path, monkeypatch):
    # the missing file is reported in the viewer (build_viewer: tests/test_plugin.py), not on
    # stderr before it; the exit status still says a slide was not opened
    import napari

    from napari_ftu import cli

    calls = []
    monkeypatch.setattr(napari, "Viewer", lambda **kwargs: calls.append(kwargs) or "viewer")
    monkeypatch.setattr(napari, "run", lambda: calls.append("run"))
    monkeypatch.setattr(cli, "build_viewer", lambda viewer, paths: list(map(str, paths)))
    missing = str(tmp_path / "absent.tiff")
    assert main([missing]) == 2
    assert calls == [{"title": "napari-ftu"}, "run"]


@pytest.mark.gui
def test_launcher_reports_an_unreadable_slide_and_opens_the_others(make_napari_viewer, workspace):
    from napari.utils.notifications import notification_manager

    root, slides = workspace
    viewer = make_napari_viewer()
    records = len(notification_manager.records)
    failed = open_slides(viewer, [root / "broken.tiff", slides[1]])
    assert failed == [str(root / "broken.tiff")]
    assert [layer.name for layer in viewer.layers] == ["slide1"]
    messages = [record.message for record in notification_manager.records[records:]]
    assert any("cannot open" in m and "broken.tiff is truncated" in m for m in messages)


def test_rank_zero_restores_rows_lost_to_a_filesystem_without_locks(tmp_path, caplog):
    from napari_ftu.cli import _restore_lost_rows

    def slide_row(image_id: str, rle: str) -> dict:
        return {"id": image_id, "organ": "kidney", "img_height": 4, "img_width": 4, "rle": rle}

    upsert_row(tmp_path, slide_row("kept", "1 2"))
    upsert_row(tmp_path, slide_row("stale", "1 2"))  # an older run's row that was not replaced
    rows = [slide_row("kept", "1 2"), slide_row("stale", "3 4"), slide_row("lost", "5 1")]
    _restore_lost_rows(tmp_path, rows)
    frame = read_catalog(tmp_path).set_index("id")
    assert frame.loc[["kept", "stale", "lost"], "rle"].tolist() == ["1 2", "3 4", "5 1"]
    assert "stale: its row was lost" in caplog.text and "kept" not in caplog.text


def test_precision_reaches_the_engine(workspace, tmp_path, monkeypatch):
    # --precision bf16 (the measured CPU gain) is the engine's, and the CLI offers what it takes
    from napari_ftu import _segment_command
    from training.inference.predictor import PRECISIONS

    (choice,) = [a for a in _segment_command.segment_parser()._actions if a.dest == "precision"]
    assert tuple(choice.choices) == PRECISIONS
    seen = []
    real = _segment_command.run_options
    monkeypatch.setattr(
        _segment_command, "run_options", lambda *a, **k: seen.append(real(*a, **k)) or seen[-1]
    )
    root, slides = workspace
    args = segment_args(slides[:1], root / "model.pt", tmp_path / "out", "--precision", "bf16")
    assert main(args) == 0
    assert [options.precision for options in seen] == ["bf16"]
