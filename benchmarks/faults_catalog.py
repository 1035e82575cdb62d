"""kill -9 during ``upsert_row``: is the dataset folder still the old one or the new one?

Each trial copies a dataset folder holding ``slide`` (an RGB image, ``--height`` x
``--old-width``) and a small second row, starts a child process that replaces ``slide`` with an
image ``--width`` wide (row and image, as an export does), kills it with SIGKILL at a random
moment of the write (uniform over the time a whole write takes, measured first), then checks the
folder with ``read_catalog``: readable, ``slide``'s row old or new, its image the one the row
describes (size and pixels). Then one more row is written, and every file that is not
``train.csv``, ``train.backup.csv``, a row's image or a backup under ``train_images/.backup/``
is counted as a stray temporary.

    PYTHONPATH=. python benchmarks/faults_catalog.py [--trials 30] [--seed 0] [--at rename]
    PYTHONPATH=../main python benchmarks/faults_catalog.py   # the code before the journal

``--at rename`` kills just before a random one of the write's renames instead (the child
counts ``os.replace`` calls and kills itself): the folder only changes at a rename, and the
window between the image's and the CSV's is a few milliseconds of a second's write, which
kills at random moments rarely hit.

Prints one line per trial and the summary "N of T folders readable, old or new".
"""

from __future__ import annotations

import argparse
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROW = {
    "organ": "kidney",
    "data_source": "bench",
    "pixel_size": 0.5,
    "rle": "",
    "age": "",
    "sex": "",
}
OLD_SEED, NEW_SEED = 1, 2


def picture(height: int, width: int, seed: int) -> np.ndarray:
    """Noise, so the TIFF is as large as the pixels (a real slide compresses little better)."""
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def child(folder: Path, args: argparse.Namespace) -> None:
    """In the child: prepare, say so, replace ``slide``'s row and image; print the seconds and
    the renames it took, or kill -9 itself just before rename ``--kill-at-rename``."""
    import os

    from training.data.catalog import upsert_row

    image = picture(args.height, args.width, NEW_SEED)
    real_replace, renames = os.replace, 0

    def replace(source: object, target: object) -> None:
        nonlocal renames
        renames += 1
        if renames == args.kill_at_rename:
            os.kill(os.getpid(), signal.SIGKILL)
        real_replace(source, target)

    os.replace = replace  # every rename of the write goes through os.replace
    print("ready", flush=True)
    started = time.perf_counter()
    upsert_row(folder, {"id": "slide", **ROW}, image=image)
    print(f"{time.perf_counter() - started:.3f} {renames}", flush=True)


def start_child(
    folder: Path, args: argparse.Namespace, kill_at_rename: int = 0
) -> subprocess.Popen:
    command = [sys.executable, __file__, "--child", str(folder)]
    command += ["--height", str(args.height), "--width", str(args.width)]
    command += ["--kill-at-rename", str(kill_at_rename)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    if process.stdout.readline().strip() != "ready":
        raise RuntimeError(f"the child writing {folder} did not start")
    return process


def check(folder: Path, args: argparse.Namespace) -> tuple[str, str]:
    """``("old" | "new", "")`` for a consistent folder, else ``("broken", why)``."""
    from training.data.catalog import read_catalog
    from training.slides import open_slide

    try:
        frame = read_catalog(folder).set_index("id")
    except Exception as exc:  # what a reader would see is the finding
        return "broken", f"{type(exc).__name__}: {exc}"
    width = int(frame.loc["slide", "img_width"])
    state = {args.old_width: "old", args.width: "new"}.get(width)
    if state is None:
        return "broken", f"the row says width {width}"
    seed = OLD_SEED if state == "old" else NEW_SEED
    expected = picture(args.height, width, seed)[:16, :16]
    with open_slide(folder / "train_images" / "slide.tiff") as slide:
        if not np.array_equal(slide.read_region(0, 0, 16, 16), expected):
            return "broken", f"the row is the {state} one but the pixels are not"
    return state, ""


def strays(folder: Path) -> list[Path]:
    """Files a dataset folder should not hold once no write is running."""
    from training.data.catalog import read_catalog

    ids = set(read_catalog(folder, check_images=False, check_rle=False)["id"])
    expected = {folder / "train.csv", folder / "train.backup.csv"}
    expected |= {folder / "train_images" / f"{i}.tiff" for i in ids}
    backups = folder / "train_images" / ".backup"
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and p not in expected and not (p.parent == backups and p.name[0] != ".")
    )


def make_template(folder: Path, args: argparse.Namespace) -> None:
    from training.data.catalog import upsert_row

    upsert_row(folder, {"id": "slide", **ROW}, image=picture(args.height, args.old_width, OLD_SEED))
    upsert_row(folder, {"id": "other", **ROW}, image=picture(64, 64, 3))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--height", type=int, default=2500)
    parser.add_argument("--old-width", type=int, default=2600)
    parser.add_argument("--width", type=int, default=2700)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--at",
        choices=("time", "rename"),
        default="time",
        help="kill at a random moment of the write (default), or just before a random one of "
        "its renames (the moments the folder changes; a kill after the last is no kill)",
    )
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--kill-at-rename", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args.child, args)
        return
    import training

    print(f"training from {Path(training.__file__).parent}")
    work = Path(tempfile.mkdtemp(prefix="faults_catalog."))
    try:
        run(work, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(work: Path, args: argparse.Namespace) -> None:
    template = work / "template"
    make_template(template, args)
    shutil.copytree(template, work / "calibrate")
    process = start_child(work / "calibrate", args)
    seconds, renames = process.stdout.readline().split()  # the write alone, not the exit
    duration, renames = float(seconds), int(renames)
    process.wait()
    print(
        f"one write of {args.height}x{args.width} RGB over {args.old_width}: {duration:.2f} s, "
        f"{renames} renames; killing at random {'moments' if args.at == 'time' else 'renames'}"
    )
    rng = random.Random(args.seed)
    counts = {"old": 0, "new": 0, "broken": 0}
    killed = with_strays = stray_bytes = 0
    for trial in range(args.trials):
        folder = work / f"trial{trial}"
        shutil.copytree(template, folder)
        if args.at == "time":
            process = start_child(folder, args)
            delay = rng.uniform(0, duration)
            time.sleep(delay)
            process.send_signal(signal.SIGKILL)
            where = f"at {delay:.2f} s"
        else:
            at = rng.randint(1, renames + 1)
            process = start_child(folder, args, kill_at_rename=at)
            where = f"before rename {at}"
        killed += process.wait() == -signal.SIGKILL
        state, why = check(folder, args)
        counts[state] += 1
        from training.data.catalog import upsert_row

        upsert_row(folder, {"id": f"next{trial}", **ROW, "img_height": 8, "img_width": 8})
        left = strays(folder)
        with_strays += bool(left)
        stray_bytes += sum(p.stat().st_size for p in left)
        names = ", ".join(str(p.relative_to(folder)) for p in left)
        print(f"trial {trial:2d}: kill {where}: {state} {why}; strays: {names or 'none'}")
        shutil.rmtree(folder)
    readable = counts["old"] + counts["new"]
    print(
        f"{readable} of {args.trials} folders readable, old or new (old {counts['old']}, new "
        f"{counts['new']}; {killed} killed before the write ended); after the next write "
        f"{with_strays} folder(s) held stray files, {stray_bytes / 1e6:.1f} MB in all"
    )


if __name__ == "__main__":
    main()
