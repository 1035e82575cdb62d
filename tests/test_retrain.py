"""Retraining from the plugin without Qt: the model registry, command lines, progress, results,
the child process and a failing run."""

from __future__ import annotations

import dataclasses
import json
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest

from training.models.default import default_model_path
from training.models.versions import (
    MODELS_ENV,
    ModelVersion,
    VersionsError,
    available_models,
    describe,
    list_versions,
    models_dir,
    next_run_dir,
    register,
)
from training.process import ChildProcess
from training.retrain import (
    RetrainJob,
    RetrainRequest,
    error_line,
    evaluate_command,
    folder_organ,
    parse_progress,
    read_scores,
    start_checkpoint,
    train_command,
)


def _version(
    path: Path, dice: float | None = 0.83, when: str = "2026-11-22T14:03:09"
) -> ModelVersion:
    return ModelVersion(str(path), when, "init.pt", ["corrections", "old:0.5"], dice, 0.61)


def test_registry_round_trip_and_missing_files(tmp_path):
    models = tmp_path / "models"
    assert list_versions(models) == []
    kept = tmp_path / "a" / "best.pt"
    kept.parent.mkdir()
    kept.write_bytes(b"weights")
    register(_version(kept), models)
    register(_version(tmp_path / "gone" / "best.pt", None), models)
    versions = list_versions(models)
    assert versions == [_version(kept), _version(tmp_path / "gone" / "best.pt", None)]
    assert [v.missing for v in versions] == [False, True]
    assert versions[0].label == "trained 2026-11-22 14:03 (val Dice 0.83)"
    assert versions[1].label == "trained 2026-11-22 14:03 (no validation)"
    # a missing checkpoint is listed as missing, never offered as a model
    assert available_models(versions) == {versions[0].label: kept}
    assert describe(versions[1])["checkpoint"].startswith("missing: ")
    assert (
        describe(versions[0])["val Dice"] == "0.830" and describe(versions[0])["before"] == "0.610"
    )
    # no temporary or lock file is left beside the registry
    assert sorted(p.name for p in models.iterdir()) == ["versions.json"]


def test_same_labels_are_told_apart(tmp_path):
    paths = []
    for name in ("v1-a", "v2-b"):
        path = tmp_path / name / "best.pt"
        path.parent.mkdir()
        path.write_bytes(b"")
        paths.append(path)
    models = available_models([_version(p) for p in paths])
    assert list(models.values()) == paths and len(set(models)) == 2
    assert list(models)[1].endswith("[v2-b]")


def test_a_damaged_registry_says_so(tmp_path):
    (tmp_path / "versions.json").write_text("{not json")
    with pytest.raises(VersionsError, match="cannot be read"):
        list_versions(tmp_path)
    (tmp_path / "versions.json").write_text(json.dumps({"versions": [{"path": "x"}]}))
    with pytest.raises(VersionsError, match="entry 0"):
        list_versions(tmp_path)


def test_models_dir_and_versioned_run_folders(tmp_path, monkeypatch):
    monkeypatch.setenv(MODELS_ENV, str(tmp_path))
    assert models_dir() == tmp_path
    monkeypatch.delenv(MODELS_ENV)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "share"))
    assert models_dir() == tmp_path / "share" / "napari-ftu" / "models"
    now = datetime(2026, 11, 22, 14, 3, 9)
    assert next_run_dir(tmp_path, now) == tmp_path / "v1-20261122-140309"
    (tmp_path / "v7-20260101-000000").mkdir()
    (tmp_path / "notes").mkdir()
    assert next_run_dir(tmp_path, now).name == "v8-20261122-140309"


