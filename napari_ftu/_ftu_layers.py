"""The FTU layers of an image: the probability layer filling in during a run, the probability
and mask layers of a session, laid exactly over the slide, and sessions restored from disk.

No Qt here but :func:`_ask` (the question whether to restore a damaged store's earlier save):
these functions take a napari viewer and its layers, and run on the main thread.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from napari_ftu import _placement

SESSION_KEY = "napari_ftu_session"  # the mask layer's metadata key for its FTUSession
LEVEL0_KEY = "napari_ftu_level0_shape"  # and for its image's level-0 (H, W), for exports
# the probability layer is subsampled above this: it is a picture of the map (thresholds use
# the map itself), and a smaller texture keeps the viewer responsive when it changes
DISPLAY_MAX_SIDE = 2048
PROBABILITY_STYLE = {"colormap": "magma", "opacity": 0.5, "contrast_limits": (0, 1)}


def probability_name(image: str) -> str:
    """The probability layer's name for an image layer."""
    return f"{image} FTU probability"


def mask_name(image: str) -> str:
    """The FTU mask layer's name for an image layer."""
    return f"{image} FTU mask"


def mask_layer_names(viewer: Any) -> list[str]:
    """The names of the viewer's FTU mask layers (those holding a session)."""
    return [
        layer.name
        for layer in viewer.layers
        if layer._type_string == "labels" and SESSION_KEY in (layer.metadata or {})
    ]


def session_of(viewer: Any, image: str) -> Any:
    """The FTU session of an image layer (kept by its mask layer), or ``None``."""
    name = mask_name(image)
    return viewer.layers[name].metadata.get(SESSION_KEY) if name in viewer.layers else None


def display_step(shape: tuple[int, int]) -> int:
    """The subsampling that keeps a probability layer's long side within DISPLAY_MAX_SIDE."""
    return max(1, math.ceil(max(shape) / DISPLAY_MAX_SIDE))


def level0(layer: Any) -> Any:
    """An image layer's full-resolution level (lazy when the layer is)."""
    return layer.data[0] if layer.multiscale else layer.data


def level0_shape(layer: Any) -> tuple[int, int]:
    """The (H, W) of an image layer's full-resolution level."""
    return tuple(level0(layer).shape[:2])


