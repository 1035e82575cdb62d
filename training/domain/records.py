"""Descriptions of dataset folders' images, and written into a checkpoint file."""

from __future__ import annotations

import contextlib
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from training.domain.description import MAX_GROUPS, MAX_TILES, describe_domain


def describe_records(
    records: Sequence[Any], model: Any, meta: dict[str, Any], max_tiles: int = MAX_TILES
) -> dict[str, Any]:
    """The description of training ``records`` (:class:`training.data.records.Record`) for
    ``model``: one stain group per dataset folder and data source."""
    from training.slides import open_slide

    keys = [(r.folder, r.data_source) for r in records]
    counts = Counter(keys)
    if len(counts) > MAX_GROUPS:  # the smallest groups share one (their stains pooled)
        kept = {key for key, _ in counts.most_common(MAX_GROUPS - 1)}
        keys = [key if key in kept else "others" for key in keys]
    with contextlib.ExitStack() as stack:
        slides = [stack.enter_context(open_slide(r.image, r.pixel_size_um)) for r in records]
        return describe_domain(slides, model, meta, keys, max_tiles)


def describe_checkpoint(
    path: str | os.PathLike,
    records: Sequence[Any],
    out: str | os.PathLike | None = None,
    max_tiles: int = MAX_TILES,
) -> dict[str, Any]:
    """Describe the training ``records`` for the checkpoint at ``path`` and write the
    checkpoint, everything else in it unchanged, with that description as ``meta["domain"]``
    to ``out`` (default: ``path`` itself), atomically. Returns the description."""
    import torch

    from training.atomic import atomic_path
    from training.models.checkpoint import check_meta, load_checkpoint, read_checkpoint

    path = Path(path)
    payload = read_checkpoint(path)
    model, meta = load_checkpoint(path)
    description = describe_records(records, model, meta, max_tiles)
    payload["meta"]["domain"] = description
    check_meta({**meta, "domain": description}, path.name)
    with atomic_path(Path(out) if out is not None else path) as tmp:
        torch.save(payload, tmp)
    return description
