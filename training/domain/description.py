"""A checkpoint's compact description of its training data, and the statistics it is made of.

A description (``meta["domain"]`` of a checkpoint) holds plain numbers only:

- ``stains``: up to :data:`MAX_GROUPS` stain groups (one per dataset folder and data source),
  each with its Macenko stain vectors (2x3 optical-density rows: haematoxylin, eosin), the mean
  and covariance of the optical density of its tissue pixels, and its images' pixel sizes;
- ``features``: the per-channel mean and standard deviation of the model's deepest encoder
  feature map, globally pooled, over tiles of the training images at the model's pixel size;
- how many images and tiles it was made from.

The same sampling (:func:`sample_tiles`) and statistics serve the training images and a slide
to check, so the two are compared like with like. :func:`check_description` refuses anything
else: a checkpoint's description is data, never code, and a tampered one is refused in a line.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np

VERSION = 1
MAX_GROUPS = 8
MAX_CHANNELS = 4096
MAX_TILES = 64  # tiles of training images a description is made from
TISSUE_OD = 0.15  # summed optical density above which a pixel is tissue (as the engine's mask)
MIN_TISSUE_PIXELS = 256
STAIN_PIXELS = 1 << 18  # pixels the stain statistics are estimated from
FEATURE_BATCH = 8
_GROUP_KEYS = {
    "stain_vectors",
    "stain_spread_deg",
    "od_mean",
    "od_cov",
    "od_spread",
    "pixel_size_um",
    "images",
}
MIN_SPREAD_DEG = 2.0
MIN_OD_SPREAD = 0.1
_KEYS = {"version", "images", "tiles", "stains", "features"}


class DescriptionError(ValueError):
    """A domain description that is not plain numbers in the expected shapes."""


def sample_tiles(slide: Any, pixel_size_um: float, tile: int, count: int) -> np.ndarray:
    """Up to ``count`` tiles of ``tile`` px at ``pixel_size_um`` spread evenly over the tissue of
    ``slide`` (a :class:`training.slides.Slide`), as the engine cuts them: ``(n, T, T, 3)``
    uint8. Tiles of glass are left out unless the slide has no tissue at all."""
    from training.inference.source import TileSource
    from training.inference.tiling import plan_tiles
    from training.inference.tissue import slide_tissue, tile_has_tissue

    mask, scale = slide_tissue(slide)
    height, width = slide.shape[:2]

    def touches(y: float, x: float, h: float, w: float) -> bool:
        return tile_has_tissue(mask, scale, y, x, h, w)

    to_model = slide.pixel_size_um / pixel_size_um
    plan = plan_tiles((height, width), to_model, tile, 0.0, pixel_size_um, touches)
    kept = plan.tiles() or plan_tiles((height, width), to_model, tile, 0.0, pixel_size_um).tiles()
    picks = np.unique(np.linspace(0, len(kept) - 1, min(count, len(kept))).round().astype(int))
    source = TileSource(slide, pixel_size_um, tile, workers=0)
    return np.concatenate([source.read(kept[i][0], [kept[i][1]]) for i in picks])


def optical_density(tiles: np.ndarray) -> np.ndarray:
    """``(pixels, 3)`` optical density of the tissue pixels of RGB uint8 ``tiles``."""
    rgb = np.maximum(tiles.reshape(-1, 3).astype(np.float32), 1.0)
    od = -np.log(rgb / 255.0)
    return od[od.sum(axis=1) > TISSUE_OD]


def stain_statistics(tiles: np.ndarray) -> dict[str, Any] | None:
    """Macenko stain vectors and optical-density mean and covariance of ``tiles``' tissue; None
    when they hold too little stained tissue to estimate stains."""
    from training.stain import StainError, StainNormalizer

    pixels = tiles.reshape(-1, 3)
    # an even subsample: the statistics of a few hundred thousand pixels are those of all
    pixels = pixels[:: max(1, len(pixels) // STAIN_PIXELS)]
    pixels = pixels[: min(len(pixels), STAIN_PIXELS) // 256 * 256]
    od = optical_density(pixels)
    if len(od) < MIN_TISSUE_PIXELS:
        return None
    try:  # one image of the sampled pixels, 256 a row
        fitted = StainNormalizer("macenko").fit(np.ascontiguousarray(pixels.reshape(-1, 256, 3)))
    except StainError:
        return None
    vectors = np.asarray(fitted.target["matrix"], np.float64)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return {
        "stain_vectors": vectors.tolist(),
        "od_mean": od.mean(axis=0).astype(np.float64).tolist(),
        "od_cov": np.cov(od.T.astype(np.float64)).tolist(),
    }


def encoder_features(model: Any, meta: dict[str, Any], tiles: np.ndarray) -> np.ndarray:
    """``(n, C)``: the deepest encoder feature map of each tile, globally averaged, with the
    input normalised as the engine normalises it (``meta``'s mean and std)."""
    import torch

    device = next(model.parameters()).device
    mean = torch.tensor(meta["mean"], device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(meta["std"], device=device).view(1, 3, 1, 1) * 255
    pooled = []
    with torch.inference_mode():
        for start in range(0, len(tiles), FEATURE_BATCH):
            batch = torch.from_numpy(tiles[start : start + FEATURE_BATCH]).to(device)
            x = (batch.permute(0, 3, 1, 2).float() - mean) / std
            deepest = model.encoder(x.contiguous())[-1]
            pooled.append(deepest.float().mean(dim=(2, 3)).cpu().numpy())
    return np.concatenate(pooled).astype(np.float64)


def describe_domain(
    slides: Sequence[Any],
    model: Any,
    meta: dict[str, Any],
    groups: Sequence[int] | None = None,
    max_tiles: int = MAX_TILES,
) -> dict[str, Any]:
    """The description of the training images ``slides`` (:class:`training.slides.Slide`, each
    with its pixel size) for ``model`` and its checkpoint ``meta``: see the module docstring.

    ``groups``: a stain group per slide (e.g. its dataset folder); all one group when None. At
    most ``max_tiles`` tiles are read in all, spread over the groups by their share of images
    (every group at least a few)."""
    groups = list(groups) if groups is not None else [0] * len(slides)
    if not slides or len(groups) != len(slides):
        raise ValueError("describe_domain needs slides, and one group per slide")
    names = list(dict.fromkeys(groups))
    if len(names) > MAX_GROUPS:
        raise ValueError(f"at most {MAX_GROUPS} stain groups; got {len(names)}")
    tile, pixel_size = int(meta["tile_size"]), float(meta["pixel_size_um"])
    stains, all_tiles = [], []
    for name in names:
        members = [s for s, g in zip(slides, groups, strict=True) if g == name]
        budget = max(4, max_tiles * len(members) // len(slides))
        picked = [members[i] for i in _spread(len(members), budget)]
        per_slide = max(1, budget // len(picked))
        samples = [sample_tiles(s, pixel_size, tile, per_slide) for s in picked]
        tiles = np.concatenate(samples)
        tiles = tiles[_spread(len(tiles), budget)]
        all_tiles.append(tiles)
        stats = stain_statistics(tiles)
        if stats is not None:
            sizes = [float(s.pixel_size_um) for s in members]
            stats["pixel_size_um"] = [min(sizes), max(sizes)]
            stats["images"] = len(members)
            stats["stain_spread_deg"], stats["od_spread"] = _spreads(stats, samples)
            stains.append(stats)
    features = encoder_features(model, meta, np.concatenate(all_tiles))
    description = {
        "version": VERSION,
        "images": len(slides),
        "tiles": len(features),
        "stains": stains,
        "features": {
            "mean": features.mean(axis=0).tolist(),
            "std": np.maximum(features.std(axis=0), 1e-6).tolist(),
        },
    }
    return check_description(description)


def _spreads(group: dict[str, Any], samples: Sequence[np.ndarray]) -> tuple[float, float]:
    """How far one image's stains lie from its group's: the root mean square over the images of
    :func:`stain_angle` (degrees) and of :func:`od_distance`, each at least a floor (a group of
    near-identical images would otherwise call any slide far)."""
    found = [stats for stats in (stain_statistics(tiles) for tiles in samples) if stats]
    if not found:
        return MIN_SPREAD_DEG, MIN_OD_SPREAD
    angles = np.array([stain_angle(stats, group) for stats in found])
    distances = np.array([od_distance(stats, group) for stats in found])
    return (
        max(float(np.sqrt((angles**2).mean())), MIN_SPREAD_DEG),
        max(float(np.sqrt((distances**2).mean())), MIN_OD_SPREAD),
    )


def od_distance(ours: dict[str, Any], group: dict[str, Any]) -> float:
    """The Mahalanobis distance of ``ours``' mean optical density under ``group``'s pixel
    covariance."""
    difference = np.asarray(ours["od_mean"]) - np.asarray(group["od_mean"])
    covariance = np.asarray(group["od_cov"]) + 1e-6 * np.eye(3)
    return float(math.sqrt(max(difference @ np.linalg.solve(covariance, difference), 0.0)))


def stain_angle(ours: dict[str, Any], theirs: dict[str, Any]) -> float:
    """The larger angle (degrees) between matching stain vectors (rows of unit length) of two
    stain statistics."""
    a, b = np.asarray(ours["stain_vectors"]), np.asarray(theirs["stain_vectors"])
    cosines = np.clip((a * b).sum(axis=1), -1.0, 1.0)
    return float(np.degrees(np.arccos(cosines)).max())


def _spread(total: int, count: int) -> list[int]:
    """``count`` indices (at most ``total``) spread evenly over ``range(total)``."""
    return sorted(set(np.linspace(0, total - 1, min(count, total)).round().astype(int).tolist()))


def check_description(value: Any) -> dict[str, Any]:
    """``value`` as a fresh description of plain ``int``/``float`` in the expected shapes;
    :class:`DescriptionError` naming the first field that is not."""
    if not isinstance(value, dict) or set(value) != _KEYS:
        raise DescriptionError(f"must be a dict with exactly the keys {sorted(_KEYS)}")
    if value["version"] != VERSION:
        raise DescriptionError(f"version must be {VERSION}; got {value['version']!r}")
    stains = value["stains"]
    if not isinstance(stains, list) or len(stains) > MAX_GROUPS:
        raise DescriptionError(f"stains must be a list of at most {MAX_GROUPS} groups")
    checked_stains = []
    for index, group in enumerate(stains):
        where = f"stains[{index}]"
        if not isinstance(group, dict) or set(group) != _GROUP_KEYS:
            raise DescriptionError(f"{where} must have exactly the keys {sorted(_GROUP_KEYS)}")
        checked_stains.append(
            {
                "stain_vectors": _numbers(group["stain_vectors"], (2, 3), f"{where}.stain_vectors"),
                "stain_spread_deg": _numbers(
                    [group["stain_spread_deg"]], (1,), f"{where}.stain_spread_deg"
                )[0],
                "od_spread": _numbers([group["od_spread"]], (1,), f"{where}.od_spread")[0],
                "od_mean": _numbers(group["od_mean"], (3,), f"{where}.od_mean"),
                "od_cov": _numbers(group["od_cov"], (3, 3), f"{where}.od_cov"),
                "pixel_size_um": _numbers(group["pixel_size_um"], (2,), f"{where}.pixel_size_um"),
                "images": _count(group["images"], f"{where}.images"),
            }
        )
        if min(checked_stains[-1]["pixel_size_um"]) <= 0:
            raise DescriptionError(f"{where}.pixel_size_um must be positive")
        if not 0 < checked_stains[-1]["stain_spread_deg"] <= 90:
            raise DescriptionError(f"{where}.stain_spread_deg must be in (0, 90] degrees")
        if not checked_stains[-1]["od_spread"] > 0:
            raise DescriptionError(f"{where}.od_spread must be positive")
    features = value["features"]
    if not isinstance(features, dict) or set(features) != {"mean", "std"}:
        raise DescriptionError("features must be a dict with exactly the keys mean and std")
    channels = len(features["mean"]) if isinstance(features["mean"], list) else 0
    if not 0 < channels <= MAX_CHANNELS:
        raise DescriptionError(f"features.mean must be a list of 1 to {MAX_CHANNELS} numbers")
    std = _numbers(features["std"], (channels,), "features.std")
    if min(std) <= 0:
        raise DescriptionError("features.std must be positive")
    return {
        "version": VERSION,
        "images": _count(value["images"], "images"),
        "tiles": _count(value["tiles"], "tiles"),
        "stains": checked_stains,
        "features": {"mean": _numbers(features["mean"], (channels,), "features.mean"), "std": std},
    }


def _numbers(value: Any, shape: tuple[int, ...], where: str) -> list:
    """``value`` as nested lists of finite floats of ``shape``."""
    if len(shape) == 1:
        if (
            not isinstance(value, list)
            or len(value) != shape[0]
            or not all(_is_number(v) for v in value)
        ):
            raise DescriptionError(f"{where} must be a list of {shape[0]} finite numbers")
        return [float(v) for v in value]
    if not isinstance(value, list) or len(value) != shape[0]:
        raise DescriptionError(f"{where} must be {' x '.join(map(str, shape))} finite numbers")
    return [_numbers(row, shape[1:], where) for row in value]


def _count(value: Any, where: str) -> int:
    if not (isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 0):
        raise DescriptionError(f"{where} must be a count (an integer >= 0); got {value!r}")
    return int(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
