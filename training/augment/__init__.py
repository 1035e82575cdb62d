"""Training augmentations for FTU segmentation; each keeps image and mask aligned.

Every augmentation takes an RGB uint8 image ``(H, W, 3)``, a 0/1 uint8 mask ``(H, W)`` and a
``numpy.random.Generator``, and returns ``(image, mask)`` of the same shape and dtype. Inputs are
never written to; an augmentation that leaves an array unchanged may return it as given.
Geometric and colour operations come from albumentations, driven by the caller's generator, the
HED matrices from scikit-image; the acquisition adaptations and CutMix are written here.
:class:`Augmenter` chains them as an :class:`AugmentConfig` says.
"""

from training.augment.acquisition import (
    adapt_pixel_size,
    adapt_thickness,
    downsample_round_trip,
    thicken,
)
from training.augment.color import brightness_contrast, gauss_noise, hue_saturation_value
from training.augment.geometric import flip_rotate, rotate_scale
from training.augment.mixing import cutmix, cutout
from training.augment.pipeline import AugmentConfig, Augmenter
from training.augment.stain_jitter import hed_jitter, jitter_stains

__all__ = [
    "AugmentConfig",
    "Augmenter",
    "adapt_pixel_size",
    "adapt_thickness",
    "brightness_contrast",
    "cutmix",
    "cutout",
    "downsample_round_trip",
    "flip_rotate",
    "gauss_noise",
    "hed_jitter",
    "hue_saturation_value",
    "jitter_stains",
    "rotate_scale",
    "thicken",
]
