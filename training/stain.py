"""Stain normalisation of H&E tiles to a reference's appearance (Macenko, Vahadane, Reinhard).

Backed by staintools: its Macenko and Vahadane stain-matrix extractors and its Reinhard LAB
statistics. Stain amounts solve staintools' own problem (a positive lasso per pixel) in closed
form instead of one SPAMS call per pixel: once a slide's stain matrix is fixed, a tile's
transform is a few vectorised matrix products. Two things are added around it:

- *Slide-level source statistics.* staintools estimates the source stains of every image it
  transforms; tile by tile, that makes neighbouring tiles disagree (seams) and fails on tiles that
  are mostly glass. :meth:`StainNormalizer.for_slide` estimates them once from a sample of tissue
  tiles, and every tile of the slide is then mapped with the same transform. The inference engine
  does this by itself when given a normaliser.
- *Safe input handling.* staintools writes into the arrays it is given and assumes there is
  tissue; here every call gets a copy, and a tile with too little stain comes back unchanged.

staintools (and OpenCV, which it imports) are imported on first use, not with this module.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import numpy as np

METHODS = ("macenko", "vahadane", "reinhard")
LUMINOSITY_THRESHOLD = 0.8  # staintools' tissue test: LAB lightness below this is stained tissue
MIN_TISSUE_PIXELS = 256
CONCENTRATION_PERCENTILE = 99
REFERENCE_MAX_SIDE = 4096
VAHADANE_LAMBDA = 0.1  # staintools' sparsity regulariser for the stain dictionary
VAHADANE_ITERATIONS = 50  # batch passes: the stain vectors settle well before
# Ruifrok and Johnston's haematoxylin and eosin optical-density vectors: the learner's start
VAHADANE_START = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11]], dtype=np.float64)


class StainError(ValueError):
    """A reference or sample cannot be used for stain normalisation."""


class StainNormalizer:
    """Map the stain appearance of RGB uint8 tiles onto that of a reference image.

    ``method``: ``"macenko"`` (stain vectors from the extreme angles of the OD plane),
    ``"vahadane"`` (sparse non-negative dictionary learning; slower, structure-preserving) or
    ``"reinhard"`` (mean and spread of each LAB channel). Call :meth:`fit` with the reference first.
    """

    def __init__(self, method: str = "macenko") -> None:
        method = method.lower()
        if method not in METHODS:
            raise ValueError(f"unknown stain method {method!r}; choose one of {', '.join(METHODS)}")
        self.method = method
        self.target: dict[str, np.ndarray] | None = None
        self.source: dict[str, np.ndarray] | None = None  # fixed by for_slide; None: per tile

    def __repr__(self) -> str:
        state = "unfitted" if self.target is None else "fitted"
        scope = "per slide" if self.source is not None else "per tile"
        return f"StainNormalizer({self.method!r}, {state}, {scope})"

    @property
    def fitted(self) -> bool:
        """Whether a reference has been fitted."""
        return self.target is not None

    def fit(self, reference: np.ndarray | str | os.PathLike) -> StainNormalizer:
        """Fit to a reference image (an RGB array or an image file); returns ``self``."""
        image = _as_rgb_uint8(reference)
        stats = self._statistics(image)
        if stats is None:
            raise StainError(
                f"the stain reference has too little stained tissue to fit: fewer than "
                f"{MIN_TISSUE_PIXELS} pixels darker than the glass ({_describe(reference)})"
            )
        self.target = stats
        return self

    def for_slide(self, sample: np.ndarray) -> StainNormalizer:
        """A copy that maps every tile with source statistics estimated once from ``sample``.

        ``sample``: RGB uint8 pixels of the slide (for example a mosaic of tissue tiles). Raises
        :class:`StainError` when the sample holds too little tissue.
        """
        self._require_fit()
        stats = self._statistics(_as_rgb_uint8(sample))
        if stats is None:
            raise StainError(
                f"the slide sample has too little stained tissue to estimate its stains "
                f"(fewer than {MIN_TISSUE_PIXELS} tissue pixels)"
            )
        fixed = copy.copy(self)
        fixed.source = stats
        return fixed

    def transform(self, rgb: np.ndarray) -> np.ndarray:
        """Normalise one RGB uint8 image; an image with too little stain is returned unchanged."""
        self._require_fit()
        image = _as_rgb_uint8(rgb)
        source = self.source if self.source is not None else self._statistics(image)
        if source is None:
            return image
        if self.method == "reinhard":
            return _reinhard(image, source, self.target)
        return _stain_transfer(image, source, self.target)

    def _require_fit(self) -> None:
        if self.target is None:
            raise RuntimeError("call StainNormalizer.fit(reference) before using it")

    def _statistics(self, image: np.ndarray) -> dict[str, np.ndarray] | None:
        """The method's description of an image's stain, or None when it has too little tissue."""
        if _tissue_pixels(image) < MIN_TISSUE_PIXELS:
            return None
        if self.method == "reinhard":
            ReinhardColorNormalizer = _staintools().ReinhardColorNormalizer

            means, stds = ReinhardColorNormalizer().get_mean_std(image.copy())
            means = np.asarray(means, np.float32).reshape(3)
            stds = np.asarray(stds, np.float32).reshape(3)
            if not np.all(np.isfinite(stds)) or np.any(stds < 1e-3):
                return None
            return {"means": means, "stds": stds}
        if self.method == "macenko":
            _staintools()
            from staintools.stain_extraction.macenko_stain_extractor import MacenkoStainExtractor

            matrix = MacenkoStainExtractor.get_stain_matrix(
                image.copy(), luminosity_threshold=LUMINOSITY_THRESHOLD
            )
        else:
            matrix = _vahadane_matrix(image)
        if not np.all(np.isfinite(matrix)):
            return None
        concentrations = _concentrations(image, matrix)
        max_c = np.percentile(concentrations, CONCENTRATION_PERCENTILE, axis=0).reshape(1, 2)
        if np.any(max_c <= 1e-6):
            return None
        return {"matrix": matrix.astype(np.float64), "max_concentrations": max_c}


def _stain_transfer(
    image: np.ndarray, source: dict[str, np.ndarray], target: dict[str, np.ndarray]
) -> np.ndarray:
    """Separate the source stains, rescale their amounts, and recompose with the target's."""
    concentrations = _concentrations(image, source["matrix"])
    concentrations *= (target["max_concentrations"] / source["max_concentrations"]).astype(
        np.float32
    )
    od = concentrations @ target["matrix"].astype(np.float32)
    rgb = np.exp(-od, out=od)
    rgb *= 255.0
    return np.clip(rgb, 0, 255).reshape(image.shape).astype(np.uint8)


