"""The engine's storage, thread, slide and tile-source guarantees (issue: silent wrong results)."""

from __future__ import annotations

import gc
import math
import tempfile
import threading

import numpy as np
import pytest
import torch
from helpers import member
from torch import nn

from training.inference import RunOptions, probability_to_labels, run, segment
from training.inference.source import TileSource
from training.inference.store import DiskProbability
from training.slides import Slide, open_slide, write_pyramid


class Pointwise(nn.Module):
    """logit = (red - green) / 32; counts its calls and the tiles it saw."""

    def __init__(self) -> None:
        super().__init__()
        self.calls, self.tiles = 0, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.tiles += x.shape[0]
        return (x[:, :1] - x[:, 1:2]) / 32


@pytest.fixture(scope="module")
def texture() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (300, 260, 3), dtype=np.uint8)


def expected(image: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-(image[..., 0].astype(float) - image[..., 1]) / 32))


ON_DISK = RunOptions(pixel_size_um=0.4, detect_tissue=False, memory_limit_mb=0.1)


def test_an_on_disk_map_outlives_its_result_object(texture, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    probability = run(texture, member(Pointwise()), "kidney", ON_DISK).probability
    gc.collect()  # the result object is gone; the array must still read its own values
    assert isinstance(probability, DiskProbability)
    np.testing.assert_allclose(np.asarray(probability), expected(texture), atol=1e-5)
    folder = probability.path.parent
    assert folder.is_dir()
    probability.close()
    assert not folder.exists()
    with pytest.raises(FileNotFoundError, match=r"storage .* is gone"):
        probability[0:10]
    del probability
    gc.collect()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("napari-ftu-")]


def test_a_missing_chunk_is_an_error_never_background(texture, tmp_path):
    result = run(texture, member(Pointwise()), "kidney", ON_DISK, workdir=tmp_path / "w")
    chunk = next(p for p in (result.path / "c").rglob("*") if p.is_file())
    chunk.unlink()  # as if the store lost a chunk
    assert np.isnan(np.asarray(DiskProbability(result.path))).any()
    with pytest.raises(ValueError, match="missing values"):
        probability_to_labels(result.probability, 0.5)


def test_every_output_row_is_written_for_members_at_other_scales(texture):
    members = [member(Pointwise(), pixel_size=0.4, tile=64), member(Pointwise(), 1.2, tile=32)]
    options = RunOptions(pixel_size_um=0.4, detect_tissue=False)
    in_memory = run(texture, members, "kidney", options)
    on_disk = run(texture, members, "kidney", options, memory_limit_mb=0.01)
    values = np.asarray(on_disk.probability)
    assert not np.isnan(values).any()
    np.testing.assert_allclose(values, in_memory.probability, atol=1e-6)


