"""Run albumentations transforms on the caller's random generator, built once per thread."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable

import albumentations as A
import numpy as np

_local = threading.local()
_MAX_CACHED = 64


def cached(build: Callable[..., A.Compose], *args: object) -> A.Compose:
    """``build(*args)``, built once per thread: building a Compose costs about as much as applying
    it, and a Compose carries its random state, so threads must not share one."""
    cache: dict[tuple[object, ...], A.Compose] | None = getattr(_local, "cache", None)
    if cache is None:
        cache = _local.cache = {}
    key = (build, *args)
    transform = cache.get(key)
    if transform is None:
        if len(cache) >= _MAX_CACHED:  # strengths that change every call: do not grow forever
            cache.clear()
        transform = cache[key] = build(*args)
    return transform


def apply(
    transform: A.Compose, image: np.ndarray, mask: np.ndarray | None, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray | None]:
    """Apply ``transform`` with its random draws taken from ``rng`` (reproducible for a seed)."""
    # Compose(seed=s) gives every transform the same seed in albumentations 2.0.8, so a horizontal
    # and a vertical flip at p=0.5 fire together or not at all; one shared generator keeps the
    # transforms' draws independent.
    transform.set_random_state(rng, random.Random(int(rng.integers(2**63))))
    if mask is None:
        return transform(image=image)["image"], None
    out = transform(image=image, mask=mask)
    return out["image"], out["mask"]
