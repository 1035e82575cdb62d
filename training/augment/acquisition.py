"""Acquisition adaptations toward the HuBMAP slides: section thickness and pixel size.

The training slides (HPA) are 4 um sections scanned at 0.4 um/px; the HuBMAP slides of an organ
were cut thicker or scanned coarser (``training.synthetic.DOMAINS``). These augmentations make a
training crop look as if it had been acquired somewhere between the two, with a strength drawn at
random so that the model sees the whole range. Both change the image only: the tissue, and so the
mask, stays where it is.
"""

from __future__ import annotations

import cv2
import numpy as np

from training.synthetic import DOMAINS

__all__ = [
    "MAX_PIXEL_SIZE_FACTOR",
    "adapt_pixel_size",
    "adapt_thickness",
    "downsample_round_trip",
    "thicken",
]

# A factor above ~4 leaves too little of the structure that identifies an FTU at the model's
# scale; the table's prostate entry (6.263 um/px, a 16x factor at 0.4 um/px) is an outlier.
MAX_PIXEL_SIZE_FACTOR = 4.0
_TARGET = DOMAINS["hubmap"]


def thicken(image: np.ndarray, factor: float) -> np.ndarray:
    """The RGB uint8 ``image`` as if its section were ``factor`` times as thick.

    Beer-Lambert: optical density grows with the path through the tissue, so each channel becomes
    ``I' = 255 (I / 255) ** factor``. For the brightest and darkest channel of a pixel this is
    exact in HSV, where ``V = max`` and ``S = 1 - min / max``: ``V' = 255 (V / 255) ** factor`` and
    ``1 - S' = (1 - S) ** factor``; hue is kept. A thicker section (factor > 1) is darker and more
    saturated, a thinner one (factor < 1) lighter and paler; 255 (unstained glass) is unchanged.
    """
    if factor <= 0:
        raise ValueError(f"thickness factor must be positive; got {factor}")
    if factor == 1:
        return image.copy()
    levels = np.arange(256, dtype=np.float64) / 255.0
    table = np.empty((256, 1, 3), np.uint8)
    table[:, 0, 0] = np.arange(256)  # hue
    table[:, 0, 1] = np.rint(255.0 * (1.0 - (1.0 - levels) ** factor))
    table[:, 0, 2] = np.rint(255.0 * levels**factor)
    hsv = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2HSV)
    return cv2.cvtColor(cv2.LUT(hsv, table), cv2.COLOR_HSV2RGB)


def adapt_thickness(
    image: np.ndarray,
    mask: np.ndarray,
    rng: np.random.Generator,
    *,
    organ: str,
    thickness_um: float,
    strength: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Move the section's thickness a random part of the way toward the organ's HuBMAP thickness.

    With ``ratio = hubmap thickness / thickness_um`` (kidney: 10 / 4 = 2.5), the factor passed to
    :func:`thicken` is ``1 + u * strength * (ratio - 1)``, ``u`` uniform in [0, 1]: from no change
    to the full HuBMAP look at strength 1. A ratio of 1 (spleen) changes nothing.
    """
    if thickness_um <= 0 or strength < 0:
        raise ValueError(f"need thickness_um > 0 and strength >= 0; got {thickness_um}, {strength}")
    ratio = _TARGET["tissue_thickness"][_check_organ(organ)] / thickness_um
    factor = 1.0 + float(rng.uniform()) * strength * (ratio - 1.0)
    if factor <= 0:  # a strength above 1 toward a thinner section
        raise ValueError(f"strength {strength} thins the section to nothing (ratio {ratio:.3g})")
    return thicken(image, factor), mask


def downsample_round_trip(image: np.ndarray, factor: float) -> np.ndarray:
    """Shrink ``image`` by ``factor`` (area averaging) and enlarge it back (linear): the detail a
    scan at ``factor`` times the pixel size would not have recorded is lost; the shape is kept."""
    if factor < 1:
        raise ValueError(f"downsampling factor must be at least 1; got {factor}")
    height, width = image.shape[:2]
    small = (max(1, round(width / factor)), max(1, round(height / factor)))
    if small == (width, height):
        return image.copy()
    shrunk = cv2.resize(image, small, interpolation=cv2.INTER_AREA)
    return cv2.resize(shrunk, (width, height), interpolation=cv2.INTER_LINEAR)


def adapt_pixel_size(
    image: np.ndarray,
    mask: np.ndarray,
    rng: np.random.Generator,
    *,
    organ: str,
    model_um: float,
    max_factor: float = MAX_PIXEL_SIZE_FACTOR,
) -> tuple[np.ndarray, np.ndarray]:
    """Blur a crop at ``model_um`` um/px to a random pixel size between it and the organ's HuBMAP
    pixel size ``t``: a factor uniform in ``[1, min(t / model_um, max_factor)]`` for
    :func:`downsample_round_trip`. Where ``t <= model_um`` the HuBMAP slide holds at least the
    model's detail, and the image is returned as given; so it is for ``max_factor`` 1.
    """
    if model_um <= 0 or max_factor < 1:
        raise ValueError(f"need model_um > 0 and max_factor >= 1; got {model_um}, {max_factor}")
    limit = min(_TARGET["pixel_size"][_check_organ(organ)] / model_um, max_factor)
    if limit <= 1:
        return image, mask
    return downsample_round_trip(image, float(rng.uniform(1.0, limit))), mask


def _check_organ(organ: str) -> str:
    if organ not in _TARGET["pixel_size"]:
        known = ", ".join(_TARGET["pixel_size"])
        raise ValueError(f"unknown organ {organ!r} for the HuBMAP table; expected one of {known}")
    return organ
