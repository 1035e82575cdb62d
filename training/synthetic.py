"""Procedural H&E-like phantoms of the five organs with ground-truth FTU masks.

Geometry and appearance are separate: :func:`ftu_geometry` places FTU instances sized in
micrometres like the real annotations, and :func:`render_phantom` paints any instance map
(random or a real competition mask) through the Beer-Lambert model,
``I = I0 * exp(-(c_H * v_H + c_E * v_E))``, with explicit haematoxylin and eosin optical-density
vectors, so a stain normaliser has a known truth. Section thickness scales the optical path (and
blurs slightly); pixel size scales every structure, because sizes are physical.

These images are synthetic: they look like H&E to a stain model and to a segmentation network in
training, not to a pathologist.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from training.atomic import atomic_path
from training.data.catalog import ORGANS

__all__ = [
    "DOMAINS",
    "ORGAN_STYLES",
    "STAIN_VECTORS",
    "OrganStyle",
    "ftu_geometry",
    "make_phantom",
    "overlay",
    "render_phantom",
]

log = logging.getLogger(__name__)

# HPA: the competition's training source; HuBMAP: its test source (imaging_measurements.json).
DOMAINS: dict[str, dict[str, dict[str, float]]] = {
    "hpa": {
        "pixel_size": dict.fromkeys(ORGANS, 0.4),
        "tissue_thickness": dict.fromkeys(ORGANS, 4.0),
    },
    "hubmap": {
        "pixel_size": {
            "kidney": 0.5,
            "prostate": 6.263,
            "largeintestine": 0.229,
            "spleen": 0.4945,
            "lung": 0.7562,
        },
        "tissue_thickness": {
            "kidney": 10.0,
            "prostate": 5.0,
            "largeintestine": 8.0,
            "spleen": 4.0,
            "lung": 5.0,
        },
    },
}
DATA_SOURCE = {"hpa": "HPA", "hubmap": "Hubmap"}
# Rows: haematoxylin, eosin; columns: optical density per unit concentration in R, G, B.
# HPA uses Ruifrok & Johnston's H&E vectors; the HuBMAP preset is a bluer haematoxylin and a
# more magenta eosin, an illustrative shift (the HuBMAP scanners' vectors were not published).
STAIN_VECTORS = {
    "hpa": np.array([[0.650, 0.704, 0.286], [0.072, 0.990, 0.105]]),
    "hubmap": np.array([[0.490, 0.768, 0.412], [0.214, 0.851, 0.480]]),
}
REFERENCE_THICKNESS_UM = 4.0
GLASS_INTENSITY = 242.0


@dataclass(frozen=True)
class OrganStyle:
    """Size of an organ's FTU (from the real annotation subset) and how its tissue looks."""

    ftu: str
    diameter_um: float  # median equivalent diameter of one FTU
    mask_fraction: float  # median fraction of an image covered by FTUs
    elongation: tuple[float, float]  # range of the long/short axis ratio
    irregularity: float  # amplitude of the boundary's harmonics
    stroma_eosin: float  # eosin concentration of the tissue around FTUs
    stroma_nuclei: float  # nuclei per 100 um^2 around FTUs
    stroma_holes: float  # fraction of small empty spaces (tubule lumens, air, vessels)
    hole_scale_um: float


# Equivalent diameters from the data README at 0.4 um/px (313, 187, 225, 528, 158 px).
ORGAN_STYLES = {
    "kidney": OrganStyle("glomerulus", 125.0, 0.030, (1.0, 1.25), 0.05, 0.75, 0.9, 0.18, 14.0),
    "largeintestine": OrganStyle("crypt", 75.0, 0.196, (1.1, 1.8), 0.08, 0.35, 2.2, 0.02, 20.0),
    "prostate": OrganStyle("gland", 90.0, 0.138, (1.1, 2.0), 0.22, 0.6, 0.5, 0.03, 25.0),
    "spleen": OrganStyle("white pulp", 211.0, 0.058, (1.0, 1.4), 0.10, 0.55, 1.6, 0.05, 10.0),
    "lung": OrganStyle("alveolus", 63.0, 0.009, (1.0, 1.5), 0.15, 0.45, 0.6, 0.45, 30.0),
}


