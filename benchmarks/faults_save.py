"""Saves killed (SIGKILL) at random points: how often the slide, reopened as the widget reopens
it, gives exactly the last complete save or the new one, and how often no mask, a mix of the
two or an error.

Two stores made as the plugin makes them (see ``faults_store.py``), 1500 x 2300 working pixels:
one edited in place (saved whole by the background autosave, ``FTUSession.save``), one edited
region by region (``FTUSession.write_labels`` of a 300 x 300 crop across four chunks, an object
painted in it). For each: a dry run counts the files the save writes (chunks and metadata);
then, 30 times, the pristine store is copied back and a child process makes the save, killing
itself just after the k-th file written (k uniform in 1 .. that count); the parent reopens the
slide with ``napari_ftu._ftu_layers.saved_session`` and compares the labels, the model's labels
and the overview levels with the states before and after the save:

- old / new: exactly the state before / after the save (the overview levels agreeing);
- no mask: no session came back (the slide shows no mask; the next run overwrites the store);
- mixed: a session came back whose arrays are neither (a torn save);
- named error / error: a ``MaskStoreError`` / another exception.

PYTHONPATH=. python benchmarks/faults_save.py [--trials 30] [--out runs/bench/faults_save.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np

SHAPE = (1500, 2300)
REGION = (900, 1000, 300, 300)
REGION_LIMIT = 1000 * 1000  # the direct-edit limit lowered below the mask: edited by region
MODES = ("in place", "by region")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/bench/faults_save.json"))
    parser.add_argument("--child", nargs=4, metavar=("SLIDE", "MODE", "KILL_AFTER", "NEW"))
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    rng = np.random.default_rng(args.seed)
    rows = []
    with tempfile.TemporaryDirectory(prefix="faults-save-") as tmp:
        for mode in MODES:
            folder = Path(tmp) / mode.replace(" ", "-")
            slide, pristine, states, new = make_case(folder, mode)
            files = run_child(slide, mode, 10**9, new)
            for trial in range(args.trials):
                kill_after = int(rng.integers(1, files + 1))
                restore(slide, pristine)
                killed = run_child(slide, mode, kill_after, new) < 0
                outcome = reopen(slide, mode, states)
                rows.append(
                    {"mode": mode, "trial": trial, "files": files, "kill_after": kill_after}
                    | {"killed": killed, "outcome": outcome}
                )
    report(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1))


def layer_of(slide: Path) -> SimpleNamespace:
    """What ``saved_session`` reads of an image layer: its name, slide path and level 0."""
    level0 = np.broadcast_to(np.uint8(0), (*SHAPE, 3))
    return SimpleNamespace(
        name="kidney", metadata={"path": str(slide)}, multiscale=False, data=level0
    )


def edit_limit(mode: str) -> None:
    """The plugin's direct-edit limit, lowered below the mask for ``by region``."""
    from training.review import session as _session

    _session.EDIT_LIMIT_PIXELS = REGION_LIMIT if mode == "by region" else 8192 * 8192


def make_case(folder: Path, mode: str) -> tuple[Path, Path, dict, np.ndarray]:
    """A slide with a saved store (twice saved in place: both copies in use); a pristine copy
    of the store, the states before and after the save, and what the save writes (the labels
    in place, the crop by region)."""
    from napari_ftu._ftu_layers import new_session
    from training.review.session import Grid
    from training.review.store import painted_ids, renumber, store_location

    edit_limit(mode)
    folder.mkdir(parents=True)
    slide = folder / "kidney.tif"
    slide.write_bytes(os.urandom(50_000))  # the store needs only the file (its identity)
    result = SimpleNamespace(organ="kidney", threshold=0.5, min_area_um2=0.0)
    session = new_session(layer_of(slide), result, Grid(SHAPE, 1.0, 1.0))
    yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1]]
    inside = ((yy % 150) - 75) ** 2 + ((xx % 150) - 75) ** 2 <= 40**2
    session.add_result(np.where(inside, 0.9, 0.05).astype(np.float32), (0, 0))
    if mode == "in place":
        for k in range(2):
            session.labels[100 * k : 100 * k + 50, 200:260] = 0
            session.save()
            session.flush()
        before = {"labels": np.array(session.labels), "model": np.array(session.reference)}
        new = before["labels"].copy()
        new[400:700, 900:1200] = 0
        new[1200:1300, 100:2200] = new.max() + 1
        after = {"labels": new, "model": before["model"]}
    else:
        store = session.store
        before = {"labels": store.labels_array(), "model": store.model_array()}
        y, x, h, w = REGION
        old = store.read(*REGION)
        new = old.copy()
        new[20:280, 20:280] = old.max()
        new[100:150, 100:150] = old.max() + 10**6  # painted: renumbered from next_id
        written = new.copy()
        renumber(written, painted_ids(written, old), store.next_id)
        after = {"labels": before["labels"].copy(), "model": before["model"]}
        after["labels"][y : y + h, x : x + w] = written
    pristine = folder / "pristine.ftu.zarr"
    shutil.copytree(store_location(slide), pristine)
    return slide, pristine, {"old": before, "new": after}, new


