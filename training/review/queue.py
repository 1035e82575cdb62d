"""The review queue: every object of a segmentation, the most doubtful first."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

ACCEPTED = "accepted"
REJECTED = "rejected"


@dataclass(frozen=True)
class Candidate:
    """One object to review. ``bbox`` is ``(min_row, min_col, max_row, max_col)``, max
    exclusive (skimage's order); ``centroid`` is ``(row, col)``."""

    label: int
    centroid: tuple[float, float]
    bbox: tuple[int, int, int, int]
    area_px: int
    mean_probability: float
    doubt: float


def doubt_score(
    mean_probability: float, area_px: float, threshold: float, min_area_px: float = 0.0
) -> float:
    """How doubtful an object is, in [0, 1]; the larger of two terms:

    - probability: 1 when the object's mean probability equals the threshold, falling linearly
      to 0 at the far end of the range on that side (0 below the threshold, 1 above it), so the
      distance is measured against the room there is: ``threshold`` or ``1 - threshold``;
    - area (only when ``min_area_px > 0``): 1 at or below the minimum area, falling linearly to
      0 at twice the minimum area.
    """
    distance = abs(mean_probability - threshold)
    room = threshold if mean_probability < threshold else 1.0 - threshold
    by_probability = 1.0 - min(distance / room, 1.0) if room > 0 else float(distance == 0)
    by_area = 0.0
    if min_area_px > 0:
        by_area = float(np.clip(2.0 - area_px / min_area_px, 0.0, 1.0))
    return max(by_probability, by_area)


def review_candidates(
    labels: np.ndarray, probability: Any, threshold: float, min_area_px: float = 0.0
) -> list[Candidate]:
    """Every object of ``labels`` as a :class:`Candidate`, sorted most doubtful first (ties by
    label). ``probability`` (numpy or a zarr-like array of the same shape) is read only within
    each object's bounding box. See :func:`doubt_score` for the score."""
    if tuple(labels.shape) != tuple(probability.shape):
        raise ValueError(
            f"labels {labels.shape} and probability {probability.shape} differ in shape"
        )
    candidates = []
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        inside = labels[box] == index
        values = np.asarray(probability[box], dtype=np.float64)[inside]
        mean = float(values.mean())
        if np.isnan(mean):
            raise ValueError(
                f"the probability map has missing values (NaN) under object {index}: its "
                "storage was deleted or never completely written"
            )
        rows, cols = np.nonzero(inside)
        area = len(rows)
        candidates.append(
            Candidate(
                label=index,
                centroid=(float(rows.mean() + box[0].start), float(cols.mean() + box[1].start)),
                bbox=(box[0].start, box[1].start, box[0].stop, box[1].stop),
                area_px=area,
                mean_probability=mean,
                doubt=doubt_score(mean, area, threshold, min_area_px),
            )
        )
    candidates.sort(key=lambda candidate: (-candidate.doubt, candidate.label))
    return candidates


class ReviewQueue:
    """Candidates in review order with a decision ("accepted" or "rejected") per label.

    Deciding never edits labels: on a rejection the caller deletes the object (with
    :func:`training.review.corrections.delete_object`).
    """

    def __init__(self, candidates: Sequence[Candidate]) -> None:
        self.candidates = list(candidates)
        self.decisions: dict[int, str] = {}
        self.position = 0

    def __len__(self) -> int:
        return len(self.candidates)

    @property
    def current(self) -> Candidate | None:
        """The candidate under review (``None`` for an empty queue)."""
        return self.candidates[self.position] if self.candidates else None

    @property
    def undecided(self) -> int:
        """How many candidates have no decision yet."""
        return sum(candidate.label not in self.decisions for candidate in self.candidates)

    def next(self) -> Candidate | None:
        """Move one candidate on (staying at the last) and return it."""
        self.position = min(self.position + 1, max(len(self) - 1, 0))
        return self.current

    def previous(self) -> Candidate | None:
        """Move one candidate back (staying at the first) and return it."""
        self.position = max(self.position - 1, 0)
        return self.current

    def accept(self) -> Candidate | None:
        """Accept the current candidate and move to the next undecided one; return the
        candidate accepted."""
        return self._decide(ACCEPTED)

    def reject(self) -> Candidate | None:
        """Reject the current candidate and move to the next undecided one; return the
        candidate rejected (the caller deletes its object)."""
        return self._decide(REJECTED)

    def rejected(self) -> list[Candidate]:
        """The candidates rejected so far, in queue order."""
        return [c for c in self.candidates if self.decisions.get(c.label) == REJECTED]

    def undecide(self, label: int) -> None:
        """Forget the decision on ``label`` (its object is back: the rejection was undone)."""
        self.decisions.pop(label, None)

    def _decide(self, decision: str) -> Candidate | None:
        decided = self.current
        if decided is None:
            return None
        self.decisions[decided.label] = decision
        # the next undecided one after this, wrapping round to those skipped earlier
        count = len(self)
        for step in range(1, count):
            index = (self.position + step) % count
            if self.candidates[index].label not in self.decisions:
                self.position = index
                break
        return decided
