"""``python -m training.train`` and ``python -m training.evaluate`` end to end on tiny data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from helpers import phantom_dataset

from training import evaluate as evaluate_command
from training import train as train_command
from training.config import parse_config
from training.data.records import load_records, parse_data_spec, split_records
from training.models import build_model, load_checkpoint, save_checkpoint
from training.validation import MIN_AREAS_UM2, dice

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """Two organs, three phantoms each, 128 px at 2 um/px (FTUs some tens of pixels wide)."""
    return phantom_dataset(tmp_path_factory.mktemp("data") / "phantoms")


def _args(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--data",
        str(data),
        "--out",
        str(out),
        "--tile",
        "64",
        "--pixel-size",
        "2.0",
        "--batch-size",
        "2",
        "--samples-per-epoch",
        "4",
        "--workers",
        "0",
        "--no-progress",
        *extra,
    ]


def test_training_writes_a_usable_run_folder(dataset, tmp_path):
    out = tmp_path / "run"
    code = train_command.main(
        _args(dataset, out, "--model", "swin_micro_upernet", "--epochs", "2", "--ema", "0.9")
    )
    assert code == 0
    for name in ("best.pt", "last.pt", "metrics.csv", "learning_curve.png", "config.yaml"):
        assert (out / name).is_file(), name
    _, meta = load_checkpoint(out / "best.pt")
    assert meta["pixel_size_um"] == 2.0 and meta["tile_size"] == 64
    assert set(meta["organs"]) == {"kidney", "lung"}
    assert set(meta["thresholds"]) >= {"kidney", "lung"}
    # the minimum areas tuned with the thresholds at the best epoch
    assert set(meta["min_area_um2"]) == {"kidney", "lung"}
    assert set(meta["min_area_um2"].values()) <= set(MIN_AREAS_UM2)
    training = meta["training"]
    assert training["best_epoch"] in (1, 2) and training["epochs"] == training["best_epoch"]
    assert load_checkpoint(out / "last.pt")[1]["training"]["epochs"] == 2
    assert set(training["validation"]["organ"]) == {"kidney", "lung"}
    metrics = pd.read_csv(out / "metrics.csv")
    assert list(metrics["epoch"]) == [1, 2]
    for column in ("loss", "bce", "dice", "lr", "samples_per_s", "val_dice", "val_dice_kidney"):
        assert column in metrics.columns, column
    for column in ("val_score", "val_background_dice_kidney", "val_all_ftu_dice_lung"):
        assert column in metrics.columns, column
    # the best epoch is the first with the best selection score; its FTU Dice is reported
    best = metrics.loc[metrics["val_score"].idxmax()]
    assert training["best_epoch"] == best["epoch"]
    assert training["best_val_score"] == pytest.approx(best["val_score"], abs=1e-4)
    assert training["best_val_dice"] == pytest.approx(best["val_dice"], abs=1e-4)
    assert "thresholds" not in metrics.columns and "min_area_um2" not in metrics.columns
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["model"] == "swin_micro_upernet" and config["ema"] == 0.9
    assert "augment" in config and config["oversample"] == {"lung": 5.0}


def test_a_cpu_time_limit_counts_this_process_cpu_not_waiting(dataset, tmp_path):
    """--time-clock cpu: the limit counts CPU seconds (a fair budget on a shared machine); a
    sleeping process uses none of it, and the summary says which clock its seconds are."""
    import time
    from types import SimpleNamespace

    from training.trainer import Trainer

    fake = SimpleNamespace(options=SimpleNamespace(time_clock="cpu"))
    before, wall = Trainer._clock(fake), time.monotonic()
    time.sleep(0.3)
    assert Trainer._clock(fake) - before < 0.1 <= time.monotonic() - wall - 0.2
    out = tmp_path / "run"
    extra = ("--model", "swin_micro_upernet", "--epochs", "50", "--time-limit", "0.001")
    assert train_command.main(_args(dataset, out, *extra, "--time-clock", "cpu")) == 0
    training = load_checkpoint(out / "last.pt")[1]["training"]
    assert training["stopped_by_time_limit"] and training["epochs"] == 1
    assert training["clock"] == "cpu"


def test_a_time_schedule_ends_the_cosine_at_the_time_limit(dataset, tmp_path):
    """--lr-schedule time: a run the time limit stops at epoch 20 of 60 ends at the low
    learning rate of the cosine's end, not at three quarters of the peak; when the epochs run
    out before the limit, the schedule is the epochs' one."""
    import math
    from types import SimpleNamespace

    from training.trainer import Trainer

    now = [0.0]

    def trainer(schedule: str) -> SimpleNamespace:
        options = SimpleNamespace(epochs=60, warmup=0.5, time_limit_s=900.0, lr_schedule=schedule)
        fake = SimpleNamespace(options=options, steps_per_epoch=100, _fit_start=0.0)
        fake._clock = lambda: now[0]
        fake._time_done = lambda: Trainer._time_done(fake)
        return fake

    cosine = lambda progress: 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress))  # noqa: E731
    now[0] = 900.0  # the limit, after 2000 of 6000 steps
    assert Trainer._lr_factor(trainer("time"), 2000) == pytest.approx(0.01)
    assert Trainer._lr_factor(trainer("epochs"), 2000) == pytest.approx(cosine(1950 / 5950))
    now[0] = 450.0  # half the time, a third of the steps: the time leads
    assert Trainer._lr_factor(trainer("time"), 2000) == pytest.approx(cosine(0.5))
    now[0] = 90.0  # a tenth of the time, a third of the steps: the steps lead
    assert Trainer._lr_factor(trainer("time"), 2000) == pytest.approx(cosine(1950 / 5950))
    # end to end: the flag reaches the trainer; one epoch of 50 reaches a tiny CPU limit
    out = tmp_path / "run"
    extra = ("--model", "swin_micro_upernet", "--epochs", "50", "--time-limit", "0.001")
    args = _args(dataset, out, *extra, "--time-clock", "cpu", "--lr-schedule", "time")
    assert train_command.main(args) == 0
    assert pd.read_csv(out / "metrics.csv")["lr"].tolist() == [pytest.approx(5e-4 * 0.01)]


