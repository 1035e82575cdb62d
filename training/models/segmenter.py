"""Encoder -> decoder -> head: one logit map at stride 4, upsampled x4, plus auxiliary logits."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Segmenter(nn.Module):
    """A binary FTU segmenter. ``forward`` gives logits at input size; ``forward_with_aux`` adds
    one auxiliary logit map per decoder level (deep supervision during training)."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module, dropout: float = 0.1) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.head = nn.Sequential(nn.Dropout2d(dropout), nn.Conv2d(decoder.out_channels, 1, 1))
        self.aux_heads = nn.ModuleList(nn.Conv2d(c, 1, 1) for c in decoder.level_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fused, _ = self.decoder(self.encoder(x))
        return self._upsample(self.head(fused), x)

    def forward_with_aux(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Main logits and per-level auxiliary logits, all at the input's size."""
        fused, levels = self.decoder(self.encoder(x))
        aux = [
            self._upsample(head(level), x)
            for head, level in zip(self.aux_heads, levels, strict=True)
        ]
        return self._upsample(self.head(fused), x), aux

    @staticmethod
    def _upsample(logits: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return F.interpolate(logits, size=like.shape[-2:], mode="bilinear", align_corners=False)
