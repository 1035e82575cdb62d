"""Region review: a crop of a large FTU mask opened as an editable, full-resolution Labels layer.

napari cannot paint a multiscale Labels layer, and a whole-slide single-scale one paints slowly
with fill tools that work on the whole plane; so a large mask is shown as a read-only overview
and edited a region at a time. "Apply" writes the crop back through the session (into the
slide's mask store on disk), then the overview refreshes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

Box = tuple[int, int, int, int]


class RegionEditor:
    """One region layer: where it sits in the mask and the crop as last read or applied.

    The layer stays open after "Apply" and moves to the next region when asked, so reviewing
    region after region adds and removes no layers (both stall the viewer on large data).
    """

    def __init__(self, viewer: Any, mask: Any, session: Any, box: Box, layer: Any) -> None:
        self.viewer = viewer
        self.mask = mask
        self.session = session
        self.box = box
        self.layer = layer
        self.old = np.array(layer.data, copy=True)

    @classmethod
    def open(cls, viewer: Any, mask: Any, session: Any, box: Box) -> RegionEditor:
        """Read ``box`` (working pixels ``y, x, h, w``) of the session's labels into a new
        editable layer laid exactly over the mask."""
        layer = viewer.add_labels(
            session.read_labels(box),
            name=f"{mask.name} (region)",
            scale=tuple(np.asarray(mask.scale)[-2:]),
            translate=_translate(mask, box),
            units=mask.units,
            opacity=0.7,
        )
        layer.mode = "paint"
        viewer.layers.selection.active = layer
        return cls(viewer, mask, session, box, layer)

    @property
    def dirty(self) -> bool:
        """Whether the region holds edits not yet applied."""
        return not np.array_equal(np.asarray(self.layer.data), self.old)

    def move_to(self, box: Box) -> None:
        """Show another region in the same layer; refused while edits are unapplied."""
        if self.dirty:
            raise ValueError("the open region has edits that are not applied: apply them first")
        crop = self.session.read_labels(box)
        self.box = box
        self.layer.data = crop
        self.layer.translate = _translate(self.mask, box)
        self.old = np.array(crop, copy=True)
        self.viewer.layers.selection.active = self.layer

    def apply(self) -> int:
        """Write the region back (objects painted in it get mask-wide ids), refresh the mask;
        returns how many pixels changed. The region stays open."""
        y, x, _, _ = self.box
        new = np.asarray(self.layer.data)
        changed = int(np.count_nonzero(new != self.old))
        if not changed:
            return 0
        written = self.session.write_labels(y, x, new, self.old)
        if not np.array_equal(written, new):  # new objects were renumbered
            self.layer.data = written
        self.old = np.array(written, copy=True)
        self.mask.refresh()
        return changed

    def close(self) -> None:
        """Remove the region layer (unapplied edits are dropped)."""
        if self.layer in self.viewer.layers:
            self.viewer.layers.remove(self.layer)


def _translate(mask: Any, box: Box) -> tuple[float, float]:
    scale = np.asarray(mask.scale)[-2:]
    return tuple((np.asarray(mask.translate)[-2:] + scale * box[:2]).tolist())