def test_a_cancelled_run_leaves_no_temporary_folder(texture, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    generator = segment(texture, member(Pointwise()), "kidney", ON_DISK, batch_size=1)
    next(generator)
    next(generator)
    assert [p for p in tmp_path.iterdir() if p.name.startswith("napari-ftu-")]
    generator.close()
    assert list(tmp_path.iterdir()) == []


def test_overlapping_runs_restore_the_thread_count(texture):
    before = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        options = RunOptions(pixel_size_um=0.4, detect_tissue=False, streams=2, batch_size=1)
        first = segment(texture, member(Pointwise()), "kidney", options)
        second = segment(texture, member(Pointwise()), "kidney", options)
        next(first), next(first)  # the first run is inside its batches ...
        next(second), next(second)  # ... when the second starts
        for generator in (first, second):  # the first ends before the second
            with pytest.raises(StopIteration):
                while True:
                    next(generator)
        assert torch.get_num_threads() == 4

        results = []  # and from two threads at once
        threads = [
            threading.Thread(
                target=lambda: results.append(run(texture, member(Pointwise()), "kidney", options))
            )
            for _ in range(2)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(results) == 2 and torch.get_num_threads() == 4
    finally:
        torch.set_num_threads(before)


def test_a_slide_opened_by_the_engine_is_closed(texture, tmp_path, monkeypatch):
    from training.inference import engine

    path = write_pyramid(tmp_path / "s.tiff", texture, 0.4, tile=64)
    opened: list[Slide] = []

    def recording_open(*args, **kwargs):
        opened.append(open_slide(*args, **kwargs))
        return opened[-1]

    monkeypatch.setattr(engine, "open_slide", recording_open)
    run(path, member(Pointwise()), "kidney", detect_tissue=False)
    generator = segment(path, member(Pointwise()), "kidney", detect_tissue=False, batch_size=1)
    next(generator), next(generator)
    generator.close()  # cancelled
    kidney_only = member(Pointwise())
    kidney_only.organs = ("kidney",)
    with pytest.raises(ValueError, match="no ensemble member applies"):  # failed
        run(path, kidney_only, "lung")
    assert len(opened) == 3 and all(slide._handle is None for slide in opened)


def test_a_pixel_size_given_to_the_engine_leaves_the_callers_slide_alone(texture, tmp_path):
    path = write_pyramid(tmp_path / "s.tiff", texture, 0.4, tile=64)
    with open_slide(path) as slide:
        result = run(slide, member(Pointwise()), "kidney", pixel_size_um=0.8, detect_tissue=False)
        assert slide.pixel_size_um == pytest.approx(0.4)
        assert slide._tile_cache._bytes == 0  # decoded tiles dropped once the run is over
        assert result.probability.shape == (600, 520)  # read as if 0.8 um/px: 2x upsampled
        assert slide.read_region(0, 0, 4, 4).shape == (4, 4, 3)  # still open


def test_sixteen_bit_tiles_are_padded_white_not_black(tmp_path):
    image = np.full((100, 90, 3), 20000, np.uint16)
    path = write_pyramid(tmp_path / "deep.tiff", image, 0.4, tile=32)
    with open_slide(path) as slide:
        tiles = TileSource(slide, 0.4, 64).read(64, [0, 60])
    assert tiles.dtype == np.uint8
    assert (tiles[:, 36:] == 255).all()  # below the slide: white glass
    assert (tiles[1][:, 30:] == 255).all()  # right of it
    assert (tiles[0][:36] == round(20000 * 255 / 65535)).all()


def test_tile_source_reads_a_batch_as_spans_and_reads_ahead_in_order(texture):
    slide = Slide.from_array(texture, 0.25)
    source = TileSource(slide, 0.4, 48, workers=2)
    xs = [0, 36, 72, 150]  # three overlapping tiles and one apart
    batch = source.read(20, xs)
    for tile, x in zip(batch, xs, strict=True):
        np.testing.assert_array_equal(tile, slide.read_region_at(0.4, 20, x, 48, 48))
    requests = [(i, y, [0, 36]) for i, y in enumerate(range(0, 120, 12))]
    got = list(source.batches(requests))
    assert [key for key, _, _ in got] == list(range(len(requests)))
    np.testing.assert_array_equal(got[3][2], source.read(36, [0, 36]))
    generator = source.batches(requests)
    next(generator)
    generator.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("napari-ftu-read")]


def test_all_tta_views_run_as_one_batch(texture):
    model = Pointwise()
    result = run(
        texture,
        member(model),
        "kidney",
        pixel_size_um=0.4,
        tta=8,
        batch_size=4,
        detect_tissue=False,
        streams=1,
    )
    tiles = result.tiles_run
    batches = 6 * math.ceil(6 / 4)  # 6 rows of 6 tiles (64 px, stride 48), batches of 4
    assert tiles == 36 and model.tiles == 8 * tiles
    assert model.calls == batches  # one forward per batch: the 8 views together
    np.testing.assert_allclose(result.probability, expected(texture), atol=1e-5)


def test_default_streams_on_a_cpu_run_two_batches_at_once(texture):
    class Recording(Pointwise):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.add(threading.current_thread().name.split("_")[0])
            return super().forward(x)

    seen: set[str] = set()
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        run(texture, member(Recording()), "kidney", pixel_size_um=0.4, detect_tissue=False)
    finally:
        torch.set_num_threads(before)
    assert seen == {"napari-ftu-stream"}  # the stream pool, for every member and batch
