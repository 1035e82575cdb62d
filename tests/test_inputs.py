"""Inputs that would take the machine down or waste a run are refused up front, in one line:
crafted checkpoints, bad arguments, a slide header far larger than its pixels, deep JSON,
and the partial outputs of a killed run are removed."""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from helpers import member

from napari_ftu.cli import main
from training.data.catalog import read_catalog, upsert_row
from training.data.geojson import GeoJSONError, rasterize
from training.data.import_geojson import main as import_geojson
from training.inference import run
from training.inference.store import OWNER_LOCK, TEMP_PREFIX, OutputStore
from training.inference.tiling import plan_tiles
from training.models import build_model, load_checkpoint, save_checkpoint
from training.models.checkpoint import CheckpointError, read_checkpoint
from training.slides import Slide, write_pyramid
from training.synthetic import make_phantom

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A 1.6 um/px micro model and a 256 px kidney phantom at 0.4 um/px."""
    root = tmp_path_factory.mktemp("inputs")
    model = build_model("swin_micro_upernet", input_size=64)
    save_checkpoint(root / "model.pt", model, {"pixel_size_um": 1.6})
    image, _, _ = make_phantom("kidney", size=256, seed=0)
    slide = write_pyramid(root / "slide.tiff", image, 0.4, tile=128)
    return root, slide


def segment(slide, model, out, *options: str) -> list[str]:
    return [
        "segment",
        str(slide),
        "--organ",
        "kidney",
        "--model",
        str(model),
        "--out",
        str(out),
        "--quiet",
        *options,
    ]


def cli_env(**extra: str) -> dict[str, str]:
    """This checkout's packages for a child process, one thread."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", **extra}


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if the command gets as far as loading the model."""
    import training.models.ensemble

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded: the input was not refused up front")

    monkeypatch.setattr(training.models.ensemble, "load_ensemble", refuse)


def error_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


# --- the command line: bad arguments, a folder as a slide, an unwritable --out -----------------


@pytest.mark.parametrize(
    ("option", "value", "says"),
    [
        ("--threshold", "2", "argument --threshold: 2 is not in [0, 1]"),
        ("--threshold", "nan", "argument --threshold: nan is not in [0, 1]"),
        ("--batch-size", "0", "argument --batch-size: 0 is not at least 1"),
        ("--overlap", "1", "argument --overlap: 1 is not in [0, 1)"),
        ("--pixel-size", "1e9", "argument --pixel-size: 1e9 is not in [0.01, 100]"),
        ("--pixel-size", "inf", "argument --pixel-size: inf is not in [0.01, 100]"),
        ("--min-area-um2", "-1", "argument --min-area-um2: -1 is not in [0, inf)"),
    ],
)
def test_bad_numbers_are_refused_at_parse_time(
    workspace, tmp_path, capsys, no_model_load, option, value, says
):
    root, slide = workspace
    with pytest.raises(SystemExit) as stop:
        main(segment(slide, root / "model.pt", tmp_path / "out", option, value))
    assert stop.value.code == 2
    assert error_lines(capsys) == [f"napari-ftu segment: error: {says} (see napari-ftu segment -h)"]
    assert not (tmp_path / "out").exists()


def test_a_folder_given_as_a_slide_is_named_as_one(workspace, tmp_path, capsys, no_model_load):
    root, _ = workspace
    folder = tmp_path / "scans.tiff"
    folder.mkdir()
    assert main(segment(folder, root / "model.pt", tmp_path / "out")) == 2
    assert error_lines(capsys) == [
        f"napari-ftu segment: error: {folder}: is a directory, not a slide file"
    ]


@pytest.fixture
def read_only_folder(tmp_path):
    """A folder nobody can write in: mode 555, and immutable when the tests run as root (whom
    permissions do not stop)."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    immutable = os.geteuid() == 0 and shutil.which("chattr") is not None
    if immutable:
        subprocess.run(["chattr", "+i", str(folder)], check=False, capture_output=True)
    try:
        tempfile.TemporaryFile(dir=folder).close()
    except OSError:
        yield folder
    else:
        pytest.skip("cannot make a folder read-only here")
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(folder)], check=False, capture_output=True)
        folder.chmod(0o755)


