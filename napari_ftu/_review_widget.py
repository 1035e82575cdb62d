"""The "Review FTUs" dock widget: a review queue (doubtful objects first), correction helpers
with keyboard shortcuts, and region review for masks too large to edit whole.

Every correction is one ``Labels.data_setitem`` call, so napari's undo (Ctrl+Z) takes it back.
The computing is in :mod:`training.review`; this module moves the camera and edits layers.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from magicgui.widgets import ComboBox, Container, FloatSpinBox, Label, PushButton

from napari_ftu import _placement
from napari_ftu._ftu_layers import SESSION_KEY, mask_layer_names
from napari_ftu._geometry import camera_of
from napari_ftu._segment_widget import _screen_corners

# (shortcut, method name, what it does): bound on every FTU mask and region layer
SHORTCUTS = (
    ("Shift-X", "delete_under_cursor", "delete the object under the cursor"),
    ("Shift-M", "merge_under_cursor", "merge the object under the cursor into the selected label"),
    ("Shift-H", "fill_holes", "fill the holes inside every object"),
    ("Shift-S", "remove_small", "remove objects smaller than the minimum area"),
    ("Shift-R", "relabel", "number the objects 1..N"),
)
REGION_SUFFIX = " (region)"


class ReviewWidget(Container):
    """Review and correct the FTU mask of an image: queue, helpers, region review."""

    def __init__(self, napari_viewer: Any) -> None:
        self.viewer = napari_viewer
        self.mask = ComboBox(label="FTU mask", choices=self._mask_choices)
        self.build_button = PushButton(text="Queue doubtful objects")
        self.position = Label(value="no queue")
        self.previous_button = PushButton(text="< Previous")
        self.next_button = PushButton(text="Next >")
        self.accept_button = PushButton(text="Accept")
        self.reject_button = PushButton(text="Reject (remove)")
        navigation = Container(
            widgets=[self.previous_button, self.next_button], layout="horizontal", labels=False
        )
        decisions = Container(
            widgets=[self.accept_button, self.reject_button], layout="horizontal", labels=False
        )
        self.min_area = FloatSpinBox(label="min area (um²)", min=0.0, max=1e7, step=100.0)
        helpers = []
        for key, method, text in SHORTCUTS:
            button = PushButton(text=f"{text[0].upper()}{text[1:]} [{key}]")
            button.changed.connect(lambda _=None, name=method: getattr(self, name)())
            helpers.append(button)
        self.region = ComboBox(label="region", choices=("field of view", "drawn rectangle"))
        self.review_region_button = PushButton(text="Review region")
        self.apply_button = PushButton(text="Apply region edits", enabled=False)
        self.close_button = PushButton(text="Close region", enabled=False)
        self.message = Label(value="")
        super().__init__(
            widgets=[
                self.mask, self.build_button,
                Container(widgets=[self.position], labels=False), navigation, decisions,
                self.min_area, *helpers, self.region, self.review_region_button,
                self.apply_button, self.close_button, self.message,
            ]
        )  # fmt: skip
        self.queue: Any = None
        self.editor: Any = None  # the open region review, if any
        self.mask.changed.connect(self._min_area_of_mask)
        self.build_button.changed.connect(self.build_queue)
        self.next_button.changed.connect(self.next)
        self.previous_button.changed.connect(self.previous)
        self.accept_button.changed.connect(self.accept)
        self.reject_button.changed.connect(self.reject)
        self.review_region_button.changed.connect(self.review_region)
        self.apply_button.changed.connect(self.apply_region)
        self.close_button.changed.connect(self.close_region)
        for event in (napari_viewer.layers.events.inserted, napari_viewer.layers.events.removed):
            event.connect(self._layers_changed)
        self._layers_changed()
        self._min_area_of_mask()

    # ------------------------------------------------------------------ layers
    def _mask_choices(self, _: Any = None) -> list[str]:
        return mask_layer_names(self.viewer)

    def _layers_changed(self, _: Any = None) -> None:
        self.mask.reset_choices()
        for layer in self.viewer.layers:
            if layer._type_string == "labels" and SESSION_KEY in (layer.metadata or {}):
                self._bind_shortcuts(layer)
                layer.events.set_data.connect(self._objects_back)  # once: napari dedups

    def _min_area_of_mask(self, _: Any = None) -> None:
        """Start "Remove small" at the mask's minimum area (at 0 it removed nothing): the one
        its objects were derived with, else (an imported mask) the default model's for the
        organ."""
        session = self.session()
        if session is not None:
            area = session.min_area_um2 or _default_min_area(session.organ)
            self.min_area.value = min(area, self.min_area.max)

    def _bind_shortcuts(self, layer: Any) -> None:
        for key, method, _ in SHORTCUTS:
            layer.bind_key(key, lambda _layer, name=method: getattr(self, name)(), overwrite=True)

    def mask_layer(self) -> Any:
        """The chosen FTU mask layer, or ``None``."""
        name = self.mask.value
        return self.viewer.layers[name] if name in self.viewer.layers else None  # noqa: SIM401

    def session(self) -> Any:
        """The chosen mask's FTU session, or ``None``."""
        layer = self.mask_layer()
        return None if layer is None else layer.metadata.get(SESSION_KEY)

    def target(self) -> Any:
        """The layer corrections apply to: the open region, else the mask when it is editable."""
        if self.editor is not None and self.editor.layer in self.viewer.layers:
            return self.editor.layer
        layer = self.mask_layer()
        return layer if layer is not None and layer.editable else None

    # ------------------------------------------------------------------ review queue
    def build_queue(self, _: Any = None) -> None:
        """Queue every object of the mask, the most doubtful first, and go to the first."""
        from training.review.queue import ReviewQueue, review_candidates

        session, layer = self.session(), self.mask_layer()
        if session is None:
            self._say("segment an image first")
            return
        # a large mask is read from its store once (the probability only object by object)
        labels = layer.data if layer.editable else session.store.labels_array()
        min_area_px = session.min_area_um2 / session.grid.pixel_size_um**2
        candidates = review_candidates(labels, session.probability, session.threshold, min_area_px)
        self.queue = ReviewQueue(candidates)
        self._go(self.queue.current)

    def next(self, _: Any = None) -> None:
        """Go to the next object in the queue."""
        if self.queue is not None:
            self._go(self.queue.next())

    def previous(self, _: Any = None) -> None:
        """Go to the previous object in the queue."""
        if self.queue is not None:
            self._go(self.queue.previous())

    def accept(self, _: Any = None) -> None:
        """Keep the current object and go to the next undecided one."""
        if self.queue is not None and self.queue.current is not None:
            self.queue.accept()
            self._go(self.queue.current)

    def reject(self, _: Any = None) -> None:
        """Remove the current object (one undo step) and go to the next undecided one."""
        if self.queue is None or self.queue.current is None:
            return
        rejected = self.queue.reject()
        self._remove(rejected)
        self._go(self.queue.current)

    def _remove(self, candidate: Any) -> None:
        from training.review.corrections import delete_object

        layer, session = self.mask_layer(), self.session()
        if layer.editable:
            self._apply(layer, delete_object(layer.data, candidate.label))
            return
        y0, x0, y1, x1 = candidate.bbox  # a large mask: through its store, in the object's box
        crop = session.read_labels((y0, x0, y1 - y0, x1 - x0))
        session.write_labels(y0, x0, np.where(crop == candidate.label, 0, crop), crop)
        layer.refresh()
        self._say(f"removed object {candidate.label} (saved)")

    def _objects_back(self, _: Any = None) -> None:
        """After an undo (napari emits no paint event for it, only ``set_data``): a rejected
        object whose pixels are back in the mask is undecided again, and the queue says so."""
        layer, queue = self.mask_layer(), self.queue
        if queue is None or layer is None or not layer.editable:
            return
        back = [c.label for c in queue.rejected() if _in_mask(layer.data, c)]
        for label in back:
            queue.undecide(label)
        if back:
            self._show_position(queue.current)

    def _go(self, candidate: Any) -> None:
        if candidate is None:
            self.position.value = "no objects to review"
            return
        layer = self.mask_layer()
        y0, x0, y1, x1 = candidate.bbox
        corners = np.array([layer.data_to_world((y0, x0)), layer.data_to_world((y1, x1))])
        size = np.abs(corners[1] - corners[0])[-2:].max() * 3
        camera_of(self.viewer).center = tuple(layer.data_to_world(candidate.centroid))
        camera_of(self.viewer).zoom = float(min(self.viewer.canvas.size)) / max(size, 1e-6)
        layer.selected_label = candidate.label
        self._show_position(candidate)

    def _show_position(self, candidate: Any) -> None:
        queue = self.queue
        if candidate is None:
            self.position.value = "no objects to review"
            return
        decision = queue.decisions.get(candidate.label, "undecided")
        self.position.value = (
            f"{queue.position + 1}/{len(queue)} · label {candidate.label} · {decision} · "
            f"{queue.undecided} left\nmean p {candidate.mean_probability:.2f} · "
            f"doubt {candidate.doubt:.2f}"
        )

    # ------------------------------------------------------------------ correction helpers
    def delete_under_cursor(self) -> None:
        """Delete the object under the mouse cursor."""
        from training.review.corrections import delete_object

        layer = self.target()
        if layer is not None:
            self._apply(layer, delete_object(layer.data, self._label_under_cursor(layer)))

    def merge_under_cursor(self) -> None:
        """Merge the object under the cursor into the layer's selected label."""
        from training.review.corrections import merge_objects

        layer = self.target()
        if layer is None:
            return
        other = self._label_under_cursor(layer)
        if other == 0 or layer.selected_label == 0:
            self._say("merge: select a label, then put the cursor on the object to merge into it")
            return
        self._apply(layer, merge_objects(layer.data, layer.selected_label, other))

    def fill_holes(self) -> None:
        """Fill the holes inside every object."""
        from training.review.corrections import fill_holes

        layer = self.target()
        if layer is not None:
            self._apply(layer, fill_holes(layer.data))

    def remove_small(self) -> None:
        """Remove objects under the minimum area."""
        from training.review.corrections import remove_small

        layer, session = self.target(), self.session()
        if layer is None or session is None:
            return
        min_area_px = float(self.min_area.value) / session.grid.pixel_size_um**2
        self._apply(layer, remove_small(layer.data, min_area_px))

    def relabel(self) -> None:
        """Number the objects 1..N (in a region: left as they are, ids are slide-wide)."""
        from training.review.corrections import relabel

        layer = self.target()
        if layer is not None and self.editor is None:
            self._apply(layer, relabel(layer.data))

    def _label_under_cursor(self, layer: Any) -> int:
        from training.review.corrections import label_at

        y, x = layer.world_to_data(self.viewer.cursor.position)[-2:]
        return label_at(layer.data, y, x)

    def _apply(self, layer: Any, change: Any) -> None:
        if change is None:
            self._say("nothing to change")
            return
        layer.data_setitem(change.indices, change.values)  # one undo step
        self._say(f"changed {len(change)} pixels (Ctrl+Z undoes it)")

    # ------------------------------------------------------------------ region review
    def review_region(self, _: Any = None) -> None:
        """Open the field of view (or a drawn rectangle) of a large mask as an editable layer."""
        from napari_ftu._region import RegionEditor

        session, layer = self.session(), self.mask_layer()
        if session is None:
            self._say("segment an image first")
            return
        corners = self._region_corners()
        if corners is None:
            return
        box = _placement.world_to_pixels(*corners, layer.scale, layer.translate, layer.data.shape)
        if box is None:
            self._say("the region does not cover the mask")
            return
        editor = self.editor
        if editor is not None and editor.layer in self.viewer.layers and editor.mask is layer:
            try:
                editor.move_to(box)
            except ValueError as exc:
                self._say(str(exc))
            return
        self.editor = RegionEditor.open(self.viewer, layer, session, box)
        self.apply_button.enabled = self.close_button.enabled = True
        self._bind_shortcuts(self.editor.layer)

    def apply_region(self, _: Any = None) -> None:
        """Write the region's edits into the slide's mask store and refresh the overview."""
        if self.editor is None:
            return
        written = self.editor.apply()
        self._say(f"region saved ({written} pixels changed)")

    def close_region(self, _: Any = None) -> None:
        """Close the region layer; edits not applied are dropped."""
        if self.editor is not None:
            self.editor.close()
        self.editor = None
        self.apply_button.enabled = self.close_button.enabled = False

    def _region_corners(self) -> tuple[np.ndarray, np.ndarray] | None:
        if self.region.value == "field of view":
            return _screen_corners(self.viewer)
        shapes = [layer for layer in self.viewer.layers if layer._type_string == "shapes"]
        corners = _placement.drawn_rectangle(shapes[-1] if shapes else None)
        if corners is None:
            self._say("draw a rectangle in a Shapes layer first")
        return corners

    def _say(self, text: str) -> None:
        self.message.value = text


def _in_mask(labels: Any, candidate: Any) -> bool:
    """Whether ``candidate``'s object has pixels in ``labels`` (looked for in its box)."""
    y0, x0, y1, x1 = candidate.bbox
    return bool((np.asarray(labels[y0:y1, x0:x1]) == candidate.label).any())


def _default_min_area(organ: str) -> float:
    """The bundled default model's minimum object area for ``organ`` (um²; 0 if it names none)."""
    import yaml

    from training.models.default import default_model_path

    manifest = yaml.safe_load(default_model_path().read_text()) or {}
    return float((manifest.get("min_area_um2") or {}).get(organ, 0.0))
