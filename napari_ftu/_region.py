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
    """One open region: its layer, where it sits in the mask, and the crop as it was read."""

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
        y, x, _, _ = box
        crop = session.read_labels(box)
        scale = np.asarray(mask.scale)[-2:]
        translate = np.asarray(mask.translate)[-2:] + scale * (y, x)
        layer = viewer.add_labels(
            crop,
            name=f"{mask.name} (region)",
            scale=tuple(scale),
            translate=tuple(translate),
            units=mask.units,
            opacity=0.7,
        )
        layer.mode = "paint"
        viewer.layers.selection.active = layer
        return cls(viewer, mask, session, box, layer)

    def apply(self) -> int:
        """Write the region back (new objects get slide-wide ids), refresh the overview, close
        the region layer; returns how many pixels changed."""
        y, x, _, _ = self.box
        new = np.asarray(self.layer.data)
        changed = int(np.count_nonzero(new != self.old))
        self.session.write_labels(y, x, new, self.old)
        self.mask.refresh()
        self.close()
        return changed

    def close(self) -> None:
        """Remove the region layer (unapplied edits are dropped)."""
        if self.layer in self.viewer.layers:
            self.viewer.layers.remove(self.layer)
