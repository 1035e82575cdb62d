"""How far a slide is from what a model was trained on, in numbers and in plain words.

Four parts, each compared with the nearest stain group of the checkpoint's description
(:mod:`training.domain.description`):

- ``stain``: the angle between the slide's Macenko stain vectors and the training group's
  (the larger of the haematoxylin and eosin angles), in units of the group's own spread (the
  RMS angle of its single images to the group's vectors): about 1 for a typical training image;
- ``od``: the Mahalanobis distance of the slide's mean optical density under the training
  group's pixel covariance, in units of the group's own spread (the RMS of its single images'
  distances): about 1 for a typical training image;
- ``pixel_size``: how many factors of 2 the slide's pixel size lies outside the training
  images' range (0 inside it);
- ``features``: the model's own view. Each tile's pooled deepest encoder features as z-scores
  against the training tiles' per-channel mean and std; the root mean square over channels
  (about 1 for a typical training tile); the median over the slide's tiles.

Each part is divided by its "far" threshold (:data:`FAR`); the overall distance is the largest
of these ratios, so 1 is the edge of what the model was trained on and ``far`` means above 1.
The thresholds come from ``benchmarks/domain_check.py`` (docs/benchmarks.md): each is the 95th
percentile of its part over 72 unseen test images of the members' own kinds (real kidney through
the kidney member, real colon through a colon member, HPA and HuBMAP phantoms of the other
organs through the general members), rounded up, so about 1 in 20 such images is called far.
The pixel size's is a rule instead (a factor of 2 outside the training range): every such test
image lies at its training pixel size, so the data cannot place it.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from training.domain.description import (
    encoder_features,
    od_distance,
    sample_tiles,
    stain_angle,
    stain_statistics,
)

log = logging.getLogger(__name__)

# The "far" thresholds: 95th percentiles 1.275 (features), 1.235 (stain), 1.477 (od) over the
# in-domain test images (see the module docstring); pixel size in factors of 2
FAR = {"features": 1.3, "stain": 1.25, "od": 1.5, "pixel_size": 1.0}
CHECK_TILES = 12  # tiles of a slide whose features the check computes, when no run recorded
STAIN_TILES = 4  # tiles of a slide whose stains the check estimates after a run
ADVICE = "review the result, or adapt the model"


@dataclass
class SlideSample:
    """Tiles of a slide at a model's scale and tile size, the slide's pixel size, and any
    encoder features a segmentation run already computed (by member, see :class:`FeatureTap`).
    """

    tiles: np.ndarray  # (n, T, T, 3) uint8
    pixel_size_um: float
    features: dict[int, np.ndarray] = field(default_factory=dict)  # id(member.model) -> (n, C)

    @functools.cached_property
    def stains(self) -> dict[str, Any] | None:
        """The sample's stain statistics (None: too little stained tissue)."""
        return stain_statistics(self.tiles)

    def features_of(self, member: Any) -> np.ndarray:
        """``member``'s pooled deepest encoder features of the slide: those its run recorded,
        else computed on the sample's tiles."""
        recorded = self.features.get(id(member.model))
        if recorded is not None and len(recorded):
            return recorded
        return encoder_features(member.model, member.meta, self.tiles)


class FeatureTap:
    """Records, while a segmentation runs, each member's deepest encoder features of every
    tile (globally pooled), so the domain check needs no second pass through the models.

    ``with FeatureTap(members) as tap: run(...)``; then ``tap.features`` (by ``id(model)``).
    At most about ``limit`` tiles a member are kept, spread over the whole slide: past it, every
    other batch recorded is dropped and only every second batch after is recorded."""

    def __init__(self, members: Sequence[Any], limit: int = 512) -> None:
        self.members, self.limit = list(members), limit
        self.features: dict[int, np.ndarray] = {}
        self._parts: dict[int, list[np.ndarray]] = {}
        self._seen: dict[int, int] = {}  # batches the model ran, recorded or not
        self._stride: dict[int, int] = {}
        self._lock = threading.Lock()  # the engine runs batches on several threads
        self._handles: list[Any] = []

    def __enter__(self) -> FeatureTap:
        for member in self.members:
            if not (member.meta or {}).get("domain") or not hasattr(member.model, "encoder"):
                continue  # nothing to compare with (an undescribed or foreign model): not checked
            key = id(member.model)
            self._parts[key], self._seen[key], self._stride[key] = [], 0, 1
            hook = functools.partial(self._record, key)
            self._handles.append(member.model.encoder.register_forward_hook(hook))
        return self

    def _record(self, key: int, module: Any, inputs: Any, outputs: Any) -> None:
        with self._lock:
            seen, self._seen[key] = self._seen[key], self._seen[key] + 1
            if seen % self._stride[key]:
                return
        pooled = outputs[-1].detach().float().mean(dim=(2, 3)).cpu().numpy()
        with self._lock:
            parts = self._parts[key]
            parts.append(pooled.astype(np.float64))
            if sum(len(p) for p in parts) > self.limit and len(parts) > 1:
                parts[:] = parts[::2]
                self._stride[key] *= 2

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.features = {key: np.concatenate(p) for key, p in self._parts.items() if p}


@dataclass(frozen=True)
class DomainCheck:
    """The distance of a slide from a model's training data. ``distance`` is None (and ``far``
    False) when the model has no description of its training data ("unknown")."""

    distance: float | None
    parts: dict[str, float] = field(default_factory=dict)  # raw values (see the module)
    far: bool = False
    message: str | None = None
    member: str = ""

    @property
    def known(self) -> bool:
        """Whether the model described its training data, so a distance could be computed."""
        return self.distance is not None

    def line(self, name: str) -> str:
        """One line for a log or a terminal: the distance, near or far, and the warning."""
        if not self.known:
            return f"{name}: domain distance unknown (the model has no description of its data)"
        detail = ", ".join(f"{k} {v:.3g}" for k, v in self.parts.items())
        verdict = f"far: {self.message}" if self.far else "near the model's training data"
        return f"{name}: domain distance {self.distance:.2f} ({detail}); {verdict}"


