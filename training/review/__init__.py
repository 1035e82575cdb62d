"""The Qt-free core of the review and correction tools (edits, corrections, review queue, the
slide's mask store). Imports neither napari, Qt nor torch."""

from training.review.corrections import (
    Change,
    apply_change,
    delete_object,
    fill_holes,
    label_at,
    merge_objects,
    relabel,
    remove_small,
)
from training.review.edits import EditSummary, changed_pixels, edit_summary, rederive
from training.review.queue import Candidate, ReviewQueue, doubt_score, review_candidates
from training.review.store import (
    MaskStore,
    MaskStoreDamaged,
    MaskStoreError,
    set_aside,
    slide_identity,
    store_location,
)

__all__ = [
    "Candidate",
    "Change",
    "EditSummary",
    "MaskStore",
    "MaskStoreDamaged",
    "MaskStoreError",
    "ReviewQueue",
    "apply_change",
    "changed_pixels",
    "delete_object",
    "doubt_score",
    "edit_summary",
    "fill_holes",
    "label_at",
    "merge_objects",
    "rederive",
    "relabel",
    "remove_small",
    "review_candidates",
    "set_aside",
    "slide_identity",
    "store_location",
]
