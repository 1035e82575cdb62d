"""Measurements of segmented FTUs: per-object tables and per-slide summaries (Qt-free, no torch
at import). See :mod:`training.measure.objects`, :mod:`training.measure.summary`,
:mod:`training.measure.slide` (whole slides, in bands) and :mod:`training.measure.io`."""

from training.measure.objects import OBJECT_COLUMNS, measure_objects
from training.measure.summary import SUMMARY_COLUMNS, summarize

__all__ = ["OBJECT_COLUMNS", "SUMMARY_COLUMNS", "measure_objects", "summarize"]
