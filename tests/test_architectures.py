"""What every small registered architecture must do, whatever its encoder and decoder.

Parametrised over every registered configuration whose name contains ``micro``: a new
architecture's small configuration joins these tests by being registered.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import phantom_dataset

from training import train as train_command
from training.inference import run
from training.losses import SegmentationLoss
from training.models import (
    CheckpointError,
    build_model,
    list_models,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from training.models.registry import CONFIGS, ENCODER_FAMILIES
from training.synthetic import make_phantom

ROOT = Path(__file__).resolve().parents[1]
SMALL = [name for name in list_models() if "micro" in name]
SHIPPED = {"swin_micro_upernet", "coat_micro_daformer"}  # covered in depth by test_models.py
NEW = [name for name in SMALL if name not in SHIPPED]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return phantom_dataset(tmp_path_factory.mktemp("data") / "phantoms")


@pytest.mark.parametrize("name", SMALL)
def test_logits_and_aux_at_the_input_size_non_square_where_allowed(name):
    model = build_model(name, input_size=128).eval()
    if model.encoder.fixed_size:  # CoaT: one tile size, refused otherwise in one line
        with pytest.raises(ValueError, match="takes only 128 x 128 px") as refused:
            model(torch.randn(1, 3, 128, 96))
        assert "\n" not in str(refused.value)
        shape = (128, 128)
    else:
        shape = (128, 96)
    x = torch.randn(2, 3, *shape)
    with torch.inference_mode():
        assert model(x).shape == (2, 1, *shape)
        channels_last = model(x.contiguous(memory_format=torch.channels_last))
        torch.testing.assert_close(channels_last, model(x), rtol=1e-4, atol=1e-4)
    main, aux = model.train().forward_with_aux(x)
    assert main.shape == (2, 1, *shape)
    assert aux and all(a.shape == (2, 1, *shape) for a in aux)
    features = model.encoder(x)
    assert [f.shape[1] for f in features] == model.encoder.channels
    assert features[-1].shape[-2:] == (shape[0] // 32, shape[1] // 32)  # the deepest: 1/32


@pytest.mark.parametrize("name", SMALL)
def test_a_side_that_is_not_a_multiple_of_32_is_refused_in_one_line(name):
    model = build_model(name, input_size=64).eval()
    with pytest.raises(ValueError) as refused:
        model(torch.randn(1, 3, 64, 80))
    assert "80" in str(refused.value) and "\n" not in str(refused.value)


@pytest.mark.parametrize("name", SMALL)
def test_one_training_step_reaches_every_parameter(name):
    """Every parameter gets a gradient from the main and auxiliary losses (DDP requires it) and
    one optimiser step changes the prediction."""
    torch.manual_seed(0)
    model = build_model(name, input_size=64).train()
    x, target = torch.randn(2, 3, 64, 64), (torch.rand(2, 1, 64, 64) > 0.5).float()
    main, aux = model.forward_with_aux(x)
    loss, _ = SegmentationLoss()(main, target, aux)
    loss.backward()
    assert torch.isfinite(loss)
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"no gradient reaches {missing[:5]}"
    before = model.eval()(x).detach()
    torch.optim.AdamW(model.parameters(), lr=1e-3).step()
    assert not torch.equal(model(x).detach(), before)


@pytest.mark.parametrize("name", SMALL)
def test_checkpoint_round_trip_full_and_half(tmp_path, name):
    model = build_model(name, input_size=64).eval()
    meta = {"pixel_size_um": 1.5, "tile_size": 64}
    full = save_checkpoint(tmp_path / "full.pt", model, meta)
    half = save_checkpoint(tmp_path / "half.pt", model, meta, half=True)
    assert half.stat().st_size < 0.65 * full.stat().st_size
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        expected = model(x)
        loaded, loaded_meta = load_checkpoint(full)
        torch.testing.assert_close(loaded(x), expected, rtol=0, atol=0)
        halved, _ = load_checkpoint(half)
        assert all(p.dtype == torch.float32 for p in halved.parameters())
        torch.testing.assert_close(halved(x), expected, rtol=0, atol=0.05)
    assert loaded_meta["pixel_size_um"] == 1.5 and loaded_meta["tile_size"] == 64
    assert loaded.config == model.config


@pytest.mark.parametrize("name", SMALL)
def test_the_engine_runs_a_checkpoint_with_tta(tmp_path, name):
    path = save_checkpoint(
        tmp_path / "m.pt", build_model(name, input_size=64), {"pixel_size_um": 0.8}
    )
    image, _, _ = make_phantom("kidney", size=256, seed=0)
    result = run(image, path, "kidney", pixel_size_um=0.4, batch_size=3, tta=4)
    assert result.probability.shape == (128, 128)
    assert 0 <= result.probability.min() <= result.probability.max() <= 1
    assert result.tiles_run > 0


def _first_number_argument(name: str) -> str:
    family = ENCODER_FAMILIES[CONFIGS[name]["encoder"]]
    return next(key for key, kind in family.args.items() if kind.leaf is int)


@pytest.mark.parametrize("name", SMALL)
def test_tampered_architecture_arguments_are_refused(tmp_path, name):
    good = save_checkpoint(tmp_path / "good.pt", build_model(name, input_size=64))
    number = _first_number_argument(name)
    other = next(d for d in ("upernet", "daformer") if d != CONFIGS[name]["decoder"])
    crafted = [
        ({"encoder_args": {"checkpoint_path": "/tmp/other.pth"}}, "encoder_args.checkpoint_path"),
        ({"encoder_args": {number: "7"}}, f"encoder_args.{number} must be"),
        ({"encoder_args": {number: 10**9}}, f"encoder_args.{number} must be"),
        ({"decoder": other}, "cannot be changed"),
        ({"encoder": "resnet50"}, "cannot be changed"),
        ({"pretrained": "/tmp/imagenet.pth"}, "architecture.args.pretrained is refused"),
    ]
    for args, match in crafted:
        payload = read_checkpoint(good)
        payload["architecture"]["args"].update(args)
        torch.save(payload, tmp_path / "crafted.pt")
        with pytest.raises(CheckpointError, match=rf"crafted\.pt: .*{match}"):
            load_checkpoint(tmp_path / "crafted.pt")


def _args(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--data", str(data), "--out", str(out), "--tile", "64", "--pixel-size", "2.0",
        "--batch-size", "2", "--samples-per-epoch", "4", "--workers", "0", "--no-progress",
        *extra,
    ]  # fmt: skip


@pytest.mark.parametrize("name", NEW)
def test_trains_and_fine_tunes_with_init(dataset, tmp_path, name):
    assert train_command.main(_args(dataset, tmp_path / "a", "--model", name, "--epochs", "1")) == 0
    _, meta = load_checkpoint(tmp_path / "a" / "best.pt")
    assert meta["architecture"]["name"] == name and meta["tile_size"] == 64
    init = ("--init", str(tmp_path / "a" / "best.pt"), "--epochs", "1")
    assert train_command.main(_args(dataset, tmp_path / "b", *init)) == 0
    _, tuned_meta = load_checkpoint(tmp_path / "b" / "best.pt")
    assert tuned_meta["architecture"]["name"] == name
    assert tuned_meta["training"]["init"] == str(tmp_path / "a" / "best.pt")


@pytest.mark.slow
@pytest.mark.parametrize("name", NEW)
def test_torchrun_ranks_train_the_same_weights(dataset, tmp_path, name):
    out = tmp_path / "ddp"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "training.train", *_args(dataset, out, "--model", name, "--epochs", "1"),
        "--device", "cpu",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    training = load_checkpoint(out / "last.pt")[1]["training"]
    assert training["ranks"] == 2 and training["ranks_agree"] is True
