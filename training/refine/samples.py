"""Training pairs for the refiner: coarse masks like a 1/4-resolution decoder leaves, and
patches centred on boundaries."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from training.refine.metrics import boundary


def simulated_coarse(truth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A coarse probability map of ``truth`` (0/1): shifted by a few px, grown or shrunk a
    little, block-averaged 4x or 8x and enlarged back (nearest: blocky; or bilinear: soft)."""
    mask = np.asarray(truth, bool)
    factor = int(rng.choice([4, 8]))
    shift = rng.integers(-factor // 2, factor // 2 + 1, size=2)
    mask = ndimage.shift(mask, shift, order=0, mode="nearest")
    grow = int(rng.integers(-2, 3))
    if grow > 0:
        mask = ndimage.binary_dilation(mask, iterations=grow)
    elif grow < 0:
        mask = ndimage.binary_erosion(mask, iterations=-grow)
    height, width = mask.shape
    padded = np.pad(mask, ((0, -height % factor), (0, -width % factor)), mode="edge")
    small = padded.reshape(padded.shape[0] // factor, factor, -1, factor).mean(axis=(1, 3))
    if rng.random() < 0.5:
        coarse = np.repeat(np.repeat(small, factor, 0), factor, 1)
        coarse = (coarse >= 0.5).astype(np.float32)
    else:
        coarse = ndimage.zoom(small, factor, order=1, grid_mode=True, mode="nearest")
    return np.clip(coarse[:height, :width], 0, 1).astype(np.float32)


def boundary_patches(
    image: np.ndarray,
    coarse: np.ndarray,
    truth: np.ndarray,
    size: int,
    count: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``count`` patches of ``size`` px centred (give or take an eighth of a patch) on random
    boundary pixels of the coarse mask or the truth, randomly flipped and turned:
    ``(images (n, size, size, 3) uint8, coarse (n, size, size), truth (n, size, size))``.
    Empty arrays when neither has a boundary."""
    edges = np.argwhere(boundary(coarse >= 0.5) | boundary(truth > 0))
    if not len(edges):
        return (
            np.zeros((0, size, size, 3), np.uint8),
            np.zeros((0, size, size), np.float32),
            np.zeros((0, size, size), np.float32),
        )
    pad = size
    image = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
    coarse = np.pad(coarse, pad, mode="reflect")
    truth = np.pad(np.asarray(truth, np.float32), pad, mode="reflect")
    images, priors, targets = [], [], []
    for centre in edges[rng.integers(0, len(edges), count)]:
        y, x = centre + pad - size // 2 + rng.integers(-size // 8, size // 8 + 1, size=2)
        turns, flip = int(rng.integers(4)), bool(rng.integers(2))
        for source, out in ((image, images), (coarse, priors), (truth, targets)):
            patch = np.rot90(source[y : y + size, x : x + size], turns)
            out.append(patch[:, ::-1] if flip else patch)
    return np.stack(images), np.stack(priors), np.stack(targets)
