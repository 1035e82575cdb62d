"""``--target``/``--adapt {grl,pseudo,both}``: gradient reversal, pseudo-labels, the command."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from helpers import phantom_dataset
from PIL import Image

from training import train as train_command
from training.adapt.grl import DomainClassifier, domain_loss, ramp, reverse_gradient
from training.adapt.pseudo import pseudo_labels
from training.adapt.target import TargetDataset, find_targets
from training.config import parse_config
from training.distributed import World
from training.losses import SegmentationLoss
from training.models import CheckpointError, build_model, load_checkpoint, save_checkpoint
from training.slides import write_pyramid
from training.synthetic import make_phantom

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return phantom_dataset(tmp_path_factory.mktemp("data") / "phantoms", organs=("kidney",))


@pytest.fixture(scope="module")
def target(tmp_path_factory) -> Path:
    """A lab's unlabelled images: PNGs without a pixel size, in another stain."""
    folder = tmp_path_factory.mktemp("lab") / "my_lab"
    folder.mkdir()
    for seed in range(3):
        image, _, _ = make_phantom("kidney", "hubmap", 128, seed, pixel_size_um=2.0)
        Image.fromarray(image).save(folder / f"slide{seed}.png")
    (folder / "notes.txt").write_text("not an image, and not looked at")
    return folder


def _args(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        *("--data", str(data), "--out", str(out), "--model", "swin_micro_upernet"),
        *("--tile", "64", "--pixel-size", "2.0", "--batch-size", "2"),
        *("--samples-per-epoch", "4", "--workers", "0", "--no-progress", "--epochs", "1"),
        *extra,
    ]


# ---- the gradient reversal -------------------------------------------------------------------
def test_gradient_reversal_is_the_identity_forward_and_minus_lambda_backward():
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    upstream = torch.randn(2, 3, 4, 4)
    y = reverse_gradient(x, 0.3)
    assert torch.equal(y, x)
    y.backward(upstream)
    assert torch.allclose(x.grad, -0.3 * upstream)


def test_the_encoder_gradient_of_the_domain_loss_is_reversed():
    """Through the real encoder: the domain loss's gradient on the encoder is the opposite of
    the same loss's gradient without reversal (times lambda), the classifier's is not."""
    torch.manual_seed(0)
    model = build_model("swin_micro_upernet", input_size=64).eval()
    classifier = DomainClassifier(model.encoder.channels[-1])
    source, target = torch.randn(2, 3, 64, 64), torch.randn(2, 3, 64, 64) + 0.5

    def gradients(reversed_: bool) -> tuple[torch.Tensor, torch.Tensor]:
        model.zero_grad()
        classifier.zero_grad()
        features = [model.encoder(images)[-1] for images in (source, target)]
        if reversed_:
            loss, _ = domain_loss(classifier, *features, lam=0.5)
        else:
            logits = classifier(torch.cat(features))
            loss = F.binary_cross_entropy_with_logits(logits, torch.tensor([0.0, 0, 1, 1]))
        loss.backward()
        encoder = torch.cat([p.grad.flatten() for p in model.encoder.parameters()])
        head = torch.cat([p.grad.flatten() for p in classifier.parameters()])
        return encoder, head

    encoder_reversed, head_reversed = gradients(True)
    encoder_plain, head_plain = gradients(False)
    assert encoder_plain.norm() > 0
    assert F.cosine_similarity(encoder_reversed, encoder_plain, dim=0) < -0.999
    assert torch.allclose(encoder_reversed, -0.5 * encoder_plain, atol=1e-6, rtol=1e-3)
    assert torch.allclose(head_reversed, head_plain, atol=1e-6, rtol=1e-4)


def test_the_trainer_reverses_the_domain_gradient(dataset, target, tmp_path):
    """The trainer's hook (``Adaptation``) sends the encoder the reversed gradient of the
    domain loss on its own source and target crops."""
    extra = ["--target", str(target), "--adapt", "grl", "--target-pixel-size", "2.0"]
    args = parse_config(_args(dataset, tmp_path / "run", *extra, "--adapt-weight", "0.5"))
    trainer = train_command.prepare(args, World(), torch.device("cpu"))
    adaptation, model = trainer.adaptation, trainer.model.eval()  # eval: no dropout draws
    source = trainer.normalise(torch.stack([trainer.loader.dataset[i]["image"] for i in (0, 1)]))
    adaptation.start_epoch(1)
    first = [adaptation.loader.dataset[int(i)]["image"] for i in list(adaptation.sampler)[:2]]
    with adaptation.capture():
        model(source)
    loss, parts = adaptation.loss(progress=1.0)
    model.zero_grad()
    loss.backward()
    hooked = torch.cat([p.grad.flatten() for p in model.encoder.parameters()])

    model.zero_grad()
    features = [model.encoder(x)[-1] for x in (source, trainer.normalise(torch.stack(first)))]
    logits = adaptation.classifier(torch.cat(features))
    plain = F.binary_cross_entropy_with_logits(logits, torch.tensor([0.0, 0, 1, 1]))
    assert float(plain.detach()) == pytest.approx(parts["domain_loss"], rel=1e-5)
    plain.backward()
    reference = torch.cat([p.grad.flatten() for p in model.encoder.parameters()])
    lam = 0.5 * ramp(1.0)
    assert parts["grl_lambda"] == pytest.approx(lam)
    assert F.cosine_similarity(hooked, reference, dim=0) < -0.999
    assert torch.allclose(hooked, -lam * reference, atol=1e-6, rtol=1e-3)