def test_an_unwritable_out_is_refused_before_any_work(
    workspace, read_only_folder, capsys, no_model_load
):
    root, slide = workspace
    out = read_only_folder / "results"
    assert main(segment(slide, root / "model.pt", out)) == 2
    (line,) = error_lines(capsys)
    assert line.startswith(f"napari-ftu segment: error: {out}: cannot write there (")


def test_a_failed_slide_is_one_line(workspace, tmp_path, capsys):
    root, slide = workspace
    data = slide.read_bytes()
    broken = tmp_path / "broken.tiff"
    broken.write_bytes(data[: len(data) // 2])
    assert main(segment(broken, root / "model.pt", tmp_path / "out")) == 1
    (line,) = error_lines(capsys)
    assert line.startswith(f"napari-ftu segment: error: {broken}: broken.tiff is truncated")


def test_a_row_another_run_wrote_meanwhile_is_not_replaced(workspace, tmp_path, monkeypatch):
    """Two runs on one slide into one folder: both pass the check for an existing row before
    either writes; the one that finishes second must not silently replace the other's row."""
    root, slide = workspace
    out = tmp_path / "out"
    other = {
        "id": "slide",
        "organ": "kidney",
        "img_height": 256,
        "img_width": 256,
        "pixel_size": 0.4,
        "rle": "1 5",
        "data_source": "other run",
    }
    import training.inference

    real_run = training.inference.run

    def run_while_another_finishes(*args, **kwargs):
        result = real_run(*args, **kwargs)
        upsert_row(out, other)  # the other run, done while this one ran
        return result

    monkeypatch.setattr(training.inference, "run", run_while_another_finishes)
    assert main(segment(slide, root / "model.pt", out, "--labels-tiff")) == 1
    frame = read_catalog(out, check_images=False)
    assert list(frame["rle"]) == ["1 5"]  # the other run's row stands
    assert not (out / "slide.labels.tiff").exists()  # and none of this run's results


def test_a_row_written_just_before_this_runs_row_is_not_replaced(
    workspace, tmp_path, monkeypatch, capsys
):
    """The row appears after this run's last look at train.csv, while it writes its GeoJSON:
    the check and the write of the row are one step under the folder's lock, so nothing can
    come between them."""
    root, slide = workspace
    out = tmp_path / "out"
    other = {"id": "slide", "organ": "kidney", "img_height": 256, "img_width": 256, "rle": "1 5"}
    import training.inference.outputs

    real_write_json = training.inference.outputs.write_json

    def write_json_while_another_finishes(*args, **kwargs):
        upsert_row(out, other)  # the other run, done just before this one writes its row
        real_write_json(*args, **kwargs)

    monkeypatch.setattr(training.inference.outputs, "write_json", write_json_while_another_finishes)
    assert main(segment(slide, root / "model.pt", out, "--geojson")) == 1
    assert list(read_catalog(out, check_images=False)["rle"]) == ["1 5"]  # the other run's row
    assert not (out / "train.backup.csv").exists()  # was never replaced
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("napari-ftu segment: error: ")
    for part in ("row slide was written by another run", "only its slide.geojson", "--overwrite"):
        assert part in line


# --- checkpoints and pixel sizes that would exhaust memory -------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("pixel_size_um", 1e-9),
        ("pixel_size_um", 1e9),
        ("pixel_size_um", 1e-3),
        ("tile_size", 2**20),
        ("tile_size", 8192),
    ],
)
def test_a_checkpoint_with_an_absurd_scale_is_refused_at_load(workspace, tmp_path, field, value):
    root, _ = workspace
    payload = read_checkpoint(root / "model.pt")
    payload["meta"] = {**payload["meta"], field: value}
    torch.save(payload, tmp_path / "crafted.pt")
    with pytest.raises(CheckpointError, match=rf"crafted\.pt: meta\.{field} must be .*{value!r}"):
        load_checkpoint(tmp_path / "crafted.pt")


