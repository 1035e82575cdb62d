"""Ensembles: a manifest (JSON or YAML) listing member checkpoints with weights and organs.

```yaml
members:
  - checkpoint: swin_tiny.pt          # relative to the manifest
    weight: 1.0
  - checkpoint: lung_specialist.pt
    weight: 2.0
    organs: [lung]                     # used for lung only, ignored elsewhere
thresholds: {kidney: 0.45}             # optional: calibrated for the ensemble as a whole
min_area_um2: {kidney: 4000}           # optional: objects under this many um² are dropped
refiner: bpr.pt                        # optional (BPR): a boundary refiner, used by default
refine: {patch_px: 64, per_object: 8}  # optional: its options (training.refine.RefineOptions)
```

An organ's threshold and minimum object area are the manifest's top-level ``thresholds`` and
``min_area_um2`` where they name it (``python -m training.calibrate --write`` tunes and writes
them), else the weighted mean of the applicable members' own (a member without a minimum area
counts as 0). Other top-level keys (``name``, ``card``) are kept but not used.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from training.atomic import atomic_path
from training.data.catalog import ORGANS

MANIFEST_SUFFIXES = (".json", ".yaml", ".yml")


@dataclass
class Member:
    """One model of an ensemble with its metadata, weight and (for a specialist) organs."""

    model: nn.Module
    meta: dict[str, Any]
    weight: float = 1.0
    organs: tuple[str, ...] | None = None
    name: str = ""

    def applies_to(self, organ: str) -> bool:
        """Whether this member takes part in segmenting ``organ``."""
        return self.organs is None or organ in self.organs


@dataclass
class Ensemble:
    """Members whose probabilities are averaged with their weights at a common scale, and the
    ensemble's own calibrated thresholds and minimum areas (um²) per organ, which take
    precedence over the members'."""

    members: list[Member] = field(default_factory=list)
    thresholds: dict[str, float] = field(default_factory=dict)
    min_areas_um2: dict[str, float] = field(default_factory=dict)
    refiner: Any = None  # BPR: a training.refine.Refiner the engine runs unless told not to
    refiner_options: Any = None  # the manifest's ``refine`` options (a RefineOptions)

    def for_organ(self, organ: str) -> list[Member]:
        """Members that apply to ``organ``; an error if none does."""
        chosen = [m for m in self.members if m.applies_to(organ)]
        if not chosen:
            raise ValueError(f"no ensemble member applies to organ {organ!r}")
        return chosen

    def threshold(self, organ: str) -> float:
        """The ensemble's threshold for ``organ``, else the weighted mean of the members'."""
        if organ in self.thresholds:
            return float(self.thresholds[organ])
        return self._weighted(organ, lambda meta: meta["thresholds"].get(organ, 0.5))

    def min_area_um2(self, organ: str) -> float:
        """The ensemble's minimum object area (um²) for ``organ``, else the weighted mean of the
        members' (0 for a member without one)."""
        if organ in self.min_areas_um2:
            return float(self.min_areas_um2[organ])
        return self._weighted(organ, lambda meta: meta.get("min_area_um2", {}).get(organ, 0.0))

    def _weighted(self, organ: str, value: Any) -> float:
        members = self.for_organ(organ)
        total = sum(m.weight for m in members)
        return sum(m.weight * float(value(m.meta)) for m in members) / total


def load_ensemble(path: str | os.PathLike, device: str = "cpu") -> Ensemble:
    """Load a manifest (``.json``/``.yaml``) or a single checkpoint as an ensemble."""
    from training.models.checkpoint import load_checkpoint

    path = Path(path)
    if not is_manifest(path):
        model, meta = load_checkpoint(path, device)
        return Ensemble([Member(model, meta, name=path.name)])
    manifest = read_manifest(path)
    members = []
    for index, entry in enumerate(manifest["members"], start=1):
        where = f"{path.name}: member {index}"
        if not isinstance(entry, dict) or "checkpoint" not in entry:
            raise ValueError(f"{where} has no 'checkpoint'")
        weight = float(entry.get("weight", 1.0))
        if not weight > 0:
            raise ValueError(f"{where}: weight must be positive; got {weight}")
        organs = entry.get("organs")
        if organs is not None:
            organs = tuple(organs)
            unknown = set(organs) - set(ORGANS)
            if unknown:
                raise ValueError(f"{where}: unknown organ(s) {sorted(unknown)}")
        checkpoint = (path.parent / entry["checkpoint"]).resolve()
        model, meta = load_checkpoint(checkpoint, device)
        members.append(Member(model, meta, weight, organs, name=checkpoint.name))
    ensemble = Ensemble(
        members,
        calibration(manifest, "thresholds", path.name),
        calibration(manifest, "min_area_um2", path.name),
    )
    if "refiner" in manifest or "refine" in manifest:  # BPR
        from training.refine.stage import RefineOptions, Refiner

        ensemble.refiner_options = RefineOptions.from_dict(manifest.get("refine"), path.name)
        if "refiner" in manifest:
            if not isinstance(manifest["refiner"], str) or not manifest["refiner"]:
                raise ValueError(f"{path.name}: 'refiner' must name a refiner checkpoint file")
            refiner = (path.parent / manifest["refiner"]).resolve()
            ensemble.refiner = Refiner.load(refiner, device, ensemble.refiner_options)
    return ensemble


