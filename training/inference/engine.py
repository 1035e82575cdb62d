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
from typing import Any

import numpy as np
import torch

from training.inference.accumulator import BandAccumulator
from training.inference.device_path import SpanPredictor, SpanSource
from training.inference.limits import check_map_fits, check_pixel_sizes
from training.inference.options import RunOptions, run_options
from training.inference.predictor import TTA_CHOICES, Predictor
from training.inference.results import Band, Progress, SegmentationResult
from training.inference.source import TileSource
from training.inference.store import OutputStore
from training.inference.tiling import TilePlan, blend_window, plan_tiles, tile_grid
from training.inference.tissue import grown, slide_tissue, tile_has_tissue
from training.inference.window import MapWindow, MemberView, check_region, working_box
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


def run(
    *args: Any, on_progress: Callable[[Progress], None] | None = None, **kwargs: Any
) -> SegmentationResult:
    """Run :func:`segment` to completion (same arguments); ``on_progress`` sees every event."""
    generator = segment(*args, **kwargs)
    while True:
        try:
            event = next(generator)
        except StopIteration as stop:
            return stop.value
        if on_progress is not None:
            on_progress(event)
        del event  # its band is not kept while the next one is read


def segment(
    source: Slide | str | os.PathLike | np.ndarray,
    models: Ensemble | Member | Sequence[Member] | str | os.PathLike,
    organ: str,
    options: RunOptions | None = None,
    **overrides: Any,
) -> Generator[Progress, None, SegmentationResult]:
    """Segment FTUs of ``organ`` in a slide; yields :class:`Progress`, returns the result.

    ``source``: a :class:`Slide`, a slide path (opened and closed here), or an ``(H, W, C)``
    array (give ``pixel_size_um``). ``models``: an ensemble, member(s), a checkpoint or a
    manifest path. ``options``: a :class:`RunOptions` (default: its defaults); ``overrides``
    replace its fields (``segment(slide, models, "kidney", tta=4)``), and a name that is not
    one is a ``TypeError``. With ``region`` the result covers that level-0 box with the values
    a whole-slide run has there. A refiner's patches add to the progress total. Closing the
    generator (cancelling) between batches removes any partial output.
    """
    options = run_options(options, **overrides)
    with contextlib.ExitStack() as cleanup:
        slide = _as_slide(source, options.pixel_size_um, cleanup)
        cleanup.callback(slide.clear_cache)  # the decoded tiles are of no use after the run
        ensemble = _as_ensemble(models, options.device)
        members = ensemble.for_organ(organ)
        run = _Run(slide, members, options)
        from training.refine.stage import resolve_refiner  # here: training.refine imports us

        refiner = resolve_refiner(options.refiner, ensemble, options.device)  # BPR
        if refiner is not None:  # refused before the tiles, not after them
            check_pixel_sizes(slide.pixel_size_um, refiner.pixel_size_um, slide.path.name)
            if not run.window.whole:  # a region's patches come from the slide itself
                refiner = refiner.reading(slide, (run.window.y, run.window.x))
        run.refiner = refiner
        result = yield from run.execute(
            organ, ensemble.threshold(organ), ensemble.min_area_um2(organ)
        )
    return result


def working_map(
    slide: Slide, members: Sequence[Member], overlap: float = 0.25
) -> tuple[tuple[int, int], float]:
    """The whole slide's probability map ``(H, W)`` and pixel size (the finest member's).

    Refuses (``ValueError``, one line naming the sizes) before anything is allocated: pixel
    sizes of the slide and a member too far apart, a member grid of too many tiles, and a map
    whose labelling cannot fit in this process's memory.
    """
    shape, working_px = _working_grid(slide, members, overlap)
    check_map_fits(slide.path.name, slide.shape[:2], slide.pixel_size_um, shape)
    return shape, working_px


def _working_grid(
    slide: Slide, members: Sequence[Member], overlap: float
) -> tuple[tuple[int, int], float]:
    """:func:`working_map` without the check that the map's labelling fits in memory."""
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
    return (
        max(1, math.ceil(height * to_working)),
        max(1, math.ceil(width * to_working)),
    ), working_px


