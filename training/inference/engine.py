"""The tiled inference engine: a generator that yields progress and returns the probability map.

The slide is read lazily at each model's pixel size, background tiles are skipped (tissue
detection on a thumbnail), tiles overlap and are blended with weights that fall off towards tile
borders, and every ensemble member's probability is combined at the working scale (the finest
member pixel size). Output is written band by band: once a row of tiles is done, the rows no later
tile touches are final and leave the band buffer, so memory does not grow with the slide. Above
``memory_limit_mb`` the output is a zarr array on disk.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import tempfile
import uuid
import weakref
from collections import deque
from collections.abc import Callable, Generator, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from training.inference.postprocess import probability_to_labels
from training.inference.tiling import blend_window, tile_cores, tile_starts
from training.inference.tissue import thumbnail_pixel_size, tile_has_tissue, tissue_mask
from training.models.ensemble import Ensemble, Member, load_ensemble
from training.slides import Slide, open_slide

TTA_CHOICES = (1, 4, 8)


@dataclass(frozen=True)
class Progress:
    """``done`` of ``total`` tiles processed, and what is happening."""

    done: int
    total: int
    message: str


@dataclass
class SegmentationResult:
    """The probability map at the working scale, and how it maps to the slide."""

    probability: Any  # (H, W) float32: numpy array, or zarr array on disk for large slides
    pixel_size_um: float  # of the probability map
    downsample: float  # level-0 pixels per probability pixel
    slide_shape: tuple[int, int]  # level-0 (H, W)
    organ: str
    threshold: float
    tiles_run: int
    tiles_skipped: int
    path: Path | None = None  # where an on-disk probability map lives
    meta: dict[str, Any] = field(default_factory=dict)

    def labels(
        self, threshold: float | None = None, min_area_um2: float = 0.0, fill_holes: bool = True
    ) -> np.ndarray:
        """Instance labels (int32) at the working scale."""
        min_area_px = min_area_um2 / self.pixel_size_um**2
        return probability_to_labels(
            self.probability,
            self.threshold if threshold is None else threshold,
            min_area_px=min_area_px,
            fill_holes=fill_holes,
        )


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
) -> Generator[Progress, None, SegmentationResult]:
    """Segment FTUs of ``organ`` in a slide; yields :class:`Progress`, returns the result.

    ``source``: a :class:`Slide`, a slide path, or an ``(H, W, C)`` array (give
    ``pixel_size_um``). ``models``: an ensemble, member(s), a checkpoint or a manifest path.
    ``tta``: 1, 4 (flips) or 8 (flips and transposes). ``stain``: an object with
    ``transform(rgb_uint8) -> rgb_uint8`` applied to every tile. ``streams``: batches run at
    once on worker threads, each with an equal share of torch's threads (default: 2 on a CPU
    with at least 2 threads, else 1). Closing the generator (cancelling) between batches
    removes any partial output.
    """
    if tta not in TTA_CHOICES:
        raise ValueError(f"tta must be one of {TTA_CHOICES}; got {tta}")
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1); got {overlap}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1; got {batch_size}")
    if streams is not None and streams < 1:
        raise ValueError(f"streams must be at least 1; got {streams}")
    slide = _as_slide(source, pixel_size_um)
    ensemble = _as_ensemble(models, device)
    members = ensemble.for_organ(organ)
    device = torch.device(device)
    total_weight = sum(m.weight for m in members)
    height, width = slide.shape[:2]
    working_px = min(float(m.meta["pixel_size_um"]) for m in members)
    to_working = slide.pixel_size_um / working_px
    out_shape = (max(1, math.ceil(height * to_working)), max(1, math.ceil(width * to_working)))

    tissue, tissue_scale = None, 1.0
    if detect_tissue:
        thumb_px = thumbnail_pixel_size(slide)
        thumb = slide.read_region_at(
            thumb_px,
            0,
            0,
            math.ceil(height * slide.pixel_size_um / thumb_px),
            math.ceil(width * slide.pixel_size_um / thumb_px),
        )
        tissue = tissue_mask(thumb)
        tissue_scale = slide.pixel_size_um / thumb_px  # thumbnail px per level-0 px

    plans = [_plan(m, slide, overlap, tissue, tissue_scale) for m in members]
    if stain is not None and hasattr(stain, "for_slide"):
        stain = _stain_for_slide(stain, slide, plans[0])
    total = sum(p.kept for p in plans)
    skipped = sum(p.skipped for p in plans)
    yield Progress(0, total, f"{total} tiles to run, {skipped} background tiles skipped")

    output, path, final_path = _allocate(out_shape, memory_limit_mb, workdir)
    threads = torch.get_num_threads()
    if streams is None:
        streams = 2 if device.type == "cpu" and threads >= 2 else 1
    done = 0
    try:
        torch.set_num_threads(max(1, threads // streams))
        for plan in plans:
            for count in _run_member(
                plan,
                slide,
                output,
                working_px,
                plan.member.weight / total_weight,
                batch_size,
                tta,
                stain,
                device,
                streams,
                done,
            ):
                done = count
                yield Progress(done, total, f"{plan.member.name or 'model'}: {done}/{total} tiles")
        if final_path is not None:
            os.replace(path, final_path)
            path = final_path
            import zarr

            output = zarr.open_array(str(path), mode="r")
    except BaseException:
        if path is not None:
            shutil.rmtree(path, ignore_errors=True)
        raise
    finally:
        torch.set_num_threads(threads)
    result = SegmentationResult(
        probability=output,
        pixel_size_um=working_px,
        downsample=1 / to_working,
        slide_shape=(height, width),
        organ=organ,
        threshold=ensemble.threshold(organ),
        tiles_run=total,
        tiles_skipped=skipped,
        path=path,
        meta={
            "members": [m.name for m in members],
            "tta": tta,
            "overlap": overlap,
            "tissue_fraction": float(tissue.mean()) if tissue is not None else 1.0,
        },
    )
    if path is not None and workdir is None:
        weakref.finalize(result, shutil.rmtree, str(path.parent), True)
    return result


@dataclass
class _Plan:
    member: Member
    tile: int
    stride: int
    pixel_size_um: float
    rows: list[tuple[int, list[int]]]  # (y, [x of kept tiles]) at the member's scale
    kept: int
    skipped: int


def _plan(
    member: Member, slide: Slide, overlap: float, tissue: np.ndarray | None, tissue_scale: float
) -> _Plan:
    tile = int(member.meta["tile_size"])
    pixel_size = float(member.meta["pixel_size_um"])
    to_member = slide.pixel_size_um / pixel_size
    height = math.ceil(slide.shape[0] * to_member)
    width = math.ceil(slide.shape[1] * to_member)
    stride = max(1, round(tile * (1 - overlap)))
    rows, kept, skipped = [], 0, 0
    ys_all = tile_starts(height, tile, stride)
    xs_all = tile_starts(width, tile, stride)
    # a tile runs when tissue touches its core (the part no other tile covers more centrally),
    # so every tissue pixel is predicted by the tile it is most central in
    x_cores = tile_cores(xs_all, tile, width)
    for y, (cy0, cy1) in zip(ys_all, tile_cores(ys_all, tile, height), strict=True):
        if tissue is None:
            xs = xs_all
        else:  # member px -> level-0 px is 1 / to_member
            xs = [
                x
                for x, (cx0, cx1) in zip(xs_all, x_cores, strict=True)
                if tile_has_tissue(
                    tissue,
                    tissue_scale,
                    cy0 / to_member,
                    cx0 / to_member,
                    (cy1 - cy0) / to_member,
                    (cx1 - cx0) / to_member,
                )
            ]
        rows.append((y, xs))
        kept += len(xs)
        skipped += len(xs_all) - len(xs)
    return _Plan(member, tile, stride, pixel_size, rows, kept, skipped)


def _run_member(
    plan: _Plan,
    slide: Slide,
    output: Any,
    working_px: float,
    weight: float,
    batch_size: int,
    tta: int,
    stain: Any,
    device: torch.device,
    streams: int,
    done: int,
) -> Generator[int, None, None]:
    """Blend one member's tiles into band buffers; add finished rows to ``output``."""
    member, tile = plan.member, plan.tile
    scale = plan.pixel_size_um / working_px  # working px per member px
    tile_w = round(tile * scale)
    window = blend_window(tile_w, round((tile - plan.stride) * scale))
    out_h, out_w = output.shape
    numerator = np.zeros((tile_w, out_w), np.float32)
    weights = np.zeros((tile_w, out_w), np.float32)
    scratch = np.empty((tile_w, out_w), np.float32)
    band_y0 = 0
    model = member.model.to(device, memory_format=torch.channels_last).eval()
    mean = torch.tensor(member.meta["mean"], device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(member.meta["std"], device=device).view(1, 3, 1, 1) * 255

    def predict(tiles: np.ndarray) -> np.ndarray:
        return _predict(model, tiles, mean, std, tta, device, tile_w)

    def read(y: int, xs: list[int]) -> np.ndarray:
        return np.stack([_read_tile(slide, plan.pixel_size_um, y, x, tile, stain) for x in xs])

    def flush(row_index: int) -> None:
        """Move the band rows that no tile after row ``row_index`` touches into ``output``."""
        nonlocal band_y0
        next_y = (
            round(plan.rows[row_index + 1][0] * scale) if row_index + 1 < len(plan.rows) else out_h
        )
        rows = min(next_y - band_y0, tile_w)
        if rows > 0:
            final = scratch[:rows]
            # weights are never 0 under a tile (see blend_window); 0 where no tile ran, and
            # there the numerator is 0 too
            np.maximum(weights[:rows], 1e-30, out=final)
            np.divide(numerator[:rows], final, out=final)
            if weight != 1:
                final *= weight
            stop = min(band_y0 + rows, out_h)
            if stop > band_y0:
                if isinstance(output, np.ndarray):
                    output[band_y0:stop] += final[: stop - band_y0]
                else:
                    output[band_y0:stop] = output[band_y0:stop] + final[: stop - band_y0]
            numerator[:-rows] = numerator[rows:].copy()
            weights[:-rows] = weights[rows:].copy()
            numerator[-rows:] = 0
            weights[-rows:] = 0
        band_y0 = next_y

    batches = (
        (row_index, y, xs[start : start + batch_size])
        for row_index, (y, xs) in enumerate(plan.rows)
        for start in range(0, len(xs), batch_size)
    )
    flushed = 0
    with contextlib.closing(_predictions(batches, read, predict, streams)) as predictions:
        for row_index, batch_xs, probs in predictions:
            for finished in range(flushed, row_index):
                flush(finished)
            flushed = row_index
            for x, prob in zip(batch_xs, probs, strict=True):
                wx = round(x * scale)
                span = min(tile_w, out_w - wx)
                numerator[:, wx : wx + span] += prob[:, :span] * window[:, :span]
                weights[:, wx : wx + span] += window[:, :span]
            done += len(batch_xs)
            yield done
    for finished in range(flushed, len(plan.rows)):
        flush(finished)


def _predictions(
    batches: Iterable[tuple[int, int, list[int]]],
    read: Callable[[int, list[int]], np.ndarray],
    predict: Callable[[np.ndarray], np.ndarray],
    streams: int,
) -> Generator[tuple[int, list[int], np.ndarray], None, None]:
    """``(row_index, xs, probabilities)`` per batch, in order, with ``streams`` batches running
    at once on worker threads (tiles are read on the calling thread meanwhile)."""
    if streams == 1:
        for row_index, y, xs in batches:
            yield row_index, xs, predict(read(y, xs))
        return
    pool = ThreadPoolExecutor(streams, thread_name_prefix="napari-ftu-stream")
    pending: deque[tuple[int, list[int], Future]] = deque()
    try:
        for row_index, y, xs in batches:
            pending.append((row_index, xs, pool.submit(predict, read(y, xs))))
            if len(pending) > streams:  # one batch read ahead while `streams` run
                row, done_xs, future = pending.popleft()
                yield row, done_xs, future.result()
        while pending:
            row, done_xs, future = pending.popleft()
            yield row, done_xs, future.result()
    finally:  # cancelled or failed: drop queued batches, wait for running ones
        pool.shutdown(wait=True, cancel_futures=True)


def _read_tile(
    slide: Slide, pixel_size: float, y: int, x: int, tile: int, stain: Any
) -> np.ndarray:
    region = slide.read_region_at(pixel_size, y, x, tile, tile)
    if region.shape[-1] == 1:
        region = np.repeat(region, 3, axis=-1)
    region = region[..., :3]
    if region.dtype != np.uint8:
        region = _to_uint8(region)
    if stain is not None:
        region = stain.transform(region)
    return region


STAIN_SAMPLE_TILES = 16


def _stain_for_slide(stain: Any, slide: Slide, plan: _Plan) -> Any:
    """The normaliser fixed to this slide's stains, estimated once from up to 16 tissue tiles
    spread over the slide (so every tile gets the same transform: no seams); the normaliser
    as given when the sample holds too little stain."""
    kept = [(y, x) for y, xs in plan.rows for x in xs]
    if not kept:
        return stain
    picks = np.linspace(0, len(kept) - 1, min(STAIN_SAMPLE_TILES, len(kept))).round().astype(int)
    sample = np.concatenate(
        [_read_tile(slide, plan.pixel_size_um, *kept[i], plan.tile, None) for i in picks]
    )
    from training.stain import StainError

    try:
        return stain.for_slide(sample)
    except StainError:
        return stain


def _to_uint8(region: np.ndarray) -> np.ndarray:
    if np.issubdtype(region.dtype, np.integer):
        return (region.astype(np.float32) * (255.0 / np.iinfo(region.dtype).max)).astype(np.uint8)
    return np.clip(region * 255.0, 0, 255).astype(np.uint8)


def _tta_views(
    tta: int,
) -> list[tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]]:
    flips = [(), (3,), (2,), (2, 3)]
    views = [
        (lambda t, d=d: t.flip(d) if d else t, lambda t, d=d: t.flip(d) if d else t)
        for d in flips[: min(tta, 4)]
    ]
    if tta == 8:
        views += [
            (
                lambda t, d=d: (t.flip(d) if d else t).transpose(2, 3),
                lambda t, d=d: t.transpose(2, 3).flip(d) if d else t.transpose(2, 3),
            )
            for d in flips
        ]
    return views