def test_keep_last_holds_the_final_epoch_in_best(dataset, tmp_path):
    """--keep last: best.pt is the last validated epoch whatever the scores (a few validation
    images cannot tell epochs apart); --keep best: the epoch of the best score."""
    out = tmp_path / "run"
    args = _args(dataset, out, "--model", "swin_micro_upernet", "--epochs", "3", "--lr", "0.05")
    assert train_command.main([*args, "--keep", "last"]) == 0
    metrics = pd.read_csv(out / "metrics.csv")
    training = load_checkpoint(out / "best.pt")[1]["training"]
    assert training["best_epoch"] == 3
    assert training["best_val_score"] == pytest.approx(metrics["val_score"].iloc[-1], abs=1e-4)
    best, last = load_checkpoint(out / "best.pt")[0], load_checkpoint(out / "last.pt")[0]
    for a, b in zip(best.state_dict().values(), last.state_dict().values(), strict=True):
        assert torch.equal(a.float(), b.float())


def test_resume_continues_and_init_fine_tunes(dataset, tmp_path):
    out = tmp_path / "run"
    base = _args(dataset, out, "--model", "swin_micro_upernet")
    assert train_command.main([*base, "--epochs", "1"]) == 0
    assert train_command.main([*base, "--epochs", "1"]) == 2  # refuses to overwrite a run
    # a training state written before minimum areas were tuned still resumes
    state = torch.load(out / "train_state.pt", weights_only=True)
    del state["min_area_um2"]
    torch.save(state, out / "train_state.pt")
    # the saved configuration repeats the run: resume it with one more epoch
    assert (
        train_command.main(["--config", str(out / "config.yaml"), "--epochs", "2", "--resume"]) == 0
    )
    assert list(pd.read_csv(out / "metrics.csv")["epoch"]) == [1, 2]
    assert set(load_checkpoint(out / "best.pt")[1]["min_area_um2"]) == {"kidney", "lung"}

    tuned = tmp_path / "tuned"
    # another seed for the crops, the parent's validation split kept
    args = _args(dataset, tuned, "--init", str(out / "best.pt"), "--epochs", "1", "--lr", "1e-4")
    assert train_command.main([*args, "--seed", "7", "--split-seed", "0"]) == 0
    _, meta = load_checkpoint(tuned / "best.pt")
    assert meta["training"]["init"] == str(out / "best.pt")
    parent = load_checkpoint(out / "best.pt")[1]["training"]["val_ids"]
    assert meta["training"]["val_ids"] == parent


