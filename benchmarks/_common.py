"""What the benchmark scripts share: the data cache, peak memory, a lazily indexed slide."""

from __future__ import annotations

from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parent / "_data"  # inputs written once, not committed


def peak_rss_mb() -> float:
    """High-water resident set size of this process (``VmHWM``; ``ru_maxrss`` survives exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


class PeriodicSource:
    """A ``(side, side, 3)`` image repeating one phantom tile, glass below ``tissue_rows``.

    Indexing with ``[y0:y1, x0:x1]`` returns that block; ``write_pyramid`` reads it tile by tile.
    Rows at and below ``tissue_rows`` (default: none) repeat the ``glass`` tile instead.
    """

    def __init__(
        self,
        base: np.ndarray,
        side: int,
        tissue_rows: int | None = None,
        glass: np.ndarray | None = None,
    ) -> None:
        self.base, self.shape, self.dtype, self.ndim = base, (side, side, 3), base.dtype, 3
        self.size = side * side * 3
        self.tissue_rows = side if tissue_rows is None else tissue_rows
        self.glass = glass

    def __getitem__(self, index: tuple[slice, ...] | slice) -> np.ndarray:
        ys, xs = (index, slice(None)) if isinstance(index, slice) else index[:2]
        y0, y1, _ = ys.indices(self.shape[0])
        x0, x1, _ = xs.indices(self.shape[1])
        rows, cols = np.arange(y0, y1), np.arange(x0, x1)
        block = self.base[(rows % len(self.base))[:, None], (cols % len(self.base))[None, :]]
        below = rows >= self.tissue_rows
        if below.any():
            glass = self.glass
            block[below] = glass[(rows[below] % len(glass))[:, None], (cols % len(glass))[None, :]]
        return block
