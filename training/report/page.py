"""The report as HTML: one self-contained page per slide (every picture embedded as a base64 PNG,
the style inline, no script) and the run folder's index page."""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from training.report.figures import png_bytes

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 24px;
       color: #1d1d1f; background: #ffffff; max-width: 1500px; }
h1 { font-size: 26px; margin: 0 0 4px 0; }
h2 { font-size: 19px; margin: 22px 0 8px 0; border-bottom: 1px solid #ddd; padding-bottom: 3px; }
.sub { color: #555; margin: 0 0 14px 0; font-size: 14px; }
.row { display: flex; gap: 24px; align-items: flex-start; flex-wrap: wrap; }
.thumb { flex: 0 1 760px; min-width: 320px; }
.side { flex: 1 1 380px; max-width: 520px; }
.side img { width: 100%; }
.thumb img { width: 100%; border: 1px solid #ccc; display: block; }
table { border-collapse: collapse; font-size: 14px; }
td, th { padding: 3px 10px 3px 0; text-align: left; vertical-align: top; }
th { color: #555; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.warn { background: #fdecea; border: 1px solid #e0685c; color: #7a1d13; padding: 8px 12px;
        border-radius: 4px; margin: 10px 0; }
.ok { background: #eef7ee; border: 1px solid #8cc68c; color: #1e5a1e; padding: 8px 12px;
      border-radius: 4px; margin: 10px 0; }
.unknown { background: #f3f3f3; border: 1px solid #bbb; color: #444; padding: 8px 12px;
           border-radius: 4px; margin: 10px 0; }
.note { color: #666; font-size: 13px; }
.crops { display: flex; gap: 12px; flex-wrap: wrap; }
.crops figure { margin: 0; font-size: 13px; }
.crops figure { width: 226px; }
.crops img { width: 224px; height: 224px; border: 1px solid #ccc; display: block; }
code { font-size: 13px; }
img.mini { max-width: 240px; max-height: 180px; border: 1px solid #ccc; display: block; }
"""


IRREGULAR = {"glomerulus": "glomeruli", "alveolus": "alveoli", "white pulp": "white pulp regions"}


def plural(ftu: str) -> str:
    """``glomerulus`` -> ``glomeruli``, ``crypt`` -> ``crypts``."""
    return IRREGULAR.get(ftu, f"{ftu}s")


@dataclass
class Crop:
    """An object's crop and what its caption says."""

    image: np.ndarray  # RGB uint8
    label: int
    area_um2: float
    probability: float
    touches_edge: bool

    def caption(self, ftu: str) -> str:
        """``glomerulus 3 · 14,200 µm² · p 0.93`` (and a note if cut by the region's edge)."""
        edge = " · at the edge" if self.touches_edge else ""
        nbsp = "\u00a0"  # keeps each figure with its unit when the caption wraps
        return (
            f"{ftu}{nbsp}{self.label} · {self.area_um2:,.0f}{nbsp}µm² · "
            f"p{nbsp}{self.probability:.2f}{edge}"
        )


def data_uri(png: bytes) -> str:
    """A PNG as a ``data:`` URI, so the page needs no file beside it."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def number(value: Any, digits: int = 3, unit: str = "") -> str:
    """A figure as the report prints it; NaN or None as "unknown"."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "unknown"
    if isinstance(value, bool):
        return "yes" if value else "no"
    value = float(value)
    if value.is_integer():
        text = f"{int(value):,}"
    elif abs(value) >= 100:
        text = f"{value:,.0f}"
    else:
        text = f"{value:.{digits}g}"
    return f"{text} {unit}".rstrip()


def summary_items(summary: dict[str, Any], ftu: str) -> list[tuple[str, str]]:
    """The slide summary as (name, value) lines."""
    fraction = summary.get("ftu_area_fraction")
    percent = fraction * 100 if isinstance(fraction, int | float) else fraction
    return [
        (plural(ftu), number(summary.get("ftu_count"))),
        (f"{ftu} area", number(summary.get("ftu_area_mm2"), 3, "mm²")),
        ("tissue area", number(summary.get("tissue_area_mm2"), 3, "mm²")),
        (f"{plural(ftu)} per mm² of tissue", number(summary.get("ftus_per_mm2"), 3)),
        (f"{ftu} area fraction of tissue", number(percent, 3, "%")),
        (
            "area median (10th–90th percentile)",
            f"{number(summary.get('area_um2_median'), 3, 'µm²')} "
            f"({number(summary.get('area_um2_p10'), 3)}–{number(summary.get('area_um2_p90'), 3)})",
        ),
        ("touching the analysed region's edge", number(summary.get("edge_objects"))),
    ]


def _table(items: Sequence[tuple[str, str]]) -> str:
    rows = "".join(
        f"<tr><th>{html.escape(name)}</th><td>{html.escape(value)}</td></tr>"
        for name, value in items
    )
    return f"<table>{rows}</table>"


def _crops(crops: Sequence[Crop], ftu: str, empty: str) -> str:
    if not crops:
        return f'<p class="note">{html.escape(empty)}</p>'
    figures = "".join(
        f'<figure><img alt="{html.escape(c.caption(ftu))}" src="{data_uri(png_bytes(c.image))}">'
        f"<figcaption>{html.escape(c.caption(ftu))}</figcaption></figure>"
        for c in crops
    )
    return f'<div class="crops">{figures}</div>'


def domain_block(domain: dict[str, Any] | None) -> str:
    """The domain check's line: a warning box when the slide is far from the training data."""
    if not domain:
        return '<p class="note">Domain check: not run.</p>'
    kind = (
        "warn" if domain.get("far") else "ok" if domain.get("distance") is not None else "unknown"
    )
    prefix = "Warning: " if domain.get("far") else ""
    return f'<div class="{kind}">{prefix}{html.escape(domain["line"])}</div>'


@dataclass
class SlidePage:
    """What one slide's page shows, each part ready (pictures as PNG bytes)."""

    title: str
    subtitle: str
    ftu: str
    thumbnail: np.ndarray  # RGB uint8
    histogram: bytes  # PNG
    summary: list[tuple[str, str]]
    most: list[Crop]
    least: list[Crop]
    crop_note: str
    domain: dict[str, Any] | None
    model: list[tuple[str, str]]
    settings: list[tuple[str, str]]

    def html(self) -> str:
        """The page, self-contained."""
        esc = html.escape
        return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>{esc(self.title)}</title><style>{STYLE}</style></head>
<body>
<h1>{esc(self.title)}</h1>
<p class="sub">{esc(self.subtitle)}</p>
{domain_block(self.domain)}
<div class="row">
<div class="thumb"><img alt="slide thumbnail with {esc(self.ftu)} outlines"
 src="{data_uri(png_bytes(self.thumbnail))}"></div>
<div class="side"><h2>Summary</h2>{_table(self.summary)}
<h2>Sizes</h2><img alt="{esc(self.ftu)} size histogram" src="{data_uri(self.histogram)}"></div>
</div>
<h2>Most confident {esc(plural(self.ftu))}</h2>
{_crops(self.most, self.ftu, self.crop_note)}
<h2>Least confident {esc(plural(self.ftu))}</h2>
{_crops(self.least, self.ftu, self.crop_note)}
<p class="note">Confidence: the mean FTU probability inside the object.</p>
<div class="row"><div><h2>Model</h2>{_table(self.model)}</div>
<div><h2>Settings</h2>{_table(self.settings)}</div></div>
</body></html>
"""


def index_page(title: str, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """The run folder's index: one summary row per slide, its id linking to its page, with a
    small thumbnail (``row["thumbnail"]``, RGB uint8, when the slide could be read)."""
    esc = html.escape
    head = "<th></th>" + "".join(f"<th>{esc(c)}</th>" for c in columns)
    body = []
    for row in rows:
        link = f'<a href="{esc(row["href"])}">{esc(row["id"])}</a>' if row["href"] else None
        thumbnail = row.get("thumbnail")
        picture = (
            f'<img class="mini" alt="{esc(row["id"])}" src="{data_uri(png_bytes(thumbnail))}">'
            if thumbnail is not None
            else ""
        )
        cells = [f"<td>{picture}</td>", f"<td>{link or esc(row['id'])}</td>"]
        cells += [f'<td class="num">{esc(row[c])}</td>' for c in columns[1:-1]]
        cells.append(f"<td>{esc(row[columns[-1]])}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>{esc(title)}</title><style>{STYLE}</style></head>
<body><h1>{esc(title)}</h1>
<table><tr>{head}</tr>{"".join(body)}</table>
</body></html>
"""
