"""The refinement stage: boundary patches of a probability map re-predicted by a refiner.

For each object of the thresholded map (at least the minimum area), up to ``per_object`` patch
centres spread along its outline; each patch is read from the slide at the refiner's pixel size
(finer than the map), the map is resampled onto the same grid, the refiner predicts the patch,
and the prediction, resampled back, is blended into the map (see
:class:`training.refine.patches.BlendAccumulator`). Pixels outside every patch, and inside them
away from the outline, keep their values bit for bit.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from training.inference.postprocess import probability_to_labels
from training.inference.source import TileSource
from training.refine.model import RefinerNet, load_refiner
from training.refine.patches import BlendAccumulator, PatchBox, boundary_centres
from training.slides import Slide


@dataclass(frozen=True)
class RefineOptions:
    """How boundaries are refined: ``patch_px`` the patch side in refiner pixels (default: the
    refiner's own), ``per_object`` patches at most per object, ``batch_size`` patches per
    forward pass, ``band`` the part of the patch side (either way of the outline) that may
    change. 16 patches half a patch apart cover the outline of an object up to 8 patch sides
    round (a glomerulus of 200 um, with 64 px patches at 0.65 um/px)."""

    patch_px: int | None = None
    per_object: int = 16
    batch_size: int = 16
    band: float = 0.25

    def __post_init__(self) -> None:
        if self.patch_px is not None and not 8 <= self.patch_px <= 512:
            raise ValueError(f"patch_px must be 8..512; got {self.patch_px}")
        if self.per_object < 1:
            raise ValueError(f"per_object must be at least 1; got {self.per_object}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1; got {self.batch_size}")
        if not 0 < self.band <= 0.5:
            raise ValueError(f"band must be in (0, 0.5]; got {self.band}")

    @classmethod
    def from_dict(cls, values: Any, where: str) -> RefineOptions:
        """Options from a manifest's ``refine`` mapping; ``ValueError`` naming ``where``."""
        if values is None:
            return cls()
        allowed = {"patch_px", "per_object", "batch_size", "band"}
        if not isinstance(values, dict) or set(values) - allowed:
            raise ValueError(f"{where}: 'refine' must be a mapping of {sorted(allowed)}")
        try:
            return cls(**values)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{where}: 'refine' {exc}") from None


@dataclass
class Refiner:
    """A loaded refiner network with its metadata and the options it runs with."""

    model: RefinerNet
    meta: dict[str, Any]
    options: RefineOptions = field(default_factory=RefineOptions)
    name: str = ""
    # patches read from this slide, the map's top-left at this working pixel of it (a region
    # run's map is a crop: its patches come from the slide itself, at the refiner's pixel size)
    window: tuple[Slide, tuple[int, int]] | None = None

    def reading(self, slide: Slide, origin: tuple[int, int]) -> Refiner:
        """This refiner reading its patches from ``slide``, of whose working grid the map to
        refine is the crop at ``origin`` ``(y, x)``."""
        return replace(self, window=(slide, origin))

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        device: str | torch.device = "cpu",
        options: RefineOptions | None = None,
    ) -> Refiner:
        """The refiner of checkpoint ``path`` on ``device``."""
        model, meta = load_refiner(path, device)
        return cls(model, meta, options or RefineOptions(), name=os.fspath(path))

    @property
    def pixel_size_um(self) -> float:
        """The pixel size the refiner sees."""
        return float(self.meta["pixel_size_um"])

    @property
    def patch_px(self) -> int:
        """The patch side in refiner pixels: the options', else the checkpoint's."""
        size = self.options.patch_px or int(self.meta["patch_size"])
        if size % self.model.multiple:
            raise ValueError(
                f"patch_px {size} does not fit the refiner: it takes multiples of "
                f"{self.model.multiple}"
            )
        return size

    @torch.inference_mode()
    def predict(self, images: np.ndarray, coarse: np.ndarray) -> np.ndarray:
        """Refined probabilities ``(n, p, p)`` from RGB uint8 ``images`` ``(n, p, p, 3)`` and
        coarse probabilities ``(n, p, p)``."""
        device = next(self.model.parameters()).device
        return torch.sigmoid(self.model(self.inputs(images, coarse, device)))[:, 0].cpu().numpy()

    def inputs(self, images: np.ndarray, coarse: np.ndarray, device: Any) -> torch.Tensor:
        """The network's 4-channel input: normalised RGB, then the coarse map as 2p - 1."""
        mean = torch.tensor(self.meta["mean"], device=device).view(1, 3, 1, 1)
        std = torch.tensor(self.meta["std"], device=device).view(1, 3, 1, 1)
        rgb = torch.as_tensor(images, device=device).permute(0, 3, 1, 2).float() / 255
        prior = torch.as_tensor(coarse, device=device).float()[:, None] * 2 - 1
        return torch.cat([(rgb - mean) / std, prior], dim=1)


def resolve_refiner(refiner: Any, ensemble: Any, device: Any) -> Refiner | None:
    """The refiner a run uses: the one given (a :class:`Refiner` or a checkpoint path, loaded
    with the ensemble's ``refine`` options), the ensemble's own for ``None``, none for
    ``False``."""
    if refiner is False:
        return None
    if refiner is None or refiner is True:
        return ensemble.refiner
    if isinstance(refiner, (str, os.PathLike)):
        return Refiner.load(refiner, device, ensemble.refiner_options)
    if not isinstance(refiner, Refiner):
        raise TypeError("refiner must be a training.refine.Refiner, a checkpoint path, or False")
    return refiner


def refine_map(
    probability: Any,
    slide: Slide,
    refiner: Refiner,
    working_px: float,
    postprocess: tuple[float, float],
    stain: Any = None,
) -> Generator[tuple[int, int], None, int]:
    """Refine the objects' boundaries of ``probability`` (working map at ``working_px`` um/px of
    ``slide``; numpy or zarr, changed in place once every patch is done). ``postprocess``: the
    threshold and minimum area (working px) that make the objects. Yields ``(done, total)``
    patches (first ``(0, total)``), returns the patches refined. Closing the generator before
    its end leaves ``probability`` as it was."""
    threshold, min_area_px = postprocess
    labels = probability_to_labels(probability, threshold, min_area_px=min_area_px)
    size = refiner.patch_px
    scale = refiner.pixel_size_um / working_px  # working px per refiner px
    centres = boundary_centres(labels, refiner.options.per_object, spacing=size * scale / 2)
    total = len(centres)
    yield 0, total
    if not total:
        return 0
    slide, origin = refiner.window or (slide, (0, 0))
    source = TileSource(slide, refiner.pixel_size_um, size, stain, workers=0)
    blend = BlendAccumulator(labels.shape)
    batch = refiner.options.batch_size
    for start in range(0, total, batch):
        boxes = [PatchBox.around(c + origin, size, scale) for c in centres[start : start + batch]]
        images = np.stack([source.region(b.y, b.x, size, size) for b in boxes])
        coarse = np.stack([b.coarse(probability, origin) for b in boxes])
        for box, refined in zip(boxes, refiner.predict(images, coarse), strict=True):
            y0, x0, values = box.to_working(refined)
            blend.add(y0 - origin[0], x0 - origin[1], values)
        yield min(start + batch, total), total
    blend.blend_into(probability, labels > 0, band_px=refiner.options.band * size * scale)
    return total
