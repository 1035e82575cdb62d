"""The Qt-free core of the review and correction tools (edits, corrections, review queue, the
slide's mask store). Imports neither napari, Qt nor torch."""

from training.review.edits import EditSummary, changed_pixels, edit_summary, rederive

__all__ = ["EditSummary", "changed_pixels", "edit_summary", "rederive"]
