"""RLE encode/decode time on real 3000x3000 annotation masks: this codec vs the notebook one.

The reference is the implementation most competition notebooks used: ``mask.T.flatten()``,
zero padding, ``np.where`` on the differences to encode; a Python loop over runs to decode.

    .venv/bin/python benchmarks/bench_rle.py [--repeats 20]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from training.data.rle import decode, encode

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
ANNOTATIONS = SHARED / "data" / "hubmap-hpa" / "train_annotations_subset.csv"


def reference_encode(mask: np.ndarray) -> str:
    pixels = mask.T.flatten()
    pixels = np.concatenate([[0], pixels, [0]])
    runs = np.where(pixels[1:] != pixels[:-1])[0] + 1
    runs[1::2] -= runs[::2]
    return " ".join(str(x) for x in runs)


def reference_decode(rle: str, shape: tuple[int, int]) -> np.ndarray:
    s = rle.split()
    starts, lengths = (np.asarray(x, dtype=int) for x in (s[0::2], s[1::2]))
    starts -= 1
    ends = starts + lengths
    img = np.zeros(shape[0] * shape[1], dtype=np.uint8)
    for lo, hi in zip(starts, ends, strict=True):
        img[lo:hi] = 1
    return img.reshape(shape[1], shape[0]).T


def best_of(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Best and median wall time of ``repeats`` calls, in ms."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times) * 1e3, statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    frame = pd.read_csv(ANNOTATIONS, dtype={"id": str, "rle": str}, keep_default_na=False)
    frame = frame[(frame.img_height == 3000) & (frame.img_width == 3000)]
    frame = frame.assign(runs=frame.rle.str.count(" ").add(1) // 2).sort_values("runs")
    picks = {"median-run mask": frame.iloc[len(frame) // 2], "most-run mask": frame.iloc[-1]}
    print(f"{len(frame)} real 3000x3000 masks; times in ms (best / median of {args.repeats})")
    header = f"{'mask':<16}{'runs':>6} {'op':<8}{'this codec':>16}{'reference':>16}{'speed-up':>10}"
    print(header)
    for label, row in picks.items():
        shape = (3000, 3000)
        mask = decode(row.rle, shape)
        assert encode(mask) == reference_encode(mask) == row.rle
        assert np.array_equal(reference_decode(row.rle, shape), mask)
        totals = {}
        for op, ours, ref in (
            ("encode", partial(encode, mask), partial(reference_encode, mask)),
            ("decode", partial(decode, row.rle, shape), partial(reference_decode, row.rle, shape)),
        ):
            t_ours, t_ref = best_of(ours, args.repeats), best_of(ref, args.repeats)
            totals[op] = (t_ours[1], t_ref[1])
            print(
                f"{label:<16}{row.runs:>6} {op:<8}{t_ours[0]:7.1f} / {t_ours[1]:6.1f}"
                f"{t_ref[0]:9.1f} / {t_ref[1]:6.1f}{t_ref[1] / t_ours[1]:9.2f}x"
            )
        ours_total = sum(v[0] for v in totals.values())
        ref_total = sum(v[1] for v in totals.values())
        print(
            f"{label:<16}{row.runs:>6} {'enc+dec':<8}{ours_total:16.1f}{ref_total:16.1f}"
            f"{ref_total / ours_total:9.2f}x   (medians)"
        )


if __name__ == "__main__":
    main()
