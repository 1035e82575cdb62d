"""A save killed (SIGKILL) part way: the slide reopened as the widget reopens it gives the last
complete save, never no mask and never a mix of two saves.

The save runs in a child process whose zarr store kills it after a given number of chunk files
written; the parent then opens the slide's saved session with ``saved_session``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from napari_ftu._ftu_layers import new_session, saved_session
from training.review import layout
from training.review import session as _session
from training.review.session import Grid

SHAPE = (1500, 2300)  # 2 x 3 chunks of the store's 1024 px; overview levels 1 x 2 and 1 x 1
REGION = (900, 1000, 300, 300)  # across chunk borders: four chunks of the labels
ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import os, signal, sys
from types import SimpleNamespace
import numpy as np
import zarr.storage._local as local
from training.review import session as _session
from napari_ftu._ftu_layers import saved_session

slide, mode, kill_after, new_file = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
if mode == "region":
    _session.EDIT_LIMIT_PIXELS = 1000 * 1000
layer = SimpleNamespace(name="kidney", metadata={"path": slide}, multiscale=False,
                        data=np.broadcast_to(np.uint8(0), (1500, 2300, 3)))
session = saved_session(layer)
put, chunks = local._put, []

def put_then_die(path, value, exclusive=False):
    written = put(path, value, exclusive=exclusive)
    if "/c/" in path.as_posix():  # a chunk, not metadata
        chunks.append(path)
        if len(chunks) >= kill_after:
            os.kill(os.getpid(), signal.SIGKILL)
    return written

local._put = put_then_die
new = np.load(new_file)
if mode == "region":
    y, x, h, w = (900, 1000, 300, 300)
    session.write_labels(y, x, new, session.read_labels((y, x, h, w)))
else:
    session.labels[...] = new
    session.save()
    session.flush()
sys.exit(3)  # not killed: the save wrote fewer chunks than kill_after
"""


def layer_of(slide: Path) -> SimpleNamespace:
    """What ``saved_session`` reads of an image layer: its name, slide path and level 0."""
    level0 = np.broadcast_to(np.uint8(0), (*SHAPE, 3))
    return SimpleNamespace(
        name="kidney", metadata={"path": str(slide)}, multiscale=False, data=level0
    )


def discs() -> np.ndarray:
    yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1]]
    inside = ((yy % 150) - 75) ** 2 + ((xx % 150) - 75) ** 2 <= 40**2
    return np.where(inside, 0.9, 0.05).astype(np.float32)


def saved_slide(folder: Path, saves: int) -> tuple[Path, object]:
    """A slide file and its session, segmented and saved ``saves`` times (small masks)."""
    slide = folder / "kidney.tif"
    slide.write_bytes(os.urandom(50_000))  # the store needs only the file (its identity)
    layer = layer_of(slide)
    result = SimpleNamespace(organ="kidney", threshold=0.5, min_area_um2=0.0)
    session = new_session(layer, result, Grid(SHAPE, 1.0, 1.0))
    session.add_result(discs(), (0, 0))
    for k in range(saves):
        if session.grid.direct_edit:
            session.labels[100 * k : 100 * k + 50, 200:260] = 0  # an erasure per save
            session.save()
            session.flush()
    return slide, session


def kill_a_save(slide: Path, mode: str, kill_after: int, new: np.ndarray) -> None:
    """Run the save of ``new`` in a child killed after ``kill_after`` chunk files."""
    new_file = slide.parent / "new.npy"
    np.save(new_file, new)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = [sys.executable, "-c", CHILD, str(slide), mode, str(kill_after), str(new_file)]
    child = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]


def assert_overview_matches(session) -> None:
    levels = session.store.overview_levels()
    labels = np.asarray(levels[0][...])
    for level, array in enumerate(levels[1:], start=1):
        assert np.array_equal(array[...], labels[:: 2**level, :: 2**level]), level


# saves: 1, the second copy is made by the save killed; 2, the older copy is overwritten.
# kill_after: of 15 chunks (6 of the model, 6 of the labels, 3 of the overview); 15: the
# arrays written, the save not yet committed
@pytest.mark.slow  # a child process per case (about 3 s)
@pytest.mark.parametrize(("saves", "kill_after"), [(1, 7), (2, 1), (2, 7), (2, 15)])
def test_an_autosave_killed_part_way_reopens_as_the_last_save(tmp_path, saves, kill_after):
    slide, session = saved_slide(tmp_path, saves)
    before = np.array(session.labels), np.array(session.reference)
    new = np.array(session.labels)
    new[400:700, 900:1200] = 0  # a large erasure across chunk borders
    new[1200:1300, 100:2200] = new.max() + 1  # and an object painted across every column
    kill_a_save(slide, "in place", kill_after, new)

    reopened = saved_session(layer_of(slide))
    assert reopened is not None, "the saved mask is gone after a save was killed"
    assert np.array_equal(reopened.labels, before[0])
    assert np.array_equal(reopened.reference, before[1])
    assert reopened.organ == "kidney"
    assert_overview_matches(reopened)


