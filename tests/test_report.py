"""Slide reports: the run record, the page's parts, ``napari-ftu segment --report`` and
``napari-ftu report`` end to end, and the report of a real kidney image opened in a real
headless browser (Chromium), whose screenshot is kept as docs/images/report_kidney.png with
NAPARI_FTU_DOCS_SCREENSHOTS=1."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from napari_ftu.cli import main
from training.models import build_model, save_checkpoint
from training.report import ReportError, read_run_record, run_ids, write_batch_report
from training.report.inputs import geojson_outlines, label_outlines, read_outlines
from training.report.write import confidence_ranks
from training.slides import write_pyramid
from training.synthetic import make_phantom

DOCS_IMAGES = Path(__file__).resolve().parents[1] / "docs" / "images"
KIDNEY_ID = "267"  # a held-out tile (kidney-test split) with six glomeruli, three at its edges


def segment(slides, model, out, *options: str) -> int:
    """``napari-ftu segment`` of kidney ``slides`` into ``out``, quiet."""
    args = ["segment", *map(str, slides), "--organ", "kidney", "--out", str(out), "--quiet"]
    return main([*args, *(["--model", str(model)] if model else []), *options])


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A ``segment --report`` run of two phantom slides by an untrained model (threshold 0: one
    object covering each slide, whatever the weights say) and the folder it wrote."""
    root = tmp_path_factory.mktemp("report")
    save_checkpoint(
        root / "model.pt", build_model("swin_micro_upernet", input_size=64), {"pixel_size_um": 1.6}
    )
    slides = []
    for seed in (0, 1):
        image, _, _ = make_phantom("kidney", size=256, seed=seed)
        slides.append(write_pyramid(root / f"slide{seed}.tiff", image, 0.4, tile=128))
    out = root / "out"
    options = ("--report", "--threshold", "0", "--no-tissue-detection")
    assert segment(slides, root / "model.pt", out, *options) == 0
    return root, slides, out


def test_segment_report_writes_the_record_the_pages_and_the_index(tiny_run):
    _, slides, out = tiny_run
    for slide in slides:
        image_id = slide.stem
        for name in ("run.json", "objects.csv", "geojson", "report.html", "report.png"):
            assert (out / f"{image_id}.{name}").is_file(), name
        record = read_run_record(out / f"{image_id}.run.json")
        assert record.slide == str(slide.resolve()) and record.organ == "kidney"
        assert record.settings["threshold"] == 0 and record.settings["tta"] == 1
        assert record.settings["tissue_detection"] is False and record.members
        assert record.working_pixel_size_um == pytest.approx(1.6)
        assert record.domain is not None and image_id in record.domain["line"]
        page = (out / f"{image_id}.report.html").read_text()
        assert "glomeruli" in page and "model.pt" in page
    index = (out / "report.html").read_text()
    assert 'href="slide0.report.html"' in index and 'href="slide1.report.html"' in index
    assert index.count('src="data:image/png;base64,') == 2  # a thumbnail per slide, embedded


def test_report_with_a_label_tiff_writes_no_geojson(tiny_run, tmp_path):
    root, slides, _ = tiny_run
    out = tmp_path / "out"
    options = ("--report", "--labels-tiff", "--threshold", "0", "--no-tissue-detection")
    assert segment(slides[1:], root / "model.pt", out, *options) == 0
    record = read_run_record(out / "slide1.run.json")
    assert record.outputs == {"objects": "slide1.objects.csv", "labels": "slide1.labels.tiff"}
    assert not (out / "slide1.geojson").exists() and (out / "slide1.report.html").is_file()
    assert segment(slides[1:], root / "model.pt", out, *options) == 2  # all refused up front


def test_report_of_a_slide_without_objects(tiny_run, tmp_path):
    root, slides, _ = tiny_run
    out = tmp_path / "out"
    options = ("--report", "--threshold", "1", "--no-tissue-detection")  # nothing passes 1
    assert segment(slides[:1], root / "model.pt", out, *options) == 0
    page = (out / "slide0.report.html").read_text()
    assert "No glomeruli found." in page and "<figure>" not in page
    assert "unknown (unknown–unknown)" in page  # no sizes to take percentiles of
    assert (out / "slide0.report.png").is_file()


