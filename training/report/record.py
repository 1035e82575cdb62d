"""The run record, ``OUT/<id>.run.json``: what a segmentation run of one slide was, so that its
report can be made later from the output folder alone (``napari-ftu report OUT``).

It names the slide, the model and its members, the settings the run used (the threshold and
minimum area actually applied, not just the flags), the working pixel size, the domain check's
line, and the run's other outputs in the folder (the objects CSV, the GeoJSON or label TIFF the
outlines come from). A few hundred bytes; the format is in docs/formats.md.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training.atomic import atomic_path

FORMAT = "napari-ftu run"
VERSION = 1
SUFFIX = ".run.json"
SETTINGS = ("threshold", "min_area_um2", "overlap", "tta", "stain", "refine", "tissue_detection")
REQUIRED = (
    "id",
    "slide",
    "slide_pixel_size_um",
    "slide_shape",
    "organ",
    "model",
    "members",
    "settings",
    "working_pixel_size_um",
    "outputs",
)


class ReportError(ValueError):
    """A run folder, record or output a report cannot be made from, with the reason."""


@dataclass
class RunRecord:
    """One slide's run: see the module docstring and docs/formats.md for each field."""

    id: str
    slide: str  # the slide file, as an absolute path
    slide_pixel_size_um: float  # level 0's, as the run used it (the file's or --pixel-size)
    slide_shape: tuple[int, int]  # level-0 (H, W)
    organ: str
    model: str  # the checkpoint or ensemble manifest, as an absolute path
    members: list[str]  # the members that segmented this organ
    settings: dict[str, Any]  # SETTINGS: the values the run applied
    working_pixel_size_um: float  # of the probability map, labels and measurements
    outputs: dict[str, str]  # "objects", "geojson", "labels": file names in the run folder
    domain: dict[str, Any] | None = None  # {"line", "far", "distance"}; None: not checked
    region: list[int] | None = None  # the level-0 box (y, x, h, w) a region run covered
    written: str = field(
        default_factory=lambda: dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    )

    def to_json(self) -> dict[str, Any]:
        """The record as written: format and version first."""
        return {"format": FORMAT, "version": VERSION, **self.__dict__}

    def output(self, folder: Path, kind: str) -> Path | None:
        """The path of the run's ``kind`` output in ``folder`` when the run wrote one and it is
        still there, else None."""
        name = self.outputs.get(kind)
        return folder / name if name and (folder / name).is_file() else None


def run_record(
    slide: Any,
    result: Any,
    members: Sequence[Any],
    check: Any,
    *,
    model: str | Path,
    settings: dict[str, Any],
) -> RunRecord:
    """The record of ``result`` (a :class:`training.inference.SegmentationResult`) of
    ``slide`` by the ensemble ``members`` under the ``check`` (a
    :class:`training.domain.DomainCheck`, or None). ``settings``: the run's ``overlap``,
    ``tta``, ``stain``, ``tissue_detection`` and ``outputs`` (kind -> file name), and any
    ``threshold`` or ``min_area_um2`` given (None: the model's, which the result holds)."""
    image_id = Path(slide.path).stem
    given = dict(settings)
    outputs = given.pop("outputs")
    threshold, min_area = given.pop("threshold", None), given.pop("min_area_um2", None)
    refiner = result.meta.get("refiner")
    given |= {
        "threshold": float(result.threshold if threshold is None else threshold),
        "min_area_um2": float(result.min_area_um2 if min_area is None else min_area),
        "refine": Path(refiner).name if refiner else None,
    }
    region = getattr(result, "region", None)
    return RunRecord(
        id=image_id,
        slide=str(Path(slide.path).resolve()),
        slide_pixel_size_um=float(slide.pixel_size_um),
        slide_shape=tuple(int(n) for n in result.slide_shape),
        organ=result.organ,
        model=str(Path(model).resolve()),
        members=[member.name for member in members],
        settings=given,
        working_pixel_size_um=float(result.pixel_size_um),
        outputs=dict(outputs),
        domain=None if check is None else domain_entry(check, Path(slide.path).name),
        region=None if region is None else [int(n) for n in region],
    )


def domain_entry(check: Any, name: str) -> dict[str, Any]:
    """The record's ``domain`` of a :class:`training.domain.DomainCheck` of slide ``name``."""
    return {"line": check.line(name), "far": bool(check.far), "distance": check.distance}


def record_path(folder: Path, image_id: str) -> Path:
    """Where the run record of ``image_id`` lives in ``folder``."""
    return Path(folder) / f"{image_id}{SUFFIX}"


def write_run_record(folder: Path, record: RunRecord, *, overwrite: bool = False) -> Path:
    """Write ``record`` as ``folder/<id>.run.json`` (atomic); refuse to replace one unless
    ``overwrite``. Returns the path."""
    missing = [name for name in SETTINGS if name not in record.settings]
    if missing:
        raise ValueError(f"run record of {record.id}: settings lack {', '.join(missing)}")
    path = record_path(folder, record.id)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; napari-ftu does not overwrite results")
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(record.to_json(), indent=1) + "\n")
    return path


def read_run_record(path: Path) -> RunRecord:
    """Read a run record; :class:`ReportError` names the file and what is wrong with it."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ReportError(f"{path}: no such run record") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReportError(f"{path}: not a readable run record ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ReportError(f'{path}: not a napari-ftu run record (no "format": {FORMAT!r})')
    if data.get("version") != VERSION:
        raise ReportError(
            f"{path}: run record version {data.get('version')!r}; this napari-ftu reads "
            f"version {VERSION}"
        )
    missing = [key for key in REQUIRED if key not in data]
    settings = data.get("settings")
    missing += [
        f"settings.{k}" for k in SETTINGS if not isinstance(settings, dict) or k not in settings
    ]
    if missing:
        raise ReportError(f"{path}: run record lacks {', '.join(missing)}")
    record = RunRecord(**{k: v for k, v in data.items() if k in RunRecord.__dataclass_fields__})
    if not (isinstance(record.slide_pixel_size_um, int | float) and record.slide_pixel_size_um > 0):
        raise ReportError(f"{path}: slide_pixel_size_um must be a positive number")
    record.slide_shape = tuple(record.slide_shape)
    return record
