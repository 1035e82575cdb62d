"""The tiled inference engine: a generator that yields progress and returns the probability map.

A tile plan per ensemble member (which tiles, at the member's pixel size, background skipped on a
thumbnail) -> a tile source (reads from the best pyramid level, resamples, normalises stain,
reads ahead on threads) -> a predictor (normalisation, TTA views in one batch, autocast) -> a
band accumulator (blend weights; finished rows leave the band) -> an output store (numpy, or
zarr on disk above ``memory_limit_mb``). Every member's probability is combined at the working
scale (the finest member pixel size); memory does not grow with the slide.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.inference.accumulator import BandAccumulator
from training.inference.device_path import SpanPredictor, SpanSource
from training.inference.limits import check_map_fits, check_pixel_sizes
from training.inference.postprocess import probability_to_labels
from training.inference.predictor import PRECISIONS, TTA_CHOICES, Predictor
from training.inference.source import TileSource
from training.inference.store import OutputStore
from training.inference.tiling import TilePlan, blend_window, plan_tiles, tile_grid
from training.inference.tissue import slide_tissue, tile_has_tissue
from training.models.ensemble import Ensemble, Member, load_ensemble
from training.slides import Slide, open_slide

__all__ = [
    "TTA_CHOICES",
    "Band",
    "Progress",
    "RunOptions",
    "SegmentationResult",
    "run",
    "segment",
    "working_map",
]


@dataclass(frozen=True)
class Band:
    """Rows ``y0 ...`` of the probability map finished since the last event, as the ensemble
    so far sees them (the members run so far, weighted), so a viewer can show results before
    the run ends."""

    y0: int
    values: np.ndarray  # (rows, W) float32
    map_shape: tuple[int, int]  # the whole map's (H, W) at the working scale
    pixel_size_um: float  # of the map


@dataclass(frozen=True)
class Progress:
    """``done`` of ``total`` tiles processed, what is happening, and any rows just finished."""

    done: int
    total: int
    message: str
    band: Band | None = None


@dataclass
class SegmentationResult:
    """The probability map at the working scale, how it maps to the slide, and the model's
    calibrated post-processing for the organ (threshold, minimum object area)."""

    probability: Any  # (H, W) float32: a numpy array, or a DiskProbability (zarr on disk)
    pixel_size_um: float  # of the probability map
    downsample: float  # level-0 pixels per probability pixel
    slide_shape: tuple[int, int]  # level-0 (H, W)
    organ: str
    threshold: float
    tiles_run: int
    tiles_skipped: int
    path: Path | None = None  # where an on-disk probability map lives
    meta: dict[str, Any] = field(default_factory=dict)
    min_area_um2: float = 0.0

    def labels(
        self,
        threshold: float | None = None,
        min_area_um2: float | None = None,
        fill_holes: bool = True,
    ) -> np.ndarray:
        """Instance labels (int32) at the working scale; the threshold and minimum area are the
        result's own (the model's for the organ) unless given."""
        min_area = self.min_area_um2 if min_area_um2 is None else min_area_um2
        min_area_px = min_area / self.pixel_size_um**2
        return probability_to_labels(
            self.probability,
            self.threshold if threshold is None else threshold,
            min_area_px=min_area_px,
            fill_holes=fill_holes,
        )

    def close(self) -> None:
        """Remove an on-disk probability map the engine made in a temporary folder."""
        close = getattr(self.probability, "close", None)
        if close is not None:
            close()


def run(
    *args: Any, on_progress: Callable[[Progress], None] | None = None, **kwargs: Any
) -> SegmentationResult:
    """Run :func:`segment` to completion; ``on_progress`` sees every progress event."""
    generator = segment(*args, **kwargs)
    while True:
        try:
            event = next(generator)
        except StopIteration as stop:
            return stop.value
        if on_progress is not None:
            on_progress(event)


def segment(
    source: Slide | str | os.PathLike | np.ndarray,
    models: Ensemble | Member | Sequence[Member] | str | os.PathLike,
    organ: str,
    *,
    pixel_size_um: float | None = None,
    overlap: float = 0.25,
    batch_size: int = 4,
    tta: int = 1,
    stain: Any = None,
    device: str | torch.device = "cpu",
    detect_tissue: bool = True,
    memory_limit_mb: float = 512,
    workdir: str | os.PathLike | None = None,
    streams: int | None = None,
    read_workers: int = 2,
    refiner: Any = None,
    precision: str = "auto",
    compile: bool = False,
    device_path: bool | None = None,
) -> Generator[Progress, None, SegmentationResult]:
    """Segment FTUs of ``organ`` in a slide; yields :class:`Progress`, returns the result.

    ``source``: a :class:`Slide`, a slide path (opened and closed here), or an ``(H, W, C)``
    array (give ``pixel_size_um``); ``pixel_size_um`` overrides the slide's own without
    changing the caller's object. ``models``: an ensemble, member(s), a checkpoint or a
    manifest path. ``tta``: 1, 4 (flips) or 8 (flips and transposes). ``stain``: an object with
    ``transform(rgb_uint8) -> rgb_uint8`` (fixed to the slide first when it has
    ``for_slide``). ``streams``: batches run at once on worker threads, each with an equal share
    of torch's threads (default: 2 on a CPU with at least 2 threads, else 1). ``read_workers``:
    threads reading tiles ahead. ``refiner`` (BPR, :mod:`training.refine`): a ``Refiner`` or
    a refiner checkpoint path refines the objects' boundaries after the tiles (the progress
    total grows by its patches); ``None`` uses the ensemble's own refiner if it has one,
    ``False`` none. ``precision``, ``compile``, ``device_path``: see :class:`RunOptions`.
    Closing the generator (cancelling) between batches removes any partial
    output.
    """
    options = RunOptions(
        overlap=overlap,
        batch_size=batch_size,
        tta=tta,
        device=torch.device(device),
        detect_tissue=detect_tissue,
        memory_limit_mb=memory_limit_mb,
        workdir=workdir,
        streams=streams,
        read_workers=read_workers,
        precision=precision,
        compile=compile,
        device_path=device_path,
    )
    with contextlib.ExitStack() as cleanup:
        slide = _as_slide(source, pixel_size_um, cleanup)
        cleanup.callback(slide.clear_cache)  # the decoded tiles are of no use after the run
        ensemble = _as_ensemble(models, device)
        members = ensemble.for_organ(organ)
        run = _Run(slide, members, options)
        from training.refine.stage import resolve_refiner  # here: training.refine imports us

        run.refiner = resolve_refiner(refiner, ensemble, options.device)  # BPR
        if run.refiner is not None:  # refused before the tiles, not after them
            check_pixel_sizes(slide.pixel_size_um, run.refiner.pixel_size_um, slide.path.name)
        result = yield from run.execute(
            organ, ensemble.threshold(organ), ensemble.min_area_um2(organ), stain
        )
    return result


@dataclass(frozen=True)
class RunOptions:
    """How a segmentation runs (see :func:`segment`); checked when made.

    ``precision``: ``auto`` (bf16 autocast on CUDA, fp32 on the CPU), ``fp32`` or ``bf16``.
    ``compile``: run each member through ``torch.compile`` (inductor; its code cached on disk,
    so only a process's first run of a model pays the compile). ``device_path``: resample the
    tiles on the model's device (:mod:`training.inference.device_path`); ``None``: on CUDA only.
    """

    overlap: float = 0.25
    batch_size: int = 4
    tta: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    detect_tissue: bool = True
    memory_limit_mb: float = 512
    workdir: str | os.PathLike | None = None
    streams: int | None = None
    read_workers: int = 2
    precision: str = "auto"
    compile: bool = False
    device_path: bool | None = None

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}; got {self.precision!r}")
        if self.tta not in TTA_CHOICES:
            raise ValueError(f"tta must be one of {TTA_CHOICES}; got {self.tta}")
        if not 0 <= self.overlap < 1:
            raise ValueError(f"overlap must be in [0, 1); got {self.overlap}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1; got {self.batch_size}")
        if self.streams is not None and self.streams < 1:
            raise ValueError(f"streams must be at least 1; got {self.streams}")
        if self.read_workers < 0:
            raise ValueError(f"read_workers must be 0 or more; got {self.read_workers}")

    def uses_device_path(self, stain: Any = None) -> bool:
        """Whether tiles are resampled on the device (:mod:`~training.inference.device_path`):
        as asked, else on CUDA; never with a stain normaliser (it works on host pixels)."""
        if stain is not None:
            return False
        return self.device.type == "cuda" if self.device_path is None else self.device_path

    def streams_for(self) -> int:
        """Batches at once: as asked, else 2 on a CPU with at least 2 threads, else 1."""
        if self.streams is not None:
            return self.streams
        return 2 if self.device.type == "cpu" and torch.get_num_threads() >= 2 else 1


def working_map(
    slide: Slide, members: Sequence[Member], overlap: float = 0.25
) -> tuple[tuple[int, int], float]:
    """The probability map's ``(H, W)`` and pixel size (the finest member's) for ``slide``.

    Refuses (``ValueError``, one line naming the sizes) before anything is allocated: pixel
    sizes of the slide and a member too far apart, a member grid of too many tiles, and a map
    whose labelling cannot fit in this process's memory.
    """
    name = slide.path.name
    for member in members:
        member_px = float(member.meta["pixel_size_um"])
        check_pixel_sizes(slide.pixel_size_um, member_px, name)
        to_member = slide.pixel_size_um / member_px
        try:
            tile_grid(slide.shape[:2], to_member, int(member.meta["tile_size"]), overlap, member_px)
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from None
    working_px = min(float(m.meta["pixel_size_um"]) for m in members)
    to_working = slide.pixel_size_um / working_px
    height, width = slide.shape[:2]
    shape = (max(1, math.ceil(height * to_working)), max(1, math.ceil(width * to_working)))
    check_map_fits(name, (height, width), slide.pixel_size_um, shape)
    return shape, working_px


class _Run:
    """One segmentation: the slide, its members, their tile plans and the output."""

    def __init__(self, slide: Slide, members: list[Member], options: RunOptions) -> None:
        self.slide = slide
        self.members = members
        self.options = options
        self.stain: Any = None  # the normaliser, fixed to this slide
        self.streams = options.streams_for()  # before the thread share lowers torch's count
        self.out_shape, self.working_px = working_map(slide, members, options.overlap)
        self.to_working = slide.pixel_size_um / self.working_px
        self.refiner: Any = None  # BPR: a training.refine.Refiner, run after the tiles

    def execute(self, organ: str, threshold: float, min_area_um2: float, stain: Any) -> Generator:
        """Plan, then run every member's tiles; yields progress, returns the result (with the
        model's ``threshold`` and ``min_area_um2`` for ``organ``)."""
        options = self.options
        tissue = slide_tissue(self.slide) if options.detect_tissue else None
        plans = [self._plan(m, tissue) for m in self.members]
        if stain is not None and hasattr(stain, "for_slide"):
            stain = _stain_for_slide(stain, self.slide, plans[0])
        self.stain = stain
        total = sum(p.kept for p in plans)
        skipped = sum(p.skipped for p in plans)
        yield Progress(0, total, f"{total} tiles to run, {skipped} background tiles skipped")
        store = OutputStore(self.out_shape, options.memory_limit_mb, options.workdir)
        done = 0
        try:
            with _torch_thread_share(self.streams):
                total_weight = sum(m.weight for m in self.members)
                so_far = 0.0  # the weight of the members run so far
                for index, (member, plan) in enumerate(zip(self.members, plans, strict=True)):
                    name = member.name or "model"
                    weight = member.weight / total_weight
                    so_far += weight
                    for count, rows in self._member(member, plan, store, weight, index == 0):
                        done += count
                        band = self._band(store, rows, so_far) if rows else None
                        yield Progress(done, total, f"{name}: {done}/{total} tiles", band)
            refined = 0
            if self.refiner is not None:  # BPR
                from training.refine.stage import refine_map

                postprocess = (threshold, min_area_um2 / self.working_px**2)
                steps = refine_map(
                    store.array, self.slide, self.refiner, self.working_px, postprocess, self.stain
                )
                for refined, patches in steps:
                    message = f"refining boundaries: {refined}/{patches} patches"
                    yield Progress(done + refined, total + patches, message)
            probability, path = store.finish()
        except BaseException:
            store.discard()
            raise
        return SegmentationResult(
            probability=probability,
            pixel_size_um=self.working_px,
            downsample=1 / self.to_working,
            slide_shape=tuple(self.slide.shape[:2]),
            organ=organ,
            threshold=threshold,
            tiles_run=total,
            tiles_skipped=skipped,
            path=path,
            meta={
                "members": [m.name for m in self.members],
                "tta": options.tta,
                "overlap": options.overlap,
                "tissue_fraction": float(tissue[0].mean()) if tissue is not None else 1.0,
                "refined_patches": refined,
                "refiner": self.refiner.name if self.refiner is not None else None,
            },
            min_area_um2=min_area_um2,
        )

    def _band(self, store: OutputStore, rows: tuple[int, int], weight: float) -> Band:
        """The finished ``rows`` of ``store``, divided by the weight of the members so far."""
        values = np.asarray(store.array[rows[0] : rows[1]], np.float32)
        if weight != 1:
            values = values / weight
        return Band(rows[0], values, self.out_shape, self.working_px)

    def _plan(self, member: Member, tissue: tuple[np.ndarray, float] | None) -> TilePlan:
        pixel_size = float(member.meta["pixel_size_um"])
        touches = None
        if tissue is not None:
            mask, scale = tissue

            def touches(y: float, x: float, h: float, w: float) -> bool:
                return tile_has_tissue(mask, scale, y, x, h, w)

        return plan_tiles(
            self.slide.shape[:2],
            self.slide.pixel_size_um / pixel_size,
            int(member.meta["tile_size"]),
            self.options.overlap,
            pixel_size,
            touches,
        )

    def _member(
        self, member: Member, plan: TilePlan, store: OutputStore, weight: float, first: bool
    ) -> Iterator[tuple[int, tuple[int, int] | None]]:
        """Run one member's tiles into ``store``; yields the tiles done per batch and the output
        rows ``(y0, y1)`` finished since the last yield (``None`` when none)."""
        options, device = self.options, self.options.device
        scale = plan.pixel_size_um / self.working_px  # working px per member px
        tile_w = round(plan.tile * scale)
        window = blend_window(tile_w, round((plan.tile - plan.stride) * scale))
        band = BandAccumulator(store, window, weight, device, first)
        predictor = Predictor(
            member, device, options.tta, tile_w, options.precision, options.compile
        )
        if options.uses_device_path(self.stain):  # pixels resampled on the device
            predictor = SpanPredictor(predictor, plan.tile)
            pin = device.type == "cuda"
            source = SpanSource(
                self.slide, plan.pixel_size_um, plan.tile, options.read_workers, pin
            )
        else:
            source = TileSource(
                self.slide, plan.pixel_size_um, plan.tile, self.stain, options.read_workers
            )
        requests = plan.batches(options.batch_size)
        row_tops = [round(y * scale) for y, _ in plan.rows] + [store.shape[0]]
        finished = 0
        tiles = source.batches(requests)
        with (
            contextlib.closing(tiles),
            contextlib.closing(_predictions(tiles, predictor, self.streams)) as predictions,
        ):
            for row, xs, probabilities in predictions:
                top = band.y0
                for done_row in range(finished, row):
                    band.advance(row_tops[done_row + 1])
                finished = row
                for x, probability in zip(xs, probabilities, strict=True):
                    band.add(round(x * scale), probability)
                yield len(xs), ((top, band.y0) if band.y0 > top else None)
        top = band.y0
        for done_row in range(finished, len(plan.rows)):
            band.advance(row_tops[done_row + 1])
        if band.y0 > top:
            yield 0, (top, band.y0)