def test_report_pages_are_self_contained(tiny_run):
    _, _, out = tiny_run
    page = (out / "slide0.report.html").read_text()
    sources = re.findall(r'src="([^"]*)"', page)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "<script" not in page.lower() and "http" not in page.replace("http-equiv", "")
    assert not re.search(r"url\(", page)  # no stylesheet pulls a file either


def test_report_command_remakes_reports_and_refuses_to_overwrite(tiny_run, tmp_path, capsys):
    *_, out = tiny_run
    folder = tmp_path / "copy"
    shutil.copytree(out, folder)
    for path in folder.glob("*report*"):
        path.unlink()
    assert main(["report", str(folder)]) == 0
    for name in ("slide0.report.html", "slide0.report.png", "slide1.report.html", "report.html"):
        assert (folder / name).is_file()
    with Image.open(folder / "slide0.report.png") as png:
        assert png.size == (1600, 1200)
    capsys.readouterr()
    assert main(["report", str(folder), "--ids", "slide0"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "slide0.report.html exists" in err[0] and "--overwrite" in err[0]
    assert main(["report", str(folder), "--ids", "slide0", "--overwrite"]) == 0


def test_report_command_needs_no_torch(tiny_run, tmp_path):
    # a report reads files and a slide: the model stack (seconds of imports) is not needed
    *_, out = tiny_run
    folder = tmp_path / "run"
    shutil.copytree(out, folder)
    code = (
        "import sys; from napari_ftu.cli import main; "
        f"status = main(['report', {str(folder)!r}, '--overwrite']); "
        "print(status, 'torch' in sys.modules)"
    )
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": root, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.stdout.split() == ["0", "False"], done.stderr


@pytest.mark.parametrize(
    "damage, message",
    [
        ("no folder", "no such folder"),
        ("no run", "no run record (*.run.json) here"),
        ("broken record", "not a readable run record"),
        ("other json", "not a napari-ftu run record"),
        ("moved slide", "is not there (moved?)"),
        ("another slide's record", "the record is of 'slide1'"),
        ("no objects", "no objects table of slide0"),
        ("no outlines", "no outlines of slide0"),
        ("unknown id", "no run of slide7 here"),
    ],
)
def test_report_command_bad_input_is_one_clear_line(tiny_run, tmp_path, capsys, damage, message):
    *_, out = tiny_run
    folder = tmp_path / "run"
    shutil.copytree(out, folder)
    for path in folder.glob("*report*"):
        path.unlink()
    record = folder / "slide0.run.json"
    args = ["report", str(folder), "--ids", "slide0"]
    if damage == "no folder":
        args[1] = str(tmp_path / "nowhere")
    elif damage == "no run":
        for path in folder.glob("*.run.json"):
            path.unlink()
    elif damage == "broken record":
        record.write_text("{")
    elif damage == "other json":
        record.write_text(json.dumps({"type": "FeatureCollection"}))
    elif damage == "moved slide":
        data = json.loads(record.read_text())
        record.write_text(json.dumps({**data, "slide": str(tmp_path / "gone.tiff")}))
    elif damage == "another slide's record":
        shutil.copy(folder / "slide1.run.json", record)
    elif damage == "no objects":
        (folder / "slide0.objects.csv").unlink()
    elif damage == "no outlines":  # nor a train.csv row to draw them from
        (folder / "slide0.geojson").unlink()
        (folder / "train.csv").unlink()
    elif damage == "unknown id":
        args[-1] = "slide7"
    status = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert status in (1, 2) and len(err) == 1, err
    assert err[0].startswith("napari-ftu report: error: ") and message in err[0]
    assert "Traceback" not in err[0]


def test_outlines_fall_back_to_the_train_csv_row(tiny_run):
    *_, out = tiny_run
    record = read_run_record(out / "slide0.run.json")
    from_geojson = read_outlines(out, record)
    record.outputs.pop("geojson")  # as after a run with --measure alone
    from_rle = read_outlines(out, record)
    assert from_geojson and sum(g.area for g in from_rle) == sum(g.area for g in from_geojson)


def test_outlines_from_the_label_tiff_match_the_geojson(tmp_path):
    from training.data.geojson_export import labels_to_geojson
    from training.report.record import RunRecord

    labels = np.zeros((40, 60), np.uint16)
    labels[5:15, 8:30] = 1
    labels[20:38, 40:55] = 2
    labels[25:30, 45:50] = 0  # a hole
    write_pyramid(tmp_path / "a.labels.tiff", labels, 2.0, labels=True)
    geojson = tmp_path / "a.geojson"
    geojson.write_text(json.dumps(labels_to_geojson(labels, 4.0, "kidney", shape=(160, 240))))
    record = RunRecord(
        "a", "a.tiff", 0.5, (160, 240), "kidney", "m.pt", [], {}, 2.0, {"labels": "a.labels.tiff"}
    )
    from_tiff = label_outlines(tmp_path / "a.labels.tiff", record)
    from_geojson = geojson_outlines(geojson)
    assert [g.area for g in from_tiff] == pytest.approx([g.area for g in from_geojson])
    assert [g.area for g in from_tiff] == pytest.approx([10 * 22 * 16, (18 * 15 - 25) * 16])


def test_confidence_ranks_leave_out_unknown_probabilities():
    objects = pd.DataFrame({"mean_probability": [0.9, np.nan, 0.5, 0.99, 0.7, 0.6]})
    assert confidence_ranks(objects, 2) == ([3, 0], [2, 5])
    assert confidence_ranks(objects, 4) == ([3, 0, 4, 5], [2])  # each object shown once
    assert confidence_ranks(objects.iloc[[1]], 4) == ([], [])


def test_run_ids_and_record_errors_name_the_file(tmp_path):
    with pytest.raises(ReportError, match="no run record"):
        run_ids(tmp_path)
    (tmp_path / "x.run.json").write_text(json.dumps({"format": "napari-ftu run", "version": 1}))
    assert run_ids(tmp_path) == ["x"]
    with pytest.raises(ReportError, match=r"x\.run\.json: run record lacks id, slide"):
        read_run_record(tmp_path / "x.run.json")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ReportError, match="no run record"):
        write_batch_report(empty)


def chromium() -> str | None:
    """The Chromium of Debian's packages (or another on the PATH), if installed."""
    return next(
        (shutil.which(n) for n in ("chromium", "chromium-browser") if shutil.which(n)), None
    )


def screenshot(page: Path, target: Path, size: tuple[int, int] = (1400, 1750)) -> np.ndarray:
    """Open ``page`` in headless Chromium and save a screenshot to ``target``."""
    browser = chromium()
    if browser is None:
        pytest.skip("no Chromium installed (Debian: apt-get install chromium)")
    profile = target.parent / ".chromium-profile"
    command = [
        browser,
        "--headless",
        "--no-sandbox",  # as root in a container Chromium refuses to start sandboxed
        "--disable-gpu",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        f"--window-size={size[0]},{size[1]}",
        f"--screenshot={target}",
        page.resolve().as_uri(),
    ]
    subprocess.run(command, check=True, capture_output=True, timeout=180)
    shutil.rmtree(profile, ignore_errors=True)
    with Image.open(target) as png:
        return np.asarray(png.convert("RGB"))


@pytest.mark.slow
def test_report_of_a_real_kidney_image_opens_in_a_browser(shared_data, tmp_path):
    slide = shared_data / "hubmap-kidney-pas" / "train_images" / f"{KIDNEY_ID}.tiff"
    if not slide.is_file():
        pytest.skip(f"{slide} is absent")
    if chromium() is None:
        pytest.skip("no Chromium installed (Debian: apt-get install chromium)")
    out = tmp_path / "run"
    assert segment([slide], None, out, "--report") == 0  # the default model
    page = out / f"{KIDNEY_ID}.report.html"
    text = page.read_text()
    assert "glomeruli" in text and "kidney_coat_daformer" in text and "domain distance" in text
    assert "napari-ftu default (small CPU ensemble) (ensemble.yaml)" in text  # the manifest name
    objects = pd.read_csv(out / f"{KIDNEY_ID}.objects.csv")
    assert 4 <= len(objects) <= 8  # six glomeruli outlined by the experts
    assert text.count("<figure>") == min(len(objects), 8)  # the most and least confident crops

    with Image.open(out / f"{KIDNEY_ID}.report.png") as png:  # the same content, one picture
        picture = np.asarray(png.convert("RGB"))
    assert len(np.unique(picture[::4, ::4].reshape(-1, 3), axis=0)) > 2000
    green = (picture[..., 0] < 40) & (picture[..., 1] > 170) & (picture[..., 2] < 40)
    assert green.sum() > 500

    folder = DOCS_IMAGES if os.environ.get("NAPARI_FTU_DOCS_SCREENSHOTS") else tmp_path
    shot = screenshot(page, folder / "report_kidney.png")
    assert shot.shape[:2] == (1750, 1400)
    assert shot.reshape(-1, 3).std(axis=0).min() > 30  # not a blank page
    colours = np.unique(shot[::4, ::4].reshape(-1, 3), axis=0)
    assert len(colours) > 2000  # the tissue pictures rendered, not only text
    outline = (shot[..., 0] < 40) & (shot[..., 1] > 170) & (shot[..., 2] < 40)
    assert outline.sum() > 500  # the glomerulus outlines are drawn on them


def test_page_parts_say_far_unknown_and_plural_plainly():
    from training.report.page import domain_block, number, plural, summary_items

    far = {"line": "s.tiff: domain distance 2.10 (stain 3.1); far: another stain", "far": True}
    assert 'class="warn"' in domain_block(far) and "Warning: s.tiff" in domain_block(far)
    assert 'class="ok"' in domain_block({**far, "far": False, "distance": 0.5})
    assert 'class="unknown"' in domain_block({"line": "distance unknown", "far": False})
    assert "not run" in domain_block(None)
    assert [number(v) for v in (float("nan"), None, 12.0, 0.0745, 12404.2)] == [
        "unknown",
        "unknown",
        "12",
        "0.0745",
        "12,404",
    ]
    assert [plural(f) for f in ("glomerulus", "crypt", "alveolus")] == [
        "glomeruli",
        "crypts",
        "alveoli",
    ]
    items = dict(summary_items({"ftu_count": 3, "tissue_area_mm2": float("nan")}, "crypt"))
    assert items["crypts"] == "3" and items["tissue area"] == "unknown"
    assert items["crypts per mm² of tissue"] == "unknown"


def test_batch_writers_record_and_report_a_finished_slide(tiny_run, tmp_path):
    # the writers a batch (training.inference.batch) calls with its SlideResult: a stand-in
    # with the same fields, over the tiny run's own outputs
    from types import SimpleNamespace

    from training.report.outputs import write_record, write_report_files
    from training.slides import open_slide

    _, slides, out = tiny_run
    folder = tmp_path / "run"
    shutil.copytree(out, folder)
    for path in [*folder.glob("*report*"), *folder.glob("*.run.json")]:
        path.unlink()
    written = read_run_record(out / "slide0.run.json")
    outputs = SimpleNamespace(names=lambda: ["geojson", "measure"])
    run = SimpleNamespace(overlap=0.25, tta=4, stain=SimpleNamespace(method="reinhard"))
    run.detect_tissue = False
    options = SimpleNamespace(
        out=folder, model=written.model, run=run, outputs=outputs, overwrite=False
    )
    options.threshold, options.min_area_um2 = None, 0.0
    result = SimpleNamespace(
        slide_shape=(256, 256), organ="kidney", pixel_size_um=1.6, threshold=0.5
    )
    result.min_area_um2, result.meta, result.region = 100.0, {}, None
    check = SimpleNamespace(line=lambda name: f"{name}: near", far=False, distance=0.5)
    members = [SimpleNamespace(name="m.pt")]
    with open_slide(slides[0]) as slide:
        done = SimpleNamespace(image_id="slide0", slide=slide, result=result, labels=None)
        done.options, done.members, done.check = options, members, check
        write_record(done, folder / "slide0.run.json")
        write_report_files(done, folder / "slide0.report.html")
    record = read_run_record(folder / "slide0.run.json")
    assert record.settings == {
        "threshold": 0.5,  # the model's, as the run applied it
        "min_area_um2": 0.0,
        "overlap": 0.25,
        "tta": 4,
        "stain": "reinhard",
        "tissue_detection": False,
        "refine": None,
    }
    assert record.outputs == {"objects": "slide0.objects.csv", "geojson": "slide0.geojson"}
    assert record.domain == {"line": "slide0.tiff: near", "far": False, "distance": 0.5}
    assert (folder / "slide0.report.html").is_file() and (folder / "slide0.report.png").is_file()
    with pytest.raises(FileExistsError):
        write_record(done, folder / "slide0.run.json")
