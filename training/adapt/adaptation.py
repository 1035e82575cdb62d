"""The trainer's adaptation hook: one target batch beside each source batch, and its loss.

:class:`Adaptation` draws target crops (each rank its own share, like the training crops),
and per step returns the extra loss of the chosen mode: the domain classifier's BCE through the
gradient reversal (``grl``), the segmentation loss on the teacher's confident pixels
(``pseudo``), or both. The domain classifier and its optimiser live here, outside the model:
checkpoints stay plain segmenters, and the trainer's state file carries them for ``--resume``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from training.adapt import ADAPT_MODES
from training.adapt.grl import DomainClassifier, domain_loss, ramp
from training.adapt.pseudo import Teacher, pseudo_labels
from training.adapt.target import TargetDataset
from training.data.crops import CropSampler

__all__ = ["ADAPT_MODES", "AdaptSettings", "Adaptation"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AdaptSettings:
    """What ``--adapt`` does: ``mode``, the reversal's weight (times the ramp), the target
    loss's weight and the pseudo-label confidence bounds."""

    mode: str
    adapt_weight: float = 0.1
    pseudo_weight: float = 1.0
    pseudo_low: float = 0.1
    pseudo_high: float = 0.9

    def __post_init__(self) -> None:
        if self.mode not in ADAPT_MODES:
            raise ValueError(f"--adapt must be one of {', '.join(ADAPT_MODES)}; got {self.mode}")
        if not 0 <= self.pseudo_low < self.pseudo_high <= 1:
            raise ValueError(
                "--pseudo-low and --pseudo-high must satisfy 0 <= low < high <= 1; got "
                f"{self.pseudo_low} and {self.pseudo_high}"
            )

    @property
    def grl(self) -> bool:
        """Whether the domain classifier trains through the gradient reversal."""
        return self.mode in ("grl", "both")

    @property
    def pseudo(self) -> bool:
        """Whether target crops are trained on pseudo-labels."""
        return self.mode in ("pseudo", "both")

    def record(self, targets: list[tuple[str, int]]) -> dict[str, Any]:
        """The checkpoint's record of the adaptation: plain data (``targets``: name, images)."""
        return {
            **asdict(self),
            "targets": [{"name": name, "images": count} for name, count in targets],
        }


