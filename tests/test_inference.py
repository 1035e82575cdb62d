from __future__ import annotations

import itertools
import math
import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import member
from scipy import ndimage
from torch import nn

from training.inference import (
    Progress,
    RunOptions,
    probability_to_labels,
    resize_labels,
    run,
    segment,
)
from training.inference.tiling import tile_cores, tile_starts
from training.models import build_model, save_checkpoint
from training.slides import open_slide, write_pyramid
from training.synthetic import make_phantom


class Constant(nn.Module):
    def __init__(self, logit: float) -> None:
        super().__init__()
        self.logit = logit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full_like(x[:, :1], self.logit)


class Pointwise(nn.Module):
    """logit = (red - green) / 32: each output pixel sees only its own input pixel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x[:, :1] - x[:, 1:2]) / 32


class Blur(nn.Module):
    """A 5x5 box filter with zero padding: a receptive field that crosses tile borders."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channel = (x[:, :1] - 128) / 32
        return F.avg_pool2d(channel, 5, stride=1, padding=2, count_include_pad=True)


class Ramp(nn.Module):
    """logit rises from left to right across the tile: not flip invariant."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ramp = torch.linspace(-3, 3, x.shape[-1], device=x.device)
        return ramp.expand(x.shape[0], 1, x.shape[2], x.shape[3])


@pytest.fixture(scope="module")
def texture() -> np.ndarray:
    rng = np.random.default_rng(0)
    field = ndimage.gaussian_filter(rng.random((400, 360, 3)), (3, 3, 0))
    field = (field - field.min()) / (field.max() - field.min())
    return (field * 255).astype(np.uint8)


@pytest.mark.parametrize(
    ("overlap", "shape"), [(0.0, (256, 192)), (0.25, (301, 223)), (0.5, (64, 64)), (0.5, (40, 90))]
)
def test_blending_a_constant_model_is_constant(overlap, shape):
    image = np.full((*shape, 3), 100, np.uint8)
    result = run(
        image,
        member(Constant(0.7)),
        "kidney",
        pixel_size_um=0.4,
        overlap=overlap,
        detect_tissue=False,
    )
    assert result.probability.shape == shape
    np.testing.assert_allclose(result.probability, 1 / (1 + math.exp(-0.7)), atol=1e-5)


def test_shifted_input_gives_shifted_output(texture):
    shift = (13, 21)
    a, b = texture[:300, :260], texture[shift[0] : 300 + shift[0], shift[1] : 260 + shift[1]]
    for model, tolerance in ((Pointwise(), 1e-5), (Blur(), 0.02)):
        pa = run(a, member(model), "kidney", pixel_size_um=0.4, overlap=0.5, detect_tissue=False)
        pb = run(b, member(model), "kidney", pixel_size_um=0.4, overlap=0.5, detect_tissue=False)
        inner = (slice(shift[0] + 8, 300 - 8), slice(shift[1] + 8, 260 - 8))
        moved = (slice(8, 300 - 8 - shift[0]), slice(8, 260 - 8 - shift[1]))
        difference = np.abs(pa.probability[inner] - pb.probability[moved])
        assert difference.max() < tolerance, type(model).__name__


def test_pointwise_model_matches_direct_evaluation(texture):
    result = run(texture, member(Pointwise()), "kidney", pixel_size_um=0.4, detect_tissue=False)
    direct = 1 / (1 + np.exp(-(texture[..., 0].astype(float) - texture[..., 1]) / 32))
    np.testing.assert_allclose(result.probability, direct, atol=1e-5)


def test_background_tiles_are_skipped_and_progress_is_reported():
    image, _, _ = make_phantom("kidney", size=1024, seed=1, tissue_fraction=0.4)
    events: list[Progress] = []
    result = run(
        image,
        member(Constant(2.0), tile=128),
        "kidney",
        pixel_size_um=0.4,
        on_progress=events.append,
    )
    assert result.tiles_skipped > 0 and result.tiles_run > 0
    assert events[0].done == 0 and events[-1].done == events[-1].total == result.tiles_run
    assert all(b.done >= a.done for a, b in itertools.pairwise(events))
    glass = ndimage.uniform_filter(image.mean(axis=-1), 9) > 234  # smoothed: sensor noise
    # a kept tile reaches at most its diagonal (181 px) from tissue, plus the thumbnail's margin
    far_from_tissue = ndimage.distance_transform_edt(glass) > 190
    assert far_from_tissue.any()
    assert (result.probability[far_from_tissue] == 0).all()
    # but every tissue pixel is predicted, by the tile it is most central in at least
    tissue = ndimage.binary_erosion(~glass, iterations=2)
    np.testing.assert_allclose(result.probability[tissue], 1 / (1 + math.exp(-2.0)), atol=1e-6)
    # only tiles whose core touches tissue run: fewer than the tiles that touch tissue at all
    whole_tiles = [
        not glass[y : y + 128, x : x + 128].all()
        for y in tile_starts(1024, 128, 96)
        for x in tile_starts(1024, 128, 96)
    ]
    assert result.tiles_run < sum(whole_tiles)


@pytest.mark.parametrize("memory_limit_mb", [512, 0])  # in memory, and zarr on disk
def test_bands_cover_the_map_and_show_the_ensemble_so_far(texture, memory_limit_mb):
    """A viewer shows rows as they finish: each member's bands cover every row once, in order,
    and the last member's bands are the final map (the first member's, alone, are its own)."""
    members = [member(Constant(1.0), tile=64), member(Pointwise(), tile=64)]
    events: list[Progress] = []
    result = run(
        texture[:200, :150],
        members,
        "kidney",
        pixel_size_um=0.4,
        detect_tissue=False,
        memory_limit_mb=memory_limit_mb,
        on_progress=events.append,
    )
    bands = [e.band for e in events if e.band is not None]
    assert all(b.map_shape == (200, 150) and b.pixel_size_um == 0.4 for b in bands)
    starts = [b.y0 for b in bands]
    restart = starts.index(0, 1)  # the second member starts again at the top
    for part in (bands[:restart], bands[restart:]):
        rows = [(b.y0, b.y0 + len(b.values)) for b in part]
        assert rows[0][0] == 0 and rows[-1][1] == 200
        assert all(a[1] == b[0] for a, b in itertools.pairwise(rows))
    first = np.concatenate([b.values for b in bands[:restart]])
    np.testing.assert_allclose(first, 1 / (1 + math.exp(-1.0)), atol=1e-5)
    final = np.concatenate([b.values for b in bands[restart:]])
    np.testing.assert_allclose(final, np.asarray(result.probability), atol=1e-6)
    result.close()


@pytest.mark.parametrize(
    ("length", "tile", "stride"), [(1024, 128, 96), (1000, 256, 192), (90, 64, 64), (50, 64, 48)]
)
def test_tile_cores_partition_the_axis(length, tile, stride):
    starts = tile_starts(length, tile, stride)
    cores = tile_cores(starts, tile, length)
    assert cores[0][0] == 0 and cores[-1][1] == length
    assert all(a[1] == b[0] for a, b in itertools.pairwise(cores))  # no gap, no overlap
    for start, (lo, hi) in zip(starts, cores, strict=True):
        assert start <= lo < hi <= min(start + tile, length)  # inside its own tile


def test_ensemble_members_at_other_scales_and_tile_sizes():
    image = np.full((256, 256, 3), 120, np.uint8)
    members = [
        member(Constant(1.0), pixel_size=0.8, tile=64, weight=1, name="fine"),
        member(Constant(-1.0), pixel_size=1.6, tile=32, weight=3, name="coarse"),
    ]
    result = run(image, members, "kidney", pixel_size_um=0.4, detect_tissue=False)
    assert result.pixel_size_um == 0.8 and result.downsample == 2.0
    assert result.probability.shape == (128, 128)
    expected = (1 / (1 + math.exp(-1.0)) + 3 / (1 + math.exp(1.0))) / 4
    np.testing.assert_allclose(result.probability, expected, atol=1e-5)


def test_a_result_takes_the_models_min_area_unless_given():
    image = np.zeros((128, 128, 3), np.uint8)
    image[..., 1] = 128  # green: probability about 0.02
    image[10:60, 10:60] = (255, 0, 0)  # an FTU of 2500 um² (1 um/px): red, probability ~1
    image[90:100, 90:100] = (255, 0, 0)  # a speck of 100 um²
    model = member(Pointwise(), pixel_size=1.0)
    model.meta["min_area_um2"] = {"kidney": 500.0}
    result = run(image, model, "kidney", pixel_size_um=1.0, detect_tissue=False)
    assert result.min_area_um2 == 500.0 and result.threshold == 0.5
    assert result.labels().max() == 1  # the speck is dropped
    assert result.labels(min_area_um2=0).max() == 2
    assert run(image, model, "lung", pixel_size_um=1.0, detect_tissue=False).min_area_um2 == 0


def test_tta_averages_flips():
    image = np.full((64, 64, 3), 50, np.uint8)
    plain = run(image, member(Ramp()), "kidney", pixel_size_um=0.4, detect_tissue=False)
    assert plain.probability[0, 0] < 0.1 and plain.probability[0, -1] > 0.9
    for tta in (4, 8):
        averaged = run(
            image, member(Ramp()), "kidney", pixel_size_um=0.4, tta=tta, detect_tissue=False
        )
        np.testing.assert_allclose(averaged.probability, averaged.probability[:, ::-1], atol=1e-6)
        np.testing.assert_allclose(averaged.probability, 0.5, atol=1e-5)
    for tta in (4, 8):  # an equivariant model is unchanged by TTA
        pointwise = run(
            image, member(Pointwise()), "kidney", pixel_size_um=0.4, tta=tta, detect_tissue=False
        )
        np.testing.assert_allclose(pointwise.probability, 1 / (1 + math.exp(0)), atol=1e-6)


def test_stain_normaliser_is_applied_to_tiles():
    class Invert:
        def transform(self, rgb: np.ndarray) -> np.ndarray:
            return 255 - rgb

    image = np.zeros((64, 64, 3), np.uint8)
    image[..., 0] = 200
    plain = run(image, member(Pointwise()), "kidney", pixel_size_um=0.4, detect_tissue=False)
    inverted = run(
        image, member(Pointwise()), "kidney", pixel_size_um=0.4, stain=Invert(), detect_tissue=False
    )
    assert plain.probability.mean() > 0.99 and inverted.probability.mean() < 0.01


def test_reads_slides_at_the_model_scale(tmp_path, texture):
    path = tmp_path / "slide.tiff"
    write_pyramid(path, texture, 0.4, tile=64)
    result = run(path, member(Pointwise(), pixel_size=0.8), "kidney", detect_tissue=False)
    assert result.probability.shape == (200, 180) and result.downsample == 2.0
    with open_slide(path) as slide:
        half = slide.read_region_at(0.8, 0, 0, 200, 180).astype(float)
    direct = 1 / (1 + np.exp(-(half[..., 0] - half[..., 1]) / 32))
    np.testing.assert_allclose(result.probability, direct, atol=1e-5)


def test_large_output_goes_to_disk_and_cancel_leaves_nothing(tmp_path, texture):
    workdir = tmp_path / "run"
    on_disk = RunOptions(
        pixel_size_um=0.4, detect_tissue=False, memory_limit_mb=0.1, workdir=workdir
    )
    generator = segment(texture, member(Pointwise()), "kidney", on_disk)
    next(generator)
    next(generator)
    assert any(p.name.startswith(".partial-") for p in workdir.iterdir())
    generator.close()
    assert list(workdir.iterdir()) == []

    result = run(texture, member(Pointwise()), "kidney", on_disk)
    assert result.path == workdir / "probability.zarr"
    in_memory = run(texture, member(Pointwise()), "kidney", pixel_size_um=0.4, detect_tissue=False)
    np.testing.assert_allclose(np.asarray(result.probability[:]), in_memory.probability, atol=1e-6)
    with pytest.raises(FileExistsError, match="does not overwrite"):
        run(texture, member(Pointwise()), "kidney", on_disk)


@pytest.mark.parametrize("streams", [2, 3])
def test_concurrent_streams_give_the_same_result_and_restore_threads(texture, streams):
    model = build_model("swin_micro_upernet", input_size=64).eval()
    options = RunOptions(pixel_size_um=0.4, batch_size=2, detect_tissue=False)
    threads = torch.get_num_threads()
    one = run(texture, member(model), "kidney", options, streams=1)
    many = run(texture, member(model), "kidney", options, streams=streams)
    np.testing.assert_allclose(many.probability, one.probability, atol=1e-6)
    assert torch.get_num_threads() == threads

    # cancelled with batches in flight: threads restored, no stream thread left running
    generator = segment(texture, member(model), "kidney", options, streams=streams)
    next(generator)
    next(generator)
    generator.close()
    assert torch.get_num_threads() == threads
    assert not [t for t in threading.enumerate() if t.name.startswith("napari-ftu-stream")]


def test_a_failing_model_fails_the_run_and_leaves_nothing(tmp_path, texture):
    class Failing(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.calls = 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            if self.calls == 3:
                raise RuntimeError("out of memory, say")
            return x[:, :1]

    workdir = tmp_path / "run"
    options = RunOptions(pixel_size_um=0.4, detect_tissue=False, memory_limit_mb=0.1)
    with pytest.raises(RuntimeError, match="out of memory, say"):
        run(texture, member(Failing()), "kidney", options, streams=2, workdir=workdir)
    assert list(workdir.iterdir()) == []


def test_real_model_from_a_checkpoint(tmp_path):
    model = build_model("coat_micro_daformer", input_size=64)
    path = save_checkpoint(tmp_path / "m.pt", model, {"pixel_size_um": 0.8})
    image, _, _ = make_phantom("lung", size=256, seed=0)
    result = run(image, path, "lung", pixel_size_um=0.4, batch_size=3, tta=4)
    assert result.probability.shape == (128, 128)
    assert result.probability.min() >= 0 and result.probability.max() <= 1
    assert result.threshold == 0.5 and result.meta["members"] == ["m.pt"]


def test_bad_arguments():
    image = np.zeros((64, 64, 3), np.uint8)
    with pytest.raises(ValueError, match="pixel size is unknown"):
        run(image, member(Constant(0)), "kidney")
    with pytest.raises(ValueError, match="tta must be one of"):
        run(image, member(Constant(0)), "kidney", pixel_size_um=0.4, tta=3)
    with pytest.raises(ValueError, match="overlap must be in"):
        run(image, member(Constant(0)), "kidney", pixel_size_um=0.4, overlap=1.0)
    with pytest.raises(ValueError, match="streams must be at least 1"):
        run(image, member(Constant(0)), "kidney", pixel_size_um=0.4, streams=0)


def test_postprocessing():
    probability = np.zeros((60, 80), np.float32)
    probability[5:25, 5:25] = 0.9
    probability[12:16, 12:16] = 0.1  # a hole
    probability[40:43, 60:63] = 0.8  # a speck
    labels = probability_to_labels(probability, 0.5, min_area_px=20)
    assert labels.max() == 1 and (labels[12:16, 12:16] == 1).all() and labels[41, 61] == 0
    labels = probability_to_labels(probability, 0.5, fill_holes=False)
    assert labels.max() == 2 and labels[13, 13] == 0
    big = resize_labels(labels, (120, 160))
    assert big.shape == (120, 160) and big[20, 20] == labels[10, 10]
    with pytest.raises(ValueError, match="threshold must be in"):
        probability_to_labels(probability, 1.5)


def test_postprocessing_objects_in_holes_labels_dtype_and_disk_input(tmp_path):
    probability = np.zeros((50, 90), np.float32)
    probability[5:35, 5:35] = 0.9  # a ring ...
    probability[10:30, 10:30] = 0.0
    probability[15:20, 15:20] = 0.9  # ... with an island in its hole: one object once filled
    probability[5:35, 50:80] = 0.9  # a solid square after it
    labels = probability_to_labels(probability, 0.5)
    assert labels.dtype == np.int32 and labels.max() == 2  # numbered 1..N without gaps
    assert (labels[5:35, 5:35] == labels[6, 6]).all() and (labels[5:35, 50:80] == 2).all()
    assert (labels == 0).sum() == 50 * 90 - 2 * 30 * 30
    import zarr

    on_disk = zarr.create_array(tmp_path / "p.zarr", shape=(50, 90), chunks=(7, 90), dtype="f4")
    on_disk[:] = probability
    np.testing.assert_array_equal(probability_to_labels(on_disk, 0.5), labels)
    checkerboard = np.indices((600, 600)).sum(axis=0) % 2 == 0  # 180000 objects
    many = probability_to_labels(checkerboard.astype(np.float32), 0.5, min_area_px=1)
    assert many.max() == 180000 and (many[checkerboard] > 0).all()


def test_the_glass_below_the_tissue_is_never_held_whole(monkeypatch):
    """The rows below the last tissue row finish at once, most of the map on a slide with
    tissue at the top; they reach the store and the progress events a part at a time (on a
    20000x20000 slide with a quarter tissue one event held 1.2 GB of them, and a second
    member's zeros were read back and added: the peak went from 1.5 to 2.7 GB)."""
    import tracemalloc

    from training.inference import accumulator, engine

    part = 64 * 2**10  # 256 rows of the 64 px wide map
    monkeypatch.setattr(engine, "BAND_BYTES", part)
    monkeypatch.setattr(accumulator, "GAP_BYTES", part)
    rng = np.random.default_rng(0)
    height = 32768
    image = np.clip(242 + rng.normal(0, 1.5, (height, 64, 3)), 0, 255).astype(np.uint8)
    image[:128] = 120  # tissue: the top rows only
    members = [member(Constant(1.0), name="a"), member(Constant(2.0), name="b")]
    events: list[tuple[int, int, int] | None] = []  # (y0, rows, bytes): no band is kept

    def tiles_phase(event: Progress) -> None:  # the peak of the tiles, not of the planning
        if not events:
            tracemalloc.reset_peak()
        band = event.band
        events.append(None if band is None else (band.y0, len(band.values), band.values.nbytes))

    # a first small run: the modules the store and the tiles import on first use are not traced
    run(image[:512], members, "kidney", pixel_size_um=0.4, memory_limit_mb=0).close()
    tracemalloc.start()
    try:
        result = run(
            image, members, "kidney", pixel_size_um=0.4, memory_limit_mb=0, on_progress=tiles_phase
        )
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    map_bytes = height * 64 * 4  # 8 MB; numpy and zarr buffers are traced, torch's are not
    assert peak < map_bytes / 2, f"peak {peak / 2**20:.2f} MB for a {map_bytes / 2**20} MB map"
    bands = [b for b in events if b is not None]
    assert max(size for _, _, size in bands) <= part
    assert bands[-1][0] + bands[-1][1] == height
    probability = np.asarray(result.probability)
    assert (probability[1024:] == 0).all() and probability[:64].min() > 0.5
    result.close()