def test_command_lines(tmp_path):
    request = RetrainRequest(
        corrections=tmp_path / "corr",
        init=tmp_path / "m.pt",
        out=tmp_path / "run",
        previous=tmp_path / "ensemble.yaml",
        earlier=((tmp_path / "old", 0.5), (tmp_path / "older", 1.0)),
        epochs=3,
        time_limit_min=20,
        device="cpu",
        extra=("--lr", "1e-4"),
    )
    argv = train_command(request, python="py")
    assert argv == [
        "py", "-m", "training.train", "--init", str(tmp_path / "m.pt"),
        "--data", str(tmp_path / "corr"), f"{tmp_path / 'old'}:0.5", str(tmp_path / "older"),
        "--out", str(tmp_path / "run"), "--epochs", "3", "--time-limit", "20",
        "--device", "cpu", "--lr-schedule", "time", "--keep", "last",
        "--augment-preset", "strong-color",
        "--lr", "1e-4",
    ]  # fmt: skip
    evaluate = evaluate_command(request, python="py")
    assert evaluate[:3] == ["py", "-m", "training.evaluate"]
    assert evaluate[evaluate.index("--model") + 1] == str(tmp_path / "ensemble.yaml")
    assert evaluate[evaluate.index("--split-of") + 1] == str(tmp_path / "run" / "best.pt")
    data = evaluate[evaluate.index("--data") + 1 : evaluate.index("--model")]
    assert data == [str(tmp_path / p) for p in ("corr", "old", "older")]  # no weights
    no_limit = RetrainRequest(tmp_path, tmp_path / "m.pt", tmp_path / "r")
    assert "--time-limit" not in train_command(no_limit)
    assert "--lr-schedule" not in train_command(no_limit)  # the epochs end it: their schedule
    # the user's flags come last and win; a config of the user's sets everything itself
    own = RetrainRequest(tmp_path, tmp_path / "m.pt", tmp_path / "r", time_limit_min=5,
                         extra=("--lr-schedule", "epochs"))  # fmt: skip
    assert train_command(own)[-2:] == ["--lr-schedule", "epochs"]
    config = RetrainRequest(tmp_path, tmp_path / "m.pt", tmp_path / "r", time_limit_min=5,
                            extra=("--config", "c.yaml"))  # fmt: skip
    assert "--lr-schedule" not in train_command(config)
    assert "--augment-preset" not in train_command(config)


def test_an_epoch_on_larger_tiles_has_as_many_pixels(tmp_path):
    from training.models import build_model, save_checkpoint

    def crops(init, *extra):
        argv = train_command(RetrainRequest(tmp_path, init, tmp_path / "r", extra=extra))
        flag = "--samples-per-epoch"
        return [argv[i + 1] for i, a in enumerate(argv) if a == flag] or None

    wide = save_checkpoint(
        tmp_path / "wide.pt", build_model("coat_micro_daformer", input_size=512), {"tile_size": 512}
    )
    assert crops(wide) == ["500"]  # 2000 crops of 256 px
    assert crops(wide, "--samples-per-epoch", "64") == ["64"]  # the user's own, alone
    assert crops(wide, "--samples-per-epoch=64") is None
    small = save_checkpoint(tmp_path / "small.pt", build_model("coat_micro_daformer"))
    assert crops(small) is None  # 256 px: the command's own default
    assert crops(small, "--tile", "384") == ["889"]
    assert crops(tmp_path / "missing.pt") is None  # the training command reports it


def test_progress_lines():
    assert parse_progress("epoch 2/4:  50%|█████     | 3/6 [00:01<00:01, 1.2it/s]") == 0.375
    assert parse_progress("epoch 1/1:   0%|          | 0/2 [00:00<?, ?it/s]") == 0.0
    assert parse_progress("14:03:12 epoch 3/4 done: loss 0.4123, 8.1 samples/s") == 0.75
    assert parse_progress("14:03:12 validation Dice 0.8123 {'kidney': 0.81}") is None
    assert parse_progress("mean per-image Dice 0.5 over 3 images") is None


def test_error_lines():
    bad = ["14:00:00 starting", "python -m training.train: error: corr: train.csv has no rows"]
    assert error_line(bad, 2) == "corr: train.csv has no rows"
    crash = ["Traceback (most recent call last):", '  File "x"', "RuntimeError: boom", ""]
    assert error_line(crash, 1) == "RuntimeError: boom"
    assert error_line([], -9) == "it ended with exit status -9"


