"""The training augmentation chain: :class:`AugmentConfig` says what, :class:`Augmenter` does it."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from training.augment.acquisition import _check_organ, adapt_pixel_size, adapt_thickness
from training.augment.color import brightness_contrast, gauss_noise, hue_saturation_value
from training.augment.geometric import flip_rotate, rotate_scale
from training.augment.mixing import cutmix, cutout
from training.augment.stain_jitter import hed_jitter

__all__ = ["AugmentConfig", "Augmenter"]

Sample = tuple[np.ndarray, np.ndarray]
# CutMix's second sample, or a function that reads it when CutMix fires
Other = tuple[np.ndarray, np.ndarray] | Callable[[], tuple[np.ndarray, np.ndarray]] | None


@dataclass(frozen=True)
class AugmentConfig:
    """What a training sample goes through: five groups that switch off as a whole, then per
    augmentation a probability (``*_p``) and its strengths. The defaults follow the winning
    solutions and Tellez et al. 2018 (HED jitter between their "light" and "strong" settings).
    Build from a YAML mapping with :meth:`from_dict`; :meth:`to_dict` gives it back.
    """

    #: flips, 90-degree turns, transposes; rotation and zoom
    geometric: bool = True
    #: brightness and contrast, hue/saturation/value, Gaussian noise
    color: bool = True
    #: HED stain jitter
    stain: bool = True
    #: section thickness and pixel size toward the organ's HuBMAP acquisition
    domain: bool = True
    #: CutMix (when the caller passes a second sample) and CutOut
    mix: bool = True

    #: probability of one of the 8 square symmetries (the identity is one of them)
    flip_rotate_p: float = 1.0
    #: probability of a rotation and zoom
    rotate_scale_p: float = 0.5
    #: largest rotation, degrees either way
    rotate_degrees: float = 45.0
    #: largest zoom, the factor drawn from [1 - scale, 1 + scale]
    scale: float = 0.2

    brightness_contrast_p: float = 0.5
    #: largest brightness shift, fraction of 255
    brightness: float = 0.2
    #: largest contrast change, the factor drawn from [1 - contrast, 1 + contrast]
    contrast: float = 0.2
    hsv_p: float = 0.5
    #: largest hue shift, OpenCV uint8 units (2 degrees each)
    hue: float = 10.0
    #: largest saturation shift, 0-255
    saturation: float = 20.0
    #: largest value shift, 0-255
    value: float = 10.0
    noise_p: float = 0.3
    #: largest noise standard deviation, fraction of 255
    noise_std: float = 0.04

    stain_p: float = 0.5
    #: stain amounts scaled by a factor from [1 - stain_scale, 1 + stain_scale]
    stain_scale: float = 0.1
    #: stain amounts shifted by up to this optical density either way
    stain_shift: float = 0.05

    thickness_p: float = 0.5
    #: 1: thickness drawn from the sample's to the HuBMAP table's; 0: unchanged
    thickness_strength: float = 1.0
    pixel_size_p: float = 0.5
    #: cap on the downsampling factor toward the HuBMAP pixel size (1: off)
    pixel_size_max_factor: float = 4.0

    cutmix_p: float = 0.5
    #: largest fraction of the image a CutMix box covers
    cutmix_max_area: float = 0.5
    cutout_p: float = 0.5
    #: most CutOut holes per sample
    cutout_holes: int = 8
    #: largest hole side, fraction of the image side
    cutout_size: float = 0.1
    #: hole colour, 0-255 (255: white, like a tear)
    cutout_fill: int = 255
    #: label the holes background (True) or keep the FTU label under them (False)
    cutout_mask: bool = False

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            kind = {"bool": bool, "int": int, "float": float}[str(field.type)]
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)  # YAML writes 1 for 1.0
                object.__setattr__(self, field.name, value)
            if type(value) is not kind:
                raise TypeError(
                    f"augmentation setting {field.name} must be a {kind.__name__}; got {value!r}"
                )
            if kind is not bool and not (math.isfinite(value) and value >= 0):
                raise ValueError(f"augmentation setting {field.name} must be >= 0; got {value}")
            if field.name.endswith("_p") and value > 1:
                raise ValueError(f"probability {field.name} must be in [0, 1]; got {value}")
        for name in ("scale", "stain_scale"):
            if getattr(self, name) >= 1:
                raise ValueError(f"augmentation setting {name} must be below 1")
        for name in ("noise_std", "cutmix_max_area", "cutout_size"):
            if getattr(self, name) > 1:
                raise ValueError(f"augmentation setting {name} must be at most 1")
        if self.pixel_size_max_factor < 1:
            raise ValueError("augmentation setting pixel_size_max_factor must be at least 1")
        if self.cutout_fill > 255:
            raise ValueError("augmentation setting cutout_fill must be in 0-255")

    @classmethod
    def none(cls) -> AugmentConfig:
        """No augmentation at all (for validation, or to see the raw samples)."""
        return cls(geometric=False, color=False, stain=False, domain=False, mix=False)

    @classmethod
    def from_dict(cls, settings: Mapping[str, Any]) -> AugmentConfig:
        """The defaults with ``settings`` applied; an unknown key is an error that names it."""
        known = [field.name for field in dataclasses.fields(cls)]
        unknown = sorted(set(settings) - set(known))
        if unknown:
            raise ValueError(
                f"unknown augmentation setting(s): {', '.join(map(str, unknown))}; "
                f"known settings: {', '.join(known)}"
            )
        return cls(**settings)

    def to_dict(self) -> dict[str, Any]:
        """Every setting by name, as :meth:`from_dict` takes it (plain values, YAML-ready)."""
        return dataclasses.asdict(self)


class Augmenter:
    """Apply an :class:`AugmentConfig` to one training sample.

    The order follows a slide's history: what lies on the glass (CutMix, CutOut: a hole is a tear,
    so it is then blurred, stained and lit like the tissue around it), how it was acquired
    (section thickness, pixel size), how the crop is oriented (symmetries, rotation and zoom),
    then stain and colour. Draws come from the ``rng`` of each call: reproducible for a seed.
    """

    def __init__(self, config: AugmentConfig | None = None) -> None:
        self.config = config if config is not None else AugmentConfig()

    def __repr__(self) -> str:
        return f"Augmenter({self.config!r})"

    def __call__(
        self,
        image: np.ndarray,
        mask: np.ndarray,
        rng: np.random.Generator,
        *,
        organ: str,
        model_um: float,
        thickness_um: float,
        other: Other = None,
    ) -> Sample:
        """Augment ``image`` (H, W, 3) uint8 and ``mask`` (H, W) uint8 0/1, a crop at ``model_um``
        um/px of a section ``thickness_um`` thick of ``organ``; ``other`` (image, mask) of the same
        shape is CutMix's second sample, or a function that reads it (called only when CutMix
        fires, so a data loader reads a second crop only then). Returns contiguous arrays of the
        same shape and dtype."""
        _check_sample(image, mask)
        _check_organ(organ)
        if model_um <= 0 or thickness_um <= 0:
            raise ValueError(f"need model_um, thickness_um > 0; got {model_um}, {thickness_um}")
        sample = (image, mask)
        if self.config.mix:
            sample = self._mix(sample, rng, other)
        if self.config.domain:
            sample = self._domain(sample, rng, organ, model_um, thickness_um)
        if self.config.geometric:
            sample = self._geometric(sample, rng)
        if self.config.stain and rng.random() < self.config.stain_p:
            c = self.config
            sample = hed_jitter(*sample, rng, scale=c.stain_scale, shift=c.stain_shift)
        if self.config.color:
            sample = self._color(sample, rng)
        return np.ascontiguousarray(sample[0]), np.ascontiguousarray(sample[1])

    def _mix(self, sample: Sample, rng: np.random.Generator, other: Other) -> Sample:
        c = self.config
        if other is not None and rng.random() < c.cutmix_p:
            pair = other() if callable(other) else other
            sample = cutmix(*sample, *pair, rng, max_area=c.cutmix_max_area)
        if rng.random() < c.cutout_p:
            sample = cutout(
                *sample,
                rng,
                max_holes=c.cutout_holes,
                max_size=c.cutout_size,
                fill=c.cutout_fill,
                cut_mask=c.cutout_mask,
            )
        return sample

    def _domain(
        self,
        sample: Sample,
        rng: np.random.Generator,
        organ: str,
        model_um: float,
        thickness_um: float,
    ) -> Sample:
        c = self.config
        if rng.random() < c.thickness_p:
            sample = adapt_thickness(
                *sample, rng, organ=organ, thickness_um=thickness_um, strength=c.thickness_strength
            )
        if rng.random() < c.pixel_size_p:
            sample = adapt_pixel_size(
                *sample, rng, organ=organ, model_um=model_um, max_factor=c.pixel_size_max_factor
            )
        return sample

    def _geometric(self, sample: Sample, rng: np.random.Generator) -> Sample:
        c = self.config
        if rng.random() < c.flip_rotate_p:
            sample = flip_rotate(*sample, rng)
        if rng.random() < c.rotate_scale_p:
            sample = rotate_scale(*sample, rng, max_degrees=c.rotate_degrees, max_scale=c.scale)
        return sample

    def _color(self, sample: Sample, rng: np.random.Generator) -> Sample:
        c = self.config
        if rng.random() < c.brightness_contrast_p:
            sample = brightness_contrast(*sample, rng, brightness=c.brightness, contrast=c.contrast)
        if rng.random() < c.hsv_p:
            sample = hue_saturation_value(
                *sample, rng, hue=c.hue, saturation=c.saturation, value=c.value
            )
        if rng.random() < c.noise_p:
            sample = gauss_noise(*sample, rng, max_std=c.noise_std)
        return sample


def _check_sample(image: np.ndarray, mask: np.ndarray) -> None:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8; got {image.shape} {image.dtype}")
    if mask.shape != image.shape[:2] or mask.dtype != np.uint8:
        raise ValueError(
            f"mask must be (H, W) uint8 matching the image {image.shape[:2]}; "
            f"got {mask.shape} {mask.dtype}"
        )