def restore(slide: Path, pristine: Path) -> None:
    from training.review.store import store_location

    location = store_location(slide)
    shutil.rmtree(location, ignore_errors=True)
    for aside in location.parent.glob(location.name + ".damaged-*"):
        shutil.rmtree(aside)
    shutil.copytree(pristine, location)


def run_child(slide: Path, mode: str, kill_after: int, new: np.ndarray) -> int:
    """Make the save in a child killed after ``kill_after`` files; without a kill, the count of
    files written, else the child's (negative) exit status."""
    new_file = slide.parent / "new.npy"
    np.save(new_file, new)
    root = Path(__file__).resolve().parents[1]
    args = [sys.executable, __file__, "--child", str(slide), mode, str(kill_after), str(new_file)]
    done = subprocess.run(
        args, env={**os.environ, "PYTHONPATH": str(root)}, capture_output=True, text=True
    )
    if done.returncode == 0:
        return int(done.stdout.split()[-1])
    if done.returncode != -signal.SIGKILL:
        raise RuntimeError(f"the save failed without being killed: {done.stderr[-2000:]}")
    return done.returncode


def child(slide: str, mode: str, kill_after: str, new_file: str) -> None:
    """The save, in a child whose zarr store kills it after ``kill_after`` files written."""
    import zarr.storage._local as local

    from napari_ftu._ftu_layers import saved_session

    edit_limit(mode)
    session = saved_session(layer_of(Path(slide)))
    put, files = local._put, []

    def put_then_die(path, value, exclusive=False):
        written = put(path, value, exclusive=exclusive)
        files.append(path)
        if len(files) >= int(kill_after):
            os.kill(os.getpid(), signal.SIGKILL)
        return written

    local._put = put_then_die
    new = np.load(new_file)
    if mode == "by region":
        y, x = REGION[:2]
        session.write_labels(y, x, new, session.read_labels(REGION))
    else:
        session.labels[...] = new
        session.save()
        session.flush()
    print(len(files))


def reopen(slide: Path, mode: str, states: dict) -> str:
    """What reopening the slide gives: old, new, no mask, mixed, named error or error."""
    from napari_ftu._ftu_layers import saved_session
    from training.review.store import MaskStoreError

    edit_limit(mode)
    try:
        session = saved_session(layer_of(slide))
        if session is None:
            return "no mask"
        store = session.store
        if session.grid.direct_edit:
            got = {"labels": np.array(session.labels), "model": np.array(session.reference)}
        else:
            got = {"labels": store.labels_array(), "model": store.model_array()}
        levels = store.overview_levels()
        for level, array in enumerate(levels[1:], start=1):
            if not np.array_equal(array[...], got["labels"][:: 2**level, :: 2**level]):
                return "mixed"
        for name, state in states.items():
            if all(np.array_equal(got[key], state[key]) for key in state):
                return name
        return "mixed"
    except MaskStoreError:
        return "named error"
    except Exception:  # counted, not raised: what the widget would show as a bare error
        return "error"


def report(rows: list[dict]) -> None:
    outcomes = ("old", "new", "no mask", "mixed", "named error", "error")
    print(f"{'store':10} {'trials':>6} " + " ".join(f"{o:>11}" for o in outcomes))
    for mode in MODES:
        mine = [row for row in rows if row["mode"] == mode]
        counts = Counter(row["outcome"] for row in mine)
        print(f"{mode:10} {len(mine):>6} " + " ".join(f"{counts[o]:>11}" for o in outcomes))
        whole = counts["old"] + counts["new"]
        files = mine[0]["files"] if mine else 0
        killed = sum(row["killed"] for row in mine)
        print(
            f"  {whole} of {len(mine)} reopened as the old or the new save exactly "
            f"({killed} killed part way; a save writes {files} files)"
        )


if __name__ == "__main__":
    main()
