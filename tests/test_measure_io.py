"""objects.csv and summary.csv (training.measure.io): round trips, atomic upserts, refusals."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from training.measure import SUMMARY_COLUMNS, measure_objects, summarize
from training.measure.io import read_objects, read_summary, write_measurements


def _objects() -> pd.DataFrame:
    labels = np.zeros((40, 40), np.int32)
    labels[5:15, 5:15], labels[30:, 30:] = 1, 2
    return measure_objects(labels, 0.5, probability=np.full((40, 40), 0.8))


def test_objects_and_summary_read_back_as_written(tmp_path):
    objects = _objects()
    paths = write_measurements(
        tmp_path, "s1", objects, summarize(objects, "s1", 1.0), overwrite=False
    )
    assert [p.name for p in paths] == ["s1.objects.csv", "summary.csv"]
    pd.testing.assert_frame_equal(read_objects(paths[0]), objects)
    write_measurements(tmp_path, "007", objects, summarize(objects, "007", None), overwrite=False)
    summary = read_summary(tmp_path / "summary.csv")
    assert tuple(summary.columns) == SUMMARY_COLUMNS
    assert list(summary["id"]) == ["s1", "007"]  # an id of digits stays text
    assert summary.set_index("id").loc["s1", "ftus_per_mm2"] == 2.0
    assert math.isnan(summary.set_index("id").loc["007", "ftus_per_mm2"])


def test_a_row_another_run_wrote_is_refused_unless_overwrite(tmp_path):
    objects = _objects()
    write_measurements(tmp_path, "s1", objects, summarize(objects, "s1", 1.0), overwrite=False)
    (tmp_path / "s1.objects.csv").unlink()  # only the summary row is left: still refused
    fewer = objects.iloc[:1]
    with pytest.raises(FileExistsError, match="row s1 exists"):
        write_measurements(tmp_path, "s1", fewer, summarize(fewer, "s1", 1.0), overwrite=False)
    assert not (tmp_path / "s1.objects.csv").exists()  # nothing written
    write_measurements(tmp_path, "s1", fewer, summarize(fewer, "s1", 1.0), overwrite=True)
    summary = read_summary(tmp_path / "summary.csv")
    assert list(summary["ftu_count"]) == [1]
    with pytest.raises(FileExistsError, match=r"s1\.objects\.csv exists"):
        write_measurements(tmp_path, "s1", fewer, summarize(fewer, "s1", 1.0), overwrite=False)
    assert not list(tmp_path.glob(".*tmp"))  # no temporaries left


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty file"),
        ("label,area_um2\n1,2.0\n", "lacks perimeter_um"),
    ],
)
def test_a_file_that_is_not_an_objects_table_is_refused(tmp_path, text, message):
    path = tmp_path / "x.objects.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        read_objects(path)


def test_a_wrong_value_in_an_objects_table_is_named(tmp_path):
    path = tmp_path / "x.objects.csv"
    _objects().to_csv(path, index=False)
    frame = pd.read_csv(path)
    frame["touches_edge"] = "maybe"
    frame.to_csv(path, index=False)
    with pytest.raises(ValueError, match="touches_edge"):
        read_objects(path)
    frame["touches_edge"] = False
    frame["label"] = "one"
    frame.to_csv(path, index=False)
    with pytest.raises(ValueError, match="wrong value"):
        read_objects(path)


def test_a_summary_of_another_slide_is_refused(tmp_path):
    objects = _objects()
    with pytest.raises(ValueError, match="not of 's2'"):
        write_measurements(tmp_path, "s2", objects, summarize(objects, "s1", 1.0), overwrite=True)
