"""Which member of an ensemble "Train on corrections" starts from: the one nearest the corrections.

An ensemble cannot be fine-tuned as a whole, so the loop starts from one member
(:func:`training.retrain.start_checkpoint`: a specialist for the corrections' organ, else the
heaviest member). When the ensemble has no specialist for the organ (a new organ, or a lab its
specialists never saw), :func:`nearest_member` asks the domain check instead (``training.domain``):
each member's distance from the corrections' images (the median over the images of
:func:`training.domain.check_slide`), the member with the smallest first. Equal distances
(members trained on the same data share their stain and optical-density parts) are settled by
the encoder-feature part: how familiar the member's own encoder is with these images. Members
without a description of their training data come after the described ones, in the old order.
This imports torch: the widget calls it off the Qt thread or not at all.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["MemberDistance", "member_distances", "nearest_member"]

IMAGES = 10  # correction images the check reads (spread over the folder); seconds per member


@dataclass(frozen=True)
class MemberDistance:
    """A member's median domain distance from the corrections (None: not described) and the
    median of its encoder-feature part."""

    checkpoint: Path
    distance: float | None
    features: float | None

    @property
    def rank(self) -> tuple[float, float]:
        """Nearest first; undescribed members last."""
        if self.distance is None:
            return (float("inf"), float("inf"))
        return (round(self.distance, 6), self.features if self.features is not None else 0.0)


def member_distances(
    checkpoints: Sequence[Path], folders: Sequence[Path], images: int = IMAGES
) -> list[MemberDistance]:
    """Each checkpoint's :class:`MemberDistance` from up to ``images`` images of the dataset
    ``folders`` (every k-th image, in the catalogue's order). ``ValueError`` when the folders
    hold no image."""
    from training.data.records import DataSpec, load_records
    from training.domain import check_slide
    from training.models.checkpoint import load_checkpoint
    from training.models.ensemble import Member
    from training.slides import open_slide

    records = load_records([DataSpec(Path(folder)) for folder in folders])
    if not records:
        raise ValueError("the corrections hold no image to compare the members with")
    step = max(1, len(records) // images)
    records = records[::step][:images]
    found = []
    for checkpoint in map(Path, checkpoints):
        model, meta = load_checkpoint(checkpoint)
        member = Member(model, meta, name=checkpoint.name)
        if not meta.get("domain"):
            found.append(MemberDistance(checkpoint, None, None))
            continue
        checks = []
        for record in records:
            with open_slide(record.image, record.pixel_size_um) as slide:
                checks.append(check_slide(slide, [member]))
        found.append(
            MemberDistance(
                checkpoint,
                statistics.median(c.distance for c in checks),
                statistics.median(c.parts.get("features", 0.0) for c in checks),
            )
        )
    return found


def nearest_member(model: Path, folders: Sequence[Path], organ: str | None) -> tuple[Path, str]:
    """The checkpoint to fine-tune for ensemble manifest ``model`` on the corrections in
    ``folders`` (dataset folders), and a note saying why. A specialist for ``organ`` wins as in
    :func:`training.retrain.start_checkpoint`; otherwise the member nearest the corrections'
    images. A checkpoint is itself. ``ValueError`` as ``start_checkpoint``'s."""
    from training.models.ensemble import is_manifest, read_manifest
    from training.retrain import start_checkpoint

    model = Path(model)
    chosen, note = start_checkpoint(model, organ)
    if not is_manifest(model):
        return chosen, note
    members = [m for m in read_manifest(model)["members"] if isinstance(m, dict)]
    if organ and any(organ in (m.get("organs") or ()) for m in members):
        return chosen, note  # a specialist: trained on the organ itself
    paths = [(model.parent / m["checkpoint"]).resolve() for m in members if "checkpoint" in m]
    ranked = sorted(member_distances(paths, folders), key=lambda d: d.rank)
    best = ranked[0]
    if best.distance is None:
        return chosen, note  # no member describes its data: the old rule
    table = ", ".join(
        f"{d.checkpoint.name} {'?' if d.distance is None else f'{d.distance:.2f}'}" for d in ranked
    )
    return best.checkpoint, (
        f"{model.name} is an ensemble, which cannot be fine-tuned as a whole, and has no member "
        f"for {organ or 'this organ'}: {best.checkpoint.name}, the member nearest the "
        f"corrections' images, is the starting point (domain distances: {table})"
    )
