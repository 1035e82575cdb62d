from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from skimage.color import rgb2lab
from torch import nn

from training.inference import RunOptions, run
from training.models.ensemble import Member
from training.stain import METHODS, StainError, StainNormalizer
from training.synthetic import STAIN_VECTORS, make_phantom


def unit_rows(matrix: np.ndarray) -> np.ndarray:
    return matrix / np.linalg.norm(matrix, axis=1, keepdims=True)


def mean_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b).mean())


@pytest.fixture(scope="module")
def stained():
    """The same tissue in two stains (HPA-like, HuBMAP-like), and an HPA-stained reference."""
    hubmap_stained, _, _ = make_phantom(
        "kidney", size=384, seed=0, stain_vectors=STAIN_VECTORS["hubmap"]
    )
    hpa_stained, _, _ = make_phantom("kidney", size=384, seed=0)
    reference, _, _ = make_phantom("kidney", size=384, seed=1)
    return hubmap_stained, hpa_stained, reference


@pytest.mark.parametrize("method", ["macenko", "vahadane"])
def test_stain_vectors_of_a_phantom_are_recovered(method, stained):
    _, _, reference = stained
    fitted = StainNormalizer(method).fit(reference).target["matrix"]
    cosines = (unit_rows(fitted) * unit_rows(STAIN_VECTORS["hpa"])).sum(axis=1)
    assert cosines.min() > 0.98  # haematoxylin first, then eosin


@pytest.mark.parametrize("method", ["macenko", "vahadane"])
def test_normalising_brings_another_stain_close_to_the_reference_stain(method, stained):
    hubmap_stained, hpa_stained, reference = stained
    before = mean_abs(hubmap_stained, hpa_stained)
    normaliser = StainNormalizer(method).fit(reference)
    per_tile = normaliser.transform(hubmap_stained)
    per_slide = normaliser.for_slide(hubmap_stained).transform(hubmap_stained)
    for result in (per_tile, per_slide):
        assert result.dtype == np.uint8 and result.shape == hubmap_stained.shape
        assert mean_abs(result, hpa_stained) < before / 3


def test_vahadane_gives_the_same_stain_vectors_every_time(stained):
    # SPAMS' online learner (staintools' default) starts at random on all threads: one image gave
    # different stain vectors from run to run, so one slide could be normalised two ways
    _, _, reference = stained
    fits = [StainNormalizer("vahadane").fit(reference).target["matrix"] for _ in range(3)]
    for fit in fits[1:]:
        np.testing.assert_array_equal(fit, fits[0])


def test_reinhard_matches_the_reference_colour_statistics(stained):
    hubmap_stained, _, reference = stained
    normaliser = StainNormalizer("reinhard").fit(reference)
    for result in (
        normaliser.transform(hubmap_stained),
        normaliser.for_slide(hubmap_stained).transform(hubmap_stained),
    ):
        lab, lab_reference = rgb2lab(result), rgb2lab(reference)
        np.testing.assert_allclose(lab.mean((0, 1)), lab_reference.mean((0, 1)), atol=1.5)
        np.testing.assert_allclose(lab.std((0, 1)), lab_reference.std((0, 1)), rtol=0.1)
    assert not np.allclose(rgb2lab(hubmap_stained).mean((0, 1)), lab_reference.mean((0, 1)), atol=3)


def test_real_reference_gives_haematoxylin_and_eosin_vectors(shared_data):
    reference = shared_data / "he-reference" / "target_image.png"
    normaliser = StainNormalizer("macenko").fit(reference)
    haematoxylin, eosin = unit_rows(normaliser.target["matrix"])
    # textbook (Ruifrok) vectors: haematoxylin absorbs red more than eosin does, eosin green most
    assert haematoxylin[0] > eosin[0] and np.argmax(eosin) == 1
    assert (haematoxylin @ unit_rows(STAIN_VECTORS["hpa"])[0]) > 0.9


@pytest.mark.parametrize("method", METHODS)
def test_slide_level_fit_has_no_seams(method, stained):
    """With source stains fixed for the slide, tiles normalised alone stitch to the whole."""
    hubmap_stained, _, reference = stained
    slide_normaliser = StainNormalizer(method).fit(reference).for_slide(hubmap_stained)
    whole = slide_normaliser.transform(hubmap_stained)
    tiles = np.zeros_like(whole)
    for y in range(0, 384, 128):
        for x in range(0, 384, 128):
            tiles[y : y + 128, x : x + 128] = slide_normaliser.transform(
                hubmap_stained[y : y + 128, x : x + 128]
            )
    assert np.abs(tiles.astype(int) - whole).max() <= 1


