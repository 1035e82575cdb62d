"""Run-length encoding of binary masks in the HuBMAP + HPA competition convention.

The mask ``(H, W)`` is flattened in column-major (Fortran) order, foreground runs are written as
``start length`` pairs separated by spaces, starts are 1-indexed, and an empty mask is ``""``.
Both directions are vectorised: there is no Python loop over runs.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["decode", "encode", "encode_upscaled", "nearest_indices", "parse_runs"]


ENCODE_BLOCK_PIXELS = 2**24


def encode(mask: np.ndarray) -> str:
    """Encode a 2-D mask (non-zero = foreground) as a competition RLE string.

    Columns are flattened a block of about 16 M pixels at a time, so the temporary copies stay
    small for a whole-slide mask (a 3000x3000 mask is one block).
    """
    mask = _as_2d(mask)
    if mask.size == 0:
        return ""
    return _encode_columns(mask.shape, lambda start, stop: (mask[:, start:stop] != 0).T)


def encode_upscaled(mask: np.ndarray, shape: tuple[int, int]) -> str:
    """Encode ``mask`` as if resized nearest-neighbour to ``shape`` first (``encode`` of
    :func:`training.inference.resize_labels`), without building the resized array.

    For a slide's level 0 from a working-scale mask: each block of level-0 columns is picked from
    the mask, encoded and dropped, so memory stays near one block whatever the slide's size.
    """
    mask = _as_2d(mask)
    height, width = _check_shape(shape)
    if mask.size == 0:
        raise ValueError(f"cannot resize an empty mask of shape {mask.shape} to {shape}")
    rows = nearest_indices(mask.shape[0], height)
    cols = nearest_indices(mask.shape[1], width)
    if mask.shape[0] > height:  # shrinking: pick the rows once, the result is smaller
        mask, rows = mask[rows], np.arange(height)

    def columns(start: int, stop: int) -> np.ndarray:
        # Taken at the mask's height (small), transposed to C order, and only then stretched to
        # the slide's rows, as a boolean: the one large temporary is the block itself.
        picked = np.ascontiguousarray((mask[:, cols[start:stop]] != 0).T)
        return np.take(picked, rows, axis=1)  # C order, unlike picked[:, rows]

    return _encode_columns((height, width), columns)


def nearest_indices(size: int, target: int) -> np.ndarray:
    """Source index of each of ``target`` positions when ``size`` positions are resized
    nearest-neighbour by pixel centres (``floor((i + 0.5) * size / target)``)."""
    return np.minimum(((np.arange(target) + 0.5) * size / target).astype(np.int64), size - 1)


def _encode_columns(shape: tuple[int, int], columns: Callable[[int, int], np.ndarray]) -> str:
    """RLE of an ``(H, W)`` mask given block by block: ``columns(start, stop)`` returns those
    columns as the rows of a boolean ``(stop - start, H)`` array."""
    height, width = shape
    step = max(1, ENCODE_BLOCK_PIXELS // height)
    parts, offset, previous = [], 0, 0
    for column in range(0, width, step):
        # Reading the columns-as-rows block in C order is the Fortran flatten; doing it on a
        # 1-byte view keeps the copy (none if the block is already C-ordered) cheap.
        pixels = columns(column, min(column + step, width)).view(np.uint8).ravel()
        # Boundaries are where a pixel differs from its predecessor (0-indexed position of the
        # pixel after the change); the padding zero before the first pixel is `previous`.
        changes = np.flatnonzero(pixels[1:] != pixels[:-1]) + 1
        if pixels[0] != previous:
            changes = np.concatenate(([0], changes))
        parts.append(changes + offset)
        offset += pixels.size
        previous = pixels[-1]
    if previous:  # and the padding zero after the last pixel
        parts.append(np.array([offset]))
    runs = np.concatenate(parts).reshape(-1, 2)
    runs[:, 1] -= runs[:, 0]
    runs[:, 0] += 1
    return _join(runs.ravel())


def _as_2d(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"RLE encodes 2-D masks; got an array of shape {mask.shape}")
    return mask


def _join(numbers: np.ndarray, chunk: int = 2**20) -> str:
    """Space-separated numbers, a million at a time: a Python int and str per number, for a
    whole-slide mask with millions of runs, would otherwise all be alive at once."""
    return " ".join(
        " ".join(map(str, numbers[i : i + chunk].tolist())) for i in range(0, numbers.size, chunk)
    )


def parse_runs(rle: str, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Parse and validate an RLE string; return 0-indexed run starts and exclusive ends.

    Raises ``ValueError`` naming the problem: an odd number of tokens, a token that is not an
    integer, a non-positive value, unsorted or overlapping runs, or a run past ``H * W``.
    """
    height, width = _check_shape(shape)
    if not isinstance(rle, str):
        raise ValueError(f"RLE must be a string; got {type(rle).__name__}")
    tokens = rle.split()
    if len(tokens) % 2:
        raise ValueError(
            f"RLE has an odd number of tokens ({len(tokens)}); it must be 'start length' pairs"
        )
    try:
        values = np.array(tokens, dtype=np.int64)
    except (ValueError, OverflowError):
        bad = next(i for i, t in enumerate(tokens) if not _is_int(t))
        raise ValueError(f"RLE token {bad + 1} ({tokens[bad]!r}) is not an integer") from None
    if values.size == 0:
        return values, values
    starts, lengths = values[0::2], values[1::2]
    non_positive = np.flatnonzero(values <= 0)
    if non_positive.size:
        i = int(non_positive[0])
        what = "start" if i % 2 == 0 else "length"
        raise ValueError(
            f"RLE run {i // 2 + 1} has a non-positive {what} ({values[i]}); "
            "starts are 1-indexed and lengths at least 1"
        )
    starts = starts - 1
    ends = starts + lengths
    bad_order = np.flatnonzero(starts[1:] < ends[:-1])
    if bad_order.size:
        i = int(bad_order[0]) + 1
        problem = "overlaps" if starts[i] >= starts[i - 1] else "comes before (unsorted)"
        raise ValueError(
            f"RLE run {i + 1} (start {starts[i] + 1}) {problem} run {i} "
            f"(start {starts[i - 1] + 1}, length {lengths[i - 1]})"
        )
    total = height * width
    if ends[-1] > total:
        raise ValueError(
            f"RLE run {ends.size} (start {starts[-1] + 1}, length {lengths[-1]}) ends at pixel "
            f"{ends[-1]}, past the end of a {height}x{width} image ({total} pixels)"
        )
    return starts, ends


