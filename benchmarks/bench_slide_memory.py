"""Peak memory of opening a 20000x20000 pyramidal TIFF and reading a 1024x1024 level-0 region.

The slide is written once (cached in benchmarks/_data/) with ``write_pyramid`` from a periodic
phantom source that is never materialised whole. The measurement runs in a fresh process, so its
peak resident set size (``VmHWM``) counts the interpreter, the imports, the open and the read.

    .venv/bin/python benchmarks/bench_slide_memory.py [--side 20000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from _common import DATA, PeriodicSource, peak_rss_mb


def measure(path: str, y: int, x: int) -> None:
    start = peak_rss_mb()
    from training.slides import open_slide

    imported = peak_rss_mb()
    t0 = time.perf_counter()
    with open_slide(path) as slide:
        t1 = time.perf_counter()
        region = slide.read_region(y, x, 1024, 1024)
        t2 = time.perf_counter()
        levels = [list(s) for s in slide.shapes]
    peak = peak_rss_mb()
    print(
        json.dumps(
            {
                "levels": levels,
                "region_mean": float(region.mean()),
                "open_ms": (t1 - t0) * 1e3,
                "read_ms": (t2 - t1) * 1e3,
                "rss_start_mb": start,
                "rss_after_imports_mb": imported,
                "peak_rss_mb": peak,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=20000)
    parser.add_argument("--measure", nargs=3, metavar=("PATH", "Y", "X"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        measure(args.measure[0], int(args.measure[1]), int(args.measure[2]))
        return
    from training.slides import write_pyramid
    from training.synthetic import make_phantom

    path = DATA / f"pyramid_{args.side}.tiff"
    if not path.exists():
        base, _, _ = make_phantom("kidney", size=2048, seed=0)
        start = time.perf_counter()
        write_pyramid(path, PeriodicSource(base, args.side), 0.4, compression_level=1)
        print(
            f"wrote {path} ({path.stat().st_size / 2**20:.0f} MiB) in "
            f"{time.perf_counter() - start:.0f} s"
        )
    y = x = args.side // 2 - 512
    result = subprocess.run(
        [sys.executable, __file__, "--measure", str(path), str(y), str(x)],
        check=True,
        capture_output=True,
        text=True,
    )
    figures = json.loads(result.stdout)
    print(
        f"slide {args.side}x{args.side}x3 uint8, {len(figures['levels'])} levels: "
        f"{figures['levels']}"
    )
    print(
        f"open {figures['open_ms']:.1f} ms; read 1024x1024 at level 0 "
        f"(y={y}, x={x}) {figures['read_ms']:.1f} ms"
    )
    print(
        f"peak RSS of the whole process {figures['peak_rss_mb']:.0f} MB "
        f"(interpreter + imports alone: {figures['rss_after_imports_mb']:.0f} MB)"
    )


if __name__ == "__main__":
    main()