UNKNOWN = DomainCheck(None)


def domain_distance(description: dict[str, Any], sample: SlideSample, member: Any) -> DomainCheck:
    """The :class:`DomainCheck` of ``sample`` against ``description``, the training data of
    ``member`` (an ensemble member: its model gives the features; its meta their normalisation).
    ``ValueError`` when the description's feature channels do not fit the model."""
    mean = np.asarray(description["features"]["mean"])
    std = np.asarray(description["features"]["std"])
    features = sample.features_of(member)
    if features.shape[1] != len(mean):
        raise ValueError(
            f"{member.name}: its domain description has {len(mean)} feature channels, its "
            f"encoder {features.shape[1]}: the description belongs to another model"
        )
    z = (features - mean) / std
    parts = {"features": float(np.median(np.sqrt((z**2).mean(axis=1))))}
    groups = description["stains"]
    if groups:
        parts["pixel_size"] = min(_octaves_outside(sample.pixel_size_um, g) for g in groups)
        if sample.stains is not None:
            parts["stain"] = min(_stain_distance(sample.stains, g) for g in groups)
            parts["od"] = min(_od_distance(sample.stains, g) for g in groups)
    ratios = {name: value / FAR[name] for name, value in parts.items()}
    distance = max(ratios.values())
    far = distance > 1
    return DomainCheck(
        distance, parts, far, _message(ratios, sample, groups) if far else None, member.name
    )


def check_slide(
    slide: Any,
    members: Sequence[Any],
    features: dict[int, np.ndarray] | None = None,
    scanned_um: float | None = None,
    stain: Any = None,
) -> DomainCheck:
    """The check of ``slide`` (a :class:`training.slides.Slide` with its pixel size) against
    the ``members`` that segment it: the nearest member's (a slide is near when it is near to
    what one of them was trained on). ``features``: what a :class:`FeatureTap` recorded while
    they segmented it (else the features of a few tiles are computed here). ``scanned_um``: the
    pixel size the slide was scanned at, when ``slide`` is a region resampled from it.
    ``stain``: the stain normaliser the run used (the check then sees the tiles the models saw).
    Members without a description are left out (a note in the log); with none, the distance is
    unknown.
    """
    tiles = STAIN_TILES if features else CHECK_TILES
    described = [m for m in members if m.meta.get("domain")]
    missing = [m.name or "model" for m in members if not m.meta.get("domain")]
    if missing:
        log.info(
            "%s: no description of the training data (python -m training.domain describe adds "
            "one); %s",
            ", ".join(missing),
            "the domain distance is unknown" if not described else "checked against the others",
        )
    if not described:
        return UNKNOWN
    samples: dict[tuple[float, int], SlideSample] = {}
    checks = []
    for member in described:
        key = (float(member.meta["pixel_size_um"]), int(member.meta["tile_size"]))
        if key not in samples:
            samples[key] = SlideSample(
                _normalised(sample_tiles(slide, key[0], key[1], tiles), stain),
                float(scanned_um or slide.pixel_size_um),
                dict(features or {}),
            )
        checks.append(domain_distance(member.meta["domain"], samples[key], member))
    return min(checks, key=lambda check: check.distance)


def _normalised(tiles: np.ndarray, stain: Any) -> np.ndarray:
    """``tiles`` as the engine hands them to the models: through the normaliser fixed to the
    slide (estimated on these tiles, as the engine estimates it on a sample of its own)."""
    if stain is None:
        return tiles
    if hasattr(stain, "for_slide"):
        from training.stain import StainError

        # too little stain to estimate: the engine then transforms tile by tile too
        with contextlib.suppress(StainError):
            stain = stain.for_slide(tiles.reshape(-1, tiles.shape[2], 3))
    return np.stack([stain.transform(tile) for tile in tiles])


def _stain_distance(slide: dict[str, Any], group: dict[str, Any]) -> float:
    """The stain angle to the group in units of its images' own spread."""
    return stain_angle(slide, group) / group["stain_spread_deg"]


def _od_distance(slide: dict[str, Any], group: dict[str, Any]) -> float:
    """The optical-density distance to the group in units of its images' own spread."""
    return od_distance(slide, group) / group["od_spread"]


def _octaves_outside(pixel_size_um: float, group: dict[str, Any]) -> float:
    low, high = group["pixel_size_um"]
    return max(0.0, math.log2(low / pixel_size_um), math.log2(pixel_size_um / high))


def _message(ratios: dict[str, float], sample: SlideSample, groups: list[dict]) -> str:
    """The warning in plain words, naming what is unlike the training data."""
    unlike = []
    if ratios.get("stain", 0) > 1 or ratios.get("od", 0) > 1:
        unlike.append("stain")
    if ratios.get("pixel_size", 0) > 1:
        low = min(g["pixel_size_um"][0] for g in groups)
        high = max(g["pixel_size_um"][1] for g in groups)
        unlike.append(
            f"pixel size ({sample.pixel_size_um:g} um; the training images' {low:g} to {high:g})"
        )
    if ratios.get("features", 0) > 1 and not unlike:
        unlike.append("appearance")
    what = " and ".join(unlike)
    verb = "is" if len(unlike) == 1 else "are"
    return f"this slide's {what} {verb} unlike anything the model was trained on: {ADVICE}"