def is_manifest(path: str | os.PathLike) -> bool:
    """Whether ``path`` names an ensemble manifest (by its suffix) rather than a checkpoint."""
    return Path(path).suffix.lower() in MANIFEST_SUFFIXES


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """A manifest's contents, with a non-empty ``members`` list and its calibrated values
    checked; ``ValueError`` naming the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such ensemble manifest")
    text = path.read_text()
    try:
        if path.suffix.lower() == ".json":
            manifest = json.loads(text)
        else:
            import yaml

            manifest = yaml.safe_load(text)
    except Exception as exc:
        raise ValueError(f"{path.name}: not a readable manifest ({exc})") from None
    entries = manifest.get("members") if isinstance(manifest, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{path.name}: a manifest needs a non-empty 'members' list")
    for key in ("thresholds", "min_area_um2"):
        calibration(manifest, key, path.name)
    return manifest


def update_manifest(path: str | os.PathLike, updates: dict[str, Any]) -> None:
    """Set top-level keys of the manifest at ``path`` to ``updates`` (atomically).

    A YAML manifest keeps its text, comments included, outside the keys replaced (comments
    inside them go with the old values); new keys go at the end. A JSON one is rewritten.
    ``ValueError`` if the file is not a manifest.
    """
    path = Path(path)
    manifest = read_manifest(path)
    manifest.update(updates)
    if path.suffix.lower() == ".json":
        text = json.dumps(manifest, indent=2) + "\n"
    else:
        import yaml

        text = _replace_yaml_keys(path.read_text(), updates)
        if yaml.safe_load(text) != manifest:  # an unusual layout: the values come first
            text = yaml.safe_dump(manifest, sort_keys=False)
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _replace_yaml_keys(text: str, updates: dict[str, Any]) -> str:
    """``text`` (a YAML mapping) with the top-level entries of ``updates`` written anew in place;
    the lines after an entry that hold only comments stay (they belong to what follows)."""
    import yaml

    spans = {}
    for key, value in yaml.compose(text).value:
        if key.value in updates:
            end = value.end_mark.index
            tail = text[key.start_mark.index : end].splitlines(keepends=True)
            while len(tail) > 1 and tail[-1].strip()[:1] in ("", "#"):
                end -= len(tail.pop())
            spans[key.value] = (key.start_mark.index, end)
    for key, (start, end) in sorted(spans.items(), key=lambda item: -item[1][0]):
        block = yaml.safe_dump({key: updates[key]}, sort_keys=False)
        text = (
            text[:start]
            + block.rstrip("\n")
            + ("\n" if text[end - 1 : end] == "\n" else "")
            + text[end:]
        )
    added = {k: v for k, v in updates.items() if k not in spans}
    if added:
        text = text.rstrip("\n") + "\n" + yaml.safe_dump(added, sort_keys=False)
    return text


def calibration(manifest: dict[str, Any], key: str, where: str) -> dict[str, float]:
    """A manifest's top-level ``thresholds`` (numbers in [0, 1]) or ``min_area_um2`` (numbers
    >= 0, um²) by organ, checked; ``{}`` when absent."""
    from training.models.checkpoint import ORGAN_NUMBER_BOUNDS, organ_numbers

    values = manifest.get(key)
    if values is None:
        return {}
    try:
        return organ_numbers(values, *ORGAN_NUMBER_BOUNDS[key])
    except ValueError as exc:
        raise ValueError(f"{where}: '{key}' {exc}") from None