def decode(rle: str, shape: tuple[int, int]) -> np.ndarray:
    """Decode a competition RLE string to a ``uint8`` 0/1 mask of ``shape`` ``(H, W)``."""
    starts, ends = parse_runs(rle, shape)
    height, width = int(shape[0]), int(shape[1])
    # Alternate background gaps and foreground runs, then let np.repeat lay them out: one C pass
    # over the output. Adjacent runs leave a zero-length gap, which repeat handles.
    bounds = np.empty(2 * starts.size + 2, dtype=np.int64)
    bounds[0], bounds[-1] = 0, height * width
    bounds[1:-1:2] = starts
    bounds[2:-1:2] = ends
    values = np.zeros(bounds.size - 1, dtype=np.uint8)
    values[1::2] = 1
    flat = np.repeat(values, np.diff(bounds))
    return flat.reshape(width, height).T


def _check_shape(shape: tuple[int, int]) -> tuple[int, int]:
    try:
        height, width = (int(s) for s in shape)
    except (TypeError, ValueError):
        raise ValueError(f"shape must be (height, width); got {shape!r}") from None
    if height <= 0 or width <= 0:
        raise ValueError(f"shape must be positive; got {(height, width)}")
    return height, width


def _is_int(token: str) -> bool:
    try:
        int(token)
    except ValueError:
        return False
    return True