def test_scores_of_the_best_epoch(tmp_path):
    assert read_scores(tmp_path) is None
    (tmp_path / "metrics.csv").write_text(
        "epoch,loss,val_dice,val_dice_kidney,val_dice_HPA\n1,0.9,0.5,0.5,0.5\n2,0.8,,,\n"
        "3,0.7,0.8,0.8,0.8\n4,0.6,0.8,0.7,0.8\n"
    )
    scores = read_scores(tmp_path)
    assert scores.dice == 0.8 and scores.organs == {"kidney": 0.8}  # the first of equals
    (tmp_path / "config.yaml").write_text("keep: last\n")  # best.pt holds the last epoch
    assert read_scores(tmp_path).organs == {"kidney": 0.7}
    (tmp_path / "config.yaml").write_text("keep: best\n")
    assert read_scores(tmp_path).organs == {"kidney": 0.8}
    (tmp_path / "metrics.csv").write_text("epoch,loss\n1,0.9\n")
    assert read_scores(tmp_path) is None  # no validation images
    # chosen as the trainer chooses: on the selection score (on colon not the FTU Dice alone)
    (tmp_path / "metrics.csv").write_text(
        "epoch,loss,val_dice,val_score,val_dice_largeintestine\n"
        "1,0.9,0.75,0.45,0.75\n2,0.8,0.7,0.65,0.7\n"
    )
    scores = read_scores(tmp_path)
    assert (scores.dice, scores.score, scores.organs) == (0.7, 0.65, {"largeintestine": 0.7})


def test_an_ensemble_is_started_from_its_member_for_the_organ(tmp_path):
    manifest = default_model_path()
    path, note = start_checkpoint(manifest, "lung")
    assert path == manifest.parent / "lung_swin_upernet.pt" and "ensemble" in note
    path, note = start_checkpoint(manifest, "kidney")
    assert path == manifest.parent / "kidney_coat_daformer.pt" and "for kidney" in note
    assert start_checkpoint(tmp_path / "m.pt", "kidney") == (tmp_path / "m.pt", "")
    (tmp_path / "bad.yaml").write_text("members: 3\n")
    with pytest.raises(ValueError, match=r"bad\.yaml"):
        start_checkpoint(tmp_path / "bad.yaml", "kidney")


def test_folder_organ(tmp_path):
    assert folder_organ(tmp_path) is None
    (tmp_path / "train.csv").write_text("id,organ\na,lung\nb,kidney\nc,kidney\n")
    assert folder_organ(tmp_path) == "kidney"


def test_child_output_and_stop_reach_grandchildren():
    code = (
        "import subprocess, sys, time\n"
        "sys.stderr.write('\\rbar 1\\rbar 2'); sys.stderr.flush()\n"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "print('\\nready', flush=True)\n"
        "time.sleep(60)\n"
    )
    child = ChildProcess([sys.executable, "-c", code])
    began = time.monotonic()
    pieces = []
    for piece in child.output():  # ends only when the grandchild, too, has closed the pipe
        pieces.append(piece)
        if piece.text == "ready":
            threading.Thread(target=child.stop).start()
    assert child.wait() != 0 and time.monotonic() - began < 30
    assert [(p.text, p.redraw) for p in pieces] == [
        ("bar 1", True),  # drawn over by the next
        ("bar 2", False),  # kept, as a terminal keeps it
        ("ready", False),
    ]


def test_a_bad_dataset_fails_with_the_trainers_line(tmp_path):
    corrections = tmp_path / "corr"
    corrections.mkdir()
    (corrections / "train.csv").write_text(
        "id,organ,data_source,img_height,img_width,pixel_size,tissue_thickness,rle,age,sex\n"
    )
    request = RetrainRequest(corrections, tmp_path / "missing.pt", tmp_path / "run", device="cpu")
    job = RetrainJob(request, tmp_path / "models")
    events = job.run()
    with pytest.raises(StopIteration) as stop:
        while True:
            next(events)
    result = stop.value.value
    assert result.status == "failed" and "no such checkpoint" in result.message
    assert list_versions(tmp_path / "models") == []