def test_the_ramp_rises_from_0_to_about_1():
    values = [ramp(p) for p in np.linspace(0, 1, 101)]
    assert values[0] == 0.0
    assert values[-1] == pytest.approx(1.0, abs=1e-4)
    assert ramp(0.5) == pytest.approx(2 / (1 + np.exp(-5)) - 1)
    assert all(b > a for a, b in itertools.pairwise(values))


# ---- pseudo-labels ---------------------------------------------------------------------------
def test_a_run_stopped_by_its_time_limit_ramps_with_its_time():
    """The ramp follows the epochs, or the time limit when that is further along: a 100-epoch
    run that a 10-minute limit stops after 2 epochs still reaches the full reversal."""
    import time
    from types import SimpleNamespace

    from training.trainer import Trainer

    fake = SimpleNamespace(loader=[0] * 10, options=SimpleNamespace(epochs=100, time_limit_s=600))
    fake._clock = time.monotonic
    now = time.monotonic()
    assert Trainer._progress(fake, 1, 4, now) == pytest.approx(0.005, abs=1e-3)
    assert Trainer._progress(fake, 2, 9, now - 300) == pytest.approx(0.5, abs=1e-2)
    assert Trainer._progress(fake, 2, 9, now - 900) == 1.0
    fake.options.time_limit_s = None
    assert Trainer._progress(fake, 2, 9, now - 900) == pytest.approx(0.02)


def test_unconfident_pixels_add_nothing_to_the_loss_nor_get_a_gradient():
    probs = torch.tensor([0.95, 0.5, 0.05, 0.92]).view(1, 1, 2, 2)
    target, weight = pseudo_labels(probs, low=0.1, high=0.9)
    assert target.flatten().tolist() == [1, 0, 0, 1]
    assert weight.flatten().tolist() == [1, 0, 1, 1]
    criterion = SegmentationLoss(bce=1.0, dice=1.0, focal=1.0, aux=0.4)
    logits = torch.tensor([2.0, 0.3, -1.0, 0.5]).view(1, 1, 2, 2).requires_grad_()
    aux = [logits * 1.5]
    loss, _ = criterion(logits, target, aux, weight=weight)
    loss.backward()
    grad = logits.grad.flatten()
    assert grad[1] == 0  # the pixel at 0.5 teaches nothing
    assert (grad[[0, 2, 3]] != 0).all()  # the confident ones do
    # whatever the model says at the unconfident pixel, the loss is the same
    other = logits.detach().clone()
    other[0, 0, 0, 1] = -7.0
    assert float(criterion(other, target, [other * 1.5], weight=weight)[0]) == pytest.approx(
        float(loss)
    )
    # without a weight every pixel counts, as before
    assert float(criterion(other, target, [other * 1.5])[0]) != pytest.approx(float(loss))


# ---- target crops ----------------------------------------------------------------------------
def test_target_crops_lie_on_tissue_at_the_model_scale(tmp_path):
    """A slide of glass with tissue in one corner: every crop shows tissue (placed at random,
    most would be glass), read at the model's pixel size from the file's own."""
    image = np.full((400, 400, 3), 245, np.uint8)
    image[:100, :100] = (150, 60, 130)  # stained tissue, 100 um at 1 um/px
    path = tmp_path / "slide.tif"
    write_pyramid(path, image, pixel_size_um=1.0)
    (found,) = find_targets([path])
    assert found[1][0].pixel_size_um == 1.0 and found[1][0].shape == (400, 400)
    crops = TargetDataset(found[1], tile=32, model_um=2.0, seed=3)
    for index in range(20):
        crop = crops[index]["image"].numpy()
        assert crop.shape == (32, 32, 3)
        assert (crop.mean(axis=-1) < 200).mean() > 0.2, index  # on the tissue, not the glass
    # at 2 um/px the 100 um of tissue are 50 px: a crop larger than it, centred on it, holds it
    whole = TargetDataset(found[1], tile=128, model_um=2.0).crop(0, np.random.default_rng(0))
    assert (whole.mean(axis=-1) < 200).sum() == pytest.approx(50 * 50, rel=0.1)


