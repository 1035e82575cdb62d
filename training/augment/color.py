"""Colour augmentations (albumentations): the image changes, the mask is returned as given."""

from __future__ import annotations

import albumentations as A
import numpy as np

from training.augment._albumentations import apply, cached

__all__ = ["brightness_contrast", "gauss_noise", "hue_saturation_value"]


def brightness_contrast(
    image: np.ndarray,
    mask: np.ndarray,
    rng: np.random.Generator,
    *,
    brightness: float = 0.2,
    contrast: float = 0.2,
) -> tuple[np.ndarray, np.ndarray]:
    """Shift brightness by up to ``brightness`` (fraction of 255) and scale contrast by up to
    ``1 +- contrast``."""
    transform = cached(_brightness_contrast, float(brightness), float(contrast))
    return apply(transform, image, None, rng)[0], mask


def hue_saturation_value(
    image: np.ndarray,
    mask: np.ndarray,
    rng: np.random.Generator,
    *,
    hue: float = 10.0,
    saturation: float = 20.0,
    value: float = 10.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Shift hue, saturation and value by up to the given amounts, in OpenCV's uint8 HSV units
    (hue 0-179, i.e. 2 degrees a step; saturation and value 0-255)."""
    transform = cached(_hsv, float(hue), float(saturation), float(value))
    return apply(transform, image, None, rng)[0], mask


def gauss_noise(
    image: np.ndarray,
    mask: np.ndarray,
    rng: np.random.Generator,
    *,
    max_std: float = 0.04,
) -> tuple[np.ndarray, np.ndarray]:
    """Add per-pixel, per-channel Gaussian noise whose standard deviation (a fraction of 255) is
    drawn from ``[0, max_std]``."""
    if not 0 <= max_std <= 1:
        raise ValueError(f"max_std must be in [0, 1]; got {max_std}")
    return apply(cached(_noise, float(max_std)), image, None, rng)[0], mask


def _brightness_contrast(brightness: float, contrast: float) -> A.Compose:
    return A.Compose(
        [A.RandomBrightnessContrast(brightness_limit=brightness, contrast_limit=contrast, p=1.0)]
    )


def _hsv(hue: float, saturation: float, value: float) -> A.Compose:
    return A.Compose(
        [
            A.HueSaturationValue(
                hue_shift_limit=hue, sat_shift_limit=saturation, val_shift_limit=value, p=1.0
            )
        ]
    )


def _noise(max_std: float) -> A.Compose:
    return A.Compose([A.GaussNoise(std_range=(0.0, max_std), p=1.0)])