def test_the_plan_sizes_the_epoch_to_the_images_and_counts_validation(tmp_path):
    from helpers import phantom_dataset

    from training.models import build_model, save_checkpoint
    from training.retrain import plan_run

    wide = save_checkpoint(  # at 0.2 um/px the 64 px images at 2 um/px are 640 px: no padding
        tmp_path / "wide.pt",
        build_model("coat_micro_daformer", input_size=512),
        {"tile_size": 512, "pixel_size_um": 0.2, "training": {"samples_per_s": 2.0}},
    )
    three = phantom_dataset(tmp_path / "three", ("kidney",), 64)  # 2 training, 1 validation
    request = RetrainRequest(three, wide, tmp_path / "run", epochs=4)
    plan = plan_run(request)
    assert (plan.train_images, plan.val_images, plan.crops, plan.tile) == (2, 1, 50, 512)
    assert plan.minutes == pytest.approx(4 * 50 / 2.0 / 60)  # at the rate it trained at
    assert "only 1 validation image" in plan.warning and "about 2 min" in plan.describe()
    argv = train_command(request)
    assert argv[argv.index("--samples-per-epoch") + 1] == "50"
    # during the run: the time left at the rate measured here
    left = plan.left("21:04:35 epoch 1/4 done: loss 0.4264, 0.4 samples/s")
    assert left.startswith("epoch 1/4 done at 0.4 crops/s here: about 7 min of training left")
    assert plan.left("21:04:35 validation Dice 0.8") == ""
    # earlier folders count; many images keep the default epoch's pixels (2000 crops of 256)
    more = phantom_dataset(tmp_path / "more", ("kidney", "lung", "spleen", "prostate"), 64)
    many = RetrainRequest(three, wide, tmp_path / "r", earlier=((more, 1.0),) * 7)
    assert plan_run(many).crops == 500 and plan_run(many).warning == ""
    assert plan_run(RetrainRequest(three, wide, tmp_path / "r", time_limit_min=1)).minutes == 1
    # the user's own epoch wins; a split the flags choose is not guessed
    own = RetrainRequest(three, wide, tmp_path / "r", extra=("--samples-per-epoch", "7"))
    assert plan_run(own).crops == 7
    fold = RetrainRequest(three, wide, tmp_path / "r", extra=("--fold", "0"))
    assert plan_run(fold).val_images is None and plan_run(fold).warning == ""
    one = tmp_path / "one"
    one.mkdir()
    lines = (three / "train.csv").read_text().splitlines()
    (one / "train.csv").write_text(f"{lines[0]}\n{lines[1]}\n")
    assert "no validation image" in plan_run(RetrainRequest(one, wide, tmp_path / "r")).warning


def test_images_smaller_than_the_models_tile_train_on_smaller_crops(tmp_path):
    """A 512 px tile on images smaller than it is mostly padding (real colon images are 269 px
    at 1 um/px): the plan trains on 256 px crops instead, says why, and the user's --tile wins."""
    from helpers import phantom_dataset

    from training.models import build_model, save_checkpoint
    from training.retrain import plan_run

    wide = save_checkpoint(  # at 0.4 um/px the 64 px images at 2 um/px are 320 px
        tmp_path / "wide.pt",
        build_model("coat_micro_daformer", input_size=512),
        {"tile_size": 512, "pixel_size_um": 0.4, "training": {"samples_per_s": 2.0}},
    )
    three = phantom_dataset(tmp_path / "three", ("kidney",), 64)
    request = RetrainRequest(three, wide, tmp_path / "run", epochs=4)
    plan = plan_run(request)
    assert (plan.tile, plan.fitted_from, plan.crops) == (256, 512, 200)  # 100 per image
    assert plan.crops_per_s == pytest.approx(8.0)  # a quarter of the pixels per crop
    assert "smaller than the model's 512 px tile" in plan.describe()
    argv = train_command(request)
    assert argv[argv.index("--tile") + 1] == "256"
    assert argv[argv.index("--samples-per-epoch") + 1] == "200"
    own = train_command(RetrainRequest(three, wide, tmp_path / "r", extra=("--tile", "512")))
    assert own.count("--tile") == 1 and own[own.index("--tile") + 1] == "512"
    small = save_checkpoint(tmp_path / "small.pt", build_model("coat_micro_daformer"))
    assert "--tile" not in train_command(RetrainRequest(three, small, tmp_path / "r"))


