"""What a segmentation may ask of the machine, checked before anything is allocated.

A pixel size off by orders of magnitude (a checkpoint's, or one typed on the command line) or a
slide header far larger than its pixels turns the working grid into billions of tiles: the
planner's lists alone exhaust memory, or the run goes on for hours. Each check here refuses
such a run in one line that names the sizes involved.
"""

from __future__ import annotations

import math
import os
import resource
from pathlib import Path

# Slide and model pixel sizes differ at most this much: beyond it a model sees blurred blobs
# (upsampled) or a tile reads a region thousands of pixels wide (downsampled), and a pixel
# size 1000 times off is a wrong pixel size, not a slide.
MAX_PIXEL_SIZE_RATIO = 100.0
# Tiles a member's grid may hold: the planner keeps each one's position in Python lists and
# asks the tissue mask about it (about 4 million: a 200000 px square slide at full resolution
# with 256 px tiles needs 1.1 million).
MAX_TILES = 2**22
# Bytes per working pixel that labelling the whole map holds at once: int32 labels and a
# boolean mask (training.inference.postprocess.probability_to_labels).
LABEL_BYTES_PER_PX = 5


def check_pixel_sizes(slide_um: float, model_um: float, name: str) -> None:
    """Refuse (``ValueError``) pixel sizes that are not finite and positive or that differ more
    than ``MAX_PIXEL_SIZE_RATIO``-fold; ``name`` is the slide's, for the message."""
    for what, value in (("the slide's", slide_um), ("the model's", model_um)):
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name}: {what} pixel size must be a positive number; got {value}")
    ratio = max(slide_um / model_um, model_um / slide_um)
    if ratio > MAX_PIXEL_SIZE_RATIO:
        raise ValueError(
            f"{name}: the slide's pixel size {slide_um:g} um/px and the model's "
            f"{model_um:g} um/px differ {ratio:.3g}-fold (at most {MAX_PIXEL_SIZE_RATIO:g}); "
            "one of them is wrong (check --pixel-size / the slide's metadata / the checkpoint)"
        )


def check_map_fits(
    name: str, slide_shape: tuple[int, int], slide_um: float, map_shape: tuple[int, int]
) -> None:
    """Refuse (``ValueError``, naming the sizes) a working map whose labelling cannot fit in
    the memory this process may use (see :func:`memory_bytes`)."""
    need = map_shape[0] * map_shape[1] * LABEL_BYTES_PER_PX
    have = memory_bytes()
    if need > have:
        raise ValueError(
            f"{name}: {describe(slide_shape, slide_um)} makes a {map_shape[0]} x {map_shape[1]} "
            f"px map at the model's scale; labelling it needs {_gb(need)} of memory, this "
            f"process may use {_gb(have)}"
        )


def describe(shape: tuple[int, int], pixel_size_um: float) -> str:
    """``H x W px at P um/px (h x w mm)``: a slide's size for messages."""
    height, width = shape
    mm = f"{height * pixel_size_um / 1000:.3g} x {width * pixel_size_um / 1000:.3g} mm"
    return f"{height} x {width} px at {pixel_size_um:g} um/px ({mm})"


def memory_bytes() -> int:
    """The memory this process may use: the machine's, or less where an address-space limit
    (``ulimit -v``) or a container's cgroup says so."""
    limits = [os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")]
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        limits.append(soft)
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit():  # "max" (cgroup v2) means no limit
            limits.append(int(text))
    return min(limits)


def _gb(count: float) -> str:
    return f"{count / 2**30:.1f} GB"
