"""The engine's ``region`` option and its one entry point ``segment(..., options, **overrides)``.

A region's probability is the same box cut from a whole-slide run: the whole slide's tile grid,
only the tiles that touch the box, the same blend weights, the stain fitted on the whole slide,
tissue found on the whole slide's thumbnail.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import member
from torch import nn

from training.inference import Progress, RunOptions, run, segment
from training.models.ensemble import Ensemble
from training.synthetic import make_phantom


class BlurRamp(nn.Module):
    """A 5x5 box filter of the red channel plus a ramp across the tile: each output pixel
    depends on its neighbours and on where it lies in its tile, so only the same tile grid
    gives the same values."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channel = (x[:, :1] - 128) / 32
        blurred = F.avg_pool2d(channel, 5, stride=1, padding=2, count_include_pad=True)
        return blurred + torch.linspace(-1, 1, x.shape[-1]).expand_as(blurred)


class MeanShift:
    """A stain "normaliser" fitted per slide: subtracts the fitted sample's mean red, so a fit on
    anything but the whole slide's sample gives other values."""

    def __init__(self, shift: int = 0) -> None:
        self.shift = shift

    def for_slide(self, sample: np.ndarray) -> MeanShift:
        return MeanShift(int(sample[..., 0].mean()) - 128)

    def transform(self, rgb: np.ndarray) -> np.ndarray:
        out = rgb.astype(np.int16)
        out[..., 0] -= self.shift
        return np.clip(out, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def slide_image() -> np.ndarray:
    """A kidney phantom with glass around the tissue (some tiles are skipped)."""
    return make_phantom("kidney", size=420, seed=3, pixel_size_um=0.4, tissue_fraction=0.6)[0]


def ensemble() -> Ensemble:
    """Two members on different grids: 64 px tiles at 0.4 um/px, 48 px tiles at 0.8 um/px."""
    return Ensemble(
        [
            member(BlurRamp(), pixel_size=0.4, tile=64, weight=2.0, name="fine"),
            member(BlurRamp(), pixel_size=0.8, tile=48, weight=1.0, name="coarse"),
        ]
    )


BOXES = [
    (101, 37, 203, 150),  # inside, off every tile border
    (0, 0, 1, 1),  # one pixel in the corner
    (300, 400, 120, 20),  # on the bottom-right edges
    (0, 0, 420, 420),  # the whole slide
    (211, 5, 3, 415),  # a thin strip across
]


@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5])
def test_a_region_equals_the_same_box_of_a_whole_slide_run(slide_image, overlap):
    options = RunOptions(overlap=overlap, batch_size=3, stain=MeanShift(), pixel_size_um=0.4)
    whole = run(slide_image, ensemble(), "kidney", options)
    assert whole.origin == (0, 0) and whole.grid_shape == whole.probability.shape == (420, 420)
    assert whole.tiles_skipped > 0  # the glass matters: tissue is found on the whole slide
    for box in BOXES:
        part = run(slide_image, ensemble(), "kidney", options, region=box)
        y, x, h, w = box  # 0.4 um/px: the working grid is level 0
        assert part.origin == (y, x) and part.origin_level0 == (y, x), box
        assert part.grid_shape == (420, 420) and part.region == box
        assert part.probability.shape == (h, w), box
        np.testing.assert_array_equal(part.probability, whole.probability[y : y + h, x : x + w])
        assert part.tiles_run <= whole.tiles_run
        if box == (0, 0, 420, 420):  # the whole grid: every tile, every skip
            assert (part.tiles_run, part.tiles_skipped) == (whole.tiles_run, whole.tiles_skipped)


def test_a_region_on_a_coarser_working_grid_and_on_disk(slide_image):
    """Level-0 boxes cover whole working pixels; an on-disk map (NaN where unwritten) gets every
    row, also those of a box no tile row starts in."""
    only = member(BlurRamp(), pixel_size=1.0, tile=32)
    options = RunOptions(pixel_size_um=0.4, overlap=0.25, memory_limit_mb=0)
    whole = run(slide_image, only, "kidney", options, memory_limit_mb=512)
    for box in [(101, 37, 203, 150), (0, 0, 420, 420), (417, 417, 3, 3)]:
        part = run(slide_image, only, "kidney", options, region=box)
        assert part.path is not None  # on disk
        y0, x0 = part.origin
        assert (y0, x0) == (int(box[0] / 2.5), int(box[1] / 2.5))
        assert part.downsample == pytest.approx(2.5) and part.grid_shape == (168, 168)
        got = np.asarray(part.probability)
        assert not np.isnan(got).any()
        expected = whole.probability[y0 : y0 + got.shape[0], x0 : x0 + got.shape[1]]
        np.testing.assert_array_equal(got, expected)
        part.close()


def test_bands_of_a_region_run_name_their_origin(slide_image):
    events = []
    box = (40, 60, 100, 90)
    result = run(
        slide_image,
        member(BlurRamp()),
        "kidney",
        pixel_size_um=0.4,
        region=box,
        detect_tissue=False,
        on_progress=events.append,
    )
    bands = [e.band for e in events if isinstance(e, Progress) and e.band is not None]
    assert bands and all(b.origin == (40, 60) and b.map_shape == (100, 90) for b in bands)
    stitched = np.concatenate([b.values for b in sorted(bands, key=lambda b: b.y0)])
    np.testing.assert_allclose(stitched, result.probability, atol=1e-6)


@pytest.mark.parametrize(
    ("box", "message"),
    [
        ((-1, 0, 10, 10), r"region \(y=-1, x=0, height=10, width=10\) is not inside the 420 x 420"),
        ((400, 0, 30, 10), "is not inside the 420 x 420 px slide"),
        ((0, 0, 0, 10), "is empty"),
        ((0, 0, 5), "four whole numbers"),
        ((0, 0.5, 5, 5), "four whole numbers"),
    ],
)
def test_a_box_off_the_slide_or_empty_is_refused(slide_image, box, message):
    with pytest.raises(ValueError, match=message) as error:
        run(slide_image, member(BlurRamp()), "kidney", pixel_size_um=0.4, region=box)
    assert "\n" not in str(error.value)


def test_overrides_replace_options_and_unknown_names_are_refused(slide_image):
    options = RunOptions(tta=4, overlap=0.5)
    assert options.with_overrides(tta=1) == RunOptions(tta=1, overlap=0.5)
    assert options.device == torch.device("cpu")
    with pytest.raises(TypeError, match=r"unknown run option\(s\) 'tiles'; valid: overlap, "):
        next(segment(slide_image, member(BlurRamp()), "kidney", options, tiles=3))
    with pytest.raises(ValueError, match="tta must be one of"):
        options.with_overrides(tta=3)
    with pytest.raises(ValueError, match=r"batch_size must be a whole number; got 2\.5"):
        options.with_overrides(batch_size=2.5)
    with pytest.raises(ValueError, match=r"device must be a torch device .* got 'gpu'"):
        options.with_overrides(device="gpu")
    with pytest.raises(TypeError, match="options must be a RunOptions"):
        next(segment(slide_image, member(BlurRamp()), "kidney", {"tta": 4}))