def _reinhard(
    image: np.ndarray, source: dict[str, np.ndarray], target: dict[str, np.ndarray]
) -> np.ndarray:
    ReinhardColorNormalizer = _staintools().ReinhardColorNormalizer

    channels = ReinhardColorNormalizer.lab_split(image.copy())
    scaled = [
        (channel - source["means"][i]) * (target["stds"][i] / source["stds"][i])
        + target["means"][i]
        for i, channel in enumerate(channels)
    ]
    return ReinhardColorNormalizer.merge_back(*scaled)


def _vahadane_matrix(image: np.ndarray) -> np.ndarray:
    """Vahadane's stain matrix (haematoxylin first, unit rows) by sparse non-negative dictionary
    learning, as staintools' extractor does, but reproducible: staintools runs SPAMS' online
    learner from a random start on all threads, so one image gave stain vectors that differed
    from run to run; the batch learner from the standard H&E vectors gives the same every time."""
    _staintools()  # its import settles the environment spams and its tissue locator need
    import spams
    from staintools.tissue_masks.luminosity_threshold_tissue_locator import (
        LuminosityThresholdTissueLocator,
    )

    tissue = LuminosityThresholdTissueLocator.get_tissue_mask(
        image.copy(), luminosity_threshold=LUMINOSITY_THRESHOLD
    ).reshape(-1)
    density = _optical_density(image)[tissue].astype(np.float64)
    start = np.asfortranarray(VAHADANE_START.T)
    dictionary = spams.trainDL(
        X=np.asfortranarray(density.T), D=start, K=2, lambda1=VAHADANE_LAMBDA, mode=2,
        modeD=0, posAlpha=True, posD=True, batch=True, iter=VAHADANE_ITERATIONS,
        numThreads=1, verbose=False,
    ).T  # fmt: skip
    if dictionary[0, 0] < dictionary[1, 0]:  # haematoxylin (the bluer stain) first
        dictionary = dictionary[[1, 0]]
    return dictionary / np.linalg.norm(dictionary, axis=1, keepdims=True)