def _predict(
    model: torch.nn.Module,
    tiles: np.ndarray,
    mean: torch.Tensor,
    std: torch.Tensor,
    tta: int,
    device: torch.device,
    out_size: int,
) -> np.ndarray:
    x = torch.from_numpy(tiles).to(device).permute(0, 3, 1, 2).float()
    x = ((x - mean) / std).contiguous(memory_format=torch.channels_last)
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if device.type == "cuda"
        else contextlib.nullcontext()
    )
    with torch.inference_mode(), autocast:
        total = None
        views = _tta_views(tta)
        for forward, backward in views:
            prob = backward(torch.sigmoid(model(forward(x)).float()))
            total = prob if total is None else total + prob
        prob = total / len(views)
        if prob.shape[-1] != out_size:
            prob = F.interpolate(
                prob, size=(out_size, out_size), mode="bilinear", align_corners=False
            )
    return prob[:, 0].float().cpu().numpy()


def _allocate(
    shape: tuple[int, int], memory_limit_mb: float, workdir: str | os.PathLike | None
) -> tuple[Any, Path | None, Path | None]:
    """The output array; on disk (zarr, in a partial folder renamed when done) above the limit."""
    if shape[0] * shape[1] * 4 <= memory_limit_mb * 2**20:
        return np.zeros(shape, np.float32), None, None
    import zarr

    if workdir is None:
        parent = Path(tempfile.mkdtemp(prefix="napari-ftu-"))
        final = parent / "probability.zarr"
    else:
        parent = Path(workdir)
        parent.mkdir(parents=True, exist_ok=True)
        final = parent / "probability.zarr"
        if final.exists():
            raise FileExistsError(f"{final} exists; napari-ftu does not overwrite results")
    partial = parent / f".partial-{uuid.uuid4().hex}.zarr"
    chunks = (min(shape[0], 1024), min(shape[1], 1024))
    array = zarr.create_array(
        str(partial), shape=shape, chunks=chunks, dtype="float32", fill_value=0.0
    )
    return array, partial, final


def _as_slide(source: Slide | str | os.PathLike | np.ndarray, pixel_size_um: float | None) -> Slide:
    if isinstance(source, Slide):
        slide = source
        if pixel_size_um is not None:
            slide.pixel_size_um = float(pixel_size_um)
    elif isinstance(source, np.ndarray):
        slide = Slide.from_array(source, pixel_size_um)
    else:
        slide = open_slide(source, pixel_size_um)
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