def test_init_fine_tunes_at_another_tile_size(dataset, tmp_path, capsys):
    # CoaT's patch embeddings fix its grid: the model is rebuilt for the new tile, weights kept
    parent = build_model("coat_micro_daformer", input_size=64)
    init = save_checkpoint(tmp_path / "parent.pt", parent, {"pixel_size_um": 2.0, "tile_size": 64})
    args = parse_config([*_args(dataset, tmp_path / "unused", "--init", str(init)), "--tile", "96"])
    model, meta = train_command._model(args)
    assert model.config["input_size"] == 96 and meta["tile_size"] == 96
    for key, value in parent.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key

    out = tmp_path / "tuned"
    assert (
        train_command.main(
            [*_args(dataset, out, "--init", str(init), "--epochs", "1"), "--tile", "96"]
        )
        == 0
    )
    tuned, meta = load_checkpoint(out / "best.pt")
    assert tuned.config["input_size"] == 96 and meta["tile_size"] == 96
    # a tile the encoder cannot take stops before training, naming the flag
    assert (
        train_command.main([*_args(dataset, tmp_path / "bad", "--init", str(init)), "--tile", "80"])
        == 2
    )
    assert "--tile 80" in capsys.readouterr().err
    assert not (tmp_path / "bad" / "last.pt").exists()


def test_an_organ_specialist_keeps_the_split_of_its_organ(dataset, tmp_path):
    out = tmp_path / "kidney"
    args = _args(
        dataset, out, "--model", "swin_micro_upernet", "--epochs", "1", "--organ", "kidney"
    )
    assert train_command.main(args) == 0
    training = load_checkpoint(out / "best.pt")[1]["training"]
    assert set(training["validation"]["organ"]) == {"kidney"}
    # the kidney images validated on are those a run on every organ validates on
    _, val = split_records(load_records([parse_data_spec(str(dataset))]), 0.2, 0)
    assert training["val_ids"] == sorted(r.id for r in val if r.organ == "kidney")
    assert len(training["val_ids"]) == 1


def test_yaml_config_sets_defaults_and_flags_win(dataset, tmp_path):
    config = tmp_path / "train.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model": "coat_micro_daformer",
                "epochs": 3,
                "lr": 0.01,
                "augment": {"cutmix_p": 0.0, "hue": 5.0},
            }
        )
    )
    out = tmp_path / "run"
    args = _args(dataset, out, "--config", str(config), "--epochs", "1", "--val-fraction", "0")
    args += ["--augment-preset", "strong-color"]
    assert train_command.main(args) == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["model"] == "coat_micro_daformer" and saved["lr"] == 0.01
    assert saved["epochs"] == 1 and saved["augment"]["cutmix_p"] == 0.0
    # the preset's strengths, the config's own settings over them
    assert saved["augment"]["stain_scale"] == 0.25 and saved["augment"]["hue"] == 5.0
    assert (out / "best.pt").is_file()  # no validation images: the final weights are kept


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--model", "unet"], "not one of"),
        (["--init", "missing.pt"], "no such checkpoint"),
        (["--init", "{corrupt}"], "--init"),
        (["--model", "swin_micro_upernet", "--oversample", "liver=2"], "ORGAN=FACTOR"),
        (["--model", "swin_micro_upernet", "--organ", "spleen"], "--organ spleen: no such image"),
    ],
)
def test_bad_input_stops_before_training(dataset, tmp_path, capsys, extra, message):
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x00not a checkpoint")
    extra = [str(corrupt) if e == "{corrupt}" else e for e in extra]
    try:
        code = train_command.main(_args(dataset, tmp_path / "run", *extra))
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run" / "last.pt").exists()


