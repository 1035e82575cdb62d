"""Writing slide reports from a run folder: ``<id>.report.html`` (self-contained) and
``<id>.report.png`` per slide, and ``report.html``, the folder's index."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from training.atomic import atomic_path
from training.organs import FTU_NAMES
from training.report import figures
from training.report.inputs import ReportInputs, load_inputs, summary_row
from training.report.page import Crop, SlidePage, index_page, number, plural, summary_items
from training.report.record import SUFFIX, ReportError, RunRecord, read_run_record

CROPS = 4  # objects shown among the most and among the least confident
INDEX = "report.html"
INDEX_SIDE = 240  # the longest side of a slide's thumbnail in the index, in pixels


def report_paths(folder: Path, image_id: str) -> tuple[Path, Path]:
    """Where the HTML page and the PNG of ``image_id``'s report go in ``folder``."""
    return Path(folder) / f"{image_id}.report.html", Path(folder) / f"{image_id}.report.png"


def run_ids(folder: Path) -> list[str]:
    """The ids of the slides with a run record in ``folder``, sorted; :class:`ReportError`
    when ``folder`` is not a folder or holds no run."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ReportError(f"{folder}: no such folder")
    ids = sorted(path.name[: -len(SUFFIX)] for path in folder.glob(f"*{SUFFIX}"))
    if not ids:
        raise ReportError(
            f"{folder}: no run record (*{SUFFIX}) here; napari-ftu segment --measure or "
            "--report writes one per slide"
        )
    return ids


def write_report(folder: Path, image_id: str, *, overwrite: bool = False) -> list[Path]:
    """Write the report of ``image_id`` from what its run left in ``folder``; refuse to replace
    an existing report unless ``overwrite``. Returns the HTML and PNG paths."""
    targets = report_paths(folder, image_id)
    existing = [str(path) for path in targets if path.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{existing[0]} exists; napari-ftu does not overwrite results")
    inputs = load_inputs(folder, image_id)
    page = slide_page(inputs)
    with atomic_path(targets[0]) as tmp:
        tmp.write_text(page.html(), encoding="utf-8")
    with atomic_path(targets[1]) as tmp:
        report_figure(page, inputs.objects, inputs.record.organ).savefig(tmp, format="png")
    return list(targets)


def slide_page(inputs: ReportInputs) -> SlidePage:
    """Everything one slide's report shows, read from its slide and run outputs."""
    from training.slides import SlideError, open_slide

    record = inputs.record
    ftu = FTU_NAMES.get(record.organ, "FTU")
    if not Path(record.slide).is_file():
        raise ReportError(
            f"{record.id}: its slide {record.slide} is not there (moved?); the report reads "
            "the thumbnail and the crops from it"
        )
    try:
        with open_slide(record.slide, record.slide_pixel_size_um) as slide:
            if tuple(slide.shape[:2]) != tuple(record.slide_shape):
                raise ReportError(
                    f"{record.slide}: {slide.shape[1]} x {slide.shape[0]} px, but the run "
                    f"segmented a {record.slide_shape[1]} x {record.slide_shape[0]} px slide there"
                )
            thumbnail = figures.thumbnail(slide, inputs.outlines, record.organ, record.region)
            most, least, note = _crops(slide, inputs)
    except SlideError as exc:
        raise ReportError(str(exc)) from None
    where = f" · region {record.region}" if record.region else ""
    return SlidePage(
        title=f"{record.id}: {plural(ftu)}",
        subtitle=f"{record.slide}{where} · {record.organ} · "
        f"{record.slide_shape[1]} x {record.slide_shape[0]} px at "
        f"{record.slide_pixel_size_um:g} µm/px · segmented {record.written}",
        ftu=ftu,
        thumbnail=thumbnail,
        histogram=figures.histogram_png(inputs.objects, ftu, record.organ),
        summary=summary_items(inputs.summary, ftu),
        most=most,
        least=least,
        crop_note=note,
        domain=record.domain,
        model=model_items(record),
        settings=settings_items(record),
    )