def test_only_a_model_no_worse_than_the_previous_is_selected(tmp_path):
    from training.models.versions import why_not_selected

    def version(after, before):
        return ModelVersion(str(tmp_path), "2026-12-04T20:00:00", "i.pt", [], after, before, "", 3)

    assert why_not_selected(version(0.8, 0.8)) == "" and why_not_selected(version(0.9, 0.8)) == ""
    assert "below the previous model's 0.800 on the same 3 validation image" in why_not_selected(
        version(0.79, 0.8)
    )
    assert "not validated" in why_not_selected(version(None, None))
    assert "could not be scored" in why_not_selected(version(0.9, None))
    # colon: a higher FTU Dice with a lower selection score (all crypt, no stroma) is not chosen
    colon = dataclasses.replace(version(0.85, 0.8), best_val_score=0.6, before_val_score=0.7)
    expected = "val score (mean of FTU and background Dice) 0.600 is below the previous model's 0.7"
    assert expected in why_not_selected(colon)
    better = dataclasses.replace(colon, best_val_dice=0.75, best_val_score=0.72)
    assert why_not_selected(better) == ""


def test_adaptation_flags_are_checked_and_reach_the_command(tmp_path):
    slide = tmp_path / "slide.tiff"
    slide.write_bytes(b"")
    folder = tmp_path / "lab"
    folder.mkdir()
    base = dict(corrections=tmp_path, init=tmp_path / "m.pt", out=tmp_path / "r", device="cpu")
    argv = train_command(RetrainRequest(**base, target=(slide, folder), adapt="both"), "py")
    at = argv.index("--target")
    assert argv[at : at + 5] == ["--target", str(slide), str(folder), "--adapt", "both"]
    assert "--adapt" not in argv[at + 5 :]
    plain = train_command(RetrainRequest(**base))
    assert "--target" not in plain and "--adapt" not in plain
    refused = {
        "needs unlabeled target images": dict(adapt="grl"),
        "without an adaptation mode": dict(target=(slide,)),
        "unknown adaptation mode 'dann'": dict(target=(slide,), adapt="dann"),
        "target image.s. not found: .*gone": dict(target=(slide, tmp_path / "gone"), adapt="grl"),
    }
    for message, given in refused.items():
        with pytest.raises(ValueError, match=message) as caught:
            RetrainRequest(**base, **given)
        assert "\n" not in str(caught.value)