# ---- the command -----------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["grl", "pseudo", "both"])
def test_adapting_writes_a_plain_checkpoint_that_records_it(dataset, target, tmp_path, mode):
    out = tmp_path / mode
    extra = ["--target", str(target), str(dataset), "--adapt", mode, "--target-pixel-size", "2"]
    assert train_command.main(_args(dataset, out, *extra)) == 0
    model, meta = load_checkpoint(out / "best.pt")
    plain = build_model("swin_micro_upernet", input_size=64)
    assert set(model.state_dict()) == set(plain.state_dict())  # no domain classifier in it
    assert meta["training"]["adaptation"] == {
        "mode": mode,
        "adapt_weight": 0.1,
        "pseudo_weight": 1.0,
        "pseudo_low": 0.1,
        "pseudo_high": 0.9,
        "targets": [{"name": "my_lab", "images": 3}, {"name": "phantoms", "images": 3}],
    }
    metrics = pd.read_csv(out / "metrics.csv")
    state = torch.load(out / "train_state.pt", weights_only=True)
    if mode in ("grl", "both"):
        assert 0 <= metrics["domain_accuracy"][0] <= 1 and metrics["domain_loss"][0] > 0
        assert "classifier" in state["adapt"]
    if mode in ("pseudo", "both"):
        assert 0 <= metrics["pseudo_confident"][0] <= 1 and "target_loss" in metrics
    if mode == "pseudo":
        assert "domain_loss" not in metrics and "classifier" not in state["adapt"]


def test_resume_continues_with_the_domain_classifier(dataset, target, tmp_path):
    out = tmp_path / "run"
    extra = ["--target", str(target), "--adapt", "grl", "--target-pixel-size", "2"]
    assert train_command.main(_args(dataset, out, *extra)) == 0
    saved = torch.load(out / "train_state.pt", weights_only=True)["adapt"]
    steps = [s["step"] for s in saved["optimizer"]["state"].values()]
    assert steps and all(float(s) == 2 for s in steps)  # 4 crops in batches of 2
    args = ["--config", str(out / "config.yaml"), "--epochs", "2", "--resume"]
    assert train_command.main(args) == 0
    resumed = torch.load(out / "train_state.pt", weights_only=True)["adapt"]
    # the classifier's optimiser went on from the saved state: 2 + 2 steps, not 2 afresh
    assert all(float(s["step"]) == 4 for s in resumed["optimizer"]["state"].values())
    assert list(pd.read_csv(out / "metrics.csv")["epoch"]) == [1, 2]


def test_a_damaged_adaptation_record_is_refused(tmp_path):
    model = build_model("swin_micro_upernet", input_size=64)
    record = {
        "mode": "grl",
        "adapt_weight": 0.1,
        "pseudo_weight": 1.0,
        "pseudo_low": 0.1,
        "pseudo_high": 0.9,
        "targets": [{"name": "lab", "images": 2}],
    }
    meta = {"pixel_size_um": 2.0, "tile_size": 64, "training": {"adaptation": record}}
    save_checkpoint(tmp_path / "ok.pt", model, meta)
    assert load_checkpoint(tmp_path / "ok.pt")[1]["training"]["adaptation"] == record
    for damage in ({"mode": "magic"}, {"adapt_weight": float("nan")}, {"targets": [{"x": 1}]}):
        bad = {**meta, "training": {"adaptation": {**record, **damage}}}
        with pytest.raises(CheckpointError, match=r"meta\.training\.adaptation"):
            save_checkpoint(tmp_path / "bad.pt", model, bad)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--adapt", "grl"], "--adapt needs --target"),
        (["--target", "{lab}"], "--target needs --adapt"),
        (["--target", "{empty}", "--adapt", "pseudo"], "holds no readable images"),
        (["--target", "{text}", "--adapt", "grl"], "notes.txt is not a readable image"),
        (["--target", "{lab}", "--adapt", "grl"], "has no pixel size in its metadata"),
        (["--target", "{missing}", "--adapt", "grl"], "no such file or folder"),
        (
            ["--target", "{lab}", "--adapt", "pseudo", "--pseudo-low", ".6", "--pseudo-high", ".4"],
            "--pseudo-low and --pseudo-high must satisfy 0 <= low < high <= 1",
        ),
    ],
)
def test_unusable_targets_are_refused_in_one_line(
    dataset, target, tmp_path, capsys, extra, message
):
    (tmp_path / "empty").mkdir()
    names = {
        "{lab}": target,
        "{empty}": tmp_path / "empty",
        "{text}": target / "notes.txt",
        "{missing}": tmp_path / "missing",
    }
    extra = [str(names.get(e, e)) for e in extra]
    try:
        code = train_command.main(_args(dataset, tmp_path / "run", *extra))
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    assert code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and message in errors[0], errors
    assert not (tmp_path / "run" / "last.pt").exists()


@pytest.mark.slow
def test_torchrun_adapts_with_identical_weights_on_every_rank(dataset, target, tmp_path):
    out = tmp_path / "ddp"
    extra = ["--target", str(target), "--adapt", "both", "--target-pixel-size", "2"]
    command = [
        *(sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"),
        *("-m", "training.train", *_args(dataset, out, *extra), "--device", "cpu"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    training = load_checkpoint(out / "last.pt")[1]["training"]
    assert training["ranks"] == 2 and training["ranks_agree"] is True
    assert training["adaptation"]["mode"] == "both"
