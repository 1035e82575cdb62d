"""What the engine yields and returns: progress events, finished bands, the result."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from training.inference.postprocess import probability_to_labels


@dataclass(frozen=True)
class Band:
    """Rows ``y0 ...`` of the probability map finished since the last event, as the ensemble
    so far sees them (the members run so far, weighted), so a viewer can show results before
    the run ends."""

    y0: int
    values: np.ndarray  # (rows, W) float32
    map_shape: tuple[int, int]  # the whole map's (H, W) at the working scale
    pixel_size_um: float  # of the map
    origin: tuple[int, int] = (0, 0)  # the map's top-left in the slide's working grid


@dataclass(frozen=True)
class Progress:
    """``done`` of ``total`` tiles processed, what is happening, and any rows just finished."""

    done: int
    total: int
    message: str
    band: Band | None = None


@dataclass
class SegmentationResult:
    """The probability map at the working scale, how it maps to the slide, and the model's
    calibrated post-processing for the organ (threshold, minimum object area).

    A region run's map covers its box: map pixel ``(i, j)`` is pixel ``origin + (i, j)`` of the
    whole slide's working grid (``grid_shape``), and covers level 0 from ``origin_level0 +
    (i, j) * downsample``. A whole-slide run has ``origin`` ``(0, 0)`` and ``grid_shape`` equal
    to the map's shape.
    """

    probability: Any  # (H, W) float32: a numpy array, or a DiskProbability (zarr on disk)
    pixel_size_um: float  # of the probability map
    downsample: float  # level-0 pixels per probability pixel
    slide_shape: tuple[int, int]  # level-0 (H, W)
    organ: str
    threshold: float
    tiles_run: int
    tiles_skipped: int
    path: Path | None = None  # where an on-disk probability map lives
    meta: dict[str, Any] = field(default_factory=dict)
    min_area_um2: float = 0.0
    origin: tuple[int, int] = (0, 0)  # the map's top-left in the whole slide's working grid
    grid_shape: tuple[int, int] | None = None  # the whole slide's working grid (H, W)
    region: tuple[int, int, int, int] | None = None  # the level-0 box asked, if any
    # the whole slide's tissue thumbnail mask without the tiles' margin, and thumbnail pixels
    # per level-0 pixel (training.inference.tissue.tissue_area_mm2); None without detection
    tissue: tuple[Any, float] | None = None

    def __post_init__(self) -> None:
        shape = getattr(self.probability, "shape", None)
        if self.grid_shape is None and shape is not None:  # a whole-slide run's map
            self.grid_shape = tuple(shape[:2])

    @property
    def origin_level0(self) -> tuple[float, float]:
        """The map's top-left corner in level-0 pixels (the working pixel's own corner)."""
        return self.origin[0] * self.downsample, self.origin[1] * self.downsample

    def labels(
        self,
        threshold: float | None = None,
        min_area_um2: float | None = None,
        fill_holes: bool = True,
    ) -> np.ndarray:
        """Instance labels (int32) at the working scale; the threshold and minimum area are the
        result's own (the model's for the organ) unless given."""
        min_area = self.min_area_um2 if min_area_um2 is None else min_area_um2
        min_area_px = min_area / self.pixel_size_um**2
        return probability_to_labels(
            self.probability,
            self.threshold if threshold is None else threshold,
            min_area_px=min_area_px,
            fill_holes=fill_holes,
        )

    def close(self) -> None:
        """Remove an on-disk probability map the engine made in a temporary folder."""
        close = getattr(self.probability, "close", None)
        if close is not None:
            close()
