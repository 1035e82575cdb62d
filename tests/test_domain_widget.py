"""The domain check in the "Segment FTUs" widget: a warning after a run on a slide unlike the
model's training data, and nothing after a run on one like it."""

from __future__ import annotations

import pytest
from test_domain import PAS_VECTORS, bare, described_copy, phantom_folder  # noqa: F401 (bare)

from napari_ftu._segment_widget import SegmentWidget
from training.slides import write_pyramid
from training.synthetic import make_phantom

pytestmark = pytest.mark.gui
WARNING = (
    "this slide's stain is unlike anything the model was trained on: review the result, or "
    "adapt the model"
)


@pytest.fixture(scope="module")
def described(bare, tmp_path_factory):  # noqa: F811 (the fixture imported above)
    root = tmp_path_factory.mktemp("domain_widget")
    return described_copy(bare, phantom_folder(root / "hpa"), root / "coat.pt")


@pytest.fixture
def warnings(monkeypatch):
    import napari.utils.notifications

    shown: list[str] = []
    monkeypatch.setattr(napari.utils.notifications, "show_warning", shown.append)
    return shown


def segment(make_napari_viewer, qtbot, path, model):
    viewer = make_napari_viewer()
    viewer.open(str(path), plugin="napari-ftu")
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Segment FTUs")
    widget.organ.value = "kidney"
    widget.add_model(model)
    widget.start()
    qtbot.waitUntil(lambda: not widget.running, timeout=180_000)
    return widget


@pytest.mark.parametrize("stained", ["hpa", "pas"])
def test_the_widget_warns_after_a_run_on_a_far_slide_only(
    make_napari_viewer, qtbot, tmp_path, described, warnings, stained
):
    overrides = {"stain_vectors": PAS_VECTORS} if stained == "pas" else {}
    image = make_phantom("kidney", "hpa", 1024, 9, **overrides)[0]
    path = write_pyramid(tmp_path / f"{stained}.tiff", image, 0.4)
    widget = segment(make_napari_viewer, qtbot, path, described)
    assert widget.status.value.startswith("FTUs: ")  # the run went through
    assert "domain distance" in widget.notes.tooltip
    if stained == "hpa":
        assert widget.notes.value == "" and widget.notes.native.isHidden()
        assert not warnings
    else:
        assert widget.notes.value == f"⚠ {WARNING}" and not widget.notes.native.isHidden()
        assert warnings == [f"Segment FTUs: {path.stem}: {WARNING}"]
        widget.start()  # a new run clears the old warning until its own check
        assert widget.notes.value == ""
        qtbot.waitUntil(lambda: not widget.running, timeout=180_000)
        assert widget.notes.value == f"⚠ {WARNING}"
