from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from training.data.catalog import ORGANS, image_path, read_catalog
from training.data.rle import decode
from training.slides import open_slide
from training.synthetic import (
    GLASS_INTENSITY,
    ORGAN_STYLES,
    STAIN_VECTORS,
    main,
    make_phantom,
    render_phantom,
)


def optical_density(image: np.ndarray) -> np.ndarray:
    return -np.log(np.maximum(image.astype(float), 1) / GLASS_INTENSITY)


def median_diameter_px(mask: np.ndarray) -> float:
    labels, _n = ndimage.label(mask)
    areas = np.bincount(labels.ravel())[1:]
    return float(np.median(2 * np.sqrt(areas / np.pi)))


@pytest.mark.parametrize("organ", ORGANS)
def test_every_organ_has_ftus_sized_like_the_real_ones(organ):
    image, mask, meta = make_phantom(organ, size=1400, seed=3)
    assert image.shape == (1400, 1400, 3) and image.dtype == np.uint8
    assert mask.shape == (1400, 1400) and set(np.unique(mask)) <= {0, 1}
    assert meta["n_ftu"] >= 1 and meta["pixel_size_um"] == 0.4
    expected = ORGAN_STYLES[organ].diameter_um / 0.4
    # instances cut by the image border are smaller, so only an upper bound is tight
    assert 0.45 * expected < median_diameter_px(mask) < 1.35 * expected
    # FTUs are visibly different from their surroundings
    inside, outside = image[mask > 0].mean(axis=0), image[mask == 0].mean(axis=0)
    assert np.abs(inside - outside).max() > 8


def test_pixel_size_scales_structures_not_physics():
    _, coarse, _ = make_phantom("largeintestine", size=1024, seed=1, pixel_size_um=0.8, n_ftu=4)
    _, fine, meta = make_phantom("largeintestine", "hubmap", size=1024, seed=1, n_ftu=4)
    assert meta["pixel_size_um"] == pytest.approx(0.229)
    ratio = median_diameter_px(fine) / median_diameter_px(coarse)
    assert 2.2 < ratio < 4.8  # 0.8 / 0.229 = 3.5


def test_deterministic_for_a_seed():
    a = make_phantom("kidney", size=256, seed=5)
    b = make_phantom("kidney", size=256, seed=5)
    c = make_phantom("kidney", size=256, seed=6)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


@pytest.mark.parametrize("domain", ["hpa", "hubmap"])
def test_colours_follow_the_stain_vectors(domain):
    image, _, meta = make_phantom(
        "prostate", domain, size=512, seed=2, pixel_size_um=0.4, thickness_um=4
    )
    od = optical_density(image).reshape(-1, 3)
    od = od[od.sum(axis=1) > 0.6]
    stains = np.asarray(meta["stain_vectors"])
    np.testing.assert_allclose(
        stains,
        STAIN_VECTORS[domain] / np.linalg.norm(STAIN_VECTORS[domain], axis=1, keepdims=True),
        atol=1e-9,
    )
    coeffs, *_ = np.linalg.lstsq(stains.T, od.T, rcond=None)
    residual = np.linalg.norm(od.T - stains.T @ coeffs, axis=0) / np.linalg.norm(od, axis=1)
    assert np.median(residual) < 0.06
    assert (coeffs > -0.05).mean() > 0.97  # concentrations are non-negative


def test_custom_stain_vectors_and_thickness():
    custom = [[0.3, 0.8, 0.5], [0.05, 0.95, 0.3]]
    thin, _, _ = make_phantom("spleen", size=384, seed=1, stain_vectors=custom, thickness_um=3)
    thick, _, _ = make_phantom("spleen", size=384, seed=1, stain_vectors=custom, thickness_um=10)
    assert optical_density(thick).mean() > 1.8 * optical_density(thin).mean()
    od = optical_density(thick).reshape(-1, 3)
    od = od[od.sum(axis=1) > 0.6]
    stains = np.asarray(custom) / np.linalg.norm(custom, axis=1, keepdims=True)
    coeffs, *_ = np.linalg.lstsq(stains.T, od.T, rcond=None)
    residual = np.linalg.norm(od.T - stains.T @ coeffs, axis=0) / np.linalg.norm(od, axis=1)
    assert np.median(residual) < 0.06


