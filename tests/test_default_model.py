"""The bundled default model: present, small, in the seeds' shape, used when no model is named."""

from __future__ import annotations

import numpy as np
import yaml

from napari_ftu.cli import main
from training.data.catalog import ORGANS, read_catalog
from training.models import default_model_path
from training.models.ensemble import load_ensemble
from training.slides import write_pyramid
from training.synthetic import make_phantom


def test_the_default_ensemble_has_the_seeds_shape_and_fits_a_laptop():
    manifest = default_model_path()
    members = yaml.safe_load(manifest.read_text())["members"]
    total = sum((manifest.parent / m["checkpoint"]).stat().st_size for m in members)
    assert total < 25 * 2**20
    ensemble = load_ensemble(manifest)
    names = [m.model.config["name"] for m in ensemble.members]
    swin, coat = "swin_micro_upernet", "coat_micro_daformer"
    assert names == [swin, coat, swin, coat, coat, coat, "unext_micro"]
    general = ("spleen", "lung", "prostate")
    colon = ("largeintestine",)
    organs = [general, general, ("lung",), ("kidney",), colon, colon, colon]
    assert [m.organs for m in ensemble.members] == organs
    assert len(ensemble.for_organ("lung")) == 3 and len(ensemble.for_organ("kidney")) == 1
    assert len(ensemble.for_organ("largeintestine")) == 3  # the colon members, no general one
    # kidney: one specialist on 512 px tiles, where the others take 256
    assert [m.meta["tile_size"] for m in ensemble.members] == [256, 256, 256, 512, 256, 256, 256]
    assert [m.meta["pixel_size_um"] for m in ensemble.members] == [1.0] * 7
    for member in ensemble.members:
        assert member.meta["training"]["epochs"] >= 1  # trained here, not a random init
        assert "kidney" in member.meta["organs"]
        assert member.meta["domain"]["stains"]  # described: the domain check's reference
    # calibrated as a whole on validation images (scripts/train_default_model.sh)
    assert set(ensemble.thresholds) == set(ensemble.min_areas_um2) == set(ORGANS)


def test_segment_uses_the_default_model_when_none_is_named(tmp_path):
    image, _, _ = make_phantom("kidney", size=400, seed=3)
    slide = write_pyramid(tmp_path / "slide.tiff", image, 0.4)
    out = tmp_path / "out"
    assert main(["segment", str(slide), "--organ", "kidney", "--out", str(out), "--quiet"]) == 0
    row = read_catalog(out).iloc[0]
    assert row["model"] == "ensemble.yaml"
    assert (row["img_height"], row["img_width"]) == image.shape[:2]
    assert isinstance(row["rle"], str) and np.isfinite(row["pixel_size"])