def _predictions(
    tiles: Iterable[tuple[int, Sequence[int], np.ndarray]],
    predict: Callable[[np.ndarray], torch.Tensor],
    streams: int,
) -> Generator[tuple[int, Sequence[int], torch.Tensor], None, None]:
    """``(row, xs, probabilities)`` per batch, in order, with ``streams`` batches running at
    once on worker threads."""
    if streams == 1:
        for row, xs, batch in tiles:
            yield row, xs, predict(batch)
        return
    pool = ThreadPoolExecutor(streams, thread_name_prefix="napari-ftu-stream")
    pending: deque[tuple[int, Sequence[int], Future]] = deque()
    try:
        for row, xs, batch in tiles:
            pending.append((row, xs, pool.submit(predict, batch)))
            if len(pending) > streams:  # one batch waits while `streams` run
                row_done, xs_done, future = pending.popleft()
                yield row_done, xs_done, future.result()
        while pending:
            row_done, xs_done, future = pending.popleft()
            yield row_done, xs_done, future.result()
    finally:  # cancelled or failed: drop queued batches, wait for running ones
        pool.shutdown(wait=True, cancel_futures=True)


_threads_lock = threading.Lock()
_thread_users = 0
_threads_before: int | None = None


@contextlib.contextmanager
def _torch_thread_share(streams: int) -> Iterator[None]:
    """Give each of ``streams`` concurrent batches an equal share of torch's threads.

    torch's thread count is process-wide, so runs that overlap (two threads; a segmentation
    during a fine-tune) share one record of the count from before the first of them, and the
    last run to end restores it.
    """
    global _thread_users, _threads_before
    with _threads_lock:
        if _thread_users == 0:
            _threads_before = torch.get_num_threads()
        _thread_users += 1
        if streams > 1:
            torch.set_num_threads(max(1, _threads_before // streams))
    try:
        yield
    finally:
        with _threads_lock:
            _thread_users -= 1
            if _thread_users == 0:
                torch.set_num_threads(_threads_before)


STAIN_SAMPLE_TILES = 16


def _stain_for_slide(stain: Any, slide: Slide, plan: TilePlan) -> Any:
    """The normaliser fixed to this slide's stains, estimated once from up to 16 tissue tiles
    spread over the slide (so every tile gets the same transform: no seams); the normaliser
    as given when the sample holds too little stain."""
    kept = plan.tiles()
    if not kept:
        return stain
    picks = np.linspace(0, len(kept) - 1, min(STAIN_SAMPLE_TILES, len(kept))).round().astype(int)
    source = TileSource(slide, plan.pixel_size_um, plan.tile)
    sample = np.concatenate([source.read(kept[i][0], [kept[i][1]])[0] for i in picks])
    from training.stain import StainError

    try:
        return stain.for_slide(sample)
    except StainError:
        return stain


def _as_slide(
    source: Slide | str | os.PathLike | np.ndarray,
    pixel_size_um: float | None,
    cleanup: contextlib.ExitStack,
) -> Slide:
    """The slide to read; one opened here is closed by ``cleanup``; a caller's slide is never
    changed (a given pixel size applies to a copy)."""
    if isinstance(source, Slide):
        slide = source if pixel_size_um is None else source.with_pixel_size(pixel_size_um)
    elif isinstance(source, np.ndarray):
        slide = Slide.from_array(source, pixel_size_um)
    else:
        slide = cleanup.enter_context(open_slide(source, pixel_size_um))
    if slide.pixel_size_um is None:
        raise ValueError(
            f"{slide.path.name}: the pixel size is unknown; give pixel_size_um (um per pixel) so "
            "the slide can be read at the model's scale"
        )
    return slide


def _as_ensemble(models: Any, device: str | torch.device) -> Ensemble:
    if isinstance(models, Ensemble):
        return models
    if isinstance(models, Member):
        return Ensemble([models])
    if isinstance(models, (str, os.PathLike)):
        return load_ensemble(models, str(device))
    members = list(models)
    if not members or not all(isinstance(m, Member) for m in members):
        raise TypeError("models must be an Ensemble, Member(s), or a checkpoint/manifest path")
    return Ensemble(members)
