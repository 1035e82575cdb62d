"""Mixing augmentations: CutOut (albumentations CoarseDropout) and CutMix for segmentation.

CutOut keeps the mask by default. An FTU is annotated by its outline, empty parts included
(Bowman's space, a crypt's or gland's lumen, tears in the section), so a blank hole inside an FTU
is still that FTU to an annotator; keeping the label teaches the model to complete an FTU from its
surroundings when part of it is missing or torn. Holes are small next to an FTU (a tenth of a
256 px crop by default) so that they rarely hide one whole. ``cut_mask=True`` labels the holes
background instead, for those who prefer labels that describe only the visible pixels.
"""

from __future__ import annotations

import albumentations as A
import numpy as np

from training.augment._albumentations import apply, cached

__all__ = ["cutmix", "cutout"]


def cutout(
    image: np.ndarray,
    mask: np.ndarray,
    rng: np.random.Generator,
    *,
    max_holes: int = 8,
    max_size: float = 0.1,
    fill: int = 255,
    cut_mask: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Blank 1 to ``max_holes`` rectangles, each side up to ``max_size`` of the image's, with
    ``fill`` (255: white, like a tear or glass). The mask is kept unless ``cut_mask``."""
    if not 0 <= max_size <= 1 or max_holes < 0:
        raise ValueError(f"need 0 <= max_size <= 1 and max_holes >= 0; got {max_size}, {max_holes}")
    if max_holes == 0 or max_size == 0:
        return image, mask
    transform = cached(_dropout, int(max_holes), float(max_size), int(fill), bool(cut_mask))
    return apply(transform, image, mask, rng)


def cutmix(
    image: np.ndarray,
    mask: np.ndarray,
    other_image: np.ndarray,
    other_mask: np.ndarray,
    rng: np.random.Generator,
    *,
    max_area: float = 0.5,
) -> tuple[np.ndarray, np.ndarray]:
    """Paste a box of ``other_image`` and the same box of ``other_mask`` into this sample.

    The box covers a fraction of the image drawn from ``[0, max_area]``, has the image's aspect
    ratio and lies anywhere inside it, at the same place in both samples (which must have the same
    shape).
    """
    if other_image.shape != image.shape or other_mask.shape != mask.shape:
        raise ValueError(
            f"cutmix needs samples of one shape; got {image.shape}/{mask.shape} and "
            f"{other_image.shape}/{other_mask.shape}"
        )
    if not 0 <= max_area <= 1:
        raise ValueError(f"max_area must be in [0, 1]; got {max_area}")
    side = np.sqrt(rng.uniform(0.0, max_area))
    height, width = mask.shape
    box_h, box_w = round(height * side), round(width * side)
    if box_h == 0 or box_w == 0:
        return image, mask
    top = int(rng.integers(0, height - box_h + 1))
    left = int(rng.integers(0, width - box_w + 1))
    box = np.s_[top : top + box_h, left : left + box_w]
    image, mask = image.copy(), mask.copy()
    image[box] = other_image[box]
    mask[box] = other_mask[box]
    return image, mask


def _dropout(max_holes: int, max_size: float, fill: int, cut_mask: bool) -> A.Compose:
    sides = (max_size / 4, max_size)
    dropout = A.CoarseDropout(
        num_holes_range=(1, max_holes),
        hole_height_range=sides,
        hole_width_range=sides,
        fill=fill,
        fill_mask=0 if cut_mask else None,
        p=1.0,
    )
    return A.Compose([dropout])
