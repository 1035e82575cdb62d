"""What the "Segment FTUs" button runs, without Qt: a generator the widget's worker drives.

It loads the model, runs the engine on the slide (on a field of view or a drawn rectangle: the
engine's ``region``, whose map is the same box of a whole-slide run's, on the same grid), and
stops between batches when cancelled. torch is imported here, never at plugin discovery.
"""

from __future__ import annotations

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

    ``grid`` is the whole slide's working grid, whatever the region (as the result reports it),
    so the runs of one model on one slide share a mask store."""

    result: Any  # training.inference.SegmentationResult
    origin: tuple[int, int]  # the map's top-left in the whole slide's working-scale pixels
    grid: Any  # training.review.session.Grid: the whole slide at the working scale
    model: Path
    labels: np.ndarray | None = None  # the map's objects at the model's threshold and min area
    domain: Any = None  # training.domain.DomainCheck: how far the image is from the training data
    tissue_area_mm2: float | None = None  # the slide's (the engine's tissue mask); whole runs only


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
    from training.inference.tissue import tissue_area_mm2
    from training.models.ensemble import load_ensemble
    from training.review.session import Grid
    from training.slides import Slide, open_slide

    device = resolve_device(request.device)
    ensemble = load_ensemble(request.model, device)
    members = ensemble.for_organ(request.organ)
    image = request.image
    opened = (
        open_slide(image, request.pixel_size_um)
        if isinstance(image, (str, os.PathLike))
        else Slide.from_array(np.asarray(image), request.pixel_size_um)  # closing: a no-op
    )
    with opened as slide:
        engine = segment(slide, ensemble, request.organ, run_options(request, device))
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
            domain = check_slide(slide, members, tap.features, stain=request.stain)
            # a region's tissue is not the slide's, whose objects the mask layer holds
            whole = request.region is None
            tissue = tissue_area_mm2(slide, tissue=result.tissue) if whole else None
        except BaseException:
            result.close()
            raise
        grid = Grid(result.grid_shape, result.pixel_size_um, result.downsample)
        return JobResult(result, result.origin, grid, request.model, labels, domain, tissue)


def run_options(request: SegmentRequest, device: str) -> Any:
    """The engine's :class:`training.inference.RunOptions` for ``request`` on ``device``."""
    from training.inference import RunOptions

    return RunOptions(
        overlap=request.overlap,
        tta=request.tta,
        device=device,
        stain=request.stain,
        refiner=request.refine,  # BPR: the engine reads a region's patches from the slide
        region=request.region,
    )


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