def make_phantom(
    organ: str,
    domain: str = "hpa",
    size: int | tuple[int, int] = 1024,
    seed: int = 0,
    **overrides: Any,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Generate one phantom; return ``(image (H, W, 3) uint8, mask (H, W) uint8 0/1, meta)``.

    ``size`` is the side (or ``(H, W)``) in pixels at the phantom's pixel size. ``overrides``:
    ``pixel_size_um``, ``thickness_um``, ``stain_vectors`` (2x3: haematoxylin, eosin),
    ``stain_intensity``, ``tissue_fraction`` (share of the image that is tissue) and ``n_ftu``.
    """
    params = _domain_params(organ, domain, overrides)
    geometry_keys = {"tissue_fraction", "n_ftu"}
    unknown = (
        set(overrides)
        - geometry_keys
        - {"pixel_size_um", "thickness_um", "stain_vectors", "stain_intensity"}
    )
    if unknown:
        raise TypeError(f"unknown phantom override(s): {', '.join(sorted(unknown))}")
    shape = (size, size) if isinstance(size, int) else tuple(int(s) for s in size)
    if min(shape) < 16:
        raise ValueError(f"phantom size must be at least 16 pixels; got {shape}")
    rng = np.random.default_rng([seed, ORGANS.index(organ), list(DOMAINS).index(domain)])
    labels, tissue = ftu_geometry(
        organ,
        shape,
        params["pixel_size_um"],
        rng,
        tissue_fraction=overrides.get("tissue_fraction", 0.85),
        n_ftu=overrides.get("n_ftu"),
    )
    image = render_phantom(labels, organ, rng=rng, tissue=tissue, **params)
    meta = {
        "organ": organ,
        "domain": domain,
        "data_source": DATA_SOURCE[domain],
        "seed": seed,
        "img_height": shape[0],
        "img_width": shape[1],
        "n_ftu": int(labels.max()),
        "tissue_fraction": float(tissue.mean()),
        **{k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in params.items()},
    }
    return image, (labels > 0).astype(np.uint8), meta


def ftu_geometry(
    organ: str,
    shape: tuple[int, int],
    pixel_size_um: float,
    rng: np.random.Generator,
    tissue_fraction: float = 0.85,
    n_ftu: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Place FTU instances in a tissue region; return ``(labels int32, tissue bool)``."""
    style = ORGAN_STYLES[_check_organ(organ)]
    if not 0 < tissue_fraction <= 1:
        raise ValueError(f"tissue_fraction must be in (0, 1]; got {tissue_fraction}")
    tissue = _tissue_region(shape, tissue_fraction, rng)
    radius = style.diameter_um / 2 / pixel_size_um
    if n_ftu is None:
        area = math.pi * radius**2
        n_ftu = max(1, round(style.mask_fraction * tissue.sum() / area))
    labels = np.zeros(shape, dtype=np.int32)
    inside = np.flatnonzero(ndimage.binary_erosion(tissue, iterations=max(1, int(radius * 0.3))))
    if inside.size == 0:
        inside = np.flatnonzero(tissue)
    placed: list[tuple[float, float, float]] = []
    for _attempt in range(40 * n_ftu):
        if len(placed) == n_ftu:
            break
        cy, cx = np.unravel_index(inside[rng.integers(inside.size)], shape)
        r = radius * float(np.exp(rng.normal(0, 0.18)))
        stretch = float(rng.uniform(*style.elongation))
        reach = r * math.sqrt(stretch) * (1 + 2 * style.irregularity)
        if any(math.hypot(cy - py, cx - px) < reach + pr for py, px, pr in placed):
            continue
        if _draw_instance(labels, len(placed) + 1, (cy, cx), r, stretch, style.irregularity, rng):
            placed.append((cy, cx, reach))
    tissue |= ndimage.binary_dilation(labels > 0, iterations=3)
    return labels, tissue


def render_phantom(
    labels: np.ndarray,
    organ: str,
    *,
    pixel_size_um: float = 0.4,
    thickness_um: float = REFERENCE_THICKNESS_UM,
    stain_vectors: Sequence[Sequence[float]] | np.ndarray | None = None,
    stain_intensity: float = 1.0,
    rng: np.random.Generator | None = None,
    tissue: np.ndarray | None = None,
) -> np.ndarray:
    """Paint an H&E-like image (uint8 RGB) around FTU instances ``labels`` (0 = not FTU).

    A binary mask is split into instances by connectivity. ``tissue`` (bool) marks tissue versus
    glass; by default everything is tissue.
    """
    style = ORGAN_STYLES[_check_organ(organ)]
    rng = rng if rng is not None else np.random.default_rng(0)
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be (H, W); got shape {labels.shape}")
    if labels.max() <= 1:
        labels, _ = ndimage.label(labels > 0)
    vectors = _stain_matrix(stain_vectors if stain_vectors is not None else STAIN_VECTORS["hpa"])
    shape = labels.shape
    px = float(pixel_size_um)
    tissue = np.ones(shape, bool) if tissue is None else np.asarray(tissue, bool) | (labels > 0)

    depth = ndimage.distance_transform_edt(labels > 0).astype(np.float32) * px
    deepest = ndimage.maximum(depth, labels, index=np.arange(1, labels.max() + 1))
    relative = np.zeros_like(depth)
    if labels.max():
        peak = np.concatenate([[1.0], np.maximum(np.asarray(deepest, np.float32), px)])
        relative = depth / peak[labels]
    ftu = labels > 0

    texture = _smooth_noise(shape, 12.0 / px, rng)
    fine = _smooth_noise(shape, 2.5 / px, rng)
    eosin = np.where(tissue, style.stroma_eosin * (1 + 0.25 * texture + 0.15 * fine), 0.0)
    nuclei = np.where(tissue, style.stroma_nuclei, 0.0)
    holes = _smooth_noise(shape, style.hole_scale_um / px, rng) > _quantile_gauss(
        1 - style.stroma_holes
    )
    empty = tissue & ~ftu & holes
    nuclear_radius = 3.0

    if organ == "kidney":  # capsule, Bowman's space, cellular tuft with capillary loops
        capsule, space = depth < 2.5, (depth >= 2.5) & (depth < 7.0)
        tuft = ftu & (depth >= 7.0)
        eosin = np.where(ftu, np.where(capsule, 0.8, 0.45), eosin)
        nuclei = np.where(tuft, 3.5, np.where(ftu & capsule, 0.8, nuclei))
        empty |= ftu & space
        empty |= tuft & (_smooth_noise(shape, 5.0 / px, rng) > 1.0)
    elif organ in ("largeintestine", "prostate"):  # epithelium around a lumen
        band = 14.0 if organ == "largeintestine" else 10.0
        epithelium = ftu & (depth < band)
        lumen = ftu & (depth >= band) & (relative > 0.35)
        basal = ftu & (depth < band * 0.45)
        eosin = np.where(epithelium, 0.4, np.where(lumen, 0.12, eosin))
        nuclei = np.where(basal, 4.5, np.where(epithelium, 0.3, np.where(lumen, 0.0, nuclei)))
        if organ == "largeintestine":  # goblet cells: pale vacuoles in the epithelium
            empty |= epithelium & ~basal & (_smooth_noise(shape, 4.0 / px, rng) > 0.6)
        else:
            empty |= lumen & (_smooth_noise(shape, 15.0 / px, rng) > 0.8)
    elif organ == "spleen":  # dense lymphocytes, a central arteriole
        nuclear_radius = 2.4
        eosin = np.where(ftu, 0.2, eosin * (1 + 0.6 * (fine > 0.8)))
        nuclei = np.where(ftu, 7.0 * (0.7 + 0.3 * relative), nuclei)
        arteriole = ftu & (relative > 0.9)
        eosin = np.where(arteriole, 0.9, eosin)
        nuclei = np.where(arteriole, 0.5, nuclei)
    elif organ == "lung":  # air space lined by a cellular wall
        wall = ftu & (depth < 3.5)
        eosin = np.where(wall, 0.55, np.where(ftu, 0.0, eosin))
        nuclei = np.where(wall, 2.5, np.where(ftu, 0.0, nuclei))
        empty |= ftu & ~wall

    haematoxylin = _nuclei_map(
        nuclei * (thickness_um / REFERENCE_THICKNESS_UM), px, nuclear_radius, rng
    )
    eosin = np.where(empty, 0.04 * tissue, eosin)
    haematoxylin = np.where(empty & (haematoxylin < 0.5), 0.0, haematoxylin)
    path = stain_intensity * thickness_um / REFERENCE_THICKNESS_UM
    concentrations = np.stack([haematoxylin, eosin], axis=-1).astype(np.float32) * path
    if thickness_um > REFERENCE_THICKNESS_UM:  # thicker sections are less sharp
        blur = 0.12 * (thickness_um - REFERENCE_THICKNESS_UM) / px
        concentrations = ndimage.gaussian_filter(concentrations, sigma=(blur, blur, 0))
    optical_density = concentrations @ vectors.astype(np.float32) + 0.015
    intensity = GLASS_INTENSITY * np.exp(-optical_density)
    intensity += rng.normal(0, 1.5, size=intensity.shape).astype(np.float32)
    return np.clip(np.rint(intensity), 0, 255).astype(np.uint8)


def overlay(image: np.ndarray, mask: np.ndarray, color: Sequence[int] = (0, 255, 0)) -> np.ndarray:
    """Return ``image`` with the outline of ``mask`` drawn in ``color`` and a light tint inside."""
    mask = np.asarray(mask) > 0
    out = image[..., :3].astype(np.float32).copy()
    width = max(1, round(min(mask.shape) / 400))
    outline = mask & ~ndimage.binary_erosion(mask, iterations=width)
    tint = np.asarray(color, np.float32)
    out[mask] = 0.8 * out[mask] + 0.2 * tint
    out[outline] = tint
    return out.astype(np.uint8)


def _domain_params(organ: str, domain: str, overrides: dict[str, Any]) -> dict[str, Any]:
    _check_organ(organ)
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; expected one of {', '.join(DOMAINS)}")
    table = DOMAINS[domain]
    params = {
        "pixel_size_um": float(overrides.get("pixel_size_um", table["pixel_size"][organ])),
        "thickness_um": float(overrides.get("thickness_um", table["tissue_thickness"][organ])),
        "stain_vectors": _stain_matrix(overrides.get("stain_vectors", STAIN_VECTORS[domain])),
        "stain_intensity": float(overrides.get("stain_intensity", 1.0)),
    }
    for key in ("pixel_size_um", "thickness_um", "stain_intensity"):
        if not params[key] > 0:
            raise ValueError(f"{key} must be positive; got {params[key]}")
    return params


def _check_organ(organ: str) -> str:
    if organ not in ORGAN_STYLES:
        raise ValueError(f"unknown organ {organ!r}; expected one of {', '.join(ORGANS)}")
    return organ


def _stain_matrix(vectors: Any) -> np.ndarray:
    matrix = np.asarray(vectors, dtype=np.float64)
    if matrix.shape != (2, 3) or not np.all(np.isfinite(matrix)) or (matrix < 0).any():
        raise ValueError(
            "stain_vectors must be 2x3 non-negative optical densities (haematoxylin, eosin rows); "
            f"got {matrix.tolist()}"
        )
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    if (norms == 0).any():
        raise ValueError("stain_vectors rows must not be zero")
    return matrix / norms


def _smooth_noise(shape: tuple[int, int], scale_px: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian random field with unit variance and features about ``scale_px`` across."""
    step = max(scale_px / 2, 1.0)
    low_shape = (int(shape[0] / step) + 4, int(shape[1] / step) + 4)
    low = ndimage.gaussian_filter(rng.standard_normal(low_shape).astype(np.float32), 1.0)
    zoomed = ndimage.zoom(low, step, order=1, grid_mode=True, mode="nearest")
    field = zoomed[: shape[0], : shape[1]]
    if field.shape != shape:  # rounding in zoom: pad by edge values
        field = np.pad(
            field, [(0, shape[0] - field.shape[0]), (0, shape[1] - field.shape[1])], mode="edge"
        )
    return (field - field.mean()) / (field.std() + 1e-6)


def _quantile_gauss(q: float) -> float:
    from scipy.special import ndtri

    return float(ndtri(min(max(q, 1e-6), 1 - 1e-6)))


def _tissue_region(shape: tuple[int, int], fraction: float, rng: np.random.Generator) -> np.ndarray:
    if fraction >= 1:
        return np.ones(shape, bool)
    field = _smooth_noise(shape, max(shape) / 3, rng)
    field += np.linspace(-0.5, 0.5, shape[1])[None, :] * rng.choice([-1, 1])
    return field > np.quantile(field, 1 - fraction)


def _draw_instance(
    labels: np.ndarray,
    value: int,
    centre: tuple[int, int],
    radius: float,
    stretch: float,
    irregularity: float,
    rng: np.random.Generator,
) -> bool:
    """Rasterise one FTU: an ellipse with a wavy border, clipped to the image and free pixels."""
    a, b = radius * math.sqrt(stretch), radius / math.sqrt(stretch)
    extent = math.ceil(a * (1 + 2 * irregularity)) + 1
    cy, cx = centre
    y0, y1 = max(cy - extent, 0), min(cy + extent + 1, labels.shape[0])
    x0, x1 = max(cx - extent, 0), min(cx + extent + 1, labels.shape[1])
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    yy -= cy
    xx -= cx
    angle = rng.uniform(0, math.pi)
    u = xx * math.cos(angle) + yy * math.sin(angle)
    v = -xx * math.sin(angle) + yy * math.cos(angle)
    theta = np.arctan2(v, u)
    wobble = np.ones_like(theta)
    for k in range(2, 6):
        wobble += irregularity / k * rng.normal() * np.cos(k * theta + rng.uniform(0, 2 * math.pi))
    inside = (u / a) ** 2 + (v / b) ** 2 <= wobble**2
    window = labels[y0:y1, x0:x1]
    inside &= window == 0
    if inside.sum() < 0.5 * math.pi * a * b:  # mostly off the image or colliding: try elsewhere
        return False
    window[inside] = value
    return True


def _nuclei_map(
    density: np.ndarray, px: float, radius_um: float, rng: np.random.Generator
) -> np.ndarray:
    """Haematoxylin concentration of nuclei scattered with ``density`` per 100 um^2."""
    expected = density * (px * px / 100.0)
    peak = float(expected.max())
    if peak <= 0:
        return np.zeros(density.shape, np.float32)
    # Thinning a homogeneous Poisson process gives the inhomogeneous one without per-pixel draws.
    count = rng.poisson(peak * density.size)
    flat = rng.integers(0, density.size, size=count)
    keep = rng.random(count) * peak < expected.ravel()[flat]
    impulses = np.bincount(flat[keep], minlength=density.size).reshape(density.shape)
    sigma = max(radius_um / px / 1.6, 0.5)
    blobs = ndimage.gaussian_filter(impulses.astype(np.float32), sigma) * (2 * math.pi * sigma**2)
    chromatin = 0.85 + 0.3 * rng.random(density.shape, dtype=np.float32)
    return 1.6 * (1 - np.exp(-2.5 * blobs)) * chromatin


def main(argv: Sequence[str] | None = None) -> int:
    """Write a phantom dataset folder (``train.csv`` with RLE + ``train_images/``)."""
    from training.data import rle
    from training.data.catalog import read_catalog, upsert_row

    parser = argparse.ArgumentParser(
        prog="python -m training.synthetic",
        description="Write synthetic H&E phantoms with ground-truth FTU masks as a dataset folder "
        "in the competition layout (train.csv with RLE, train_images/<id>.tiff).",
    )
    parser.add_argument("--out", required=True, type=Path, help="dataset folder to write")
    parser.add_argument("--organs", nargs="+", default=list(ORGANS), choices=ORGANS)
    parser.add_argument("--per-organ", type=int, default=1, help="phantoms per organ")
    side = parser.add_mutually_exclusive_group()
    side.add_argument("--size", type=int, default=1024, help="side in pixels")
    side.add_argument(
        "--side-um",
        type=float,
        help="side in micrometres instead: each organ's side in pixels follows its domain's "
        "pixel size, so FTU counts per image are alike across domains",
    )
    parser.add_argument("--domain", choices=list(DOMAINS), default="hpa")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tissue-fraction", type=float, default=0.85)
    parser.add_argument(
        "--from-annotations",
        type=Path,
        metavar="CSV",
        help="render phantoms on the real FTU masks of a train.csv instead",
    )
    parser.add_argument(
        "--limit", type=int, default=None, help="with --from-annotations: first N rows"
    )
    parser.add_argument("--overlay", action="store_true", help="also write overlays/<id>.png")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    jobs: list[tuple[str, dict[str, Any], np.ndarray, np.ndarray]] = []
    written = []
    if args.from_annotations:
        frame = read_catalog(args.from_annotations, check_images=False)
        for row in frame.head(args.limit).itertuples():
            mask = rle.decode(row.rle, (row.img_height, row.img_width))
            params = _domain_params(
                row.organ, args.domain, {"pixel_size_um": float(row.pixel_size)}
            )
            rng = np.random.default_rng([args.seed, ORGANS.index(row.organ)])
            image = render_phantom(mask, row.organ, rng=rng, **params)
            meta = {
                "organ": row.organ,
                "data_source": DATA_SOURCE[args.domain],
                **params,
                "age": row.age,
                "sex": row.sex,
            }
            jobs.append((f"{row.id}", meta, image, mask))
    for organ in [] if args.from_annotations else args.organs:
        size = args.size
        if args.side_um is not None:
            size = max(64, round(args.side_um / DOMAINS[args.domain]["pixel_size"][organ]))
        for index in range(args.per_organ):
            seed = args.seed + index
            image, mask, meta = make_phantom(
                organ, args.domain, size, seed, tissue_fraction=args.tissue_fraction
            )
            jobs.append((f"{organ}_{args.domain}_{seed}", meta, image, mask))
    for image_id, meta, image, mask in jobs:
        row = {
            "id": image_id,
            "organ": meta["organ"],
            "data_source": meta["data_source"],
            "pixel_size": meta["pixel_size_um"],
            "tissue_thickness": meta["thickness_um"],
            "rle": rle.encode(mask),
            "age": meta.get("age", ""),
            "sex": meta.get("sex", ""),
            "synthetic": "phantom",
            "stain_vectors": json.dumps(np.round(meta["stain_vectors"], 4).tolist()),
        }
        upsert_row(args.out, row, image=image)
        if args.overlay:
            _write_png(args.out / "overlays" / f"{image_id}.png", overlay(image, mask))
        written.append(image_id)
        log.info(
            "wrote %s (%s, %dx%d, %d FTU pixels)",
            image_id,
            meta["organ"],
            *mask.shape,
            int(mask.sum()),
        )
    log.info("dataset folder: %s (%d images)", args.out, len(written))
    return 0


def _write_png(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")


if __name__ == "__main__":
    raise SystemExit(main())