class _Run:
    """One segmentation: the slide, its members, their tile plans and the output."""

    def __init__(self, slide: Slide, members: list[Member], options: RunOptions) -> None:
        self.slide = slide
        self.members = members
        self.options = options
        self.stain: Any = None  # the normaliser, fixed to this slide
        self.streams = options.streams_for()  # before the thread share lowers torch's count
        grid, self.working_px = _working_grid(slide, members, options.overlap)
        self.to_working = slide.pixel_size_um / self.working_px
        box = (0, 0, *grid)
        if options.region is not None:  # refused before the thumbnail, not after the tiles
            check_region(options.region, slide.shape[:2], slide.path.name)
            box = working_box(options.region, self.to_working, grid)
        self.window = MapWindow(*box, grid)
        self.out_shape = self.window.shape
        check_map_fits(slide.path.name, slide.shape[:2], slide.pixel_size_um, self.out_shape)
        self.refiner: Any = None  # BPR: a training.refine.Refiner, run after the tiles

    def execute(self, organ: str, threshold: float, min_area_um2: float) -> Generator:
        """Plan, then run every member's tiles; yields progress, returns the result (with the
        model's ``threshold`` and ``min_area_um2`` for ``organ``)."""
        options = self.options
        # the whole slide's tissue, grid and stain fit, region or not: a region's tiles are
        # the whole-slide run's tiles that touch it, read and normalised the same way
        # read once: without the margin for the result (measuring), with it for the tiles
        measured = slide_tissue(self.slide, grow=0) if options.detect_tissue else None
        tissue = grown(measured) if measured is not None else None
        plans = [self._plan(m, tissue) for m in self.members]
        stain = options.stain
        if stain is not None and hasattr(stain, "for_slide"):
            stain = _stain_for_slide(stain, self.slide, plans[0])
        self.stain = stain
        views = [self._view(plan) for plan in plans]
        total = sum(v.plan.kept for v in views)
        skipped = sum(v.plan.skipped for v in views)
        yield Progress(0, total, f"{total} tiles to run, {skipped} background tiles skipped")
        store = OutputStore(self.out_shape, options.memory_limit_mb, options.workdir)
        done = 0
        try:
            with _torch_thread_share(self.streams):
                total_weight = sum(m.weight for m in self.members)
                so_far = 0.0  # the weight of the members run so far
                for index, (member, view) in enumerate(zip(self.members, views, strict=True)):
                    name = member.name or "model"
                    weight = member.weight / total_weight
                    so_far += weight
                    for count, rows in self._member(member, view, store, weight, index == 0):
                        done += count
                        message = f"{name}: {done}/{total} tiles"
                        if not rows:
                            yield Progress(done, total, message)
                        for part in _band_parts(rows, self.out_shape[1]):
                            # built in the yield: the generator keeps no band while paused
                            yield Progress(done, total, message, self._band(store, part, so_far))
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
            origin=(self.window.y, self.window.x),
            grid_shape=self.window.grid,
            region=options.region,
            tissue=measured,
        )

    def _view(self, plan: TilePlan) -> MemberView:
        """The member's tiles and band placement for this run's window."""
        scale = plan.pixel_size_um / self.working_px
        to_member = self.slide.pixel_size_um / plan.pixel_size_um  # as the plan's grid has it
        grid = tile_grid(
            self.slide.shape[:2], to_member, plan.tile, self.options.overlap, plan.pixel_size_um
        )
        return self.window.view(plan, scale, grid[1])

    def _band(self, store: OutputStore, rows: tuple[int, int], weight: float) -> Band:
        """The finished ``rows`` of ``store``, divided by the weight of the members so far."""
        values = np.asarray(store.array[rows[0] : rows[1]], np.float32)
        if weight != 1:
            values = values / weight
        origin = (self.window.y, self.window.x)
        return Band(rows[0], values, self.out_shape, self.working_px, origin)

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
        self, member: Member, view: MemberView, store: OutputStore, weight: float, first: bool
    ) -> Iterator[tuple[int, tuple[int, int] | None]]:
        """Run one member's tiles into ``store``; yields the tiles done per batch and the output
        rows ``(y0, y1)`` finished since the last yield (``None`` when none)."""
        options, device, plan = self.options, self.options.device, view.plan
        scale = plan.pixel_size_um / self.working_px  # working px per member px
        tile_w = round(plan.tile * scale)
        window = blend_window(tile_w, round((plan.tile - plan.stride) * scale))
        band = BandAccumulator(view.band_store(store), window, weight, device, first)
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
        row_tops = view.row_tops
        band.advance(row_tops[0])  # a region's rows above its first tile row: none reach them
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
                    band.add(round(x * scale) - view.left, probability)
                yield len(xs), view.map_rows(top, band.y0, store.shape[0])
        top = band.y0
        for done_row in range(finished, len(plan.rows)):
            band.advance(row_tops[done_row + 1])
        rows = view.map_rows(top, band.y0, store.shape[0])
        if rows:
            yield 0, rows


BAND_BYTES = 64 * 2**20  # the most float32 map rows one progress event carries


def _band_parts(rows: tuple[int, int] | None, width: int) -> Iterator[tuple[int, int]]:
    """``rows`` of a ``width``-wide map in parts of at most :data:`BAND_BYTES` each: the rows a
    member finishes at once can be most of the map (the glass below the last tissue row)."""
    if not rows:
        return
    step = max(1, BAND_BYTES // (4 * width))
    for y0 in range(rows[0], rows[1], step):
        yield y0, min(y0 + step, rows[1])


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
