"""Decoders that take only the encoder's channel list: UPerNet and DAFormer.

Each returns the fused feature map at the finest level (stride 4) and one feature map per level
for the auxiliary (deep supervision) heads. A decoder has ``out_channels`` (of the fused map) and
``level_channels`` (one per auxiliary map); the segmenter upsamples the fused map's logits to the
input size, so a decoder may also end at full resolution (U-Net style).

``DECODERS`` maps a registry decoder name to a builder ``(encoder, config) -> decoder``: UPerNet
and DAFormer need only ``encoder.channels`` and ``config["decoder_channels"]``; a decoder that
mirrors its encoder (Swin-Unet) reads the rest of the resolved configuration.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from training.models.unext import build_unext_decoder


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int = 1) -> nn.Sequential:
    """Conv (no bias), batch norm, ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def resize_to(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Bilinear resize of ``x`` to the spatial size of ``like``."""
    if x.shape[-2:] == like.shape[-2:]:
        return x
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)


class PyramidPooling(nn.Module):
    """PSPNet's pyramid pooling on the coarsest level (pool scales 1, 2, 3, 6)."""

    def __init__(self, in_channels: int, channels: int, scales: Sequence[int] = (1, 2, 3, 6)):
        super().__init__()
        # No batch norm on the pooled maps: the 1x1 pool has one value per channel, which batch
        # norm cannot normalise in training at batch size 1 (fine-tuning on a few corrections).
        self.stages = nn.ModuleList(
            nn.Sequential(
                nn.AdaptiveAvgPool2d(s), nn.Conv2d(in_channels, channels, 1), nn.ReLU(inplace=True)
            )
            for s in scales
        )
        self.bottleneck = conv_bn_relu(in_channels + len(scales) * channels, channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = [resize_to(stage(x), x) for stage in self.stages]
        return self.bottleneck(torch.cat([x, *pooled], dim=1))


class UPerNetDecoder(nn.Module):
    """UPerNet: pyramid pooling on the top level, an FPN top-down path, a 3x3 conv fuse."""

    def __init__(self, in_channels: Sequence[int], channels: int = 256) -> None:
        super().__init__()
        self.ppm = PyramidPooling(in_channels[-1], channels)
        self.lateral = nn.ModuleList(conv_bn_relu(c, channels) for c in in_channels[:-1])
        self.smooth = nn.ModuleList(conv_bn_relu(channels, channels, 3) for _ in in_channels[:-1])
        self.fuse = conv_bn_relu(len(in_channels) * channels, channels, 3)
        self.level_channels = [channels] * len(in_channels)
        self.out_channels = channels

    def forward(self, features: Sequence[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        top = self.ppm(features[-1])
        laterals = [lat(f) for lat, f in zip(self.lateral, features[:-1], strict=True)] + [top]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + resize_to(laterals[i], laterals[i - 1])
        levels = [s(x) for s, x in zip(self.smooth, laterals[:-1], strict=True)] + [top]
        fused = self.fuse(torch.cat([resize_to(x, levels[0]) for x in levels], dim=1))
        return fused, levels


class DAFormerDecoder(nn.Module):
    """DAFormer: per-level conv-BN-ReLU embedding, upsample to stride 4, concatenate, 3x3 fuse."""

    def __init__(self, in_channels: Sequence[int], channels: int = 256) -> None:
        super().__init__()
        self.embed = nn.ModuleList(conv_bn_relu(c, channels) for c in in_channels)
        self.fuse = conv_bn_relu(len(in_channels) * channels, channels, 3)
        self.level_channels = [channels] * len(in_channels)
        self.out_channels = channels

    def forward(self, features: Sequence[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        levels = [embed(f) for embed, f in zip(self.embed, features, strict=True)]
        fused = self.fuse(torch.cat([resize_to(x, levels[0]) for x in levels], dim=1))
        return fused, levels


DecoderBuilder = Callable[[nn.Module, dict[str, Any]], nn.Module]


def _upernet(encoder: nn.Module, config: dict[str, Any]) -> nn.Module:
    return UPerNetDecoder(encoder.channels, config["decoder_channels"])


def _daformer(encoder: nn.Module, config: dict[str, Any]) -> nn.Module:
    return DAFormerDecoder(encoder.channels, config["decoder_channels"])


def _mt_unet(encoder: nn.Module, config: dict[str, Any]) -> nn.Module:
    from training.models.mt_unet import mt_unet_decoder  # it imports this module

    return mt_unet_decoder(encoder, config)


DECODERS: dict[str, DecoderBuilder] = {
    "upernet": _upernet,
    "daformer": _daformer,
    "unext": build_unext_decoder,
    "mt_unet": _mt_unet,
}
