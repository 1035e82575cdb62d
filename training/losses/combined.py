"""The training loss: weighted BCE, Dice and focal terms on the main logits plus deep
supervision on the auxiliary logits, configured from a flat dict (a YAML ``loss:`` section)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from training.losses._functional import (
    RESIZE_MODES,
    check_non_negative,
    check_positive,
    check_probability,
)
from training.losses.bce import BCELoss
from training.losses.deep_supervision import DeepSupervisionLoss
from training.losses.dice import DiceLoss
from training.losses.focal import FocalLoss

MAIN_TERMS = ("bce", "dice", "focal")


@dataclass(frozen=True)
class LossConfig:
    """Weights and options of :class:`SegmentationLoss`; every field is a key of its dict form.

    ``bce``, ``dice``, ``focal`` weigh the terms on the main logits; ``aux`` weighs deep
    supervision, which applies the same weighted terms to each auxiliary map, combined with
    ``aux_weights`` per level (``None``: their mean) after resizing the target by
    ``aux_resize``. A weight of 0 leaves its term out.
    """

    bce: float = 1.0
    dice: float = 1.0
    focal: float = 0.0
    aux: float = 0.4
    pos_weight: float | None = None
    dice_smooth: float = 1.0
    dice_per_image: bool = True
    focal_alpha: float | None = None
    focal_gamma: float = 2.0
    aux_weights: tuple[float, ...] | None = None
    aux_resize: str = "area"

    def __post_init__(self) -> None:
        for name in (*MAIN_TERMS, "aux", "dice_smooth", "focal_gamma"):
            object.__setattr__(self, name, check_non_negative(name, getattr(self, name)))
        if not any(getattr(self, name) for name in MAIN_TERMS):
            raise ValueError(f"loss weights {', '.join(MAIN_TERMS)} are all zero")
        if self.pos_weight is not None:
            object.__setattr__(self, "pos_weight", check_positive("pos_weight", self.pos_weight))
        if self.focal_alpha is not None:
            alpha = check_probability("focal_alpha", self.focal_alpha)
            object.__setattr__(self, "focal_alpha", alpha)
        if self.aux_weights is not None:
            weights = tuple(
                check_non_negative(f"aux_weights[{i}]", w) for i, w in enumerate(self.aux_weights)
            )
            if not any(weights):
                raise ValueError(f"aux_weights are all zero: {list(weights)}")
            object.__setattr__(self, "aux_weights", weights)
        if self.aux_resize not in RESIZE_MODES:
            raise ValueError(f"aux_resize must be one of {RESIZE_MODES}; got {self.aux_resize!r}")
        if not isinstance(self.dice_per_image, bool):
            raise ValueError(f"dice_per_image must be true or false; got {self.dice_per_image!r}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> LossConfig:
        """A config from a (YAML) mapping; missing keys keep their defaults, unknown keys raise
        ValueError."""
        names = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown loss option(s) {unknown}; known: {sorted(names)}")
        return cls(**values)

    def as_dict(self) -> dict[str, Any]:
        """Every option as plain Python values (lists, not tuples), ready for YAML."""
        values = dataclasses.asdict(self)
        if self.aux_weights is not None:
            values["aux_weights"] = list(self.aux_weights)
        return values


class _WeightedTerms(nn.Module):
    """The main terms with non-zero weight: their unweighted values and their weighted sum."""

    def __init__(self, config: LossConfig) -> None:
        super().__init__()
        built = {
            "bce": lambda: BCELoss(config.pos_weight),
            "dice": lambda: DiceLoss(config.dice_smooth, config.dice_per_image),
            "focal": lambda: FocalLoss(config.focal_alpha, config.focal_gamma),
        }
        self.weights = {name: getattr(config, name) for name in MAIN_TERMS if getattr(config, name)}
        self.terms = nn.ModuleDict({name: built[name]() for name in self.weights})

    def components(
        self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        if weight is None:
            return {name: term(logits, target) for name, term in self.terms.items()}
        return {name: term(logits, target, weight) for name, term in self.terms.items()}

    def weighted(self, components: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return sum(self.weights[name] * value for name, value in components.items())

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.weighted(self.components(logits, target, weight))


class SegmentationLoss(nn.Module):
    """Weighted BCE + Dice + focal on the main logits, plus ``aux`` x deep supervision.

    Built from a :class:`LossConfig`, keyword overrides of its fields
    (``SegmentationLoss(dice=0.5, focal=1.0)``), or :meth:`from_dict`. Calling it returns the
    total loss and a dict of detached floats for logging: the unweighted value of each computed
    main term (``"bce"``, ``"dice"``, ``"focal"``), ``"aux"`` (the deep-supervision loss before
    its ``aux`` weight) when computed, and ``"total"``. The aux term is left out when its weight
    is 0 or when ``aux`` is ``None`` (validation with plain ``forward`` logits).
    """

    def __init__(self, config: LossConfig | None = None, **overrides: Any) -> None:
        super().__init__()
        config = LossConfig() if config is None else config
        if overrides:
            names = {field.name for field in dataclasses.fields(LossConfig)}
            unknown = sorted(set(overrides) - names)
            if unknown:
                raise TypeError(f"unknown loss option(s) {unknown}; known: {sorted(names)}")
            config = dataclasses.replace(config, **overrides)
        self.config = config
        self.main = _WeightedTerms(config)
        self.deep_supervision = DeepSupervisionLoss(
            self.main, config.aux_weights, config.aux_resize
        )

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> SegmentationLoss:
        """The loss described by a (YAML) mapping of :class:`LossConfig` fields."""
        return cls(LossConfig.from_dict(values))

    def as_dict(self) -> dict[str, Any]:
        """The resolved config, to save beside a run's outputs."""
        return self.config.as_dict()

    def forward(
        self,
        logits: torch.Tensor,
        target: torch.Tensor,
        aux: Sequence[torch.Tensor] | None = None,
        weight: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Total loss and its logged components for main logits (N, 1, H, W), a 0/1 target
        (N, 1, H, W) or (N, H, W), and optional auxiliary logit maps. An optional per-pixel
        ``weight`` of the target's shape (0: ignore the pixel, as for unconfident
        pseudo-labels) weighs every term; without it every pixel counts alike."""
        parts = self.main.components(logits, target, weight)
        total = self.main.weighted(parts)
        if aux is not None and self.config.aux > 0:
            parts["aux"] = self.deep_supervision(aux, target, weight)
            total = total + self.config.aux * parts["aux"]
        parts["total"] = total
        # One stack and one transfer: a single device sync per step instead of one per term.
        values = torch.stack([value.detach().float() for value in parts.values()]).tolist()
        return total, dict(zip(parts, values, strict=True))
