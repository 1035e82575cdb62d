"""Ensembles: a manifest (JSON or YAML) listing member checkpoints with weights and organs.

```yaml
members:
  - checkpoint: swin_tiny.pt          # relative to the manifest
    weight: 1.0
  - checkpoint: lung_specialist.pt
    weight: 2.0
    organs: [lung]                     # used for lung only, ignored elsewhere
```
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from training.data.catalog import ORGANS


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
    """Members whose probabilities are averaged with their weights at a common scale."""

    members: list[Member] = field(default_factory=list)

    def for_organ(self, organ: str) -> list[Member]:
        """Members that apply to ``organ``; an error if none does."""
        chosen = [m for m in self.members if m.applies_to(organ)]
        if not chosen:
            raise ValueError(f"no ensemble member applies to organ {organ!r}")
        return chosen

    def threshold(self, organ: str) -> float:
        """The weighted mean of the members' thresholds for ``organ``."""
        members = self.for_organ(organ)
        total = sum(m.weight for m in members)
        return sum(m.weight * float(m.meta["thresholds"].get(organ, 0.5)) for m in members) / total


def load_ensemble(path: str | os.PathLike, device: str = "cpu") -> Ensemble:
    """Load a manifest (``.json``/``.yaml``) or a single checkpoint as an ensemble."""
    from training.models.checkpoint import load_checkpoint

    path = Path(path)
    if path.suffix.lower() not in (".json", ".yaml", ".yml"):
        model, meta = load_checkpoint(path, device)
        return Ensemble([Member(model, meta, name=path.name)])
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
    members = []
    for index, entry in enumerate(entries, start=1):
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
    return Ensemble(members)
