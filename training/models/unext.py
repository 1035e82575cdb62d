"""UNeXt: a convolutional and tokenised-MLP U-Net, small and fast.

Valanarasu & Patel, "UNeXt: MLP-based Rapid Medical Image Segmentation Network", MICCAI 2022
(arXiv:2203.04967; official code github.com/jeya-maria-jose/UNeXt-pytorch, ``archs.UNext``).

How the paper maps onto encoder -> decoder -> head (``Segmenter``):

- **Encoder** (``UNeXtEncoder``): a convolutional stage of three blocks (3x3 conv + batch norm +
  2x2 max pool + ReLU; widths 16, 32, 128 in the paper), then a tokenised MLP stage of two blocks
  (widths 160, 256), each an overlapping patch embedding (3x3 conv, stride 2, layer norm), one
  tokenised MLP block and a layer norm. It returns all five outputs, finest first, at strides
  2, 4, 8, 16 and 32: the first four are the decoder's skips, the last (stride 32, 256 channels)
  is the bottleneck, which the domain check and the domain classifier read.
- **Decoder** (``UNeXtDecoder``), symmetric: two tokenised levels (3x3 conv + batch norm,
  bilinear 2x upsampling, ReLU, skip added, a tokenised MLP block, layer norm) back to stride 8,
  then three convolutional levels (the same without the MLP block) to full resolution; the last
  has no skip and no batch norm, as in the official code. Skips are added, not concatenated.
- **Head**: the segmenter's 1x1 conv on the decoder's stride-1 output (the paper's ``final``).
- **Deep supervision** (not in the paper, which trains on the final map only): one auxiliary map
  per decoder level that receives a skip, at strides 16, 8, 4 and 2.

The tokenised MLP block follows the official code: ``x + DropPath(ShiftedMLP(LayerNorm(x)))``,
where the shifted MLP splits the channels into ``shift_size`` groups and shifts group ``i`` by
``i - shift_size // 2`` tokens (zero filled) along the width, then applies a linear layer, a
depthwise 3x3 conv and GELU, shifts along the height and applies the second linear layer. (The
official code shifts along the height first; the paper's figure and text shift along the width
first, which is followed here.) Channels are split with ``tensor_split``, so there are always
``shift_size`` groups (the official ``chunk`` gives fewer when they do not divide evenly).

The tokens stay in NHWC tensors throughout (the layer norm and the linear layers act on the
last axis; the depthwise conv sees the same memory as a channels-last NCHW tensor), so no
reshapes to ``(B, N, C)`` are needed and any height and width work. The model has no ImageNet
encoder: it is trained from scratch.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import DropPath, trunc_normal_
from torch import nn

# five 2x downsamplings (three max pools, two strided patch embeddings)
STRIDE = 32


class ConvBlock(nn.Module):
    """3x3 conv + batch norm, then 2x2 max pool + ReLU (the paper's convolutional stage)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(F.max_pool2d(self.bn(self.conv(x)), 2))


def shift_tokens(x: torch.Tensor, groups: int, dim: int) -> torch.Tensor:
    """NHWC ``x`` with its channels split into ``groups`` groups, group ``i`` shifted by
    ``i - groups // 2`` tokens along ``dim`` (1: height, 2: width), zeros shifted in."""
    pad = groups // 2
    size = x.shape[dim]
    padding = [0, 0] * (x.ndim - 1 - dim) + [pad, pad]  # F.pad lists the last axis first
    padded = F.pad(x, padding)
    groups_of_channels = padded.tensor_split(groups, dim=-1)
    parts = [
        part.narrow(dim, pad - shift, size)
        for part, shift in zip(groups_of_channels, range(-pad, pad + 1), strict=True)
    ]
    return torch.cat(parts, dim=-1)


class ShiftedMLP(nn.Module):
    """Shift along the width, linear, depthwise conv, GELU, shift along the height, linear."""

    def __init__(self, dim: int, hidden: int, shift_size: int) -> None:
        super().__init__()
        self.shift_size = shift_size
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc1(shift_tokens(x, self.shift_size, dim=2))
        # NHWC permuted to NCHW is a channels-last tensor: the conv reads it without a copy
        x = self.dwconv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self.fc2(shift_tokens(self.act(x), self.shift_size, dim=1))


class TokenisedBlock(nn.Module):
    """The tokenised MLP block on NHWC tokens, then the stage's layer norm."""

    def __init__(self, dim: int, mlp_ratio: float, shift_size: int, drop_path: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.mlp = ShiftedMLP(dim, max(1, int(dim * mlp_ratio)), shift_size)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.apply(init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm2(x + self.drop_path(self.mlp(self.norm1(x))))


class OverlapPatchEmbed(nn.Module):
    """3x3 conv with stride 2 and a layer norm: NCHW in, NHWC tokens at half the size out."""

    def __init__(self, in_channels: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, 3, stride=2, padding=1)
        self.norm = nn.LayerNorm(dim)
        self.apply(init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


def init_weights(module: nn.Module) -> None:
    """The official initialisation of the tokenised parts (truncated normal linear layers,
    He-style convs by fan-out, unit layer norms)."""
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d):
        fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
        nn.init.normal_(module.weight, 0.0, (2.0 / (fan_out // module.groups)) ** 0.5)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def drop_path_rates(rate: float) -> tuple[float, float]:
    """The drop-path rates of the stride-16 and the stride-32 block (the official code's
    ``linspace(0, rate, 3)[:2]``, which its decoder reuses: stride 16 the first, 8 the second)."""
    return 0.0, rate / 2


def check_arguments(embed_dims: Sequence[int], mlp_ratio: float, shift_size: int) -> None:
    """``ValueError`` naming the argument when UNeXt cannot be built with these values."""
    if len(embed_dims) != 5:
        raise ValueError(
            f"unext needs embed_dims of 5 widths (3 conv stages, 2 tokenised stages); "
            f"got {list(embed_dims)}"
        )
    if shift_size % 2 == 0:
        raise ValueError(f"unext needs an odd shift_size (shifts -k..k); got {shift_size}")
    narrowest = min(embed_dims[2:])  # the tokenised blocks' widths, encoder and decoder
    if narrowest < shift_size or int(narrowest * mlp_ratio) < shift_size:
        raise ValueError(
            f"unext shifts {shift_size} channel groups: the tokenised widths (embed_dims[2:] "
            f"and their hidden widths x mlp_ratio {mlp_ratio}) must be at least {shift_size}"
        )


class UNeXtEncoder(nn.Module):
    """UNeXt's encoder: NCHW features at strides 2, 4, 8, 16, 32 (widths ``embed_dims``)."""

    def __init__(
        self,
        embed_dims: Sequence[int] = (16, 32, 128, 160, 256),
        mlp_ratio: float = 1.0,
        shift_size: int = 5,
        drop_path_rate: float = 0.0,
        input_size: int = 256,
    ) -> None:
        super().__init__()
        check_arguments(embed_dims, mlp_ratio, shift_size)
        widths = [3, *embed_dims]
        self.conv_stages = nn.ModuleList(ConvBlock(widths[i], widths[i + 1]) for i in range(3))
        self.patch_embeds = nn.ModuleList(
            OverlapPatchEmbed(widths[i], widths[i + 1]) for i in (3, 4)
        )
        self.blocks = nn.ModuleList(
            TokenisedBlock(widths[i], mlp_ratio, shift_size, rate)
            for i, rate in zip((4, 5), drop_path_rates(drop_path_rate), strict=True)
        )
        self.name = "unext"
        self.input_size = input_size
        self.channels: list[int] = list(embed_dims)
        self.reductions: list[int] = [2, 4, 8, 16, 32]
        self.fixed_size = False  # no grid is fixed at build time: any multiple of 32 is taken

    def check_input_size(self, height: int, width: int) -> None:
        """Raise ``ValueError`` unless both sides are positive multiples of 32."""
        if height <= 0 or width <= 0 or height % STRIDE or width % STRIDE:
            raise ValueError(
                f"unext takes inputs whose sides are multiples of {STRIDE} (five 2x "
                f"downsamplings, each skip added at twice the deeper size); got {height} x {width}"
            )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        self.check_input_size(x.shape[-2], x.shape[-1])
        features = []
        for stage in self.conv_stages:
            x = stage(x)
            features.append(x)
        for embed, block in zip(self.patch_embeds, self.blocks, strict=True):
            x = block(embed(x)).permute(0, 3, 1, 2)
            features.append(x)
        return features


class UpLevel(nn.Module):
    """3x3 conv (+ batch norm), bilinear 2x upsampling, ReLU; the skip added, then the
    tokenised MLP block on the sum where the level has one."""

    def __init__(
        self, in_channels: int, out_channels: int, block: TokenisedBlock | None, norm: bool = True
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.bn = nn.BatchNorm2d(out_channels) if norm else nn.Identity()
        self.block = block

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        size = skip.shape[-2:] if skip is not None else (2 * x.shape[-2], 2 * x.shape[-1])
        x = self.bn(self.conv(x))
        x = F.relu(F.interpolate(x, size=size, mode="bilinear", align_corners=False))
        if skip is not None:
            x = x + skip
        if self.block is not None:
            x = self.block(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return x


class UNeXtDecoder(nn.Module):
    """The symmetric decoder: skips added at strides 16, 8, 4, 2, fused output at stride 1."""

    def __init__(
        self,
        channels: Sequence[int],
        mlp_ratio: float = 1.0,
        shift_size: int = 5,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        check_arguments(channels, mlp_ratio, shift_size)
        rates = drop_path_rates(drop_path_rate)
        self.levels = nn.ModuleList(
            UpLevel(
                channels[i + 1],
                channels[i],
                TokenisedBlock(channels[i], mlp_ratio, shift_size, rates[3 - i])
                if i >= 2
                else None,
            )
            for i in (3, 2, 1, 0)
        )
        self.final = UpLevel(channels[0], channels[0], None, norm=False)
        self.level_channels = [channels[i] for i in (3, 2, 1, 0)]
        self.out_channels = channels[0]

    def forward(self, features: Sequence[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = features[-1]
        levels = []
        for level, skip in zip(self.levels, reversed(features[:-1]), strict=True):
            x = level(x, skip)
            levels.append(x)
        return self.final(x), levels


def build_unext_encoder(
    name: str, input_size: int, pretrained: str | os.PathLike | None, args: dict[str, Any]
) -> UNeXtEncoder:
    """The registry's builder of UNeXt's encoder (``EncoderBuilder``)."""
    if pretrained is not None:
        raise ValueError(
            f"{name} has no ImageNet encoder weights file: it is trained from scratch "
            "(leave out pretrained / --pretrained)"
        )
    return UNeXtEncoder(input_size=input_size, **args)


def build_unext_decoder(encoder: nn.Module, config: dict[str, Any]) -> UNeXtDecoder:
    """The registry's builder of UNeXt's decoder (``DecoderBuilder``): it mirrors the encoder."""
    args = config["encoder_args"]
    return UNeXtDecoder(
        encoder.channels,
        mlp_ratio=args.get("mlp_ratio", 1.0),
        shift_size=args.get("shift_size", 5),
        drop_path_rate=args.get("drop_path_rate", 0.0),
    )