@pytest.mark.slow  # a child process per case (about 3 s)
@pytest.mark.parametrize("kill_after", [1, 15])  # the first chunk written; all, not committed
def test_a_save_killed_in_the_earlier_save_leaves_no_earlier_save_to_offer(
    tmp_path, monkeypatch, kill_after
):
    from napari_ftu import _ftu_layers
    from training.review.store import MaskStore, MaskStoreError, slide_identity, store_location

    slide, session = saved_slide(tmp_path, 2)
    location, identity = store_location(slide), slide_identity(slide)
    assert MaskStore.previous_save(location, identity) is not None  # before the kill: offered
    new = np.array(session.labels)
    new[400:700, 900:1200] = 0
    kill_a_save(slide, "in place", kill_after, new)  # killed writing over that earlier save

    assert MaskStore.previous_save(location, identity) is None
    generation = MaskStore.open(location).generation
    (location / layout.array_path("labels", generation) / "c" / "0" / "0").unlink()
    questions = []
    monkeypatch.setattr(_ftu_layers, "_ask", lambda question: questions.append(question))
    with pytest.raises(MaskStoreError, match="moved to"):
        saved_session(layer_of(slide))  # as today: named and set aside, nothing offered
    assert questions == []


@pytest.mark.slow  # a child process per case (about 3 s)
@pytest.mark.parametrize("kill_after", [1, 3])  # of 4 chunks of the labels, then the overview
def test_a_region_write_killed_part_way_is_completed_on_reopening(
    tmp_path, monkeypatch, kill_after
):
    monkeypatch.setattr(_session, "EDIT_LIMIT_PIXELS", 1000 * 1000)  # edited region by region
    slide, session = saved_slide(tmp_path, 0)
    y, x, h, w = REGION
    old = session.read_labels(REGION)
    new = old.copy()
    new[20:280, 20:280] = old.max()  # an object of the crop grown (no new ids to give)
    new[:10] = 0
    expected = session.store.labels_array()
    expected[y : y + h, x : x + w] = new
    kill_a_save(slide, "region", kill_after, new)

    reopened = saved_session(layer_of(slide))
    assert reopened is not None
    assert np.array_equal(reopened.store.labels_array(), expected)
    assert_overview_matches(reopened)
    assert not (reopened.store.location / "region-journal.npz").exists()


def test_a_version_2_store_saves_into_a_second_copy_and_reopens(tmp_path):
    from training.review.store import MaskStore

    location = tmp_path / "m.ftu.zarr"
    store = MaskStore.create(location, (300, 520), 1.0, 1.0, {})
    first = np.zeros((300, 520), np.int32)
    first[10:40, 10:40] = 1
    store.set_model(first)
    store._update_attrs(version=2)  # as written before generations: no 'generation' attribute
    assert MaskStore.previous_save(location, {}) is None  # nothing known to be complete
    second = first.copy()
    second[100:130, 400:450] = 2
    MaskStore.open(location).set_model(first, second)

    reopened = MaskStore.open(location)
    reopened.verify()
    assert reopened.generation == 1 and reopened._attrs["version"] == 3
    assert np.array_equal(reopened.labels_array(), second)
    assert np.array_equal(reopened.model_array(), first)


def test_a_store_from_a_newer_version_or_a_stray_journal_is_a_named_error(tmp_path):
    from training.review import durable
    from training.review.store import MaskStore, MaskStoreError

    location = tmp_path / "m.ftu.zarr"
    store = MaskStore.create(location, (300, 520), 1.0, 1.0, {})
    store.set_model(np.ones((300, 520), np.int32))
    crop = np.zeros((10, 10), np.int32)
    durable.write_journal(location, origin=np.array([0, 0, 1]), crop=crop)  # generation 1
    with pytest.raises(MaskStoreError, match="region journal for generation 1, not the saved"):
        MaskStore.open(location)
    (location / durable.JOURNAL).write_bytes(b"not a journal")
    with pytest.raises(MaskStoreError, match="an unreadable region journal"):
        MaskStore.open(location)
    (location / durable.JOURNAL).unlink()
    store._update_attrs(version=4)
    with pytest.raises(MaskStoreError, match="format version 4, newer than this napari-ftu"):
        MaskStore.open(location)


def test_a_save_removes_the_temporary_files_of_a_save_killed_before(tmp_path):
    from training.review.store import MaskStore

    location = tmp_path / "m.ftu.zarr"
    store = MaskStore.create(location, (300, 520), 1.0, 1.0, {})
    labels = np.ones((300, 520), np.int32)
    store.set_model(labels)
    store.set_model(labels)  # generation 1 made and in use; the next save writes generation 0
    stale = location / "labels" / "c" / "0" / "0.5f3e.partial"  # zarr's name for a chunk cut off
    stale.write_bytes(b"half a chunk")
    store.set_model(labels * 2)
    assert not stale.exists()
    assert np.array_equal(MaskStore.open(location).labels_array(), labels * 2)


def test_a_save_cut_short_by_an_older_version_is_named_and_set_aside(tmp_path):
    from training.review.store import MaskStoreError, store_location

    slide, session = saved_slide(tmp_path, 1)
    store = session.store
    store._update_attrs(version=2)  # as an older napari-ftu saved it ...
    store._update_attrs(has_model=False)  # ... and left it, killed in the middle of a save
    with pytest.raises(MaskStoreError, match="was being saved when napari-ftu stopped"):
        saved_session(layer_of(slide))
    aside = store_location(slide).with_name(store_location(slide).name + ".damaged-1")
    assert aside.is_dir() and not store_location(slide).exists()
