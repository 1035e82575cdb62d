"""What the "Segment FTUs" button runs, without Qt: a generator the widget's worker drives.

It loads the model, reads the asked region at the model's working scale (so a field of view or
a drawn rectangle lands on the same pixel grid as a whole-slide run), runs the engine, and
stops between batches when cancelled. torch is imported here, never at plugin discovery.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

Box = tuple[int, int, int, int]  # (y, x, h, w)


@dataclass(frozen=True)
class SegmentRequest:
    """One click of "Segment FTUs": what to segment, with which model, where and how."""

    image: Any  # a slide path, or a level-0 (H, W, C) array
    pixel_size_um: float
    organ: str
    model: Path
    device: str = "auto"
    region: Box | None = None  # level-0 pixels; None: the whole slide
    overlap: float = 0.25
    tta: int = 1
    stain: Any = None  # a fitted normaliser, or None
    refine: Any = None  # BPR: None the model's own refiner (if any), False none, or a file


@dataclass
class JobResult:
    """The engine's result, where its map sits in the whole slide's working grid, and the model.

    ``grid`` is the whole slide's, whatever the region: a region's result alone would describe
    its own crop (level 0 = the crop at the working scale, a downsample of 1)."""

    result: Any  # training.inference.SegmentationResult
    origin: tuple[int, int]  # the map's top-left in the whole slide's working-scale pixels
    grid: Any  # napari_ftu._session.Grid: the whole slide at the working scale
    model: Path
    labels: np.ndarray | None = None  # the map's objects at the model's threshold and min area
    domain: Any = None  # training.domain.DomainCheck: how far the image is from the training data


def resolve_device(name: str) -> str:
    """``auto`` is ``cuda`` when a GPU is usable, else ``cpu``; ``cuda`` without one is an error."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("device cuda was asked for, but torch sees no usable GPU here")
    return name


def segment_job(
    request: SegmentRequest, cancel: threading.Event
) -> Generator[Any, None, JobResult | None]:
    """Yield the engine's progress; return the result, or ``None`` once ``cancel`` is set (the
    engine's partial output is removed before returning)."""
    from training.domain import FeatureTap, check_slide
    from training.inference import segment
    from training.models.ensemble import load_ensemble
    from training.refine.stage import resolve_refiner
    from training.review.session import Grid
    from training.slides import Slide, open_slide

    device = resolve_device(request.device)
    ensemble = load_ensemble(request.model, device)
    refiner = resolve_refiner(request.refine, ensemble, device)  # BPR
    members = ensemble.for_organ(request.organ)
    working = min(float(m.meta["pixel_size_um"]) for m in members)
    image = request.image
    opened = (
        open_slide(image, request.pixel_size_um)
        if isinstance(image, (str, os.PathLike))
        else Slide.from_array(np.asarray(image), request.pixel_size_um)  # closing: a no-op
    )
    with opened as slide:
        to_working = slide.pixel_size_um / working
        height, width = slide.shape[:2]
        full = (max(1, math.ceil(height * to_working)), max(1, math.ceil(width * to_working)))
        # computed as the engine computes a whole-slide run's, so the two grids compare equal
        grid = Grid(full, working, 1 / to_working)
        origin, source = (0, 0), slide
        if request.region is not None:
            y, x, h, w = working_box(request.region, to_working, full)
            origin = (y, x)
            source = Slide.from_array(slide.read_region_at(working, y, x, h, w), working)
            if refiner is not None:  # BPR patches from the slide itself, not the working crop
                refiner = refiner.reading(slide, origin)
        engine = segment(
            source,
            ensemble,
            request.organ,
            overlap=request.overlap,
            tta=request.tta,
            stain=request.stain,
            device=device,
            refiner=refiner or False,
        )
        with FeatureTap(members) as tap:  # the encoder features the domain check needs
            while True:
                try:
                    event = next(engine)
                except StopIteration as stop:
                    result = stop.value
                    break
                if cancel.is_set():
                    engine.close()  # removes the partial output, restores torch's threads
                    return None
                yield event
        try:
            # the objects are found here, off the GUI thread, ready for a new mask layer
            labels = result.labels()
            domain = check_slide(source, members, tap.features, slide.pixel_size_um, request.stain)
        except BaseException:
            result.close()
            raise
        return JobResult(result, origin, grid, request.model, labels, domain)


def working_box(region: Box, to_working: float, full: tuple[int, int]) -> Box:
    """A level-0 box as whole pixels of the working grid, clipped to the slide; an error when
    nothing of it lies on the slide."""
    y, x, h, w = region
    y0, x0 = max(0, math.floor(y * to_working)), max(0, math.floor(x * to_working))
    y1 = min(full[0], math.ceil((y + h) * to_working))
    x1 = min(full[1], math.ceil((x + w) * to_working))
    if y1 - y0 < 1 or x1 - x0 < 1:
        raise ValueError("the region to segment lies outside the image")
    return y0, x0, y1 - y0, x1 - x0


def slide_hints(path: str | os.PathLike | None) -> dict[str, Any]:
    """The organ and pixel size a dataset folder's ``train.csv`` gives a slide that sits in it
    (``DIR/train_images/<id>.tiff`` or ``DIR/<id>.tiff``); empty when there is none."""
    if not path:
        return {}
    path = Path(path)
    for folder in (path.parent, path.parent.parent):
        if not (folder / "train.csv").is_file():
            continue
        from training.data.catalog import as_number, read_catalog

        try:
            rows = read_catalog(folder, check_images=False, check_rle=False)
        except Exception:  # a broken catalogue only loses the prefill, never the slide
            return {}
        row = rows[rows["id"].astype(str) == path.stem.removesuffix(".ome")]
        if row.empty:
            return {}
        hints = {"organ": str(row.iloc[0]["organ"])}
        size = as_number(row.iloc[0].get("pixel_size"), float)
        if size is not None and size > 0:
            hints["pixel_size_um"] = float(size)
        return hints
    return {}