def test_background_share_is_glass():
    image, _mask, meta = make_phantom("kidney", size=512, seed=4, tissue_fraction=0.6)
    assert 0.5 < meta["tissue_fraction"] < 0.75
    glass = (image.min(axis=-1) > GLASS_INTENSITY - 12).mean()
    assert glass > 0.2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"organ": "liver"}, "unknown organ 'liver'"),
        ({"organ": "lung", "domain": "lab9"}, "unknown domain 'lab9'"),
        ({"organ": "lung", "pixel_size_um": -1}, "pixel_size_um must be positive"),
        ({"organ": "lung", "stain_vectors": [[1, 0, 0]]}, "stain_vectors must be 2x3"),
        ({"organ": "lung", "size": 4}, "at least 16 pixels"),
        ({"organ": "lung", "colour": "red"}, "unknown phantom override"),
    ],
)
def test_bad_parameters(kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        make_phantom(**kwargs)


def test_render_on_a_real_mask(real_annotations):
    frame = read_catalog(real_annotations)
    row = frame[frame["organ"] == "kidney"].iloc[0]
    mask = decode(row["rle"], (row["img_height"], row["img_width"]))[::2, ::2].copy()
    image = render_phantom(mask, "kidney", pixel_size_um=0.8)
    assert image.shape == (*mask.shape, 3)
    assert np.abs(image[mask > 0].mean(axis=0) - image[mask == 0].mean(axis=0)).max() > 8


def test_cli_writes_a_valid_dataset_folder(tmp_path):
    out = tmp_path / "phantoms"
    assert (
        main(["--out", str(out), "--organs", "kidney", "lung", "--size", "300", "--overlay"]) == 0
    )
    frame = read_catalog(out)  # validates image sizes against the rows
    assert list(frame["id"]) == ["kidney_hpa_0", "lung_hpa_0"]
    assert set(frame["data_source"]) == {"HPA"}
    for row in frame.itertuples():
        _, mask, _ = make_phantom(row.organ, "hpa", 300, 0)
        np.testing.assert_array_equal(decode(row.rle, (300, 300)), mask)
        with open_slide(image_path(out, row.id)) as slide:
            assert slide.pixel_size_um == pytest.approx(0.4)
        assert (out / "overlays" / f"{row.id}.png").is_file()
    # a second run with the same ids replaces rows and keeps backups
    main(["--out", str(out), "--organs", "kidney", "--size", "300"])
    assert (out / "train.backup.csv").is_file()
    assert len(read_catalog(out)) == 2


def test_cli_side_in_micrometres_follows_each_domain_pixel_size(tmp_path):
    out = tmp_path / "hubmap"
    args = ["--out", str(out), "--domain", "hubmap", "--organs", "kidney", "lung"]
    assert main([*args, "--side-um", "150"]) == 0
    frame = read_catalog(out).set_index("organ")
    # 150 um at HuBMAP's 0.5 um/px (kidney) and 0.7562 um/px (lung)
    assert (frame.loc["kidney", "img_height"], frame.loc["kidney", "img_width"]) == (300, 300)
    assert frame.loc["lung", "img_height"] == round(150 / 0.7562)
    with pytest.raises(SystemExit):
        main([*args, "--side-um", "150", "--size", "300"])


def test_cli_from_real_annotations(tmp_path, real_annotations):
    out = tmp_path / "real"
    assert (
        main(["--out", str(out), "--from-annotations", str(real_annotations), "--limit", "1"]) == 0
    )
    frame = read_catalog(out)
    source = read_catalog(real_annotations).iloc[0]
    assert frame.loc[0, "id"] == source["id"] and frame.loc[0, "rle"] == source["rle"]
    assert frame.loc[0, "img_height"] == source["img_height"]
