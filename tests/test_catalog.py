from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from training.data import catalog
from training.data.catalog import CatalogError, read_catalog, upsert_row, write_catalog
from training.data.rle import decode, encode


def row(image_id: str, organ: str = "kidney", h: int = 40, w: int = 50, rle: str = "") -> dict:
    return {
        "id": image_id,
        "organ": organ,
        "data_source": "HPA",
        "img_height": h,
        "img_width": w,
        "pixel_size": 0.4,
        "tissue_thickness": 4,
        "rle": rle,
        "age": 60,
        "sex": "Male",
    }


def write_csv(folder: Path, rows: list[dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "train.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_reads_the_real_competition_file(real_annotations):
    frame = read_catalog(real_annotations)
    assert len(frame) == 141
    assert list(frame.columns) == list(catalog.COLUMNS)
    assert set(frame["organ"]) == set(catalog.ORGANS)
    assert frame["organ"].value_counts()["prostate"] == 41
    assert frame["id"].map(type).eq(str).all()


def test_missing_column_is_named(tmp_path):
    rows = [row("a")]
    del rows[0]["organ"]
    path = write_csv(tmp_path, rows)
    with pytest.raises(CatalogError, match=r"train\.csv: missing column\(s\) organ") as info:
        read_catalog(tmp_path)
    assert str(path) in str(info.value)


def test_unknown_organ_names_file_line_and_column(tmp_path):
    write_csv(tmp_path, [row("a"), row("b", organ="liver")])
    with pytest.raises(CatalogError) as info:
        read_catalog(tmp_path)
    text = str(info.value)
    assert "train.csv: line 3 (id b), column 'organ': unknown organ 'liver'" in text


def test_duplicate_id_names_both_lines(tmp_path):
    write_csv(tmp_path, [row("a"), row("b"), row("a")])
    with pytest.raises(
        CatalogError, match=r"line 4 \(id a\), column 'id': duplicate id, first used on line 2"
    ):
        read_catalog(tmp_path)


def test_bad_size_and_bad_rle_are_named(tmp_path):
    write_csv(tmp_path, [row("a", h=0)])
    with pytest.raises(CatalogError, match="column 'img_height': 0 is not a positive integer"):
        read_catalog(tmp_path)
    write_csv(tmp_path, [row("a", rle="1 5 3 1")])
    with pytest.raises(CatalogError, match=r"line 2 \(id a\), column 'rle': RLE run 2 .* overlaps"):
        read_catalog(tmp_path)


def test_image_size_must_match_row(tmp_path):
    from training.slides import write_pyramid

    write_csv(tmp_path, [row("a", h=40, w=50)])
    write_pyramid(tmp_path / "train_images" / "a.tiff", np.zeros((40, 60, 3), np.uint8), 0.4)
    with pytest.raises(
        CatalogError, match=r"image a\.tiff is 40x60 \(HxW\) but the row says 40x50"
    ):
        read_catalog(tmp_path)
    read_catalog(tmp_path, check_images=False)


def test_unreadable_csv(tmp_path):
    (tmp_path / "train.csv").write_bytes(b"")
    with pytest.raises(CatalogError, match="not a readable CSV"):
        read_catalog(tmp_path)
    with pytest.raises(CatalogError, match="no such catalogue file"):
        read_catalog(tmp_path / "elsewhere")


def test_upsert_adds_and_replaces_one_row_keeping_a_backup(tmp_path):
    write_csv(tmp_path, [row("a"), row("b", organ="lung"), row("c")])
    before = read_catalog(tmp_path)
    mask = np.zeros((40, 50), np.uint8)
    mask[5:9, 10:20] = 1
    after = upsert_row(tmp_path, {**row("b", organ="lung", rle=encode(mask)), "annotator": "dr x"})
    assert list(after["id"]) == ["a", "b", "c"]
    reread = read_catalog(tmp_path)
    untouched = ["a", "c"]
    pd.testing.assert_frame_equal(
        reread.set_index("id").loc[untouched, list(catalog.COLUMNS)[1:]],
        before.set_index("id").loc[untouched, list(catalog.COLUMNS)[1:]],
        check_dtype=False,
    )
    np.testing.assert_array_equal(decode(reread.set_index("id").loc["b", "rle"], (40, 50)), mask)
    assert reread.set_index("id").loc["b", "annotator"] == "dr x"
    backup = pd.read_csv(tmp_path / "train.backup.csv", dtype=str, keep_default_na=False)
    assert list(backup["id"]) == ["b"] and backup.loc[0, "rle"] == ""
    assert backup.loc[0, "replaced_at"]

    upsert_row(tmp_path, row("d", organ="spleen"))
    assert list(read_catalog(tmp_path)["id"]) == ["a", "b", "c", "d"]
    upsert_row(tmp_path, row("b", organ="lung"))
    assert len(pd.read_csv(tmp_path / "train.backup.csv")) == 2


def test_upsert_with_image_writes_tiff_and_sizes(tmp_path):
    image = np.full((30, 70, 3), 200, np.uint8)
    upsert_row(tmp_path / "new", {**row("x", h=1, w=1)}, image=image)
    frame = read_catalog(tmp_path / "new")
    assert (frame.loc[0, "img_height"], frame.loc[0, "img_width"]) == (30, 70)
    first = catalog.image_path(tmp_path / "new", "x")
    assert first is not None and first.name == "x.tiff"
    upsert_row(tmp_path / "new", row("x", h=30, w=70), image=image // 2)
    backups = list((tmp_path / "new" / "train_images" / ".backup").glob("x.*.tiff"))
    assert len(backups) == 1


def test_upsert_rejects_bad_rows_without_touching_the_file(tmp_path):
    write_csv(tmp_path, [row("a")])
    original = (tmp_path / "train.csv").read_bytes()
    with pytest.raises(CatalogError, match="unknown organ 'heart'"):
        upsert_row(tmp_path, row("b", organ="heart"))
    with pytest.raises(CatalogError, match="past the end of a 40x50 image"):
        upsert_row(tmp_path, row("b", rle="1999 5"))
    with pytest.raises(CatalogError, match="has no 'id'"):
        upsert_row(tmp_path, {"organ": "kidney"})
    assert (tmp_path / "train.csv").read_bytes() == original


def test_write_is_atomic_when_the_replace_fails(tmp_path, monkeypatch):
    write_csv(tmp_path, [row("a")])
    original = (tmp_path / "train.csv").read_bytes()

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        upsert_row(tmp_path, row("b"))
    monkeypatch.undo()
    assert (tmp_path / "train.csv").read_bytes() == original
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.csv"]


def test_write_catalog_round_trip(tmp_path, real_annotations):
    frame = read_catalog(real_annotations)
    write_catalog(tmp_path, frame.head(5))
    again = read_catalog(tmp_path)
    assert list(again["rle"]) == list(frame.head(5)["rle"])
    shutil.rmtree(tmp_path)


@pytest.mark.parametrize(("mask", "expected"), [(0o022, 0o644), (0o002, 0o664)], ids=oct)
def test_dataset_files_follow_the_umask(tmp_path, mask, expected):
    """A dataset folder shared with colleagues: train.csv, its backup and the image are
    readable to them (they were 0600)."""
    previous = os.umask(mask)
    try:
        upsert_row(tmp_path, row("x", h=1, w=1), image=np.full((30, 70, 3), 200, np.uint8))
        upsert_row(tmp_path, row("x", h=30, w=70))
    finally:
        os.umask(previous)
    for name in ("train.csv", "train.backup.csv", "train_images/x.tiff"):
        assert (tmp_path / name).stat().st_mode & 0o777 == expected, name


def add_rows(folder: Path, prefix: str, count: int) -> None:
    for index in range(count):
        upsert_row(folder, row(f"{prefix}{index}"))


def test_concurrent_writers_lose_no_rows(tmp_path):
    """Ranks of a torchrun job add rows to one train.csv at the same time."""
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=add_rows, args=(tmp_path, p, 15)) for p in "abcd"]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(timeout=120)
        assert writer.exitcode == 0
    assert len(read_catalog(tmp_path)) == 60


def test_a_row_not_to_be_replaced_is_refused_and_nothing_is_written(tmp_path):
    upsert_row(tmp_path, row("a", rle="1 2"))
    before = {name: (tmp_path / name).read_bytes() for name in folder_files(tmp_path)}
    image = np.full((40, 50, 3), 7, np.uint8)
    with pytest.raises(catalog.RowExistsError, match=r"train\.csv: row 'a' exists .*not replaced"):
        upsert_row(tmp_path, row("a", rle="3 4"), image=image, replace=False)
    assert {name: (tmp_path / name).read_bytes() for name in folder_files(tmp_path)} == before
    upsert_row(tmp_path, row("b", rle="3 4"), replace=False)  # a new id is added
    assert list(read_catalog(tmp_path)["rle"]) == ["1 2", "3 4"]


def claim_rows(folder: Path, writer: str, count: int, start: object) -> None:
    """Add rows ``0``..``count-1`` without replacing any, each marked with ``writer``; append
    the ids this writer added to ``<folder>/../<writer>.won``."""
    start.wait()  # the writers set off together, to race for every id
    won = []
    for index in range(count):
        try:
            upsert_row(folder, {**row(str(index)), "data_source": writer}, replace=False)
        except catalog.RowExistsError:
            continue
        won.append(str(index))
    (folder.parent / f"{writer}.won").write_text("\n".join(won))


def test_of_two_writers_racing_for_each_row_exactly_one_adds_it(tmp_path):
    """Issue 21, item 12: two runs into one folder each checked for the row, then wrote it;
    the second silently replaced the first's. The check is now made under the write's lock."""
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(2)
    folder = tmp_path / "out"
    writers = [
        context.Process(target=claim_rows, args=(folder, name, 20, start)) for name in "pq"
    ]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(timeout=120)
        assert writer.exitcode == 0
    won = {name: (tmp_path / f"{name}.won").read_text().split() for name in "pq"}
    assert sorted(won["p"] + won["q"], key=int) == [str(i) for i in range(20)]
    frame = read_catalog(folder).set_index("id")
    assert all(frame.loc[i, "data_source"] == name for name in "pq" for i in won[name])
    assert not (folder / "train.backup.csv").exists()  # no row was ever replaced


def folder_files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def pixel(path: Path) -> int:
    """The first pixel of a TIFF (each test image here is one flat grey value)."""
    from training.slides import open_slide

    with open_slide(path) as slide:
        return int(slide.read_region(0, 0, 1, 1)[0, 0, 0])


def upsert_killed_at_rename(folder: Path, image: np.ndarray, count: int) -> None:
    """Replace row and image ``x``, kill -9 this process at its ``count``-th rename."""
    real, calls = os.replace, iter(range(1, 1000))

    def replace(source, target):
        if next(calls) == count:
            os.kill(os.getpid(), signal.SIGKILL)
        real(source, target)

    os.replace = replace
    upsert_row(folder, row("x", h=1, w=1), image=image)


def test_a_write_killed_at_any_rename_leaves_the_old_or_the_new_folder(tmp_path):
    """Issue 21, item 8: the image was renamed into place before the CSV, so a kill between
    the two left a folder read_catalog refuses ("image is 40x60 but the row says 40x50")."""
    context = multiprocessing.get_context("spawn")
    outcomes = []
    for count in range(1, 8):
        folder = tmp_path / str(count)
        upsert_row(folder, row("x", h=1, w=1), image=np.full((40, 50, 3), 10, np.uint8))
        upsert_row(folder, row("y"))
        child = context.Process(
            target=upsert_killed_at_rename,
            args=(folder, np.full((40, 60, 3), 200, np.uint8), count),
        )
        child.start()
        child.join(timeout=120)
        assert child.exitcode in (0, -signal.SIGKILL)
        frame = read_catalog(folder).set_index("id")
        width = frame.loc["x", "img_width"]
        files = folder_files(folder)
        if width == 50:  # the old folder
            assert (
                pixel(folder / "train_images" / "x.tiff") == 10 and "train.backup.csv" not in files
            )
        else:  # the new one, with the replaced row and image kept
            assert width == 60 and pixel(folder / "train_images" / "x.tiff") == 200
            backup = pd.read_csv(folder / "train.backup.csv", dtype=str, keep_default_na=False)
            assert list(backup["id"]) == ["x"] and backup.loc[0, "img_width"] == "50"
            assert pixel(folder / backup.loc[0, "image_backup"]) == 10
        outcomes.append((child.exitcode, int(width)))
        upsert_row(folder, row("z"))  # the next write removes what the killed one left
        kept = [f for f in folder_files(folder) if f.startswith("train_images/.backup/")]
        assert len(kept) == (width == 60)
        assert folder_files(folder) == sorted(
            ["train.csv", "train_images/x.tiff", *kept]
            + (["train.backup.csv"] if width == 60 else [])
        )
    # Kills before the commit point gave the old folder, kills after it the new one.
    assert (-signal.SIGKILL, 50) in outcomes and (-signal.SIGKILL, 60) in outcomes, outcomes


def test_replacements_within_one_second_keep_every_backup(tmp_path):
    """Issue 21, item 9: backups were stamped to the second, so three replacements of one id
    kept one image backup."""
    for value in (10, 20, 30, 40):
        upsert_row(tmp_path, row("x", h=1, w=1), image=np.full((30, 40, 3), value, np.uint8))
    backup = pd.read_csv(tmp_path / "train.backup.csv", dtype=str, keep_default_na=False)
    assert len(backup) == 3 and backup["image_backup"].is_unique
    assert [pixel(tmp_path / name) for name in backup["image_backup"]] == [10, 20, 30]
    assert len(list((tmp_path / "train_images" / ".backup").iterdir())) == 3
    assert pixel(tmp_path / "train_images" / "x.tiff") == 40


def test_geojson_replacements_within_one_second_keep_every_backup(tmp_path):
    from training.data.export import write_geojson

    for index in range(4):
        write_geojson(tmp_path / "s.geojson", {"type": "FeatureCollection", "n": index})
    kept = sorted((tmp_path / ".backup").iterdir())
    assert len(kept) == 3
    assert sorted(p.read_text() for p in kept) == [
        f'{{"type": "FeatureCollection", "n": {i}}}' for i in range(3)
    ]


@pytest.mark.parametrize(
    "bad",
    ["../../x", "sub/x", "/abs/x", "..", ".", ".hidden", "", "  ", "a\\b", "x\x00y", "c:x", " x"],
)
def test_ids_that_are_not_plain_file_names_are_refused(tmp_path, bad):
    """Issue 21, item 10: ``upsert_row`` wrote ``../../x`` (and absolute ids) outside the
    dataset folder."""
    folder = tmp_path / "a" / "b" / "dataset"
    with pytest.raises(CatalogError, match=r"'id'"):
        upsert_row(folder, row(bad, h=30, w=40), image=np.zeros((30, 40, 3), np.uint8))
    assert folder_files(tmp_path) == []
    write_csv(folder, [row("a"), row(bad)])
    with pytest.raises(CatalogError, match=r"line 3 .*column 'id': .*not a plain file name"):
        read_catalog(folder)


def test_the_plugins_sanitised_ids_are_accepted():
    from training.data.export import safe_id

    for name in ("../../x", "/abs/slide.svs", "..", " .hidden", "a\\b:c", "x\x00y", "", "é"):
        assert catalog.check_id(safe_id(name)) == safe_id(name)


def test_temporaries_a_killed_older_version_left_are_removed_by_the_next_write(tmp_path):
    upsert_row(tmp_path, row("x", h=1, w=1), image=np.zeros((30, 40, 3), np.uint8))
    strays = [".train.csv.0123abcd.tmp", "train_images/.x.tiff.0123abcd.tmp.tiff"]
    others = [".s.labels.tiff.0123abcd.tmp.tiff", "notes.txt"]  # not the catalogue's: kept
    for name in strays + others:
        (tmp_path / name).write_bytes(b"partial")
    upsert_row(tmp_path, row("y"))
    assert folder_files(tmp_path) == sorted(["train.csv", "train_images/x.tiff", *others])


def replace_sizes_in_turn(folder: Path, times: int) -> None:
    for index in range(times):
        width = 50 + 10 * (index % 2)
        upsert_row(folder, row("x", h=1, w=1), image=np.full((40, width, 3), index, np.uint8))


def test_a_reader_never_sees_a_row_with_the_other_image(tmp_path):
    """A reader that read the old row just before a writer swapped in the new image found a
    row and an image that disagree; it now waits for the writer and reads again."""
    upsert_row(tmp_path, row("x", h=1, w=1), image=np.zeros((40, 60, 3), np.uint8))
    context = multiprocessing.get_context("spawn")
    writer = context.Process(target=replace_sizes_in_turn, args=(tmp_path, 60))
    writer.start()
    reads = 0
    while writer.is_alive():
        frame = read_catalog(tmp_path)
        assert frame.loc[0, "img_width"] in (50, 60)
        reads += 1
    writer.join()
    assert writer.exitcode == 0 and reads > 10


def test_a_row_that_disagrees_with_its_image_on_disk_is_refused(tmp_path):
    upsert_row(tmp_path, row("x", h=1, w=1), image=np.zeros((30, 40, 3), np.uint8))
    before = (tmp_path / "train.csv").read_bytes()
    with pytest.raises(
        CatalogError, match=r"image x\.tiff is 30x40 \(HxW\) but the row says 20x40"
    ):
        upsert_row(tmp_path, row("x", h=20, w=40))
    assert (tmp_path / "train.csv").read_bytes() == before
    upsert_row(tmp_path, row("x", h=30, w=40, rle="1 5"))
    assert read_catalog(tmp_path).loc[0, "rle"] == "1 5"


def test_an_export_folder_holds_only_the_dataset_and_its_backups(tmp_path):
    """Issue 21, item 5: every export left ``.train.csv.lock`` in the folder."""
    from training.data.export import ExportInfo, export_rows, whole_image

    image = np.full((32, 48, 3), 90, np.uint8)

    class Slide:
        def read_region(self, y, x, h, w):
            return image[y : y + h, x : x + w]

    labels = np.zeros((32, 48), np.int32)
    labels[4:10, 5:20] = 1
    for _ in range(2):
        export_rows(
            tmp_path, [whole_image("s1", labels, (32, 48))], Slide(), ExportInfo("kidney", 0.5)
        )
    files = folder_files(tmp_path)
    assert [f for f in files if not f.startswith("train_images/.backup/")] == [
        "train.backup.csv",
        "train.csv",
        "train_images/s1.tiff",
    ]
    assert len(files) == 4


def test_an_export_with_an_id_outside_the_folder_writes_nothing(tmp_path):
    from training.data.export import ExportError, ExportInfo, export_rows, whole_image

    labels = np.zeros((8, 8), np.int32)
    pieces = [whole_image("ok", labels, (8, 8)), whole_image("../escaped", labels, (8, 8))]
    with pytest.raises(ExportError, match=r"'\.\./escaped' is not a plain file name"):
        export_rows(tmp_path / "ds", pieces, None, ExportInfo("kidney", 0.5))
    with pytest.raises(ExportError, match=r"'\.\./g' is not a plain file name"):
        export_rows(tmp_path / "ds", pieces[:1], None, ExportInfo("kidney", 0.5), "../g", False)
    assert folder_files(tmp_path) == []


def test_organ_names_live_in_one_place() -> None:
    # the catalogue, the QuPath export and both widgets' organ lists are training.organs' own
    from napari_ftu import _import_widget, _segment_widget
    from training import organs
    from training.data import geojson_export

    assert catalog.ORGANS is organs.ORGANS
    assert _segment_widget.ORGANS is _import_widget.ORGANS is organs.ORGANS
    assert geojson_export.FTU_NAMES is organs.FTU_NAMES