def confidence_ranks(objects: pd.DataFrame, count: int = CROPS) -> tuple[list[int], list[int]]:
    """Row positions of the ``count`` most confident objects (highest mean probability first)
    and of the ``count`` least confident ones not among them (lowest first)."""
    probability = objects["mean_probability"].to_numpy(float)
    known = np.flatnonzero(np.isfinite(probability))
    ranked = known[np.argsort(-probability[known], kind="stable")].tolist()
    most = ranked[:count]
    least = [i for i in reversed(ranked) if i not in most][:count]
    return most, least


def _crops(slide: Any, inputs: ReportInputs) -> tuple[list[Crop], list[Crop], str]:
    objects = inputs.objects
    most, least = confidence_ranks(objects)
    note = f"No {plural(FTU_NAMES.get(inputs.record.organ, 'FTU'))} found."
    if len(objects) and not most:
        note = "No object has a confidence (the run recorded no probability)."

    def crop(position: int) -> Crop:
        row = objects.iloc[position]
        return Crop(
            figures.crop(slide, row, inputs.outlines, inputs.record.organ),
            int(row["label"]),
            float(row["area_um2"]),
            float(row["mean_probability"]),
            bool(row["touches_edge"]),
        )

    return [crop(i) for i in most], [crop(i) for i in least], note


def model_items(record: RunRecord) -> list[tuple[str, str]]:
    """The model lines: its file, its members for the organ, the working pixel size."""
    return [
        ("model", _model_name(Path(record.model))),
        ("path", record.model),
        ("members", ", ".join(record.members) or "unknown"),
        ("working pixel size", f"{record.working_pixel_size_um:g} µm/px"),
    ]


def _model_name(path: Path) -> str:
    """An ensemble manifest's ``name`` with its file name, else the file name."""
    if path.suffix.lower() in (".yaml", ".yml") and path.is_file():
        import yaml

        try:
            name = (yaml.safe_load(path.read_text()) or {}).get("name")
        except (OSError, ValueError, AttributeError, yaml.YAMLError):
            name = None  # the report still names the file
        if isinstance(name, str) and name:
            return f"{name} ({path.name})"
    return path.name


def settings_items(record: RunRecord) -> list[tuple[str, str]]:
    """The settings lines, as the run applied them."""
    s = record.settings
    stain = s["stain"] or "none"
    return [
        ("organ", record.organ),
        ("threshold", number(s["threshold"], 3)),
        ("minimum area", number(s["min_area_um2"], 4, "µm²")),
        ("tile overlap", number(s["overlap"], 3)),
        ("test-time augmentation", f"{s['tta']} view(s)"),
        ("stain normalisation", stain),
        ("boundary refinement (BPR)", s["refine"] or "none"),
        ("tissue detection", "on" if s["tissue_detection"] else "off"),
    ]