def test_pixel_sizes_far_apart_are_refused_before_any_allocation(monkeypatch):
    """A slide at 50 um/px under a model at 0.1 um/px would be a 32000 px square map of
    hundreds of thousands of tiles: refused with both pixel sizes, no output is made."""
    import training.inference.engine

    def no_output(*args, **kwargs):
        raise AssertionError("an output map was allocated")

    monkeypatch.setattr(training.inference.engine, "OutputStore", no_output)
    slide = Slide.from_array(np.full((64, 64, 3), 200, np.uint8), 50.0, name="coarse.png")
    model = build_model("swin_micro_upernet", input_size=64).eval()
    with pytest.raises(ValueError, match=r"coarse\.png: .*50 um/px .* 0\.1 um/px differ 500-fold"):
        run(slide, member(model, pixel_size=0.1), "kidney", detect_tissue=False)


def test_a_grid_of_billions_of_tiles_is_refused_before_its_lists_are_built():
    started = time.perf_counter()
    with pytest.raises(ValueError, match=r"at 100 um/px read at the model's 1 um/px .* tiles"):
        plan_tiles((200_000, 200_000), 100.0, 64, 0.25, 1.0)
    assert time.perf_counter() - started < 1


# --- a slide header far larger than its pixels -------------------------------------------------


