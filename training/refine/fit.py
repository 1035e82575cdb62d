"""Training the refiner: BCE + Dice on boundary patches, a step at a time."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch

from training.losses import BCELoss, DiceLoss
from training.refine.stage import Refiner

Batch = tuple[np.ndarray, np.ndarray, np.ndarray]  # images uint8, coarse, truth


class RefinerFit:
    """The refiner's optimiser and loss; :meth:`step` trains on one batch of patches."""

    def __init__(self, refiner: Refiner, lr: float = 2e-3) -> None:
        self.refiner = refiner
        self.optimizer = torch.optim.AdamW(refiner.model.parameters(), lr=lr, weight_decay=1e-4)
        self.bce, self.dice = BCELoss(), DiceLoss()

    def step(self, batch: Batch) -> float:
        """One optimisation step on ``batch``; returns its loss."""
        images, coarse, truth = batch
        model = self.refiner.model.train()
        device = next(model.parameters()).device
        logits = model(self.refiner.inputs(images, coarse, device))
        target = torch.as_tensor(np.ascontiguousarray(truth), device=device)[:, None].float()
        loss = self.bce(logits, target) + self.dice(logits, target)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        model.eval()
        return float(loss.detach())

    def run(self, batches: Iterator[Batch], steps: int, stop: Callable[[], bool]) -> list[float]:
        """Up to ``steps`` steps, fewer when ``stop()`` says so; the losses."""
        losses = []
        for _, batch in zip(range(steps), batches, strict=False):
            if stop():
                break
            losses.append(self.step(batch))
        return losses
