"""training.inference.batch: the library under ``napari-ftu segment`` (rows, files, refusals)."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import member
from torch import nn

from training.data.catalog import read_catalog, upsert_row
from training.data.rle import decode
from training.inference import RunOptions
from training.inference.batch import (
    SUFFIXES,
    WRITERS,
    BatchOptions,
    Outputs,
    preflight,
    segment_slides,
)
from training.models.ensemble import Ensemble
from training.slides import write_pyramid


class Red(nn.Module):
    """An FTU wherever red beats green."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x[:, :1] - x[:, 1:2]) / 8


@pytest.fixture
def slides(tmp_path):
    """Two slides at 0.4 um/px with one red square each."""
    paths = []
    for index in range(2):
        image = np.full((96, 80, 3), (200, 220, 220), np.uint8)  # glass: green beats red
        image[20 + index : 50, 10:40] = (200, 40, 60)
        paths.append(write_pyramid(tmp_path / f"s{index}.tiff", image, 0.4))
    return paths


def options(out, **changes) -> BatchOptions:
    run = RunOptions(detect_tissue=False, read_workers=0)
    return dataclasses.replace(BatchOptions(out, "kidney", out / "red.pt", run), **changes)


def test_every_output_has_a_file_name_and_a_writer():
    names = [f.name for f in dataclasses.fields(Outputs)]
    assert names == list(SUFFIXES) == list(WRITERS)
    both = Outputs(labels_tiff=True, overlay=True)
    assert both.files(Path("o"), "a") == [Path("o/a.labels.tiff"), Path("o/a.overlay.png")]


def test_segment_slides_writes_rows_and_files_and_reports_a_missing_slide(slides, tmp_path, caplog):
    out = tmp_path / "out"
    ensemble = Ensemble([member(Red(), pixel_size=0.8, tile=32)])
    asked = options(out, outputs=Outputs(labels_tiff=True, geojson=True))
    missing = tmp_path / "gone.tiff"
    problems, existing = preflight([*slides, missing], [*slides, missing], asked)
    assert problems == [f"{missing}: no such file"] and existing == []
    caplog.set_level(logging.INFO)
    done = segment_slides([*slides, missing], ensemble, asked)
    assert [row["id"] for row in done.rows] == ["s0", "s1"]
    (failure,) = done.failures
    assert failure.startswith(f"{missing}: ") and "\n" not in failure
    frame = read_catalog(out, check_images=False).set_index("id")
    mask = decode(frame.loc["s0", "rle"], (96, 80))
    assert mask[25:45, 15:35].all() and not mask[60:].any()  # level-0 size, from the 0.8 map
    for path in slides:
        assert (out / f"{path.stem}.labels.tiff").is_file()
        assert (out / f"{path.stem}.geojson").is_file()
    assert "s0.tiff: 1 kidney object(s)" in caplog.text
    assert preflight(slides, slides, asked)[1] == [
        *(str(f) for p in slides for f in asked.outputs.files(out, p.stem)),
        *(f"{out / 'train.csv'}: row {p.stem}" for p in slides),
    ]


def test_a_row_written_meanwhile_is_refused_with_no_files_written(slides, tmp_path):
    out = tmp_path / "out"
    upsert_row(out, {"id": "s0", "organ": "kidney", "img_height": 96, "img_width": 80, "rle": ""})
    ensemble = Ensemble([member(Red(), pixel_size=0.8, tile=32)])
    done = segment_slides(slides[:1], ensemble, options(out, outputs=Outputs(geojson=True)))
    (failure,) = done.failures
    assert "row s0 was written by another run" in failure and not done.rows
    assert not (out / "s0.geojson").exists()
    assert read_catalog(out, check_images=False)["rle"].fillna("").tolist() == [""]


def test_a_batch_takes_no_region(tmp_path):
    with pytest.raises(ValueError, match="a batch segments whole slides"):
        options(tmp_path, run=RunOptions(region=(0, 0, 5, 5)))
