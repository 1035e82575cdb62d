"""Faults of the slide's mask store: every chunk of every array damaged in turn, the slide
reopened as the plugin reopens it; how many cases are a named error and how many lose data
silently.

A store is made through ``FTUSession`` and ``MaskStore`` as the plugin makes one: a model's
probability pasted in, objects derived, some erased and some painted, saved. Two stores: one
edited in place (a small mask, saved whole in the background) and one edited region by region
(a mask above the direct-edit limit, written through ``write_region``). Then, for each array
(labels, model, probability, every overview level, in both generations) and each of its
chunks: the chunk deleted,
overwritten with random bytes of its size, or cut to half its length; the slide's saved session
opened with ``napari_ftu._ftu_layers.saved_session`` (what the widget does when a slide is
opened); the outcome:

- named: ``MaskStoreError`` whose message names the array and the chunk;
- named, previous save offered: the user was asked, naming the array and the chunk, whether to
  restore the save before the latest one (answered yes), and the session came back exactly as
  that save was (labels, model, probability, overview levels), with a warning naming the copy
  of the damaged store; any difference counts as silent loss;
- error: another exception (loud, but the user is not told what is damaged);
- silent loss: a session came back, and its labels, model or probability differ from what was
  saved (read whole from the session, or from its store for a region-by-region mask, with the
  overview levels its viewer shows);
- unharmed: a session came back with everything as saved.

The labels' store has chunks of 1024 px (the store's own); the mask is 1500 x 2300 working
pixels (labels, model and probability 2 x 3 chunks, overview levels 1 x 2 and 1 x 1).

PYTHONPATH=. python benchmarks/faults_store.py [--out runs/bench/faults_store.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import numpy as np

SHAPE = (1500, 2300)
DAMAGES = ("deleted", "garbage", "truncated")
OFFERED = "named, previous save offered"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench/faults_store.json"))
    parser.add_argument(
        "--timing-side", type=int, default=8192, help="side of the store whose checks are timed"
    )
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="faults-store-") as tmp:
        for mode in ("in place", "by region"):
            with edit_limit(region=mode == "by region"):
                slide, pristine, previous = make_store(Path(tmp) / mode.replace(" ", "-"))
                saves = {"latest": read_session_arrays(open_session(slide)), "previous": previous}
                for name, chunk in chunks_of(pristine):
                    for how in DAMAGES:
                        rows.append(
                            {"mode": mode, "array": name, "chunk": chunk, "damage": how}
                            | run_case(slide, pristine, saves, name, chunk, how)
                        )
    print_table(rows)
    timing = check_seconds(args.timing_side)
    print(
        f"undamaged {args.timing_side} x {args.timing_side} store: open (chunks listed) "
        f"{timing['open']:.2f} s, verify (every chunk read) {timing['verify']:.2f} s"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"cases": rows, "check_seconds": timing}, indent=1))


@contextmanager
def edit_limit(region: bool) -> Iterator[None]:
    """The plugin's direct-edit limit lowered below the mask (``region``): edited by region."""
    from training.review import session as _session

    limit = _session.EDIT_LIMIT_PIXELS
    _session.EDIT_LIMIT_PIXELS = 1000 * 1000 if region else limit
    try:
        yield
    finally:
        _session.EDIT_LIMIT_PIXELS = limit


def make_store(folder: Path) -> tuple[Path, Path, dict[str, np.ndarray]]:
    """A slide file and its saved store, made as the plugin makes them; the slide's path, a
    pristine copy of the store and the arrays of the first save."""
    from napari_ftu._ftu_layers import new_session
    from training.review.session import Grid
    from training.review.store import store_location

    folder.mkdir(parents=True)
    slide = folder / "kidney.tif"
    slide.write_bytes(os.urandom(100_000))  # the store needs only the file (its identity)
    probability = discs(SHAPE)
    layer = SimpleNamespace(name="kidney", metadata={"path": str(slide)})
    result = SimpleNamespace(organ="kidney", threshold=0.5, min_area_um2=0.0)
    session = new_session(layer, result, Grid(SHAPE, 1.0, 1.0))
    session.add_result(probability, (0, 0))
    session.save()  # a first save (an autosave) before the edits: the in-place store keeps it
    session.flush()
    previous = read_session_arrays(session)
    old = session.read_labels((1000, 1100, 300, 300))
    new = old.copy()
    new[new == new.max()] = 0  # an object erased ...
    new[100:150, 100:150] = new.max() + 1  # ... and one painted, across chunk borders
    session.write_labels(1000, 1100, new, old)
    session.save()
    session.flush()
    pristine = folder / "pristine.ftu.zarr"
    shutil.copytree(store_location(slide), pristine)
    return slide, pristine, previous


def discs(shape: tuple[int, int]) -> np.ndarray:
    """A probability map of 0.9 discs (radius 40 px) every 150 px, crossing chunk borders."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    inside = ((yy % 150) - 75) ** 2 + ((xx % 150) - 75) ** 2 <= 40**2
    return np.where(inside, 0.9, 0.05).astype(np.float32)


def chunks_of(store: Path) -> list[tuple[str, tuple[int, int]]]:
    """Every chunk file of the store: the array's name and the chunk's grid index."""
    found = []
    names = ("labels", "model", "probability", "overview/1", "overview/2")
    for name in [*names, *(f"generation1/{n}" for n in names if n != "probability")]:
        for path in sorted((store / name / "c").glob("*/*")):
            found.append((name, (int(path.parent.name), int(path.name))))
    return found


def open_session(slide: Path):
    """The slide's saved session, opened as the widget opens it."""
    from napari_ftu._ftu_layers import saved_session

    level0 = np.broadcast_to(np.uint8(0), (*SHAPE, 3))  # what _check_covers reads of it
    layer = SimpleNamespace(name="kidney", metadata={"path": str(slide)}, multiscale=False)
    return saved_session(SimpleNamespace(**vars(layer), data=level0))