def _concentrations(image: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Non-negative sparse stain amounts per pixel, shape ``(pixels, 2)``.

    The same problem staintools hands SPAMS for every pixel (positive lasso,
    ``min 0.5 |od - C M|^2 + 0.01 |C|_1, C >= 0``), solved in closed form: with two stains the
    optimum either solves the 2x2 system with both amounts positive, or lies on the face
    where one amount is 0, and both are a few vectorised products.
    """
    od = _optical_density(image)
    stains = matrix.T.astype(np.float32)  # (3, 2): one column per stain
    gram = stains.T @ stains
    correlation = od @ stains
    correlation -= LASSO_PENALTY
    amounts = correlation @ np.linalg.inv(gram).T.astype(np.float32)
    off_face = (amounts < 0).any(axis=1)
    if off_face.any():
        # the better one-stain solution: it lowers the objective by 0.5 g_kk a_k^2
        alone = np.maximum(correlation[off_face] / np.diag(gram), 0)
        first = alone[:, 0] ** 2 * gram[0, 0] >= alone[:, 1] ** 2 * gram[1, 1]
        alone[first, 1] = 0
        alone[~first, 0] = 0
        amounts[off_face] = alone
    return amounts


LASSO_PENALTY = 0.01  # staintools' regulariser for stain concentrations


# optical density of each 8-bit value, as staintools computes it (0 read as 1, floor 1e-6)
_OD_TABLE = np.maximum(-np.log(np.maximum(np.arange(256), 1) / 255.0), 1e-6).astype(np.float32)


def _optical_density(image: np.ndarray) -> np.ndarray:
    """``(pixels, 3)`` float32 optical density of an RGB uint8 image."""
    return _OD_TABLE[image.reshape(-1, 3)]


def _tissue_pixels(image: np.ndarray) -> int:
    """Pixels darker than glass by staintools' own test (LAB lightness below the threshold)."""
    _staintools()
    from staintools.miscellaneous.exceptions import TissueMaskException
    from staintools.tissue_masks.luminosity_threshold_tissue_locator import (
        LuminosityThresholdTissueLocator,
    )

    try:
        mask = LuminosityThresholdTissueLocator.get_tissue_mask(image, LUMINOSITY_THRESHOLD)
    except TissueMaskException:
        return 0
    return int(np.count_nonzero(mask))


def _staintools() -> Any:
    """Import staintools without letting OpenCV repoint Qt.

    opencv-python, which staintools imports, sets ``QT_QPA_PLATFORM_PLUGIN_PATH`` and
    ``QT_QPA_FONTDIR`` to its own bundled Qt on import; a Qt application started afterwards in
    the same process (napari) would load OpenCV's platform plugins. Restore them.
    """
    saved = {key: os.environ.get(key) for key in _QT_VARIABLES}
    try:
        import staintools
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return staintools


_QT_VARIABLES = ("QT_QPA_PLATFORM_PLUGIN_PATH", "QT_QPA_FONTDIR")


def _as_rgb_uint8(image: np.ndarray | str | os.PathLike) -> np.ndarray:
    if isinstance(image, str | os.PathLike):
        image = _read_reference(Path(image))
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[-1] not in (3, 4):
        raise StainError(f"expected an RGB image of shape (H, W, 3); got shape {array.shape}")
    if array.dtype != np.uint8:
        raise StainError(f"expected an RGB uint8 image; got dtype {array.dtype}")
    return np.ascontiguousarray(array[..., :3])


def _read_reference(path: Path) -> np.ndarray:
    """A reference image file (any slide format), at the finest level at most 4096 px a side."""
    from training.slides import SlideError, open_slide

    try:
        with open_slide(path) as slide:
            level = next(
                (i for i, shape in enumerate(slide.shapes) if max(shape[:2]) <= REFERENCE_MAX_SIDE),
                len(slide.shapes) - 1,
            )
            height, width = slide.shapes[level][:2]
            return np.array(slide.read_region(0, 0, height, width, level=level))
    except SlideError as error:
        raise StainError(f"stain reference: {error}") from None


def _describe(source: Any) -> str:
    if isinstance(source, str | os.PathLike):
        return str(source)
    return f"array of shape {np.shape(source)}"
