"""The mask store's layout on disk: its format and version, the arrays it holds, their chunks,
and the making of a new store's group.

``labels`` (the current labels, with the pathologist's edits) and ``model`` (the model's labels,
where -1 marks pixels a pathologist erased, remembered even where the model no longer finds an
object), both int32 at the working scale, chunks of 1024 x 1024, fill 0; ``probability``
(float32, the model's probability, so thresholds can be tuned after reopening); ``overview/1``,
``overview/2``, ... the labels downsampled 2x, 4x, ... (nearest neighbour) until the long side
is at most 1024 px, for a read-only multiscale Labels layer. Since version 3 the labels, the
model and the overview levels of generation 1 lie in the group ``generation1`` (see
:mod:`training.review.generations`). Attributes: ``format``, ``shape``, ``pixel_size_um`` (of
the working scale), ``downsample`` (level-0 px per working px), ``slide_identity``,
``settings`` (threshold, min area, ...), ``next_id``, ``has_model`` and ``generation``.

Since version 2 every chunk is written, empty ones too (``probability`` at creation, the labels
with the model), so a missing chunk is damage, never background.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "napari-ftu mask store"
VERSION = 3  # 2: every chunk written (a missing one is damage, not background); 3: generations
SECOND = "generation1"  # the group that holds generation 1
CHUNK = 1024
OVERVIEW_SIDE = 1024  # the smallest overview level's long side is at most this
ROWS = 1024  # rows per band when whole arrays are compared
ARRAYS = ("labels", "model")
PROBABILITY = "probability"
ERASED = -1  # in ``model``: a pixel the pathologist erased
EVERY_CHUNK = {"write_empty_chunks": True}  # zarr skips chunks of fill values by default


def overview_shapes(shape: tuple[int, int]) -> list[tuple[int, int]]:
    """The shapes of the overview levels 1, 2, ... for labels of ``shape`` (none when its long
    side is at most :data:`OVERVIEW_SIDE`)."""
    shapes = []
    step = 1
    while max(-(-shape[0] // step), -(-shape[1] // step)) > OVERVIEW_SIDE:
        step *= 2
        shapes.append((-(-shape[0] // step), -(-shape[1] // step)))
    return shapes


def array_path(name: str, generation: int) -> str:
    """Where the array ``name`` of ``generation`` lies in the group (the probability is kept
    once, at the top)."""
    return f"{SECOND}/{name}" if generation and name != PROBABILITY else name


def create_int_array(group: Any, name: str, shape: tuple[int, int], overwrite: bool = False) -> Any:
    """An int32 array of labels (fill 0, every chunk written) named ``name`` in ``group``."""
    chunks = (min(shape[0], CHUNK), min(shape[1], CHUNK))
    return group.create_array(
        name,
        shape=shape,
        chunks=chunks,
        dtype="int32",
        fill_value=0,
        config=EVERY_CHUNK,
        overwrite=overwrite,
    )


def create_group(folder: Path, shape: tuple[int, int], attrs: dict[str, Any]) -> None:
    """Make at ``folder`` (which must not exist) a store's group of labels of ``shape``: the
    labels, model and overview levels unwritten, every chunk of the probability written (0),
    and ``attrs`` (with the format and version) as its attributes."""
    import zarr

    group = zarr.open_group(str(folder), mode="w-")
    for name in ARRAYS:
        create_int_array(group, name, shape)
    chunks = (min(shape[0], CHUNK), min(shape[1], CHUNK))
    probability = group.create_array(
        PROBABILITY,
        shape=shape,
        chunks=chunks,
        dtype="float32",
        fill_value=0.0,
        config=EVERY_CHUNK,
    )
    for y in range(0, shape[0], ROWS):  # every chunk on disk from the start
        probability[y : y + ROWS] = np.zeros((min(ROWS, shape[0] - y), shape[1]), np.float32)
    overview = group.require_group("overview")
    for level, level_shape in enumerate(overview_shapes(shape), start=1):
        create_int_array(overview, str(level), level_shape)
    group.attrs.update({"format": FORMAT, "version": VERSION, **attrs})
