"""Training augmentations: alignment of image and mask, reproducibility, strengths, the config."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from skimage.color import hed2rgb

from training.augment import (
    AugmentConfig,
    Augmenter,
    adapt_pixel_size,
    adapt_thickness,
    brightness_contrast,
    cutmix,
    cutout,
    downsample_round_trip,
    flip_rotate,
    gauss_noise,
    hed_jitter,
    hue_saturation_value,
    jitter_stains,
    rotate_scale,
    thicken,
)

FTU_RED = 220


def painted(shape: tuple[int, int] = (64, 64), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A mask of asymmetric blobs and an image whose red channel paints the same blobs."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    mask = np.zeros(shape, np.uint8)
    for _ in range(4):
        cy, cx = rng.integers(8, shape[0] - 8), rng.integers(8, shape[1] - 8)
        ry, rx = rng.integers(3, 10, 2)
        mask[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1] = 1
    mask[:6, :20] = 1  # a corner bar, so that every symmetry is visible
    image = np.empty((*shape, 3), np.uint8)
    image[..., 0] = np.where(mask, FTU_RED, 30)
    image[..., 1] = rng.integers(60, 200, shape)
    image[..., 2] = (xx * 3 % 256).astype(np.uint8)
    return image, mask


def tissue(size: int = 64, seed: int = 0) -> np.ndarray:
    """An H&E-like RGB image: pink stroma with purple nuclei (optical densities through skimage)."""
    rng = np.random.default_rng(seed)
    hed = np.zeros((size, size, 3))
    hed[..., 0] = rng.uniform(0, 0.06, (size, size))
    hed[..., 1] = rng.uniform(0.01, 0.04, (size, size))
    return np.round(hed2rgb(hed) * 255).astype(np.uint8)


RANDOM_OPS = {
    "flip_rotate": lambda i, m, r: flip_rotate(i, m, r),
    "rotate_scale": lambda i, m, r: rotate_scale(i, m, r),
    "brightness_contrast": lambda i, m, r: brightness_contrast(i, m, r),
    "hue_saturation_value": lambda i, m, r: hue_saturation_value(i, m, r),
    "gauss_noise": lambda i, m, r: gauss_noise(i, m, r),
    "hed_jitter": lambda i, m, r: hed_jitter(i, m, r),
    "adapt_thickness": lambda i, m, r: adapt_thickness(i, m, r, organ="kidney", thickness_um=4.0),
    "adapt_pixel_size": lambda i, m, r: adapt_pixel_size(i, m, r, organ="lung", model_um=0.4),
    "cutout": lambda i, m, r: cutout(i, m, r),
    "cutmix": lambda i, m, r: cutmix(i, m, *painted(seed=5), r),
}
IMAGE_ONLY = [
    "brightness_contrast",
    "hue_saturation_value",
    "gauss_noise",
    "hed_jitter",
    "adapt_thickness",
    "adapt_pixel_size",
    "cutout",
]


@pytest.mark.parametrize("name", list(RANDOM_OPS))
def test_shape_dtype_reproducible_and_inputs_untouched(name: str) -> None:
    image, mask = painted()
    before = image.copy(), mask.copy()
    out = RANDOM_OPS[name](image, mask, np.random.default_rng(7))
    again = RANDOM_OPS[name](image, mask, np.random.default_rng(7))
    assert out[0].shape == image.shape and out[0].dtype == np.uint8
    assert out[1].shape == mask.shape and out[1].dtype == np.uint8
    assert set(np.unique(out[1])) <= {0, 1}
    np.testing.assert_array_equal(out[0], again[0])
    np.testing.assert_array_equal(out[1], again[1])
    np.testing.assert_array_equal(image, before[0])
    np.testing.assert_array_equal(mask, before[1])


@pytest.mark.parametrize("name", IMAGE_ONLY)
def test_image_only_ops_keep_the_mask(name: str) -> None:
    image, mask = painted()
    changed = False
    for seed in range(4):
        out_image, out_mask = RANDOM_OPS[name](image, mask, np.random.default_rng(seed))
        np.testing.assert_array_equal(out_mask, mask)
        changed |= not np.array_equal(out_image, image)
    assert changed


def test_flip_rotate_moves_image_and_mask_together() -> None:
    image, mask = painted()
    seen = set()
    rng = np.random.default_rng(0)
    for _ in range(40):
        out_image, out_mask = flip_rotate(image, mask, rng)
        np.testing.assert_array_equal(out_image[..., 0] == FTU_RED, out_mask == 1)
        seen.add(out_mask.tobytes())
    assert len(seen) == 8  # all symmetries of the square, from one generator


def test_flips_of_a_non_square_image_are_independent() -> None:
    image, mask = painted((48, 64))
    rng = np.random.default_rng(0)
    outcomes = set()
    for _ in range(40):
        out_image, out_mask = flip_rotate(image, mask, rng)
        assert out_image.shape == image.shape
        np.testing.assert_array_equal(out_image[..., 0] == FTU_RED, out_mask == 1)
        outcomes.add(out_mask.tobytes())
    assert len(outcomes) == 4  # identity, either flip, both: not two flips firing together


def test_rotate_scale_keeps_alignment_and_zero_is_identity() -> None:
    image, mask = painted()
    rng = np.random.default_rng(1)
    for _ in range(5):
        out_image, out_mask = rotate_scale(image, mask, rng, max_degrees=40, max_scale=0.2)
        disagree = (out_image[..., 0] > (FTU_RED + 30) / 2) != (out_mask == 1)
        assert disagree.mean() < 0.03  # linear vs nearest differ at most along the outlines
        assert not np.array_equal(out_mask, mask)
    same = rotate_scale(image, mask, rng, max_degrees=0, max_scale=0)
    np.testing.assert_array_equal(same[0], image)
    np.testing.assert_array_equal(same[1], mask)


def test_zero_strengths_are_identities() -> None:
    image, mask = painted()
    rng = np.random.default_rng(3)
    other = painted(seed=9)
    for out in (
        brightness_contrast(image, mask, rng, brightness=0, contrast=0),
        hue_saturation_value(image, mask, rng, hue=0, saturation=0, value=0),
        gauss_noise(image, mask, rng, max_std=0),
        hed_jitter(image, mask, rng, scale=0, shift=0),
        adapt_thickness(image, mask, rng, organ="kidney", thickness_um=4.0, strength=0),
        adapt_pixel_size(image, mask, rng, organ="prostate", model_um=0.4, max_factor=1),
        cutout(image, mask, rng, max_holes=0),
        cutmix(image, mask, *other, rng, max_area=0),
    ):
        np.testing.assert_array_equal(out[0], image)
        np.testing.assert_array_equal(out[1], mask)


def test_jitter_stains_matches_skimage_hed() -> None:
    rng = np.random.default_rng(0)
    hed = np.zeros((32, 32, 3))
    hed[..., 0] = rng.uniform(0, 0.04, (32, 32))
    hed[..., 1] = rng.uniform(0, 0.03, (32, 32))
    image = np.round(hed2rgb(hed) * 255).astype(np.uint8)
    doubled = hed * [2.0, 1.0, 1.0] + [0.0, 0.01, 0.0]
    expected = np.round(hed2rgb(doubled) * 255).astype(int)
    # skimage's amounts are optical densities divided by ln(1e6)
    got = jitter_stains(image, [2.0, 1.0, 1.0], [0.0, 0.01 * np.log(1e6), 0.0]).astype(int)
    assert np.abs(got - expected).max() <= 3
    np.testing.assert_array_equal(jitter_stains(image, [1, 1, 1], [0, 0, 0]), image)


def test_thicker_sections_are_darker_and_more_saturated() -> None:
    import cv2

    image = tissue()
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV).astype(float)
    thick = cv2.cvtColor(thicken(image, 2.5), cv2.COLOR_RGB2HSV).astype(float)
    thin = cv2.cvtColor(thicken(image, 0.5), cv2.COLOR_RGB2HSV).astype(float)
    assert thick[..., 2].mean() < hsv[..., 2].mean() - 20  # value: darker
    assert thick[..., 1].mean() > hsv[..., 1].mean() + 20  # saturation: stronger
    assert thin[..., 2].mean() > hsv[..., 2].mean() and thin[..., 1].mean() < hsv[..., 1].mean()
    white = np.full((4, 4, 3), 255, np.uint8)
    np.testing.assert_array_equal(thicken(white, 3.0), white)


def test_thickness_adaptation_follows_the_hubmap_table() -> None:
    image, mask = tissue(), np.zeros((64, 64), np.uint8)
    rng = np.random.default_rng(0)
    for _ in range(5):  # kidney: 4 um -> up to 10 um, never lighter
        out, _ = adapt_thickness(image, mask, rng, organ="kidney", thickness_um=4.0)
        assert out.astype(float).mean() <= image.astype(float).mean()
    assert any(
        adapt_thickness(image, mask, rng, organ="kidney", thickness_um=4.0)[0].mean()
        < image.mean() - 5
        for _ in range(5)
    )
    spleen, _ = adapt_thickness(image, mask, rng, organ="spleen", thickness_um=4.0)  # 4 -> 4 um
    np.testing.assert_array_equal(spleen, image)
    with pytest.raises(ValueError, match="unknown organ 'liver'"):
        adapt_thickness(image, mask, rng, organ="liver", thickness_um=4.0)


def high_frequency_energy(image: np.ndarray) -> float:
    grey = image.astype(float).mean(axis=2)
    return float((np.diff(grey, axis=0) ** 2).mean() + (np.diff(grey, axis=1) ** 2).mean())


def test_pixel_size_adaptation_loses_detail_only_toward_coarser_scans() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    mask = painted()[1]
    detail = high_frequency_energy(image)
    assert high_frequency_energy(downsample_round_trip(image, 2.0)) < 0.5 * detail
    for _ in range(5):  # prostate's HuBMAP scan (6.263 um/px) is coarser than 0.4 um/px
        out, out_mask = adapt_pixel_size(image, mask, rng, organ="prostate", model_um=0.4)
        assert out.shape == image.shape
        assert high_frequency_energy(out) < 0.9 * detail
        np.testing.assert_array_equal(out_mask, mask)
    # large intestine at 0.229 um/px, lung at 0.7562 um/px seen by a 1 um/px model: finer
    for organ, model_um in (("largeintestine", 0.4), ("lung", 1.0)):
        out, _ = adapt_pixel_size(image, mask, rng, organ=organ, model_um=model_um)
        np.testing.assert_array_equal(out, image)


def test_cutmix_pastes_the_same_box_of_image_and_mask() -> None:
    image, mask = np.zeros((64, 64, 3), np.uint8), np.zeros((64, 64), np.uint8)
    other_image, other_mask = np.full_like(image, 7), np.ones_like(mask)
    rng = np.random.default_rng(0)
    pasted = 0
    for _ in range(10):
        out_image, out_mask = cutmix(image, mask, other_image, other_mask, rng, max_area=0.5)
        box = out_mask == 1
        np.testing.assert_array_equal(out_image[..., 0] == 7, box)
        if box.any():
            rows, cols = np.flatnonzero(box.any(axis=1)), np.flatnonzero(box.any(axis=0))
            assert box.sum() == rows.size * cols.size  # one rectangle
            assert box.mean() <= 0.5 + 0.05
            pasted += 1
    assert pasted >= 8
    with pytest.raises(ValueError, match="one shape"):
        cutmix(image, mask, other_image[:32], other_mask[:32], rng)


@pytest.mark.parametrize("cut_mask", [False, True])
def test_cutout_fills_holes_and_keeps_or_cuts_the_mask(cut_mask: bool) -> None:
    image, mask = np.full((64, 64, 3), 100, np.uint8), np.ones((64, 64), np.uint8)
    out_image, out_mask = cutout(
        image, mask, np.random.default_rng(0), max_size=0.2, fill=255, cut_mask=cut_mask
    )
    holes = (out_image == 255).all(axis=2)
    assert holes.any() and ((out_image == 100) | (out_image == 255)).all()
    np.testing.assert_array_equal(out_mask == 0, holes if cut_mask else np.zeros_like(holes))


def every_probability(value: float) -> dict[str, float]:
    return {f.name: value for f in dataclasses.fields(AugmentConfig) if f.name.endswith("_p")}


def run(augmenter: Augmenter, seed: int, other: tuple | None = None) -> tuple:
    image, mask = painted()
    return augmenter(
        image,
        mask,
        np.random.default_rng(seed),
        organ="kidney",
        model_um=0.4,
        thickness_um=4.0,
        other=other,
    )


def test_augmenter_output_contract_and_reproducibility() -> None:
    augmenter = Augmenter(AugmentConfig(**every_probability(1.0)))
    other = painted(seed=3)
    for seed in range(3):
        image, mask = run(augmenter, seed, other)
        assert image.shape == (64, 64, 3) and image.dtype == np.uint8
        assert mask.shape == (64, 64) and mask.dtype == np.uint8
        assert image.flags.c_contiguous and mask.flags.c_contiguous
        assert set(np.unique(mask)) <= {0, 1}
        again = run(augmenter, seed, other)
        np.testing.assert_array_equal(image, again[0])
        np.testing.assert_array_equal(mask, again[1])
    assert not np.array_equal(run(augmenter, 0, other)[0], run(augmenter, 1, other)[0])


def test_augmenter_groups_switch_off() -> None:
    image, mask = painted()
    same = run(Augmenter(AugmentConfig.none()), 0)
    np.testing.assert_array_equal(same[0], image)
    np.testing.assert_array_equal(same[1], mask)
    only_geometry = AugmentConfig(color=False, stain=False, domain=False, mix=False)
    for seed in range(4):
        out_image, out_mask = run(Augmenter(only_geometry), seed)
        disagree = (out_image[..., 0] > (FTU_RED + 30) / 2) != (out_mask == 1)
        assert disagree.mean() < 0.03
    no_geometry = dataclasses.replace(AugmentConfig(**every_probability(1.0)), geometric=False)
    for seed in range(4):  # without geometry and CutMix, only CutOut may touch the mask: kept
        np.testing.assert_array_equal(run(Augmenter(no_geometry), seed)[1], mask)


def test_augmenter_cutmix_uses_the_other_sample() -> None:
    config = dataclasses.replace(AugmentConfig.none(), mix=True, cutmix_p=1.0, cutout_p=0.0)
    other = (np.zeros((64, 64, 3), np.uint8), np.zeros((64, 64), np.uint8))
    mask = painted()[1]
    assert any(not np.array_equal(run(Augmenter(config), s, other)[1], mask) for s in (0, 1))
    np.testing.assert_array_equal(run(Augmenter(config), 0)[1], painted()[1])  # no other: no mix


def test_augmenter_rejects_bad_samples() -> None:
    augmenter = Augmenter()
    image, mask = painted()
    rng = np.random.default_rng(0)
    kwargs = {"organ": "kidney", "model_um": 0.4, "thickness_um": 4.0}
    with pytest.raises(ValueError, match="image must be"):
        augmenter(image.astype(np.float32), mask, rng, **kwargs)
    with pytest.raises(ValueError, match="mask must be"):
        augmenter(image, mask[:10], rng, **kwargs)
    with pytest.raises(ValueError, match="unknown organ"):
        augmenter(image, mask, rng, **{**kwargs, "organ": "heart"})


def test_config_round_trips_through_a_dict_and_yaml() -> None:
    yaml = pytest.importorskip("yaml")
    config = AugmentConfig(rotate_degrees=30, stain=False, cutout_mask=True)
    assert config.rotate_degrees == 30.0 and isinstance(config.rotate_degrees, float)
    settings = yaml.safe_load(yaml.safe_dump(config.to_dict()))
    assert AugmentConfig.from_dict(settings) == config
    assert AugmentConfig.from_dict({}) == AugmentConfig()
    assert dataclasses.asdict(AugmentConfig.none())["mix"] is False


def test_config_names_unknown_keys_and_bad_values() -> None:
    with pytest.raises(ValueError, match=r"unknown augmentation setting\(s\): bogus, hue_p"):
        AugmentConfig.from_dict({"hue_p": 0.5, "bogus": 1, "hue": 5})
    with pytest.raises(TypeError, match="geometric must be a bool"):
        AugmentConfig.from_dict({"geometric": "false"})
    with pytest.raises(ValueError, match="probability cutmix_p"):
        AugmentConfig.from_dict({"cutmix_p": 1.5})
    with pytest.raises(ValueError, match="scale must be below 1"):
        AugmentConfig(scale=1.0)
    with pytest.raises(ValueError, match="hue must be >= 0"):
        AugmentConfig(hue=-1.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        AugmentConfig().hue = 3.0  # type: ignore[misc]
