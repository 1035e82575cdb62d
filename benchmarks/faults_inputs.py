"""Inputs that could take the machine down, each given to the command line in a child process.

Crafted checkpoints (pixel size 1e-9, 1e9, NaN, inf, 0, negative, a string; tile size 0, huge,
not a multiple of 32, a string), bad arguments (``--threshold 2``, ``--batch-size 0``,
``--overlap 1``, ``--pixel-size 1e9``), a read-only ``--out``, a folder given as a slide, a
200000 x 200000 px TIFF header with three real tiles, and a GeoJSON nested 100,000 deep
(``python -m training.data.import_geojson``). Each child runs under an address-space limit
(``RLIMIT_AS``, default 4 GB) and a timeout; for each the table gives the exit status, the
seconds, the child's peak resident set size (``wait4``'s ``ru_maxrss``) and the number of
lines it wrote on stderr. A good run comes first, to show the harness lets real work through.
The inputs are made in a separate process, so that the children, forked from a parent that
never imported torch, start small (``ru_maxrss`` counts what a child holds before ``exec``).

    .venv/bin/python benchmarks/faults_inputs.py [--limit-gb 4] [--timeout 120] [--root DIR]

``--root`` runs another checkout's code (e.g. an export of an older commit) on the same inputs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def crafted_checkpoints(folder: Path) -> dict[str, Path]:
    """A valid 1.6 um/px micro model and copies whose metadata was edited past the checks."""
    import torch

    from training.models import build_model, save_checkpoint
    from training.models.checkpoint import read_checkpoint

    good = save_checkpoint(
        folder / "model.pt",
        build_model("swin_micro_upernet", input_size=64),
        {"pixel_size_um": 1.6},
    )
    payload = read_checkpoint(good)
    crafted = {"model": good}
    for field, value in [
        ("pixel_size_um", 1e-9),
        ("pixel_size_um", 1e9),
        ("pixel_size_um", float("nan")),
        ("pixel_size_um", float("inf")),
        ("pixel_size_um", 0.0),
        ("pixel_size_um", -0.4),
        ("pixel_size_um", "0.4"),
        ("tile_size", 0),
        ("tile_size", 2**20),
        ("tile_size", 100),
        ("tile_size", "64"),
    ]:
        name = f"{field}={value!r}"
        path = folder / f"{field}_{len(crafted)}.pt"
        torch.save({**payload, "meta": {**payload["meta"], field: value}}, path)
        crafted[name] = path
    return crafted


def huge_header(path: Path, side: int = 200_000, pixel_size_um: float = 0.5) -> Path:
    """A tiled TIFF whose header says ``side`` px square; three 256 px tiles are stored."""
    import numpy as np
    import tifffile

    tile, count = 256, -(-side // 256)
    stored = {(0, 0), (1, 1), (count // 2, count // 2)}
    rng = np.random.default_rng(0)
    tiles = (
        rng.integers(0, 255, (tile, tile, 3), np.uint8) if (i, j) in stored else None
        for i in range(count)
        for j in range(count)
    )
    per_cm = 1e4 / pixel_size_um
    tifffile.imwrite(
        path,
        tiles,
        shape=(side, side, 3),
        dtype=np.uint8,
        tile=(tile, tile),
        photometric="rgb",
        bigtiff=True,
        resolution=(per_cm, per_cm),
        resolutionunit="CENTIMETER",
    )
    return path


def read_only(folder: Path) -> Path:
    """``folder`` made unwritable: mode 555, and immutable for root (whom modes do not stop)."""
    folder.mkdir()
    folder.chmod(0o555)
    if os.geteuid() == 0 and shutil.which("chattr"):
        subprocess.run(["chattr", "+i", str(folder)], check=True)
    return folder


def cases(folder: Path) -> list[tuple[str, list[str]]]:
    """``(name, command arguments after python)`` for every fault, a good run first."""
    from training.slides import write_pyramid
    from training.synthetic import make_phantom

    image, _, _ = make_phantom("kidney", size=256, seed=0)
    slide = str(write_pyramid(folder / "slide.tiff", image, 0.4, tile=128))
    checkpoints = crafted_checkpoints(folder)
    model = str(checkpoints.pop("model"))

    def segment(target: str, out: Path, *options: str, model: str = model) -> list[str]:
        return [
            "-m",
            "napari_ftu.cli",
            "segment",
            target,
            "--organ",
            "kidney",
            "--model",
            model,
            "--out",
            str(out),
            "--quiet",
            *options,
        ]

    runs = [("good run (control)", segment(slide, folder / "out-good"))]
    for index, (name, path) in enumerate(checkpoints.items()):
        runs.append(
            (f"checkpoint {name}", segment(slide, folder / f"out-c{index}", model=str(path)))
        )
    for option, value in [
        ("--threshold", "2"),
        ("--batch-size", "0"),
        ("--overlap", "1"),
        ("--pixel-size", "1e9"),
    ]:
        runs.append((f"{option} {value}", segment(slide, folder / "out-arg", option, value)))
    locked = read_only(folder / "read-only")
    runs.append(("read-only --out", segment(slide, locked / "out")))
    (folder / "scans.tiff").mkdir()
    runs.append(("a folder as the slide", segment(str(folder / "scans.tiff"), folder / "out-dir")))
    big = huge_header(folder / "huge.tiff")
    runs.append(("200000 x 200000 header, 3 tiles", segment(str(big), folder / "out-big")))
    depth = 100_000
    deep = folder / "deep.geojson"
    deep.write_text(
        '{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": '
        + "[" * depth
        + "]" * depth
        + "}}"
    )
    runs.append(
        (
            "GeoJSON nested 100000 deep",
            [
                "-m",
                "training.data.import_geojson",
                slide,
                str(deep),
                "--out",
                str(folder / "data"),
                "--organ",
                "kidney",
            ],
        )
    )
    return runs


def run_child(args: list[str], root: Path, limit: int, timeout: float) -> dict:
    """Run ``python ARGS`` under ``limit`` bytes of address space; exit status, seconds, peak
    RSS in MB and stderr's lines (``timeout`` when killed at ``timeout`` seconds)."""
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        child = subprocess.Popen(
            [sys.executable, *args],
            env=env,
            cwd=root,  # python -m puts the working folder first on sys.path
            stdout=subprocess.DEVNULL,
            stderr=err,
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit)),
        )
        timer = threading.Timer(timeout, os.kill, (child.pid, signal.SIGKILL))
        timer.start()
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - start
        timed_out = not timer.is_alive()
        timer.cancel()
        child.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        err.seek(0)
        lines = [line for line in err.read().splitlines() if line.strip()]
    return {
        "exit": "timeout" if timed_out else child.returncode,
        "seconds": seconds,
        "peak_mb": usage.ru_maxrss / 1024,
        "lines": len(lines),
        "first": lines[0] if lines else "",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit-gb", type=float, default=4.0, help="RLIMIT_AS of each child")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per child")
    parser.add_argument("--root", type=Path, default=REPO, help="the code to run")
    parser.add_argument("--prepare", type=Path, help=argparse.SUPPRESS)  # the inputs' process
    args = parser.parse_args()
    if args.prepare is not None:
        (args.prepare / "cases.json").write_text(json.dumps(cases(args.prepare)))
        return
    limit = int(args.limit_gb * 2**30)
    with tempfile.TemporaryDirectory(prefix="faults-inputs-") as tmp:
        folder = Path(tmp)
        try:
            env = {**os.environ, "PYTHONPATH": str(REPO)}
            subprocess.run([sys.executable, __file__, "--prepare", tmp], env=env, check=True)
            print("| input | exit | seconds | peak RSS (MB) | stderr lines | first stderr line |")
            print("|---|---|---|---|---|---|")
            for name, command in json.loads((folder / "cases.json").read_text()):
                row = run_child(command, args.root.resolve(), limit, args.timeout)
                first = row["first"].replace("|", "\\|")[:160]
                print(
                    f"| {name} | {row['exit']} | {row['seconds']:.1f} | {row['peak_mb']:.0f} "
                    f"| {row['lines']} | {first} |",
                    flush=True,
                )
        finally:
            locked = folder / "read-only"
            if locked.exists() and os.geteuid() == 0 and shutil.which("chattr"):
                subprocess.run(["chattr", "-i", str(locked)], check=False)
            if locked.exists():
                locked.chmod(0o755)


if __name__ == "__main__":
    main()
