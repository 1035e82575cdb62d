"""The "Refine boundaries (BPR)" checkbox of Segment FTUs in a real viewer."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import tiny_checkpoint

from napari_ftu import _segment_widget
from napari_ftu._segment_widget import SegmentWidget, mask_name
from training.refine import build_refiner, save_refiner

pytestmark = pytest.mark.gui
RUN_TIMEOUT_MS = 120_000


@pytest.fixture
def models(tmp_path):
    """A tiny segmentation checkpoint (2 um/px), a refiner (1 um/px) and a manifest of both."""
    seg = tiny_checkpoint(tmp_path / "seg.pt")
    bpr = save_refiner(
        tmp_path / "bpr.pt", build_refiner(base=8), {"pixel_size_um": 1.0, "patch_size": 32}
    )
    manifest = tmp_path / "with_refiner.yaml"
    manifest.write_text("members:\n  - checkpoint: seg.pt\nrefiner: bpr.pt\n")
    return seg, bpr, manifest


@pytest.fixture
def opened(make_napari_viewer, monkeypatch):
    shown: list[str] = []
    monkeypatch.setattr(_segment_widget, "_show_error", shown.append)
    viewer = make_napari_viewer()
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:256, :256]
    disc = (yy - 128) ** 2 + (xx - 120) ** 2 <= 80**2
    image = np.where(disc[..., None], [90, 40, 120], [235, 220, 230]) + rng.normal(
        0, 8, (256, 256, 3)
    )
    layer = viewer.add_image(np.clip(image, 0, 255).astype(np.uint8), name="disc", rgb=True)
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Segment FTUs")
    widget.organ.value = "kidney"
    widget.pixel_size.value = "1.0"
    widget.device.value = "cpu"
    return viewer, widget, layer, shown


def run_and_watch(qtbot, widget) -> list[str]:
    """Click Segment FTUs, wait for the end; the progress messages of the run, and the
    progress bar's last total (tiles, plus patches when refined)."""
    seen: list[str] = []
    widget.start()  # events reach the main thread queued: none is missed by connecting now
    widget.worker.yielded.connect(lambda event: seen.append(event.message))
    qtbot.waitUntil(lambda: not widget.running, timeout=RUN_TIMEOUT_MS)
    return seen


def test_a_model_with_a_refiner_checks_the_box_and_its_run_refines(qtbot, opened, models):
    viewer, widget, _, shown = opened
    _, _, manifest = models
    widget.add_model(manifest)
    assert widget.refine.enabled_box.value and widget.refine.enabled_box.enabled
    assert widget.refine.file.native.isHidden() and "bpr.pt" in widget.refine.note.value
    seen = run_and_watch(qtbot, widget)
    assert shown == []
    assert any(line.startswith("refining boundaries: ") for line in seen), seen
    assert mask_name("disc") in viewer.layers

    widget.refine.enabled_box.value = False  # unchecked: the manifest's refiner is skipped
    viewer.layers.remove(mask_name("disc"))
    seen = run_and_watch(qtbot, widget)
    assert shown == [] and not any("refining" in line for line in seen)


def test_a_model_without_one_offers_a_file_and_asks_for_it(qtbot, opened, models):
    viewer, widget, _, shown = opened
    seg, bpr, _ = models
    widget.add_model(seg)
    assert not widget.refine.enabled_box.value and not widget.refine.file.native.isHidden()
    widget.refine.enabled_box.value = True
    widget.start()
    assert shown == [
        "Segment FTUs: Refine boundaries is checked but the model has no refiner; choose a "
        "refiner checkpoint (.pt) or uncheck it"
    ]
    assert not widget.running and mask_name("disc") not in viewer.layers
    widget.refine.file.value = bpr
    seen = run_and_watch(qtbot, widget)
    assert shown[1:] == []
    assert any(line.startswith("refining boundaries: ") for line in seen)
    assert mask_name("disc") in viewer.layers


def test_a_region_run_refines_with_patches_from_the_slide(models):
    """A region run (the engine's region, on the whole slide's grid) refines with patches
    read from the slide itself."""
    import threading

    from napari_ftu._segment_job import SegmentRequest, segment_job

    _, _, manifest = models
    image = np.full((256, 256, 3), 230, np.uint8)
    image[60:200, 50:190] = (90, 40, 120)
    request = SegmentRequest(
        image=image,
        pixel_size_um=1.0,
        organ="kidney",
        model=manifest,
        device="cpu",
        region=(20, 20, 220, 220),
    )
    job = segment_job(request, threading.Event())
    messages = []
    while True:
        try:
            messages.append(next(job).message)
        except StopIteration as stop:
            result = stop.value
            break
    assert any(m.startswith("refining boundaries: ") for m in messages)
    assert result.result.meta["refiner"].endswith("bpr.pt") and result.origin == (10, 10)
    result.result.close()