def report_figure(page: SlidePage, objects: pd.DataFrame, organ: str) -> Any:
    """The report as one matplotlib figure (the PNG): thumbnail, summary, histogram, the crops,
    the model, settings and domain lines."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(16, 12), dpi=100)
    grid = figure.add_gridspec(
        4,
        CROPS * 2,
        height_ratios=[2.2, 2.2, 1.6, 1.3],
        hspace=0.35,
        wspace=0.15,
        left=0.02,
        right=0.98,
        top=0.93,
        bottom=0.02,
    )
    figure.suptitle(page.title, fontsize=18, x=0.02, ha="left", y=0.985)
    figure.text(0.02, 0.955, page.subtitle, fontsize=9, color="#555")
    thumb = figure.add_subplot(grid[0:2, 0:CROPS])
    thumb.imshow(page.thumbnail)
    thumb.set_axis_off()
    text = figure.add_subplot(grid[0, CROPS:])
    text.set_axis_off()
    lines = "\n".join(f"{name}:  {value}" for name, value in page.summary)
    text.text(0, 1, "Summary\n" + lines, va="top", fontsize=11, linespacing=1.6)
    figures.histogram(figure.add_subplot(grid[1, CROPS + 1 :]), objects, page.ftu, organ)
    for column, (crop, kind) in enumerate(
        [(c, "most") for c in page.most] + [(c, "least") for c in page.least]
    ):
        axes = figure.add_subplot(grid[2, column])
        axes.imshow(crop.image)
        axes.set_axis_off()
        head = f"{kind} confident\n" if column in (0, len(page.most)) else "\n"
        axes.set_title(head + crop.caption(page.ftu).replace(" · ", "\n", 1), fontsize=8)
    if not page.most:
        figure.text(0.02, 0.36, page.crop_note, fontsize=11)
    footer = figure.add_subplot(grid[3, :])
    footer.set_axis_off()
    domain = (page.domain or {}).get("line", "domain check: not run")
    warn = bool((page.domain or {}).get("far"))
    items = page.model + page.settings
    half = math.ceil(len(items) / 2)
    for offset, chunk in ((0.0, items[:half]), (0.5, items[half:])):
        body = "\n".join(f"{name}: {value}" for name, value in chunk)
        footer.text(offset, 0.78, body, va="top", fontsize=9, linespacing=1.5, wrap=True)
    footer.text(
        0,
        1.0,
        ("Warning: " if warn else "") + domain,
        va="top",
        fontsize=10,
        color="#b0281a" if warn else "#1e5a1e" if (page.domain or {}).get("distance") else "#555",
        wrap=True,
    )
    return figure


def write_batch_report(folder: Path, *, overwrite: bool = True) -> Path:
    """Write ``folder/report.html``: one summary row per slide with a run record there, each
    linking to its page. The index lists what is in the folder, so it is replaced by default."""
    folder = Path(folder)
    target = folder / INDEX
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} exists; napari-ftu does not overwrite results")
    columns = ["id", "organ", "FTUs", "tissue mm²", "FTUs per mm²", "area fraction"]
    columns += ["median µm²", "domain"]
    rows = []
    for image_id in run_ids(folder):
        try:
            rows.append(_index_row(folder, image_id))
        except ReportError:  # one damaged record must not cost the others their rows (its own
            # report names the problem)
            rows.append({"id": image_id, "href": "", **dict.fromkeys(columns[1:-1], "–")})
            rows[-1]["domain"] = "unreadable run record"
    page = index_page(f"napari-ftu run: {folder.resolve().name}", rows, columns)
    with atomic_path(target) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return target


def _index_row(folder: Path, image_id: str) -> dict[str, Any]:
    record = read_run_record(folder / f"{image_id}{SUFFIX}")
    summary = summary_row(folder, image_id) or {}
    domain = record.domain or {}
    fraction = summary.get("ftu_area_fraction")
    page = report_paths(folder, image_id)[0]
    return {
        "id": image_id,
        "href": page.name if page.is_file() else "",
        "organ": record.organ,
        "FTUs": number(summary.get("ftu_count")),
        "tissue mm²": number(summary.get("tissue_area_mm2"), 3),
        "FTUs per mm²": number(summary.get("ftus_per_mm2"), 3),
        "area fraction": number(None if fraction is None else fraction * 100, 3, "%"),
        "median µm²": number(summary.get("area_um2_median"), 3),
        "domain": ("far: " if domain.get("far") else "")
        + (f"{domain['distance']:.2f}" if domain.get("distance") is not None else "–"),
        "thumbnail": _small_thumbnail(folder, record),
    }


def _small_thumbnail(folder: Path, record: RunRecord) -> np.ndarray | None:
    """The slide with its outlines, small, for the index; None when the slide or outlines
    cannot be read (its own report says why)."""
    from training.report.inputs import read_outlines
    from training.slides import SlideError, open_slide

    try:
        outlines = read_outlines(folder, record)
        with open_slide(record.slide, record.slide_pixel_size_um) as slide:
            return figures.thumbnail(slide, outlines, record.organ, record.region, INDEX_SIDE)
    except (ReportError, SlideError, OSError):
        return None