@pytest.mark.parametrize("method", METHODS)
def test_glass_and_inputs_are_left_alone(method, stained):
    _, _, reference = stained
    normaliser = StainNormalizer(method).fit(reference)
    glass = np.full((64, 64, 3), 240, np.uint8)
    assert np.array_equal(normaliser.transform(glass), glass)
    tile = reference[:128, :128].copy()
    tile[0, 0] = 0  # staintools writes into zero pixels of its input
    tile.setflags(write=False)  # and fails on read-only arrays
    original = tile.copy()
    normaliser.transform(tile)
    assert np.array_equal(tile, original)


def test_bad_references_and_use_before_fit(tmp_path):
    with pytest.raises(ValueError, match="unknown stain method 'ruifrok'"):
        StainNormalizer("ruifrok")
    with pytest.raises(RuntimeError, match="fit"):
        StainNormalizer().transform(np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(StainError, match="too little stained tissue"):
        StainNormalizer().fit(np.full((64, 64, 3), 250, np.uint8))
    with pytest.raises(StainError, match="no such file"):
        StainNormalizer().fit(tmp_path / "absent.png")
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(StainError, match=r"stain reference: text\.png"):
        StainNormalizer().fit(tmp_path / "text.png")
    with pytest.raises(StainError, match="uint8"):
        StainNormalizer().fit(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(StainError, match=r"shape \(8, 8\)"):
        StainNormalizer().fit(np.zeros((8, 8), np.uint8))


def test_engine_fits_the_normaliser_to_the_slide(stained):
    """Given a normaliser, the engine fixes it to the slide: tiles come out as if the whole image
    had been normalised at once (9 tiles: the engine's sample is the whole slide)."""
    hubmap_stained, _, reference = stained
    normaliser = StainNormalizer("macenko").fit(reference)
    meta = {
        "pixel_size_um": 0.4,
        "tile_size": 128,
        "mean": [0, 0, 0],
        "std": [1 / 255] * 3,
        "thresholds": {"kidney": 0.5},
    }
    red = Member(Red(), meta, 1.0, name="red")
    options = RunOptions(pixel_size_um=0.4, overlap=0.0, detect_tissue=False)
    result = run(hubmap_stained, red, "kidney", options, stain=normaliser)
    whole = normaliser.for_slide(hubmap_stained).transform(hubmap_stained)
    np.testing.assert_allclose(result.probability, red_probability(whole), atol=1e-3)
    plain = run(hubmap_stained, red, "kidney", options)
    np.testing.assert_allclose(plain.probability, red_probability(hubmap_stained), atol=1e-3)


class Red(nn.Module):
    """logit = (red - 128) / 32 of the raw pixel (the member's mean is 0 and std 1/255)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x[:, :1] - 128) / 32


def red_probability(rgb: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-(rgb[..., 0].astype(np.float64) - 128) / 32))


def test_importing_staintools_leaves_qt_settings_alone():
    """OpenCV (imported by staintools) points Qt at its own plugins; napari must not follow."""
    show = "import os; print(sorted(k for k in os.environ if k.startswith('QT_QPA')))"
    env = {k: v for k, v in os.environ.items() if not k.startswith("QT_QPA")}

    def qt_variables_after(statement: str) -> str:
        command = [sys.executable, "-c", f"{statement}; {show}"]
        return subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout

    if "QT_QPA_PLATFORM_PLUGIN_PATH" not in qt_variables_after("import cv2"):
        # opencv-python-headless (albumentations' OpenCV) may own the cv2 files: it sets nothing
        pytest.skip("this OpenCV build sets no Qt variables: nothing to guard against here")
    guarded = "from training.stain import _staintools; _staintools(); import cv2"
    assert qt_variables_after(guarded).strip() == "[]"


def test_closed_form_concentrations_match_staintools_lasso():
    from training.stain import _concentrations, _staintools

    _staintools()
    from staintools.miscellaneous.get_concentrations import get_concentrations

    image, _, _ = make_phantom("kidney", size=192, seed=3)
    matrix = unit_rows(np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11]]))
    expected = get_concentrations(image.copy(), matrix)  # SPAMS, one lasso per pixel
    np.testing.assert_allclose(_concentrations(image, matrix), expected, atol=1e-4)
