"""The device-resident path (issue 24): the same probability and stitching as the host path,
on CPU tensors here; clean cancels; a device out of memory as one clear error."""

from __future__ import annotations

import tempfile

import numpy as np
import pytest
import torch
from helpers import member
from torch import nn

from training.inference import DeviceMemoryError, RunOptions, run, segment
from training.inference.device_path import SpanSource, resample
from training.inference.source import TileSource
from training.slides import Slide, open_slide, write_pyramid


class Pointwise(nn.Module):
    """logit = (red - green) / 32."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x[:, :1] - x[:, 1:2]) / 32


class Smooth(nn.Module):
    """A small convolution at half resolution (the predictor upsamples its output once)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 1, 5, stride=2, padding=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x / 64)


class OutOfMemory(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")


@pytest.fixture(scope="module")
def texture() -> np.ndarray:
    """Smooth colour fields plus noise, with a glass region (for tissue skipping)."""
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:420, 0:380]
    base = np.stack([128 + 90 * np.sin(xx / 23), 120 + 80 * np.cos(yy / 17), 140 + 0 * xx], -1)
    image = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    image[:, 250:] = 242  # glass
    return image


@pytest.mark.parametrize("slide_px", [0.25, 0.5, 0.2])  # area means, linear, a 2x level
def test_spans_resampled_on_the_device_are_the_host_tiles_before_rounding(
    texture, tmp_path, slide_px
):
    path = write_pyramid(tmp_path / "s.tiff", texture, slide_px, tile=64)
    xs = [0, 36, 72, 200]  # three overlapping tiles and one apart: two spans
    with open_slide(path) as slide:
        host = TileSource(slide, 0.4, 48, workers=0).read(20, xs).astype(np.float32)
        spans = SpanSource(slide, 0.4, 48, workers=0).read(20, xs)
        alone = [SpanSource(slide, 0.4, 48, workers=0).read(20, [x])[0] for x in xs]
    tiles = []
    for span in spans:
        image = resample(span.pixels, span.along_y, span.along_x)
        tiles += [image[:, :, x : x + 48].permute(1, 2, 0).numpy() for x in span.offsets]
    assert len(tiles) == len(xs)
    for tile, single, expected in zip(tiles, alone, host, strict=True):
        assert np.abs(tile - expected).max() <= 0.5 + 1e-3  # the host rounds to uint8
        # a tile cut from a span equals the tile read alone: tiles stitch exactly
        own = resample(single.pixels, single.along_y, single.along_x).permute(1, 2, 0).numpy()
        np.testing.assert_allclose(tile, own, atol=2e-3)


@pytest.mark.parametrize("tta", [1, 8])
def test_the_device_path_gives_the_host_paths_probability(texture, tmp_path, tta):
    path = write_pyramid(tmp_path / "s.tiff", texture, 0.25, tile=64)
    options = {"tta": tta, "batch_size": 3}
    model = member(Smooth(), tile=64)
    host = run(path, model, "kidney", device_path=False, **options)
    device = run(path, model, "kidney", device_path=True, **options)
    assert host.tiles_skipped > 0 and device.tiles_skipped == host.tiles_skipped
    difference = np.abs(np.asarray(device.probability) - np.asarray(host.probability))
    assert difference.max() < 0.01 and difference.mean() < 1e-3  # uint8 rounding only
    # batches read as other spans give the same map: the spans stitch exactly
    other = run(path, model, "kidney", device_path=True, tta=tta, batch_size=1)
    np.testing.assert_allclose(
        np.asarray(other.probability), np.asarray(device.probability), atol=1e-5
    )


def test_the_device_path_is_chosen_on_cuda_only_and_never_with_a_stain_normaliser():
    assert not RunOptions().uses_device_path()
    assert RunOptions(device=torch.device("cuda")).uses_device_path()
    assert not RunOptions(device=torch.device("cuda")).uses_device_path(stain=object())
    assert RunOptions(device_path=True).uses_device_path()
    with pytest.raises(ValueError, match="precision must be one of"):
        RunOptions(precision="fp8")


def test_bf16_on_the_cpu_stays_within_bf16_tolerance(texture):
    options = {"pixel_size_um": 0.4, "detect_tissue": False, "device_path": True}
    fp32 = run(texture, member(Smooth(), tile=64), "kidney", precision="fp32", **options)
    bf16 = run(texture, member(Smooth(), tile=64), "kidney", precision="bf16", **options)
    difference = np.abs(np.asarray(bf16.probability) - np.asarray(fp32.probability))
    assert 0 < difference.max() < 0.02


@pytest.mark.parametrize("device_path", [False, True])
def test_a_cancel_mid_run_leaves_no_files(texture, tmp_path, monkeypatch, device_path):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    generator = segment(
        texture,
        member(Smooth(), tile=64),
        "kidney",
        pixel_size_um=0.4,
        detect_tissue=False,
        memory_limit_mb=0.01,
        batch_size=1,
        device_path=device_path,
    )
    for _ in range(4):
        next(generator)
    generator.close()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_cancel_on_cuda_leaves_no_device_memory_held(texture):
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    model = member(Smooth(), tile=64)
    generator = segment(texture, model, "kidney", pixel_size_um=0.4, device="cuda", batch_size=1)
    for _ in range(4):
        next(generator)
    generator.close()
    model.model.to("cpu")  # the member's weights are the caller's, not the run's
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() == before


@pytest.mark.parametrize("device_path", [False, True])
def test_a_device_out_of_memory_is_one_error_that_suggests_a_smaller_batch(texture, device_path):
    with pytest.raises(DeviceMemoryError, match=r"4 tiles x 1 TTA views .* smaller --batch-size"):
        run(
            texture,
            member(OutOfMemory(), tile=64),
            "kidney",
            pixel_size_um=0.4,
            detect_tissue=False,
            batch_size=4,
            device_path=device_path,
        )


def test_a_single_pyramid_level_at_the_models_scale_is_uploaded_as_it_is(texture):
    slide = Slide.from_array(texture, 0.4)
    (span,) = SpanSource(slide, 0.4, 64, workers=0).read(0, [0, 48])
    assert span.along_y is None and span.pixels.dtype == torch.uint8
    assert tuple(span.pixels.shape) == (64, 112, 3)
    np.testing.assert_array_equal(span.pixels.numpy(), texture[:64, :112])


def test_a_region_on_the_device_path_is_the_same_box_of_its_whole_slide_run(texture, tmp_path):
    path = write_pyramid(tmp_path / "s.tiff", texture, 0.25, tile=64)
    model = member(Smooth(), tile=64)
    whole = run(path, model, "kidney", device_path=True, batch_size=3)
    part = run(path, model, "kidney", device_path=True, batch_size=3, region=(90, 70, 200, 150))
    (y, x), (h, w) = part.origin, part.probability.shape
    assert y > 0 and x > 0 and (h, w) != whole.probability.shape
    np.testing.assert_array_equal(
        np.asarray(part.probability), np.asarray(whole.probability)[y : y + h, x : x + w]
    )
