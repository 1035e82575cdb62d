"""Training data: records, splits, sampling weights, crops at the model's scale, the sampler."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

from training.data import rle
from training.data.catalog import CatalogError, upsert_row
from training.data.crops import CropDataset, CropOptions, CropSampler
from training.data.records import (
    DataSpec,
    load_records,
    parse_data_spec,
    sampling_weights,
    split_records,
)


def _square_image(size: int = 200, box: tuple[int, int, int, int] = (60, 80, 100, 140)):
    """White image with a dark rectangle; the mask is the rectangle."""
    image = np.full((size, size, 3), 240, np.uint8)
    mask = np.zeros((size, size), np.uint8)
    y0, x0, y1, x1 = box
    image[y0:y1, x0:x1] = (90, 30, 120)
    mask[y0:y1, x0:x1] = 1
    return image, mask


def _folder(root: Path, rows: list[tuple[str, str, float]], extra=None) -> Path:
    for index, (image_id, organ, pixel_size) in enumerate(rows):
        image, mask = _square_image()
        row = {
            "id": image_id,
            "organ": organ,
            "data_source": "HPA",
            "pixel_size": pixel_size,
            "tissue_thickness": 4,
            "rle": rle.encode(mask),
            **((extra or {}).get(index, {})),
        }
        upsert_row(root, row, image=image)
    return root


def test_parse_data_spec_weights():
    assert parse_data_spec("data/a") == DataSpec(Path("data/a"), 1.0)
    assert parse_data_spec("data/a:2.5") == DataSpec(Path("data/a"), 2.5)
    assert parse_data_spec("C:stuff") == DataSpec(Path("C:stuff"), 1.0)  # not a number
    with pytest.raises(ValueError, match="positive"):
        parse_data_spec("data/a:0")


def test_records_hold_ftu_centres_and_metadata(tmp_path):
    folder = _folder(tmp_path / "d", [("a", "kidney", 0.5)])
    (record,) = load_records([DataSpec(folder)])
    assert record.organ == "kidney" and record.pixel_size_um == 0.5
    assert record.shape == (200, 200)
    np.testing.assert_allclose(record.centres, [[79.5, 109.5]])
    assert record.mask().sum() == 40 * 60


def test_bad_datasets_stop_with_the_reason(tmp_path):
    with pytest.raises(CatalogError, match="no such catalogue"):
        load_records([DataSpec(tmp_path / "missing")])
    folder = _folder(tmp_path / "d", [("a", "kidney", 0.5)])
    (folder / "train_images" / "a.tiff").write_bytes(b"not a tiff at all")
    with pytest.raises(CatalogError, match=r"a\.tiff cannot be read"):
        load_records([DataSpec(folder)])
    (folder / "train_images" / "a.tiff").unlink()
    with pytest.raises(CatalogError, match="no file in train_images"):
        load_records([DataSpec(folder)])
    csv = tmp_path / "e" / "train.csv"
    csv.parent.mkdir()
    csv.write_text((folder / "train.csv").read_text().splitlines()[0] + "\n")
    with pytest.raises(CatalogError, match="no rows"):
        load_records([DataSpec(csv.parent)])
    organ_csv = folder / "train.csv"
    organ_csv.write_text(organ_csv.read_text().replace("kidney", "liver"))
    with pytest.raises(CatalogError, match="liver"):
        load_records([DataSpec(folder)])


def test_split_is_by_image_stratified_and_reproducible(tmp_path):
    rows = [(f"k{i}", "kidney", 0.5) for i in range(10)] + [
        (f"l{i}", "lung", 0.5) for i in range(5)
    ]
    records = load_records([DataSpec(_folder(tmp_path / "d", rows))], check_images=False)
    train, val = split_records(records, 0.2, seed=3)
    assert {r.organ for r in val} == {"kidney", "lung"}
    assert len(val) == 3 and len(train) == 12
    assert not {r.id for r in train} & {r.id for r in val}
    again = split_records(records, 0.2, seed=3)[1]
    assert [r.id for r in again] == [r.id for r in val]
    assert [r.id for r in split_records(records, 0.2, seed=4)[1]] != [r.id for r in val]


def test_split_by_fold_column(tmp_path):
    rows = [(f"k{i}", "kidney", 0.5) for i in range(4)]
    folds = {i: {"fold": i % 2} for i in range(4)}
    records = load_records([DataSpec(_folder(tmp_path / "d", rows, folds))], check_images=False)
    train, val = split_records(records, fold=1)
    assert [r.id for r in val] == ["k1", "k3"] and [r.id for r in train] == ["k0", "k2"]
    with pytest.raises(CatalogError, match="no image has fold 5"):
        split_records(records, fold=5)


def test_sampling_weights_share_folders_and_oversample(tmp_path):
    a = _folder(tmp_path / "a", [("k0", "kidney", 0.5), ("l0", "lung", 0.5)])
    b = _folder(tmp_path / "b", [("k1", "kidney", 0.5)])
    records = load_records([DataSpec(a), DataSpec(b)], check_images=False)
    plain = sampling_weights(records, [1.0, 1.0])
    np.testing.assert_allclose(plain, [0.25, 0.25, 0.5])
    weighted = sampling_weights(records, [1.0, 1.0], {"lung": 5})
    assert weighted[1] == pytest.approx(5 * weighted[0])
    with pytest.raises(ValueError, match="unknown organ"):
        sampling_weights(records, [1.0, 1.0], {"liver": 2})


def test_crops_are_cut_at_the_model_pixel_size_and_stay_aligned(tmp_path):
    folder = _folder(tmp_path / "d", [("a", "kidney", 0.5)])
    records = load_records([DataSpec(folder)])
    # model at 1.0 um/px: the 40x60 px rectangle at 0.5 um/px is 20x30 px in a crop
    dataset = CropDataset(records, np.ones(1), CropOptions(64, 1.0, ftu_fraction=1.0, jitter=0))
    item = dataset[0]
    image, mask = item["image"].numpy(), item["mask"].numpy()
    assert image.shape == (64, 64, 3) and mask.shape == (64, 64)
    assert mask.sum() == 20 * 30
    dark = image[..., 0] < 165
    assert (dark == mask.astype(bool)).all()
    np.testing.assert_array_equal(dataset[0]["image"].numpy(), image)  # same index, same crop
    assert item["organ"] == 0


def test_random_crops_cover_the_image(tmp_path):
    folder = _folder(tmp_path / "d", [("a", "kidney", 0.5)])
    records = load_records([DataSpec(folder)])
    dataset = CropDataset(records, np.ones(1), CropOptions(32, 1.0, ftu_fraction=0.0))
    covered = [int(dataset[i]["mask"].sum() > 0) for i in range(30)]
    assert 0 < sum(covered) < 30  # some crops miss the FTU, some hit it


def test_augmenter_is_applied_with_the_record_context(tmp_path):
    folder = _folder(tmp_path / "d", [("a", "kidney", 0.5)])
    records = load_records([DataSpec(folder)])
    seen = {}

    def augment(image, mask, rng, *, organ, model_um, thickness_um, other):
        seen.update(organ=organ, model_um=model_um, thickness_um=thickness_um)
        other_image, other_mask = other()
        assert other_image.shape == image.shape and other_mask.shape == mask.shape
        return image[::-1].copy(), mask[::-1].copy()

    options = CropOptions(64, 1.0, ftu_fraction=1.0, jitter=0)
    dataset = CropDataset(records, np.ones(1), options, augment=augment)
    plain = CropDataset(records, np.ones(1), options)
    np.testing.assert_array_equal(dataset[0]["mask"].numpy(), plain[0]["mask"].numpy()[::-1])
    assert seen == {"organ": "kidney", "model_um": 1.0, "thickness_um": 4.0}


def test_sampler_shares_an_epoch_between_ranks():
    ranks = [CropSampler(10, rank, 2) for rank in range(2)]
    first = [list(s) for s in ranks]
    assert len(first[0]) == 5 and not set(first[0]) & set(first[1])
    for sampler in ranks:
        sampler.set_epoch(1)
    second = [list(s) for s in ranks]
    assert set(second[0] + second[1]) == set(range(10, 20))
    with pytest.raises(ValueError, match="cannot be shared"):
        CropSampler(1, 0, 2)


def test_the_data_package_does_not_reach_up_into_inference() -> None:
    # training.data sits below the engine: crops read slide pixels through training.slides (an
    # import inside a function counts too: it is the same dependency, only later)
    root = Path(__file__).resolve().parents[1] / "training" / "data"
    upward = []
    for path in sorted(root.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                ("training.inference", "training.models")
            ):
                upward.append(f"{path.name}:{node.lineno} {node.module}")
    assert not upward, upward