class Adaptation:
    """Target batches and the adaptation loss for ``trainer`` (a :class:`~training.trainer.
    Trainer`, whose model, device, world, options and sampler size it shares)."""

    def __init__(self, settings: AdaptSettings, dataset: TargetDataset, trainer: Any) -> None:
        self.settings, self.trainer = settings, trainer
        self.model: nn.Module = trainer.model
        self.device, self.world = trainer.device, trainer.world
        options = trainer.options
        # each rank draws its own share of the epoch's target crops, as for training crops
        self.sampler = CropSampler(trainer.sampler.samples, self.world.rank, self.world.size)
        self.loader = DataLoader(
            dataset,
            batch_size=options.batch_size,  # one target batch as large as each source batch
            sampler=self.sampler,
            num_workers=options.workers,
            persistent_workers=options.workers > 0,
            pin_memory=self.device.type == "cuda",
            drop_last=True,
        )
        self._batches: Iterator[dict[str, torch.Tensor]] | None = None
        self._source: list[torch.Tensor] = []
        self.teacher = Teacher() if settings.pseudo else None
        self.classifier: nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        if settings.grl:
            channels = self.model.encoder.channels[-1]
            self.classifier = DomainClassifier(channels).to(self.device)
            if self.world.distributed:  # every rank starts from rank 0's classifier
                for tensor in self.classifier.state_dict().values():
                    dist.broadcast(tensor, 0)
            self.optimizer = torch.optim.AdamW(
                self.classifier.parameters(), lr=options.lr, weight_decay=options.weight_decay
            )

    def start_epoch(self, epoch: int) -> None:
        """Draw the epoch's target crops; the teacher takes the weights of the epoch's start."""
        self.sampler.set_epoch(epoch)
        self._batches = iter(self.loader)
        if self.teacher is not None:
            self.teacher.refresh(self.trainer.eval_model())

    @contextlib.contextmanager
    def capture(self) -> Iterator[None]:
        """Keep the encoder's deepest features of the forward inside (the source batch's)."""
        if not self.settings.grl:
            yield
            return
        self._source.clear()
        with _hooked(self.model.encoder, self._source):
            yield

    def loss(self, progress: float) -> tuple[torch.Tensor, dict[str, float]]:
        """The adaptation loss of one target batch at training ``progress`` (0..1), and its
        parts for the log: ``target_loss`` and ``pseudo_confident`` (the fraction of target
        pixels confident enough to count), ``domain_loss``, ``domain_accuracy``, ``grl_lambda``."""
        images = self.trainer.normalise(self._next_images())
        total = images.new_zeros((), dtype=torch.float32)
        parts: dict[str, float] = {}
        target_features: list[torch.Tensor] = []
        if self.settings.pseudo:
            with _hooked(self.model.encoder, target_features) if self.settings.grl else _none():
                loss, confident = self._pseudo_loss(images)
            total = total + self.settings.pseudo_weight * loss
            parts["target_loss"], parts["pseudo_confident"] = float(loss.detach()), confident
        if self.settings.grl:
            if not target_features:
                with _autocast(self.device):
                    target_features.append(self.model.encoder(images)[-1])
            if not self._source:
                raise RuntimeError("no source features: the source forward ran outside capture()")
            lam = self.settings.adapt_weight * ramp(progress)
            source, target = self._source[-1], target_features[-1]
            loss, accuracy = domain_loss(self.classifier, source, target, lam)
            total = total + loss
            parts.update(domain_loss=float(loss.detach()), domain_accuracy=accuracy, grl_lambda=lam)
        self._source.clear()
        return total, parts

    def _pseudo_loss(self, images: torch.Tensor) -> tuple[torch.Tensor, float]:
        probs = self.teacher.probabilities(images)
        target, weight = pseudo_labels(probs, self.settings.pseudo_low, self.settings.pseudo_high)
        criterion = self.trainer.criterion
        with _autocast(self.device):
            if criterion.config.aux > 0:
                logits, aux = self.model.forward_with_aux(images)
            else:
                logits, aux = self.model(images), None
        loss, _ = criterion(logits, target, aux, weight=weight)
        return loss, float(weight.mean())

    def _next_images(self) -> torch.Tensor:
        if self._batches is None:
            raise RuntimeError("start_epoch() draws the target crops before the first step")
        try:
            batch = next(self._batches)
        except StopIteration:  # the source loader is longer (it never is with equal sizes)
            self._batches = iter(self.loader)
            batch = next(self._batches)
        return batch["image"].to(self.device, non_blocking=True)

    def step(self) -> None:
        """The domain classifier's optimiser step (its gradients averaged over the ranks)."""
        if self.optimizer is None:
            return
        if self.world.distributed:
            for parameter in self.classifier.parameters():
                if parameter.grad is not None:
                    dist.all_reduce(parameter.grad, op=dist.ReduceOp.SUM)
                    parameter.grad /= self.world.size
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def state_dict(self) -> dict[str, Any]:
        """What ``--resume`` needs: the mode, the domain classifier and its optimiser."""
        state: dict[str, Any] = {"mode": self.settings.mode}
        if self.classifier is not None:
            state["classifier"] = self.classifier.state_dict()
            state["optimizer"] = self.optimizer.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Continue from :meth:`state_dict`'s state; a run saved without a classifier (another
        mode, or none) starts a fresh one, and says so."""
        if self.classifier is None:
            return
        if not state or "classifier" not in state:
            log.warning(
                "the saved run has no domain classifier: --adapt %s starts a fresh one",
                self.settings.mode,
            )
            return
        self.classifier.load_state_dict(state["classifier"])
        self.optimizer.load_state_dict(state["optimizer"])

    @staticmethod
    def describe(row: dict[str, Any]) -> str:
        """The epoch's adaptation figures for its log line ('' when there are none)."""
        words = []
        if "domain_loss" in row:
            words.append(
                f"domain loss {row['domain_loss']:.4f}, accuracy {row['domain_accuracy']:.2f}"
            )
        if "pseudo_confident" in row:
            words.append(
                f"target loss {row['target_loss']:.4f} on "
                f"{100 * row['pseudo_confident']:.1f}% confident pixels"
            )
        return "".join(f", {w}" for w in words)


@contextlib.contextmanager
def _hooked(encoder: nn.Module, store: list[torch.Tensor]) -> Iterator[None]:
    """While inside, every forward of ``encoder`` appends its deepest feature map to ``store``:
    the features of a forward that already runs, without a second pass through the encoder."""
    handle = encoder.register_forward_hook(lambda _m, _i, output: store.append(output[-1]))
    try:
        yield
    finally:
        handle.remove()


def _none() -> contextlib.AbstractContextManager[None]:
    return contextlib.nullcontext()


def _autocast(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
