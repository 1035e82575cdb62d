"""The training loop: AdamW, warm-up + cosine, clipping, accumulation, EMA, autocast, DDP.

One :class:`Trainer` holds what the loop shares (model, optimiser, schedule, EMA, loaders, the
best score); ``python -m training.train`` builds it from the configuration. Validation runs on
rank 0 through the inference engine, tunes a threshold and a minimum object area per organ, and
keeps the best checkpoint.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader

from training.curves import write_curve, write_metrics
from training.data.crops import CropDataset, CropSampler
from training.data.records import Record
from training.distributed import World, agree
from training.models.checkpoint import read_checkpoint, save_checkpoint
from training.models.ensemble import Member

__all__ = ["Trainer", "TrainerOptions"]

log = logging.getLogger(__name__)
STATE_NAME = "train_state.pt"


@dataclass(frozen=True)
class TrainerOptions:
    """The loop's settings (the optimisation group of the command's configuration)."""

    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    warmup: float  # epochs
    clip_grad: float
    accumulate: int
    ema: float
    workers: int
    val_every: int = 1
    val_tta: int = 1
    time_limit_s: float | None = None
    time_clock: str = "wall"  # what the time limit counts: "wall" or this process's "cpu" time
    # "time": under a time limit, the cosine runs through the limit when the limit comes
    # before the last epoch (a short fine-tune then ends at a low learning rate, not mid-way)
    lr_schedule: str = "epochs"
    # which validated epoch best.pt holds: "best" (the highest selection score) or "last" (the
    # final one, for runs whose few validation images cannot tell epochs apart)
    keep: str = "best"
    progress: bool = True
    seed: int = 0


@dataclass
class _History:
    rows: list[dict[str, Any]] = field(default_factory=list)
    best: float = -1.0  # the kept epoch's selection score (validation.selection_score)
    best_epoch: int = 0
    best_dice: float | None = None  # its FTU Dice (None in a state from before: then best)
    epoch: int = 0  # epochs finished
    elapsed_s: float = 0.0


class _WithAux(nn.Module):
    """``forward`` returns main and auxiliary logits, so DDP sees every head in its forward."""

    def __init__(self, model: nn.Module, aux: bool) -> None:
        super().__init__()
        self.model, self.aux = model, aux

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        if self.aux:
            return self.model.forward_with_aux(x)
        return self.model(x), None


class Trainer:
    """Trains ``model`` on crops, validates whole images, writes checkpoints to ``out``."""

    def __init__(
        self,
        model: nn.Module,
        meta: dict[str, Any],
        dataset: CropDataset,
        samples_per_epoch: int,
        val_records: list[Record],
        criterion: Any,
        options: TrainerOptions,
        world: World,
        device: torch.device,
        out: Path,
    ) -> None:
        # a description of training data (training.domain) belongs to the run that wrote it:
        # an --init checkpoint's describes other data and other weights; this run's own is
        # stored at its end
        meta.pop("domain", None)
        if options.keep not in ("best", "last"):
            raise ValueError(f"unknown epoch to keep {options.keep!r}")
        if options.lr_schedule not in ("epochs", "time"):
            raise ValueError(f"unknown learning-rate schedule {options.lr_schedule!r}")
        if options.lr_schedule == "time" and world.distributed:
            # each rank reads its own clock: their learning rates, and weights, would drift
            raise ValueError("--lr-schedule time needs a single process (not distributed)")
        self.model, self.meta, self.options = model.to(device), meta, options
        self.criterion, self.world, self.device, self.out = criterion, world, device, out
        self.val_records = val_records
        self.sampler = CropSampler(samples_per_epoch, world.rank, world.size)
        self.loader = DataLoader(
            dataset,
            batch_size=options.batch_size,
            sampler=self.sampler,
            num_workers=options.workers,
            persistent_workers=options.workers > 0,
            pin_memory=device.type == "cuda",
            worker_init_fn=_quiet_worker,
            drop_last=True,
        )
        if len(self.loader) == 0:
            raise ValueError(
                f"{samples_per_epoch} samples per epoch make no batch of {options.batch_size} "
                f"on each of {world.size} rank(s)"
            )
        self.steps_per_epoch = math.ceil(len(self.loader) / options.accumulate)
        wrapped: nn.Module = _WithAux(self.model, aux=criterion.config.aux > 0)
        if world.distributed:
            if device.type == "cuda":  # batch statistics over every rank's batch (GPU only)
                self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
                wrapped = _WithAux(self.model, aux=criterion.config.aux > 0)
            ids = [device.index] if device.type == "cuda" else None
            wrapped = nn.parallel.DistributedDataParallel(
                wrapped, device_ids=ids, find_unused_parameters=criterion.config.aux == 0
            )
        self.wrapped = wrapped
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=options.lr, weight_decay=options.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.ema = (
            AveragedModel(
                self.model, multi_avg_fn=get_ema_multi_avg_fn(options.ema), use_buffers=True
            )
            if options.ema > 0
            else None
        )
        self.history = _History()
        self._fit_start: float | None = None  # the clock at the start of fit (time schedule)
        self.adaptation: Any = None  # training.adapt.Adaptation: one target batch per step
        mean = torch.tensor(meta["mean"], device=device).view(1, 3, 1, 1) * 255
        std = torch.tensor(meta["std"], device=device).view(1, 3, 1, 1) * 255
        self._mean, self._std = mean, std

    # ---- schedule -------------------------------------------------------------------------
    def _lr_factor(self, step: int) -> float:
        """Linear warm-up, then cosine decay to 1% of the peak at the last step."""
        total = max(self.options.epochs * self.steps_per_epoch, 1)
        warmup = min(round(self.options.warmup * self.steps_per_epoch), total - 1)
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(total - warmup, 1)
        progress = max(progress, self._time_done())
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    def _time_done(self) -> float:
        """The fraction of the time limit spent, for ``lr_schedule="time"`` (else 0)."""
        limit = self.options.time_limit_s
        if self.options.lr_schedule != "time" or not limit or self._fit_start is None:
            return 0.0
        return (self._clock() - self._fit_start) / limit

    # ---- the loop -------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        """Train the remaining epochs; return the training summary stored in the checkpoints."""
        start = self._clock() - self.history.elapsed_s
        self._fit_start = start
        summary = None
        for epoch in range(self.history.epoch + 1, self.options.epochs + 1):
            self.sampler.set_epoch(epoch)
            if self.adaptation is not None:
                self.adaptation.start_epoch(epoch)
            row, stopped_early = self._train_epoch(epoch, start)
            self._average_buffers()
            self.history.epoch = epoch
            self.history.elapsed_s = self._clock() - start
            last = epoch == self.options.epochs or stopped_early
            if self.val_records and (epoch % self.options.val_every == 0 or last):
                row.update(self._validate())
            self.history.rows.append(row)
            if self.world.is_main:  # one line per epoch: a log to read, a progress to follow
                log.info(
                    "epoch %d/%d done: loss %.4f, %.1f samples/s%s",
                    epoch,
                    self.options.epochs,
                    row.get("loss", float("nan")),
                    row["samples_per_s"],
                    self.adaptation.describe(row) if self.adaptation is not None else "",
                )
            summary = self._save(row, final=last, stopped_early=stopped_early)
            if stopped_early:
                log.info("time limit reached after epoch %d", epoch)
                break
        if summary is None:  # a resumed run that had already finished
            summary = self._summary(False, digests=True)
        self._describe_domain()
        return summary

    def _describe_domain(self) -> None:
        """Store a description of the training images in the run's checkpoints (rank 0; the
        others wait), so that segmenting with them reports the domain distance. A failure
        costs only the description (the checkpoints stay as they are)."""
        from training.domain import describe_checkpoint

        if self.world.is_main:
            for name in ("best.pt", "last.pt"):
                try:
                    describe_checkpoint(self.out / name, self.loader.dataset.records)
                except (OSError, ValueError) as exc:
                    log.warning("%s: no description of the training data stored: %s", name, exc)
        self.world.barrier()

    def _train_epoch(self, epoch: int, start: float) -> tuple[dict[str, Any], bool]:
        from tqdm.auto import tqdm

        self.wrapped.train()
        totals: dict[str, float] = {}
        batches = seen = 0
        began = time.perf_counter()
        stop = False
        bar = tqdm(
            total=len(self.loader),
            desc=f"epoch {epoch}/{self.options.epochs}",
            disable=not (self.world.is_main and self.options.progress),
            leave=False,
        )
        self.optimizer.zero_grad(set_to_none=True)
        for index, batch in enumerate(self.loader):
            final = (index + 1) % self.options.accumulate == 0 or index + 1 == len(self.loader)
            parts = self._step(batch, sync=final, progress=self._progress(epoch, index, start))
            if final:
                self._optimizer_step()
            for key, value in parts.items():
                totals[key] = totals.get(key, 0.0) + value
            batches += 1
            seen += len(batch["image"])
            bar.update()
            bar.set_postfix(loss=f"{totals['loss'] / batches:.4f}")
            if final and self._time_is_up(start):
                stop = True
                break
        bar.close()
        seconds = time.perf_counter() - began
        row = {"epoch": epoch, "lr": self.optimizer.param_groups[0]["lr"]}
        row.update({key: value / max(batches, 1) for key, value in totals.items()})
        row["samples_per_s"] = seen * self.world.size / seconds if seconds > 0 else float("nan")
        row["train_seconds"] = seconds
        return row, stop

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, H, W, 3)`` uint8 crops on the device as the model's normalised input."""
        images = images.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float()
        return ((images - self._mean) / self._std).contiguous()

    def _step(
        self, batch: dict[str, torch.Tensor], sync: bool, progress: float
    ) -> dict[str, float]:
        images = self.normalise(batch["image"])
        target = batch["mask"].to(self.device, non_blocking=True).float().unsqueeze(1)
        autocast = (
            torch.autocast("cuda", dtype=torch.bfloat16)
            if self.device.type == "cuda"
            else contextlib.nullcontext()
        )
        skip_sync = (
            self.wrapped.no_sync()
            if self.world.distributed and not sync
            else contextlib.nullcontext()
        )
        adapting = self.adaptation is not None
        with skip_sync:
            with autocast, self.adaptation.capture() if adapting else contextlib.nullcontext():
                logits, aux = self.wrapped(images)
            loss, parts = self.criterion(logits, target, aux)
            if adapting:  # one target batch beside the source batch, one backward for both
                extra, more = self.adaptation.loss(progress)
                loss = loss + extra
                parts = {**parts, **more}
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"the loss became {loss.item()}: lower --lr or check the data"
                )
            (loss / self.options.accumulate).backward()
        parts = {k: float(v) for k, v in parts.items() if k != "total"}
        return {"loss": float(loss.detach()), **parts}

    def _optimizer_step(self) -> None:
        if self.options.clip_grad > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.options.clip_grad)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        if self.adaptation is not None:
            self.adaptation.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)

    def _average_buffers(self) -> None:
        """Average the ranks' batch-norm running statistics: each rank updated them with its
        own batches (CPU processes cannot use SyncBatchNorm), and the checkpoint must not
        depend on which rank wrote it."""
        if not self.world.distributed:
            return
        for buffer in self.model.buffers():
            if buffer.is_floating_point():
                dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
                buffer /= self.world.size

    def _progress(self, epoch: int, index: int, start: float) -> float:
        """How far training is, 0..1: through its epochs or, under a time limit, through its
        time if that is further (a run the limit stops early still ramps its adaptation)."""
        done = (epoch - 1 + (index + 1) / len(self.loader)) / self.options.epochs
        if self.options.time_limit_s:
            done = max(done, (self._clock() - start) / self.options.time_limit_s)
        return min(done, 1.0)

    def _clock(self) -> float:
        """Seconds on the clock the time limit counts (``elapsed_s`` is kept in it too)."""
        return time.process_time() if self.options.time_clock == "cpu" else time.monotonic()

    def _time_is_up(self, start: float) -> bool:
        if self.options.time_limit_s is None:
            return False
        up = torch.tensor(float(self._clock() - start >= self.options.time_limit_s))
        if self.world.distributed:  # every rank stops at the same step
            up = up.to(self.device)
            dist.all_reduce(up, op=dist.ReduceOp.MAX)
        return bool(up.item())

    # ---- validation and files -------------------------------------------------------------
    def eval_model(self) -> nn.Module:
        """The weights validated and saved as best: the EMA when the run keeps one."""
        return self.ema.module if self.ema is not None else self.model

    def _validate(self) -> dict[str, Any]:
        """Whole-image Dice on rank 0 (the others wait); threshold and minimum object area
        tuned per organ."""
        from training.validation import predict, score, summarise, tune_postprocess

        row: dict[str, Any] = {}
        if self.world.is_main:
            model = copy.deepcopy(self.eval_model()).eval()
            member = Member(model, self.meta, name="validation")
            scores = predict(member, self.val_records, device=self.device, tta=self.options.val_tta)
            thresholds, min_areas = tune_postprocess(scores)
            summary = summarise(score(scores, thresholds, min_areas))
            row["val_dice"] = summary["dice"]
            row["val_score"] = summary["score"]  # what the best epoch is chosen on
            for group in ("organ", "data_source"):
                for name, values in summary[f"by_{group}"].items():
                    for metric in ("dice", "background_dice", "all_ftu_dice"):
                        row[f"val_{metric}_{name}"] = values[metric]
            row["thresholds"] = thresholds
            row["min_area_um2"] = min_areas
            row["val_summary"] = summary
            log.info(
                "validation Dice %.4f (score %.4f) %s",
                summary["dice"],
                summary["score"],
                {o: (v["dice"], v["all_ftu_dice"]) for o, v in summary["by_organ"].items()},
            )
        self.world.barrier()
        return row

    def _save(self, row: dict[str, Any], final: bool, stopped_early: bool) -> dict[str, Any]:
        """Write the epoch's checkpoints, state and metrics (rank 0); return the summary."""
        # chosen on the selection score: the FTU Dice, on colon averaged with the background's
        kept = "val_score" in row and (
            self.options.keep == "last" or row["val_score"] > self.history.best
        )
        if kept:
            self.history.best, self.history.best_epoch = row["val_score"], row["epoch"]
            self.history.best_dice = row["val_dice"]
        # on every rank: the final summary gathers the ranks' weight digests
        summary = self._summary(stopped_early, digests=final)
        if self.world.is_main:
            if self.history.best_epoch == row["epoch"] and "val_dice" in row:
                self.meta["thresholds"] = {**self.meta["thresholds"], **row["thresholds"]}
                self.meta["min_area_um2"] = {
                    **self.meta.get("min_area_um2", {}),
                    **row["min_area_um2"],
                }
                best_meta = self._meta(summary)
                best_meta["training"]["validation"] = row["val_summary"]
                save_checkpoint(self.out / "best.pt", self.eval_model(), best_meta)
            meta = self._meta(summary)
            save_checkpoint(self.out / "last.pt", self.model, meta)
            if final and not self.val_records:  # nothing to choose by: the final weights
                save_checkpoint(self.out / "best.pt", self.eval_model(), meta)
            torch.save(self._state(), self.out / STATE_NAME)
            rows = [_csv_row(r) for r in self.history.rows]
            write_metrics(rows, self.out / "metrics.csv")
            write_curve(rows, self.out / "learning_curve.png", title=self.out.name)
        self.world.barrier()
        return summary

    def _summary(self, stopped_early: bool, digests: bool = False) -> dict[str, Any]:
        """The training summary; with ``digests`` (a collective: every rank calls it), the
        ranks' weight digests and whether they agree."""
        rates = [r["samples_per_s"] for r in self.history.rows if r.get("samples_per_s")]
        summary = {
            "epochs": self.history.epoch,
            "epochs_planned": self.options.epochs,
            "best_epoch": self.history.best_epoch,
            "best_val_dice": self._best_dice(),
            "best_val_score": round(self.history.best, 4) if self.history.best >= 0 else None,
            "seconds": round(self.history.elapsed_s, 1),
            "clock": self.options.time_clock,  # what "seconds" counts: wall or CPU time
            "samples_per_s": round(sum(rates) / len(rates), 2) if rates else None,
            "stopped_by_time_limit": stopped_early,
            "ranks": self.world.size,
        }
        if digests and self.world.distributed:
            gathered = agree(self.world, weights_digest(self.model))
            summary["rank_weight_digests"] = gathered
            summary["ranks_agree"] = len(set(gathered)) == 1
        return summary

    def _best_dice(self) -> float | None:
        """The best epoch's FTU Dice (a state saved before selection scores: its best)."""
        if self.history.best < 0:
            return None
        best = self.history.best if self.history.best_dice is None else self.history.best_dice
        return round(best, 4)

    def _meta(self, summary: dict[str, Any]) -> dict[str, Any]:
        meta = copy.deepcopy(self.meta)
        meta["training"] = {**meta.get("training", {}), **summary}
        return meta

    def _state(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "history": {
                "rows": [_csv_row(r) for r in self.history.rows],
                "best": self.history.best,
                "best_epoch": self.history.best_epoch,
                "best_dice": self.history.best_dice,
                "epoch": self.history.epoch,
                "elapsed_s": self.history.elapsed_s,
            },
            "thresholds": dict(self.meta["thresholds"]),
            "min_area_um2": dict(self.meta.get("min_area_um2", {})),
            "adapt": self.adaptation.state_dict() if self.adaptation is not None else None,
        }

    def resume(self) -> None:
        """Continue from ``out``'s last checkpoint and training state."""
        state_path, last = self.out / STATE_NAME, self.out / "last.pt"
        if not (state_path.is_file() and last.is_file()):
            raise FileNotFoundError(f"{self.out}: no {last.name} and {STATE_NAME} to resume from")
        self.model.load_state_dict(read_checkpoint(last)["state_dict"])
        state = torch.load(state_path, map_location=self.device, weights_only=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None and state["ema"] is not None:
            self.ema.load_state_dict(state["ema"])
        self.history = _History(**state["history"])
        self.meta["thresholds"] = dict(state["thresholds"])
        if "min_area_um2" in state:  # a state written before minimum areas were tuned has none
            self.meta["min_area_um2"] = dict(state["min_area_um2"])
        if self.adaptation is not None:  # the domain classifier lives outside the model
            self.adaptation.load_state_dict(state.get("adapt"))
        if self.world.is_main:
            log.info("resuming after epoch %d of %d", self.history.epoch, self.options.epochs)


def weights_digest(model: nn.Module) -> str:
    """A SHA-256 of every parameter and buffer: equal on every rank after a correct DDP run."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _csv_row(row: dict[str, Any]) -> dict[str, Any]:
    """The row without the nested validation details (they live in the checkpoint)."""
    return {k: v for k, v in row.items() if k not in ("thresholds", "min_area_um2", "val_summary")}


def _quiet_worker(_: int) -> None:
    """Workers read and augment on one thread each: the main process owns the cores' BLAS."""
    torch.set_num_threads(1)
    with contextlib.suppress(ImportError):
        import cv2

        cv2.setNumThreads(0)