def read_session_arrays(session) -> dict[str, np.ndarray]:
    """What the user gets back: labels, model labels and probability, whole."""
    assert session is not None, "the saved session was not found"
    if session.grid.direct_edit:
        arrays = [session.labels, session.reference, session.probability]
    else:  # and the overview levels the viewer shows
        store = session.store
        arrays = [store.labels_array(), store.model_array(), store.probability()[...]]
        arrays += [np.asarray(level[...]) for level in session.mask_data()[1:]]
    names = ["labels", "model", "probability", "overview/1", "overview/2"]
    return {k: np.array(a) for k, a in zip(names[: len(arrays)], arrays, strict=True)}


def run_case(slide, pristine, saves, name, chunk, how) -> dict:
    from napari_ftu import _ftu_layers
    from training.review.store import MaskStoreError, store_location

    location = store_location(slide)
    shutil.rmtree(location, ignore_errors=True)
    for aside in location.parent.glob(location.name + ".damaged-*"):
        shutil.rmtree(aside)
    shutil.copytree(pristine, location)
    path = location / name / "c" / str(chunk[0]) / str(chunk[1])
    size = path.stat().st_size
    if how == "deleted":
        path.unlink()
    elif how == "garbage":
        path.write_bytes(np.random.default_rng(sum(chunk)).bytes(size))
    else:
        path.write_bytes(pristine.joinpath(path.relative_to(location)).read_bytes()[: size // 2])
    asked: list[str] = []
    warned: list[str] = []
    _ftu_layers._ask = lambda question: asked.append(question) or True  # the user says yes
    _ftu_layers._warn = warned.append
    start = time.perf_counter()
    outcome, message = "unharmed", ""
    try:
        session = open_session(slide)
        arrays = read_session_arrays(session) if session is not None else {}
        saved = saves["previous" if asked else "latest"]
        if session is None or any(not np.array_equal(arrays[k], saved[k]) for k in saved):
            outcome = "silent loss"
        elif asked:
            message = asked[0]
            copy = location.with_name(location.name + ".damaged-1")
            named = f"{name} chunk {chunk}" in message and str(copy) in "".join(warned)
            outcome = OFFERED if named and copy.is_dir() else "silent loss"
    except MaskStoreError as exc:
        message = str(exc)
        named = f"chunk {chunk} of '{name}'" in message
        outcome = "named" if named else "error"
    except Exception as exc:  # what the widget would not catch: counted, not raised
        outcome, message = "error", f"{type(exc).__name__}: {exc}"
    aside = location.with_name(location.name + ".damaged-1")
    return {
        "outcome": outcome,
        "set_aside": aside.is_dir(),
        "seconds": round(time.perf_counter() - start, 3),
        "message": message[:300],
    }


def check_seconds(side: int) -> dict[str, float]:
    """Seconds to open an undamaged store of ``side`` x ``side`` working pixels with a model
    (the chunks' presence checked) and to verify it (every chunk of every array read)."""
    from training.review.store import MaskStore

    with tempfile.TemporaryDirectory(prefix="faults-store-timing-") as tmp:
        location = Path(tmp) / "m.ftu.zarr"
        store = MaskStore.create(location, (side, side), 1.0, 1.0, {})
        probability = discs((side, side))
        store.write_probability(0, 0, probability)
        labels = (probability > 0.5).astype(np.int32)
        store.set_model(labels)
        del probability, labels
        start = time.perf_counter()
        store = MaskStore.open(location)
        opened = time.perf_counter()
        store.verify()
        return {"open": opened - start, "verify": time.perf_counter() - opened, "side": side}


def print_table(rows: list[dict]) -> None:
    outcomes = ("named", OFFERED, "error", "silent loss", "unharmed")
    print(f"{'store':10} {'array':22} {'damage':10} " + " | ".join(outcomes))
    groups: dict[tuple, Counter] = {}
    for row in rows:
        key = (row["mode"], row["array"], row["damage"])
        groups.setdefault(key, Counter())[row["outcome"]] += 1
    for (mode, array, how), counts in groups.items():
        print(f"{mode:10} {array:22} {how:10} " + row_of(counts, outcomes))
    total = Counter(row["outcome"] for row in rows)
    print(f"{'all':44} " + row_of(total, outcomes))
    aside = sum(row["set_aside"] for row in rows)
    print(f"cases: {len(rows)}; damaged store moved or copied aside (not deleted): {aside}")
    median = float(np.median([row["seconds"] for row in rows]))
    print(f"median seconds to reopen (open, read every chunk, restore): {median:.3f}")


def row_of(counts: Counter, outcomes: tuple[str, ...]) -> str:
    """The counts of ``outcomes``, each under its column's name."""
    return " | ".join(f"{counts[o]:>{len(o)}}" for o in outcomes)


if __name__ == "__main__":
    main()