def sparse_tiff(path: Path, side: int, pixel_size_um: float) -> Path:
    """A tiled TIFF whose header says ``side`` px square with only two tiles stored."""
    tile = 256
    count = -(-side // tile)
    stored = {(0, 0), (count // 2, count // 2)}
    rng = np.random.default_rng(0)
    tiles = (
        rng.integers(0, 255, (tile, tile, 3), np.uint8) if (i, j) in stored else None
        for i in range(count)
        for j in range(count)
    )
    per_cm = 1e4 / pixel_size_um
    tifffile.imwrite(
        path,
        tiles,
        shape=(side, side, 3),
        dtype=np.uint8,
        tile=(tile, tile),
        photometric="rgb",
        bigtiff=True,
        resolution=(per_cm, per_cm),
        resolutionunit="CENTIMETER",
    )
    return path


def limit_memory(limit: int):
    """A ``preexec_fn`` that caps the child's address space at ``limit`` bytes."""
    return lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


@pytest.mark.slow
def test_a_huge_header_is_stated_and_refused_when_its_map_cannot_fit(workspace, tmp_path):
    root, _ = workspace
    slide = sparse_tiff(tmp_path / "huge.tiff", 200_000, 0.5)
    command = [
        sys.executable,
        "-m",
        "napari_ftu.cli",
        *segment(slide, root / "model.pt", tmp_path / "out"),
    ]
    started = time.perf_counter()
    done = subprocess.run(
        command,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=limit_memory(4 * 2**30),
    )
    assert time.perf_counter() - started < 60
    assert done.returncode == 1, done.stderr
    (line,) = done.stderr.splitlines()
    assert "huge.tiff: 200000 x 200000 px at 0.5 um/px (100 x 100 mm)" in line
    assert "62500 x 62500 px map" in line and "this process may use 4.0 GB" in line


# --- partial outputs of a killed run -----------------------------------------------------------


@pytest.mark.slow
def test_sigterm_removes_the_partial_map(workspace, tmp_path):
    """A run whose map goes to disk (12000 px square: over the 512 MB kept in memory) is
    terminated while it runs: it exits 143 and leaves nothing in the temporary folder."""
    root, _ = workspace
    rng = np.random.default_rng(0)
    slide = write_pyramid(
        tmp_path / "coarse.tiff", rng.integers(0, 255, (1200, 1200, 3), np.uint8), 16.0, tile=256
    )
    temp = tmp_path / "tmp"
    temp.mkdir()
    command = [
        sys.executable,
        "-m",
        "napari_ftu.cli",
        *segment(slide, root / "model.pt", tmp_path / "out", "--no-tissue-detection"),
    ]
    child = subprocess.Popen(command, env=cli_env(TMPDIR=str(temp)), stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not list(temp.glob(f"{TEMP_PREFIX}*/.partial-*.zarr")):
            assert child.poll() is None and time.monotonic() < deadline, "no partial map seen"
            time.sleep(0.2)
        child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
        child.kill()
        child.wait()
    assert not list(temp.glob(f"{TEMP_PREFIX}*"))


def test_maps_left_by_a_killed_process_are_removed_on_the_next_start(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    # a process that made a map on disk and died without cleaning up (SIGKILL, a power cut)
    code = (
        "import os; from training.inference.store import OutputStore; "
        "store = OutputStore((64, 64), memory_limit_mb=0); os._exit(0)"
    )
    subprocess.run([sys.executable, "-c", code], env=cli_env(TMPDIR=str(tmp_path)), check=True)
    (stale,) = tmp_path.glob(f"{TEMP_PREFIX}*")
    assert list(stale.glob(".partial-*.zarr")) and (stale / OWNER_LOCK).exists()
    unrelated = tmp_path / f"{TEMP_PREFIX}someone-else"  # no lock file: not the engine's
    unrelated.mkdir()

    live = OutputStore((64, 64), memory_limit_mb=0)  # the next map made on disk
    assert not stale.exists() and unrelated.is_dir()
    (mine,) = (p for p in tmp_path.glob(f"{TEMP_PREFIX}*") if p != unrelated)
    OutputStore((64, 64), memory_limit_mb=0).discard()  # a live process's map is kept
    assert mine.is_dir()
    live.discard()
    assert not mine.exists()


# --- GeoJSON nested deeper than any GeoJSON ----------------------------------------------------


def test_deeply_nested_geojson_is_one_clear_error(tmp_path, capsys):
    depth = 100_000
    path = tmp_path / "deep.geojson"
    path.write_text(
        '{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": '
        + "[" * depth
        + "]" * depth
        + "}}"
    )
    with pytest.raises(GeoJSONError, match=r"deep\.geojson: JSON nested too deeply"):
        rasterize(path, (64, 64))
    image = tmp_path / "image.png"
    from PIL import Image

    Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(image)
    status = import_geojson(
        [
            str(image),
            str(path),
            "--out",
            str(tmp_path / "data"),
            "--organ",
            "kidney",
            "--pixel-size",
            "0.5",
        ]
    )
    assert status == 2
    (line,) = error_lines(capsys)
    assert "deep.geojson: JSON nested too deeply" in line


# --- training: numbers checked before any work, from the command line or --config --------------


@pytest.mark.parametrize(
    ("given", "says"),
    [
        (["--lr", "nan"], "--lr must be a positive number up to 10; got nan"),
        (["--pixel-size", "1e9"], "--pixel-size must be 0.01 to 100 um/px; got 1000000000.0"),
        (["--tile", "100000"], "--tile must be 32 to 4096 px; got 100000"),
        (["--val-fraction", "1"], "--val-fraction must be in [0, 1); got 1.0"),
        (["--dice", "inf"], "--dice must be a finite number >= 0; got inf"),
        ("lr: .nan\n", "--lr must be a positive number up to 10; got nan"),
    ],
)
def test_training_numbers_are_refused_before_any_work(tmp_path, capsys, given, says):
    from training.train import main as train

    argv = [
        "--data",
        str(tmp_path / "data"),
        "--model",
        "swin_micro_upernet",
        "--out",
        str(tmp_path / "run"),
    ]
    if isinstance(given, str):  # a YAML --config, whose values argparse's types never see
        (tmp_path / "config.yaml").write_text(given)
        argv += ["--config", str(tmp_path / "config.yaml")]
    else:
        argv += given
    with pytest.raises(SystemExit) as stop:
        train(argv)
    assert stop.value.code == 2
    assert says in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
