from __future__ import annotations

import tracemalloc

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from training.data import rle
from training.data.rle import decode, encode
from training.inference.postprocess import resize_labels


def reference_encode(mask: np.ndarray) -> str:
    """The competition notebooks' encoder, for comparison."""
    pixels = np.concatenate([[0], mask.T.flatten(), [0]])
    runs = np.where(pixels[1:] != pixels[:-1])[0] + 1
    runs[1::2] -= runs[::2]
    return " ".join(str(x) for x in runs)


def test_real_annotations_round_trip_exactly(real_annotations):
    frame = pd.read_csv(real_annotations, dtype={"rle": str}, keep_default_na=False)
    assert len(frame) == 141
    for row in frame.itertuples():
        mask = decode(row.rle, (row.img_height, row.img_width))
        assert mask.shape == (row.img_height, row.img_width)
        assert mask.dtype == np.uint8
        assert encode(mask) == row.rle, f"id {row.id}"


def test_column_major_one_indexed_convention():
    mask = np.zeros((3, 4), np.uint8)
    mask[0, 0] = 1  # flat index 0 -> start 1
    mask[1:3, 1] = 1  # column 1, rows 1-2 -> flat 4, 5 -> start 5 length 2
    assert encode(mask) == "1 1 5 2"
    np.testing.assert_array_equal(decode("1 1 5 2", (3, 4)), mask)


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (7, 1), (5, 9), (64, 33)])
def test_empty_full_and_single_pixel(shape):
    empty = np.zeros(shape, np.uint8)
    assert encode(empty) == ""
    np.testing.assert_array_equal(decode("", shape), empty)
    full = np.ones(shape, np.uint8)
    assert encode(full) == f"1 {shape[0] * shape[1]}"
    np.testing.assert_array_equal(decode(encode(full), shape), full)
    one = np.zeros(shape, np.uint8)
    one[-1, -1] = 1
    assert encode(one) == f"{shape[0] * shape[1]} 1"
    np.testing.assert_array_equal(decode(encode(one), shape), one)


def test_accepts_bool_and_labels_and_adjacent_runs():
    labels = np.array([[0, 2], [3, 0]])
    assert encode(labels) == encode(labels > 0) == "2 2"
    np.testing.assert_array_equal(decode("1 2 3 2", (2, 2)), np.ones((2, 2)))


@settings(max_examples=200, deadline=None)
@given(
    arrays(
        np.uint8,
        st.tuples(st.integers(1, 40), st.integers(1, 40)),
        elements=st.integers(0, 1),
    )
)
def test_round_trip_random_masks(mask):
    text = encode(mask)
    assert text == reference_encode(mask)
    np.testing.assert_array_equal(decode(text, mask.shape), mask)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1 2 5", "odd number of tokens (3)"),
        ("1 2 x 3", "token 3 ('x') is not an integer"),
        ("1 2.5", "token 2 ('2.5') is not an integer"),
        ("0 3", "run 1 has a non-positive start (0)"),
        ("4 -1", "run 1 has a non-positive length (-1)"),
        ("1 2 7 0", "run 2 has a non-positive length (0)"),
        ("5 2 1 2", "run 2 (start 1) comes before (unsorted) run 1"),
        ("1 5 3 2", "run 2 (start 3) overlaps run 1"),
        ("11 3", "past the end of a 3x4 image (12 pixels)"),
    ],
)
def test_decode_rejects_bad_strings_with_a_named_problem(text, message):
    with pytest.raises(ValueError) as info:
        decode(text, (3, 4))
    assert message in str(info.value)


def test_bad_shape_and_input_types():
    with pytest.raises(ValueError, match="shape must be positive"):
        decode("", (0, 4))
    with pytest.raises(ValueError, match="must be a string"):
        decode(None, (2, 2))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="2-D masks"):
        encode(np.zeros((2, 2, 2)))


@pytest.mark.parametrize("block_pixels", [1, 7, 64, 1000])
@pytest.mark.parametrize("fill", ["random", "full", "empty", "stripes"])
def test_encoding_in_column_blocks_matches_one_block(monkeypatch, block_pixels, fill):
    """Whole-slide masks are encoded a block of columns at a time; runs cross the blocks."""
    rng = np.random.default_rng(block_pixels)
    mask = {
        "random": rng.random((23, 41)) > 0.5,
        "full": np.ones((23, 41), bool),
        "empty": np.zeros((23, 41), bool),
        "stripes": np.tile(np.arange(41) % 5 < 3, (23, 1)),
    }[fill]
    whole = reference_encode(mask.astype(np.uint8))
    monkeypatch.setattr(rle, "ENCODE_BLOCK_PIXELS", block_pixels)
    assert encode(mask) == whole


def test_long_run_lists_are_joined_in_chunks():
    assert rle._join(np.arange(10), chunk=3) == " ".join(map(str, range(10)))
    assert rle._join(np.arange(0)) == ""


def blobs(shape: tuple[int, int], seed: int) -> np.ndarray:
    """A label image of a few rectangles and noise: runs that start and end anywhere."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(shape) > 0.7).astype(np.int32) * 7
    for index in range(1, 4):
        y, x = rng.integers(0, shape[0]), rng.integers(0, shape[1])
        labels[y : y + rng.integers(1, 9), x : x + rng.integers(1, 9)] = index
    return labels


@settings(max_examples=300, deadline=None)
@given(
    st.tuples(st.integers(1, 30), st.integers(1, 30)),
    st.tuples(st.integers(1, 97), st.integers(1, 97)),
    st.integers(0, 2**16),
    st.sampled_from([1, 5, 64, 2**24]),
)
def test_upscaled_encoding_equals_encoding_the_resized_labels(size, target, seed, block):
    """Any ratio, integer or not, up or down, and block boundaries anywhere."""
    labels = blobs(size, seed)
    expected = encode(resize_labels(labels, target) > 0)
    original = rle.ENCODE_BLOCK_PIXELS
    rle.ENCODE_BLOCK_PIXELS = block  # hypothesis and function-scoped monkeypatch do not mix
    try:
        assert rle.encode_upscaled(labels, target) == expected
    finally:
        rle.ENCODE_BLOCK_PIXELS = original


def test_upscaled_encoding_never_builds_the_level0_mask():
    """The RLE of a 16384 x 16384 level 0 from a 4x smaller mask: the level-0 mask would take
    256 MiB as bytes (the int32 labels a resize builds, 1 GiB); the encoder stays near one
    column block."""
    rng = np.random.default_rng(0)
    labels = np.zeros((4096, 4096), np.int32)
    for index, (y, x, h, w) in enumerate(rng.integers(0, 4096, (60, 4)) % [4096, 4096, 300, 300]):
        labels[y : y + h, x : x + w] = index + 1
    target = (16384, 16384)
    tracemalloc.start()
    try:
        text = rle.encode_upscaled(labels, target)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < target[0] * target[1] / 4
    lengths = np.array(text.split(), np.int64)[1::2]
    assert lengths.sum() == 16 * np.count_nonzero(labels)  # each pixel became 4 x 4


def test_upscaled_encoding_rejects_what_cannot_be_resized():
    with pytest.raises(ValueError, match="shape must be positive"):
        rle.encode_upscaled(np.ones((2, 2)), (0, 5))
    with pytest.raises(ValueError, match="empty mask"):
        rle.encode_upscaled(np.ones((0, 2)), (4, 5))
    with pytest.raises(ValueError, match="2-D masks"):
        rle.encode_upscaled(np.ones((2, 2, 3)), (4, 5))
