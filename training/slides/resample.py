"""Resampling of image arrays by sparse separable weights: exact area means for shrinking,
bilinear for enlarging, and block means for pyramid levels (``training.slides.slide`` reads
regions at any pixel size with them)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def block_mean(block: np.ndarray, factor: int) -> np.ndarray:
    """Means of ``factor x factor`` pixel blocks of an ``(H, W, ...)`` array, as float64.

    Summed over rows first, then over columns, each over a contiguous axis: several times
    faster than one mean over two strided axes.
    """
    h, w, rest = block.shape[0] // factor, block.shape[1] // factor, block.shape[2:]
    c = math.prod(rest)
    if np.issubdtype(block.dtype, np.unsignedinteger):
        accumulator = np.uint32 if block.dtype.itemsize == 1 else np.uint64
    elif np.issubdtype(block.dtype, np.integer):
        accumulator = np.int64
    else:
        accumulator = np.float64
    rows = block.reshape(h, factor, w * factor * c).sum(axis=1, dtype=accumulator)
    sums = rows.reshape(h, w, factor, c).sum(axis=2)
    return (sums / (factor * factor)).reshape(h, w, *rest)


def separable(src: np.ndarray, along_y: Any, along_x: Any) -> np.ndarray:
    """``along_y @ src @ along_x.T`` for an ``(H, W, C)`` image and sparse ``(h, H)`` and
    ``(w, W)`` weights, as float32: a few non-zeros per row, so the cost grows with the pixels
    read, not with their square.

    Both passes work on the ``(rows, W * C)`` layout as it lies in memory: along y a sparse
    product from the left; along x one from the right, with the weights repeated for each
    channel. Transposing the image instead costs more than both products.
    """
    from scipy import sparse

    height, width, channels = src.shape
    h, w = along_y.shape[0], along_x.shape[0]
    rows = along_y @ src.reshape(height, width * channels).astype(np.float32)
    per_channel = sparse.identity(channels, dtype=np.float32, format="csr")
    right = sparse.kron(along_x.T.tocsr(), per_channel, format="csr")  # (W * C, w * C)
    return np.asarray(rows @ right).reshape(h, w, channels)


def area_weights(start: float, ratio: float, n: int, length: int) -> Any:
    """``(n, length)`` sparse weights: row i is the share of each source pixel in
    ``[start + i * ratio, start + (i + 1) * ratio)``, divided by ``ratio``."""
    lows = start + np.arange(n) * ratio
    first = np.floor(lows).astype(np.intp)
    columns = first[:, None] + np.arange(math.ceil(ratio) + 1)[None, :]
    overlap = np.minimum(lows[:, None] + ratio, columns + 1) - np.maximum(lows[:, None], columns)
    weights = np.clip(overlap, 0, None) / ratio
    return _csr(weights, np.minimum(columns, length - 1), length)  # zero-weight taps past the end


def _csr(weights: np.ndarray, columns: np.ndarray, length: int) -> Any:
    """A sparse ``(n, length)`` matrix with ``weights[i]`` at ``columns[i]`` in row ``i``."""
    from scipy import sparse

    n, taps = weights.shape
    indptr = np.arange(n + 1) * taps
    return sparse.csr_matrix(
        (weights.ravel().astype(np.float32), columns.ravel(), indptr), shape=(n, length)
    )


def linear_weights(start: float, ratio: float, n: int, length: int) -> Any:
    """``(n, length)`` sparse weights of linear interpolation at ``start + i * ratio``, clamped
    to the first and last source pixel."""

    positions = np.clip(start + np.arange(n) * ratio, 0, length - 1)
    first = np.minimum(np.floor(positions).astype(np.intp), length - 2)
    fraction = positions - first
    columns = np.stack([first, first + 1], axis=1)
    weights = np.stack([1 - fraction, fraction], axis=1)
    return _csr(weights, columns, length)


def cast_like(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    dtype = np.dtype(dtype)
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        return np.clip(np.rint(values), info.min, info.max).astype(dtype)
    return values.astype(dtype)