def test_empty_dataset_is_refused(tmp_path, capsys):
    folder = tmp_path / "empty"
    folder.mkdir()
    (folder / "train.csv").write_text(
        "id,organ,data_source,img_height,img_width,pixel_size,tissue_thickness,rle,age,sex\n"
    )
    args = _args(folder, tmp_path / "run", "--model", "swin_micro_upernet")
    assert train_command.main(args) == 2
    assert "no rows" in capsys.readouterr().err


def test_evaluate_scores_per_organ_and_source(dataset, tmp_path, capsys):
    model = build_model("swin_micro_upernet", input_size=64)
    meta = {"pixel_size_um": 2.0, "tile_size": 64}
    checkpoint = save_checkpoint(tmp_path / "m.pt", model, meta)
    out = tmp_path / "scores.json"
    assert (
        evaluate_command.main(
            ["--data", str(dataset), "--model", str(checkpoint), "--out", str(out)]
        )
        == 0
    )
    scores = json.loads(out.read_text())
    assert scores["images"] == 6
    assert set(scores["organ"]) == {"kidney", "lung"} and set(scores["data_source"]) == {"HPA"}
    assert 0 <= scores["dice"] <= 1
    assert scores["thresholds"] == {"kidney": 0.5, "lung": 0.5}
    assert scores["min_area_um2"] == {"kidney": 0.0, "lung": 0.0}  # a checkpoint without any
    for group in ("by_organ", "by_data_source", "by_source_organ"):  # beside the FTU Dice
        for row in scores[group].values():
            assert {"dice", "background_dice", "all_ftu_dice", "score"} <= set(row)
    kidney = scores["by_organ"]["kidney"]
    assert kidney["dice"] == scores["organ"]["kidney"] and 0 < kidney["all_ftu_dice"] < 1
    printed = capsys.readouterr().out
    assert "mean per-image Dice" in printed
    line = next(x for x in printed.splitlines() if x.split()[:2] == ["organ", "kidney"])
    expected = f"{kidney['dice']:.4f} {kidney['background_dice']:>10.4f} "
    assert expected + f"{kidney['all_ftu_dice']:>7.4f}" in line
    assert line.endswith("yes" if kidney["dice"] > kidney["all_ftu_dice"] else "NO")
    assert (
        evaluate_command.main(["--data", str(tmp_path / "nope"), "--model", str(checkpoint)]) == 2
    )


def test_dice_is_the_competition_metric():
    a = torch.zeros(4, 4, dtype=torch.uint8).numpy()
    b = a.copy()
    assert dice(a, b) == 1.0  # nothing to find, nothing found
    a[:2] = 1
    b[1:3] = 1
    assert dice(a, b) == pytest.approx(0.5)


@pytest.mark.slow
def test_torchrun_ranks_hold_identical_weights(dataset, tmp_path):
    out = tmp_path / "ddp"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "training.train",
        *_args(dataset, out, "--model", "swin_micro_upernet", "--epochs", "2"),
        "--device",
        "cpu",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    _, meta = load_checkpoint(out / "last.pt")
    training = meta["training"]
    assert training["ranks"] == 2
    assert training["ranks_agree"] is True
    assert len(set(training["rank_weight_digests"])) == 1


def test_augmentation_preview_writes_a_grid(dataset, tmp_path):
    from PIL import Image

    from training.augment import preview

    out = tmp_path / "grid.png"
    args = ["--data", str(dataset), "--out", str(out), "--pixel-size", "2", "--tile", "64"]
    assert preview.main([*args, "--rows", "2", "--cols", "2"]) == 0
    with Image.open(out) as png:
        assert png.size == (4 * 68, 2 * 68)
    assert preview.main(["--data", str(tmp_path / "none"), "--out", str(out)]) == 2