def test_the_plan_counts_the_target_images_and_doubles_the_estimate(tmp_path):
    from helpers import phantom_dataset

    from training.models import build_model, save_checkpoint
    from training.retrain import plan_run
    from training.retrain_plan import count_target_images

    lab = tmp_path / "lab"
    (lab / "deeper").mkdir(parents=True)
    for name in ("a.png", "b.TIFF", "c.svs", "notes.txt", ".hidden.png", "deeper/d.png"):
        (lab / name).write_bytes(b"")
    dataset = phantom_dataset(tmp_path / "dataset", ("kidney",), 64)  # 3 rows, masks ignored
    single = lab / "a.png"
    assert count_target_images([lab]) == 3 and count_target_images([dataset]) == 3
    assert count_target_images([lab, dataset, single]) == 7
    with pytest.raises(FileNotFoundError, match="gone"):
        count_target_images([tmp_path / "gone"])
    init = save_checkpoint(
        tmp_path / "m.pt",
        build_model("coat_micro_daformer", input_size=64),
        {"tile_size": 64, "training": {"samples_per_s": 2.0}},
    )
    plain = RetrainRequest(dataset, init, tmp_path / "r", epochs=2)
    adapted = dataclasses.replace(plain, target=(lab, dataset, single), adapt="pseudo")
    assert plan_run(adapted).minutes == pytest.approx(2 * plan_run(plain).minutes)
    text = plan_run(adapted).describe()
    assert "adapting to 7 unlabeled image(s) (pseudo)" in text
    assert "estimated x2 for the target batches" in text
    assert "adapting" not in plan_run(plain).describe()
    # a time limit bounds it as before
    limited = dataclasses.replace(adapted, time_limit_min=0.1)
    assert plan_run(limited).minutes == 0.1
    # a start that trained with target batches recorded their cost in its rate: not doubled again
    record = {"mode": "grl", "targets": [{"name": "lab", "images": 3}], "adapt_weight": 0.1,
              "pseudo_weight": 1.0, "pseudo_low": 0.1, "pseudo_high": 0.9}  # fmt: skip
    again = save_checkpoint(
        tmp_path / "adapted.pt",
        build_model("coat_micro_daformer", input_size=64),
        {"tile_size": 64, "training": {"samples_per_s": 1.0, "adaptation": record}},
    )
    from_adapted = dataclasses.replace(adapted, init=again)
    assert plan_run(from_adapted).minutes == pytest.approx(2 * plan_run(plain).minutes)
    assert "estimated x" not in plan_run(from_adapted).describe()
    plain_again = plan_run(dataclasses.replace(plain, init=again))
    assert plain_again.minutes == pytest.approx(plan_run(plain).minutes)
    assert "estimated x0.5 as it trained with target batches" in plain_again.describe()


def test_versions_say_what_they_were_adapted_to(tmp_path):
    from training.models.versions import adapted

    plain = _version(tmp_path / "a.pt")
    assert adapted(plain) == "-" and describe(plain)["adapted"] == "-"
    assert adapted(dataclasses.replace(plain, adapt="grl", target_images=1)) == (
        "grl, 1 unlabeled image"
    )
    assert adapted(dataclasses.replace(plain, adapt="both")) == "both, ? unlabeled images"
    register(dataclasses.replace(plain, adapt="pseudo", target_images=12), tmp_path)
    (entry,) = list_versions(tmp_path)  # the record survives the registry
    assert (entry.adapt, entry.target_images) == ("pseudo", 12)


def test_the_registered_image_count_is_the_checkpoints_record(tmp_path):
    from training.models import build_model, save_checkpoint
    from training.retrain import _target_images

    lab = tmp_path / "lab"
    lab.mkdir()
    (lab / "a.png").write_bytes(b"")
    request = RetrainRequest(
        tmp_path, tmp_path / "m.pt", tmp_path / "r", target=(lab,), adapt="grl"
    )
    model = build_model("coat_micro_daformer", input_size=64)
    targets = [{"name": "lab", "images": 4}, {"name": "x.tiff", "images": 1}]
    record = {"mode": "grl", "targets": targets, "adapt_weight": 0.1, "pseudo_weight": 1.0,
              "pseudo_low": 0.1, "pseudo_high": 0.9}  # fmt: skip
    recorded = save_checkpoint(tmp_path / "rec.pt", model, {"training": {"adaptation": record}})
    assert _target_images(recorded, request) == 5  # what the trainer found, not a recount
    plain = save_checkpoint(tmp_path / "plain.pt", model)
    assert _target_images(plain, request) == 1  # no record: the folder's images
    assert _target_images(recorded, RetrainRequest(tmp_path, plain, tmp_path / "r")) is None


def test_the_plugins_modes_are_the_trainers():
    trainer = pytest.importorskip(
        "training.adapt", reason="training.adapt comes with --target/--adapt (branch feat/adapt)"
    )
    from training.retrain_plan import ADAPT_MODES

    assert tuple(ADAPT_MODES) == tuple(trainer.ADAPT_MODES)
