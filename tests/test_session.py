"""The plugin's FTU session without a viewer: edits kept across thresholds, erasures
remembered, counts of a stored mask band by band."""

from __future__ import annotations

import shutil
import threading
from concurrent import futures

import numpy as np
import pytest

from training.review import session as _session
from training.review.session import FTUSession, Grid
from training.review.store import MaskStore, MaskStoreError


def disc(shape, centre, radius):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


@pytest.fixture
def probability():
    """Two discs (0.6 and 0.9) and a faint one (0.3) beside the first."""
    p = np.zeros((120, 120), np.float32)
    p[disc(p.shape, (30, 30), 10)] = 0.6
    p[disc(p.shape, (90, 90), 10)] = 0.9
    p[disc(p.shape, (30, 60), 10)] = 0.3
    return p


def session_of(probability, store=None):
    session = FTUSession("img", "kidney", Grid(probability.shape, 1.0, 1.0), 0.5, store=store)
    session.add_result(probability, (0, 0))
    return session


def test_an_erasure_holds_when_the_threshold_passes_it_and_comes_back(probability):
    session = session_of(probability)
    erased = session.labels == session.labels[30, 30]
    session.labels[erased] = 0  # the pathologist erases the 0.6 disc
    for threshold in (0.7, 0.5, 0.2):  # above it (the model loses it), then below again
        session.rederive(threshold, 0.0)
        assert (session.labels[erased] == 0).all(), threshold
    assert session.labels[90, 90] > 0 and session.counts().erased == 1


def test_a_neighbour_growing_into_an_edit_is_not_counted_as_erased(probability):
    session = session_of(probability)
    session.labels[disc((120, 120), (30, 45), 6)] = session.labels[30, 30]  # grown towards it
    session.rederive(0.2, 0.0)  # the faint disc now touches the edited object and stays out
    counts = session.counts()
    assert counts.edited == 1 and counts.erased == 0
    session.rederive(0.5, 0.0)
    assert session.counts().erased == 0


def test_stored_counts_band_by_band_equal_the_whole_array_counts(
    probability, tmp_path, monkeypatch
):
    store = MaskStore.create(tmp_path / "m.ftu.zarr", (120, 120), 1.0, 1.0, {})
    monkeypatch.setattr(_session, "EDIT_LIMIT_PIXELS", 50 * 50)
    monkeypatch.setattr(_session, "BAND_ROWS", 7)  # components cross many band borders
    session = session_of(probability, store)
    labels = store.labels_array()
    labels[labels == labels[90, 90]] = 0  # erase one disc ...
    labels[25:35, 100:118] = 77  # ... and paint a new object
    store.write_region(0, 0, labels, store.labels_array())
    counts = session.counts()
    assert counts == _session._counts(store.labels_array(), store.model_array())
    assert (counts.objects, counts.edited, counts.erased) == (2, 1, 1)


def test_flush_waits_for_a_background_save(probability, tmp_path, monkeypatch):
    store = MaskStore.create(tmp_path / "m.ftu.zarr", (120, 120), 1.0, 1.0, {})
    session = session_of(probability, store)
    gate, written = threading.Event(), []
    set_model = store.set_model

    def slow_set_model(*args):  # a slow disk: the save is still running when flush is called
        gate.wait(10)
        set_model(*args)
        written.append(True)

    monkeypatch.setattr(store, "set_model", slow_set_model)
    assert session.save()
    threading.Timer(0.2, gate.set).start()
    session.flush()
    assert written == [True]
    assert np.array_equal(MaskStore.open(store.location).labels_array(), session.labels)


def test_a_failed_background_save_raises_in_flush_and_in_the_next_save(probability, tmp_path):
    store = MaskStore.create(tmp_path / "m.ftu.zarr", (120, 120), 1.0, 1.0, {})
    session = session_of(probability, store)
    shutil.rmtree(store.location)  # the store deleted under the open session
    session.labels[:5, :5] = 7
    assert session.save()
    with pytest.raises(MaskStoreError, match=r"not saved to .*m\.ftu\.zarr.*is missing"):
        session.flush()
    session.flush()  # reported once
    session.labels[:5, :5] = 8
    assert session.save()
    futures.wait(session._writes)  # the background write has failed by now
    with pytest.raises(MaskStoreError, match="not saved"):  # the next save does not pretend
        session.save()
    assert session.save()  # still unsaved: written again on the next save
    with pytest.raises(MaskStoreError, match="not saved"):
        session.flush()
    assert not (tmp_path / "m.ftu.zarr").exists()  # the writes never recreate a half store


@pytest.mark.parametrize("stored", [False, True])
def test_objects_keep_their_ids_when_the_threshold_moves(
    probability, tmp_path, monkeypatch, stored
):
    """At 0.2 the faint disc joins, before the 0.9 disc in raster order: the two others keep
    their ids (their colours), in memory and in a stored mask."""
    store = None
    if stored:
        store = MaskStore.create(tmp_path / "m.ftu.zarr", (120, 120), 1.0, 1.0, {})
        monkeypatch.setattr(_session, "EDIT_LIMIT_PIXELS", 50 * 50)
    session = session_of(probability, store)
    before = store.labels_array() if stored else np.array(session.labels)
    session.rederive(0.2, 0.0)
    after = store.labels_array() if stored else np.array(session.labels)
    assert (after[30, 30], after[90, 90]) == (before[30, 30], before[90, 90])
    assert after[30, 60] not in (0, after[30, 30], after[90, 90])
    assert session.counts().objects == 3


def test_a_store_with_no_organ_saved_restores_none_not_kidney(probability, tmp_path):
    store = MaskStore.create(tmp_path / "m.ftu.zarr", (120, 120), 1.0, 1.0, {})
    store.set_model((probability > 0.5).astype(np.int32))
    assert FTUSession.restore("img", store).organ is None
    store.settings["organ"] = "lung"
    assert FTUSession.restore("img", store).organ == "lung"