class Preview:
    """The probability layer that fills in band by band while a run goes on."""

    def __init__(self, viewer: Any, image: Any) -> None:
        self.viewer, self.image = viewer, image
        self.layer: Any = None

    def show(self, band: Any, image_pixel_size_um: float) -> None:
        """Write a band of finished rows (subsampled like the final layer)."""
        step = display_step(band.map_shape)
        if self.layer is None:
            shape = tuple(math.ceil(s / step) for s in band.map_shape)
            downsample = band.pixel_size_um / image_pixel_size_um
            scale, translate = _placement.overlay(
                self.image.scale, self.image.translate, downsample, band.origin
            )
            self.layer = self.viewer.add_image(
                np.zeros(shape, np.float32),
                name=f"{probability_name(self.image.name)} (running)",
                scale=tuple(s * step for s in scale),
                translate=translate,
                units=self.image.units,
                blending="additive",
                **PROBABILITY_STYLE,
            )
        first = -(-band.y0 // step) * step  # the first row of the band on the display grid
        rows = band.values[first - band.y0 :: step, ::step]
        self.layer.data[first // step : first // step + len(rows)] = rows
        self.layer.refresh()

    def take(self) -> Any:
        """Hand the layer over (to become the result's); ``None`` when there is none."""
        layer, self.layer = self.layer, None
        return layer if layer is not None and layer in self.viewer.layers else None

    def remove(self) -> None:
        """Remove the layer (a cancelled or failed run leaves none)."""
        layer = self.take()
        if layer is not None:
            self.viewer.layers.remove(layer)


def show_session(viewer: Any, image: Any, session: Any, preview: Preview | None = None) -> Any:
    """Add or refresh the probability and mask layers of ``session`` over the image layer; the
    preview's layer, if any, becomes the probability layer. Returns the mask layer."""
    show_probability(viewer, image, session, preview)
    return show_mask(viewer, image, session)


def show_probability(viewer: Any, image: Any, session: Any, preview: Preview | None = None) -> Any:
    """Add or refresh the session's probability layer (the preview's layer, if any, becomes
    it: no remove and add, which both stall the event loop on large images)."""
    scale, translate = _placement.overlay(image.scale, image.translate, session.grid.downsample)
    name = probability_name(session.name)
    step = display_step(session.grid.shape)
    shown = session.probability[::step, ::step]
    shown = np.asarray(shown) if step > 1 or not isinstance(shown, np.ndarray) else shown
    # a subsampled pixel is its block's first: the same origin, a larger scale
    placement = {"scale": tuple(s * step for s in scale), "translate": translate}
    taken = preview.take() if preview is not None else None
    if name in viewer.layers:
        viewer.layers[name].data = shown
        if taken is not None:
            viewer.layers.remove(taken)
        return viewer.layers[name]
    if taken is not None:
        taken.data = shown
        taken.scale, taken.translate = placement["scale"], placement["translate"]
        taken.name = name
        return taken
    return viewer.add_image(
        shown, name=name, units=image.units, blending="additive", **placement, **PROBABILITY_STYLE
    )


def show_mask(viewer: Any, image: Any, session: Any) -> Any:
    """Add or refresh the session's FTU mask layer; returns it."""
    name = mask_name(session.name)
    if name in viewer.layers:
        mask = viewer.layers[name]
        if not session.grid.direct_edit:
            mask.data = session.mask_data()
        mask.refresh()
        return mask
    scale, translate = _placement.overlay(image.scale, image.translate, session.grid.downsample)
    mask = viewer.add_labels(
        session.mask_data(),
        name=name,
        opacity=0.5,
        scale=scale,
        translate=translate,
        units=image.units,
        metadata={SESSION_KEY: session, LEVEL0_KEY: level0_shape(image)},
    )
    mask.editable = session.grid.direct_edit  # a large mask is an overview: "Review region"
    from napari_ftu._measure_layer import tracker

    tracker(viewer, mask)  # its features: the objects' measurements (in a worker)
    return mask


def show_imported(
    viewer: Any, image: Any, labels: np.ndarray, grid: Any, organ: str, source: str
) -> Any:
    """Lay imported ``labels`` (on ``grid``: :func:`import_grid_of`) over the image layer as an
    editable FTU session, placed like a model's; returns the mask layer. An image that already
    has an FTU mask layer is refused (``ValueError``)."""
    from training.review.session import FTUSession

    if mask_name(image.name) in viewer.layers:
        raise ValueError(
            f"{image.name!r} already has the layer {mask_name(image.name)!r}; remove it (its "
            "saved edits stay on disk) or import onto another image layer"
        )
    session = FTUSession.from_labels(image.name, organ, grid, labels, source)
    return show_session(viewer, image, session)


def import_grid_of(image: Any) -> Any:
    """The grid a mask imported onto an image layer is edited on (see ``import_grid``)."""
    from training.review.session import import_grid

    return import_grid(level0_shape(image), image_pixel_size(image))


def image_pixel_size(image: Any) -> float:
    """Micrometres per level-0 pixel of an image layer: its metadata's, else its scale (the
    reader scales slides in micrometres; 1 for a layer in plain pixels)."""
    size = (image.metadata or {}).get("pixel_size_um")
    return float(size) if size else float(image.scale[-1])


def new_session(image: Any, result: Any, grid: Any) -> Any:
    """A session for an image layer at the run's threshold and minimum area, with a mask store
    beside its slide file (or in a temporary folder for an image without a file whose mask is
    too large to keep in memory)."""
    from training.review.session import FTUSession
    from training.review.store import MaskStore, slide_identity, store_location

    path = (image.metadata or {}).get("path")
    store = None
    if path:
        location, identity = store_location(path), slide_identity(path)
        if location.exists():
            open_checked(location, identity)  # a damaged store is set aside, never written to
        store = MaskStore.open_or_create(
            location, grid.shape, grid.pixel_size_um, grid.downsample, identity
        )
    elif not grid.direct_edit:
        location = Path(tempfile.mkdtemp(prefix="napari-ftu-mask-")) / "mask.ftu.zarr"
        store = MaskStore.create(location, grid.shape, grid.pixel_size_um, grid.downsample, {})
    return FTUSession(image.name, result.organ, grid, result.threshold, result.min_area_um2, store)


def saved_session(image: Any) -> Any:
    """The session saved beside an image layer's slide file, or ``None`` when there is none;
    ``ValueError``/``OSError`` for a store that cannot be used (made for another version of the
    file, damaged)."""
    from training.review.session import FTUSession
    from training.review.store import slide_identity, store_location

    path = (image.metadata or {}).get("path")
    if not path:
        return None
    location = store_location(path)
    if not location.exists():
        return None
    store = open_checked(location, slide_identity(path))
    _check_covers(store, level0_shape(image))
    return FTUSession.restore(image.name, store) if store.has_model else None


def open_checked(location: Path, identity: dict[str, Any]) -> Any:
    """The mask store at ``location`` opened for the slide of ``identity`` (``slide_identity``),
    every chunk read once. A damaged one (a chunk missing or unreadable) is moved aside,
    renamed and never deleted, so the next run starts a fresh store: ``MaskStoreError`` says
    what was damaged and where the store went. When only the latest save is damaged and the
    store holds the complete save before it, the user is asked whether to restore that one
    (the damaged store is copied aside first)."""
    from training.review.store import MaskStore, MaskStoreDamaged, MaskStoreError, set_aside

    try:
        store = MaskStore.open(location, identity)
        store.verify()
    except MaskStoreDamaged as exc:
        restored = _restore_previous(location, identity, exc)
        if restored is not None:
            return restored
        try:
            aside = f"it was moved to {set_aside(location)} (nothing deleted)"
        except OSError as error:
            aside = f"it could not be moved aside ({error}); move it away by hand"
        raise MaskStoreError(f"{exc}; {aside}; segment the slide again to start afresh") from exc
    return store


def _restore_previous(location: Path, identity: dict[str, Any], damage: Any) -> Any:
    """The store at ``location`` switched back to its earlier save when it has a complete one
    and the user agrees (after the damaged store is copied aside), else ``None``."""
    from training.review.location import copy_aside
    from training.review.store import MaskStore, MaskStoreError

    previous = MaskStore.previous_save(location, identity)
    if previous is None:
        return None
    try:
        copy = copy_aside(location)
    except (OSError, MaskStoreError):  # no room for the evidence: not offered, moved aside
        return None
    where = f"{damage.array} chunk {damage.chunk}" if damage.chunk else damage.array or "metadata"
    question = (
        f"The mask store of {Path(identity.get('path', location)).name} is damaged ({where}). "
        f"Restore the save before the latest one? The damaged store was copied to {copy}."
    )
    if not _ask(question):
        shutil.rmtree(copy)  # our copy only: the store itself is moved aside to the same name
        return None
    previous.restore_previous()
    store = MaskStore.open(location, identity)
    store.verify()
    _warn(
        f"napari-ftu: the mask store {location} was damaged ({where}); the save before the "
        f"latest one was restored, edits made since then are lost. The damaged store was "
        f"copied to {copy}."
    )
    return store


def _ask(question: str) -> bool:
    """Ask a yes/no question (a Qt question box; tests replace it)."""
    from qtpy.QtWidgets import QMessageBox

    answer = QMessageBox.question(
        None,
        "napari-ftu",
        question,
        QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
        QMessageBox.StandardButton.Yes,
    )
    return answer == QMessageBox.StandardButton.Yes


def _warn(message: str) -> None:
    from napari.utils.notifications import show_warning

    show_warning(message)


def _check_covers(store: Any, shape: tuple[int, int]) -> None:
    """``ValueError`` unless the store's grid covers the slide's level 0 (``shape``): a store
    written by a region run before issue 21 was fixed had the working grid's shape with a
    downsample of 1, and would be drawn at the image's scale."""
    covered = [side * store.downsample for side in store.shape]
    slack = 1e-6 * max(shape)  # the downsample is a ratio of pixel sizes, rounded
    if any(
        not s - slack <= c < s + store.downsample + slack
        for s, c in zip(shape, covered, strict=True)
    ):
        raise ValueError(
            f"the mask store {store.location} was made for another grid ({store.shape} pixels "
            f"of {store.downsample:g} level-0 pixels each, the slide is {shape}); remove it to "
            "segment the slide again"
        )
