"""Geometric augmentations (albumentations): image and mask move together, the mask by nearest
neighbour so it stays 0/1."""

from __future__ import annotations

import albumentations as A
import cv2
import numpy as np

from training.augment._albumentations import apply, cached

__all__ = ["flip_rotate", "rotate_scale"]


def flip_rotate(
    image: np.ndarray, mask: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """One of the eight symmetries of the square (flips, 90-degree turns, transposes), uniformly.

    A non-square image gets only the symmetries that keep its shape (identity and the flips).
    """
    square = image.shape[0] == image.shape[1]
    return apply(cached(_symmetries, square), image, mask, rng)


def rotate_scale(
    image: np.ndarray,
    mask: np.ndarray,
    rng: np.random.Generator,
    *,
    max_degrees: float = 45.0,
    max_scale: float = 0.2,
) -> tuple[np.ndarray, np.ndarray]:
    """Rotate by an angle in ``[-max_degrees, max_degrees]`` and zoom by ``[1 - s, 1 + s]``.

    The image is interpolated linearly, the mask by nearest neighbour; the border is a mirror of
    the tissue, so no artificial black corners appear. Both strengths 0 leave the sample as it is.
    """
    if not 0 <= max_scale < 1:
        raise ValueError(f"max_scale must be in [0, 1); got {max_scale}")
    return apply(cached(_affine, float(max_degrees), float(max_scale)), image, mask, rng)


def _symmetries(square: bool) -> A.Compose:
    if square:  # SquareSymmetry: RandomRotate90 x Transpose x flips, each of the 8 equally likely
        return A.Compose([A.SquareSymmetry(p=1.0)])
    return A.Compose([A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)])


def _affine(max_degrees: float, max_scale: float) -> A.Compose:
    affine = A.Affine(
        rotate=(-max_degrees, max_degrees),
        scale=(1 - max_scale, 1 + max_scale),
        interpolation=cv2.INTER_LINEAR,
        mask_interpolation=cv2.INTER_NEAREST,
        border_mode=cv2.BORDER_REFLECT_101,
        p=1.0,
    )
    return A.Compose([affine])
