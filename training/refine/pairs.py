"""Images, truths and coarse maps of dataset records on the refiner's pixel grid."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from training.data import rle
from training.inference.postprocess import resize_labels
from training.refine.samples import simulated_coarse


@dataclass
class Pair:
    """One image at the refiner's pixel size: RGB uint8, the truth (0/1) and, when a coarse
    model made one, its probability map on the same grid (else coarse maps are simulated)."""

    id: str
    image: np.ndarray
    truth: np.ndarray
    coarse: np.ndarray | None = None

    def coarse_for(self, rng: np.random.Generator) -> np.ndarray:
        """The coarse model's map, else a fresh simulated one."""
        if self.coarse is not None:
            return self.coarse
        return simulated_coarse(self.truth, rng)


def load_pair(
    record: Any, pixel_size_um: float, coarse_model: Any = None, device: str = "cpu"
) -> Pair:
    """``record`` (a :class:`training.data.records.Record`) read at ``pixel_size_um``; with
    ``coarse_model`` (an ensemble) its probability map from the engine, resampled (bilinearly)
    onto the same grid."""
    from training.inference import RunOptions, run
    from training.slides import as_rgb_uint8, open_slide

    factor = record.pixel_size_um / pixel_size_um
    shape = (max(1, round(record.shape[0] * factor)), max(1, round(record.shape[1] * factor)))
    with open_slide(record.image, record.pixel_size_um) as slide:
        image = as_rgb_uint8(slide.read_region_at(pixel_size_um, 0, 0, *shape))
    truth = resize_labels(rle.decode(record.rle, record.shape), shape)
    coarse = None
    if coarse_model is not None:
        options = RunOptions(device=device, refiner=False, memory_limit_mb=4096)
        result = run(
            record.image, coarse_model, record.organ, options, pixel_size_um=record.pixel_size_um
        )
        probability = np.asarray(result.probability, np.float32)
        result.close()
        from skimage.transform import resize

        coarse = resize(probability, shape, order=1, mode="edge", anti_aliasing=False)
        coarse = np.clip(coarse, 0, 1).astype(np.float32)
    return Pair(str(record.id), np.ascontiguousarray(image), truth.astype(np.uint8), coarse)
