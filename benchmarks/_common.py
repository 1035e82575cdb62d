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


def forty_x_phantom(side: int, pixel_size_um: float = 0.25) -> str:
    """A ``side x side`` all-tissue kidney phantom at 0.25 um/px (a 40x scan), a 2048 px phantom
    repeated, as a pyramidal OME-TIFF written once into ``DATA``; returns its path."""
    import time

    from training.slides import write_pyramid
    from training.synthetic import make_phantom

    path = DATA / f"phantom_{round(pixel_size_um * 100):03d}um_{side}.tiff"
    if not path.exists():
        DATA.mkdir(parents=True, exist_ok=True)
        image, _, _ = make_phantom(
            "kidney", size=2048, seed=0, pixel_size_um=pixel_size_um, tissue_fraction=1.0
        )
        start = time.perf_counter()
        write_pyramid(path, PeriodicSource(image, side), pixel_size_um)
        print(f"wrote {path.name} in {time.perf_counter() - start:.0f} s")
    return str(path)
