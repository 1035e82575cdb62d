"""Swin-Unet's decoder: Swin Transformer blocks with patch expanding, mirroring a Swin encoder.

Cao et al., 2021, "Swin-Unet: Unet-like Pure Transformer for Medical Image Segmentation"
(arXiv:2105.05537; the authors' ``SwinTransformerSys``). Mapped onto encoder -> decoder -> head:

- **Encoder**: timm's Swin (the registry's ``SWIN`` family, ``features_only``), which also takes
  ImageNet weights from a local file as the paper initialises it. Its four feature maps (strides
  4, 8, 16, 32; C, 2C, 4C, 8C channels) are the outputs of the Swin blocks of each stage. The
  first three are the skips; the last (patch merging and the stage-4 blocks at 8C) is the
  paper's bottleneck, kept in the encoder so that the domain check reads it.
- **Decoder** (this module): a LayerNorm on the bottleneck, a patch expanding to stride 16, then
  per level (16, 8, 4): the skip concatenated and linearly projected back to the level's width,
  the level's Swin blocks (the encoder stage's depth, heads, window, MLP ratio and drop path
  rates, read off the built encoder so the decoder takes the same non-square grids), and a patch
  expanding (a linear layer doubling the channels, rearranged to 2x resolution at half the
  channels) to the next level. After the stride-4 level: a LayerNorm and the final x4 patch
  expanding (a linear layer to 16C, rearranged to full resolution at C channels, LayerNorm).
  The fused map is that full-resolution C-channel map.
- **Head**: ``Segmenter``'s 1x1 conv (the paper's 1x1 projection to the classes).

The skips are timm's post-block stage outputs; the authors' code taps each stage's input (after
the previous patch merging), which is the same stage boundary one block group earlier.
Deep supervision is not in the paper: the decoder taps one auxiliary map per level where it fits
(the outputs of the decoder blocks at strides 4, 8 and 16, and the normalised bottleneck at 32),
finest first. The paper copies the encoder's ImageNet weights into the mirrored decoder stages;
here the decoder is always trained from a truncated-normal start.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn


class PatchExpand(nn.Module):
    """A linear layer widening the channels ``scale**2 / 2`` times, rearranged to ``scale``x
    resolution at ``channels / 2`` channels (``scale`` 2), or ``channels`` (the final x4)."""

    def __init__(self, channels: int, scale: int = 2) -> None:
        super().__init__()
        self.scale = scale
        self.out_channels = channels // 2 if scale == 2 else channels
        self.expand = nn.Linear(channels, self.out_channels * scale * scale, bias=False)
        self.norm = nn.LayerNorm(self.out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, H, W, C)`` tokens -> ``(B, scale*H, scale*W, out_channels)``."""
        b, h, w, _ = x.shape
        s, c = self.scale, self.out_channels
        # the norm of each output token's channels is the same before the rearrangement
        x = self.norm(self.expand(x).reshape(b, h, w, s, s, c))
        return x.permute(0, 1, 3, 2, 4, 5).reshape(b, h * s, w * s, c)


def _swin_stages(encoder: nn.Module) -> list[nn.Module]:
    from timm.models.swin_transformer import SwinTransformerStage

    stages = [m for m in encoder.modules() if isinstance(m, SwinTransformerStage)]
    if len(stages) != len(encoder.channels) or len(stages) < 2:
        raise ValueError(
            f"the Swin-Unet decoder mirrors a Swin encoder with one stage per feature map; "
            f"{getattr(encoder, 'name', type(encoder).__name__)} has {len(stages)} Swin stages "
            f"for {len(encoder.channels)} feature maps"
        )
    return stages


def _mirrored_stage(stage: nn.Module) -> nn.Module:
    """Swin blocks as in the encoder ``stage`` (without its patch merging): the same width,
    depth, heads, window and shift at the same grid, drop path rates and mask mode."""
    from timm.models.swin_transformer import SwinTransformerStage

    blocks = list(stage.blocks)
    first = blocks[0]
    drop_path = [float(getattr(b.drop_path1, "drop_prob", 0.0)) for b in blocks]
    return SwinTransformerStage(
        dim=first.dim,
        out_dim=first.dim,
        input_resolution=first.input_resolution,
        depth=len(blocks),
        downsample=False,
        num_heads=first.attn.num_heads,
        # the encoder's window after timm clipped it to the built grid: the same clip again
        window_size=first.window_size,
        dynamic_mask=first.dynamic_mask,
        mlp_ratio=first.mlp_ratio,
        drop_path=drop_path,
    )


class SwinUnetDecoder(nn.Module):
    """Swin-Unet's symmetric decoder over a timm Swin encoder's four stages (see the module)."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        stages = _swin_stages(encoder)
        channels = list(encoder.channels)
        self.bottleneck_norm = nn.LayerNorm(channels[-1])
        self.first_expand = PatchExpand(channels[-1])
        # decoder levels from coarse to fine: the skips of the encoder stages before the last
        self.concat_back = nn.ModuleList(nn.Linear(2 * c, c) for c in reversed(channels[:-1]))
        self.stages = nn.ModuleList(_mirrored_stage(s) for s in reversed(stages[:-1]))
        self.expands = nn.ModuleList(PatchExpand(c) for c in reversed(channels[1:-1]))
        self.norm_up = nn.LayerNorm(channels[0])
        self.final_expand = PatchExpand(channels[0], scale=4)
        self.out_channels = channels[0]
        self.level_channels = list(channels)
        self.apply(_init_weights)

    def forward(self, features: Sequence[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``features``: the encoder's NCHW maps, finest first. Returns the full-resolution fused
        map and one map per level (strides 4, 8, 16, 32), all NCHW."""
        tokens = [f.permute(0, 2, 3, 1) for f in features]  # Swin blocks take (B, H, W, C)
        x = self.bottleneck_norm(tokens[-1])
        levels = [x]
        x = self.first_expand(x)
        skips = tokens[-2::-1]
        for i, (concat, stage, skip) in enumerate(
            zip(self.concat_back, self.stages, skips, strict=True)
        ):
            x = stage(concat(torch.cat([x, skip], dim=-1)))
            levels.append(x)
            if i < len(self.expands):
                x = self.expands[i](x)
        fused = self.final_expand(self.norm_up(x))
        # a channels-last view: the full-resolution map is the largest tensor of the model, and
        # the head's 1x1 conv takes either layout (a contiguous copy costs time and memory)
        return fused.permute(0, 3, 1, 2), [_nchw(level) for level in reversed(levels)]


def _nchw(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 3, 1, 2).contiguous()


def _init_weights(module: nn.Module) -> None:
    # as Swin and the authors' code: linear layers truncated normal (std 0.02), zero biases
    from timm.layers import trunc_normal_

    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def swin_unet_decoder(encoder: nn.Module, config: dict[str, Any]) -> nn.Module:
    """The registry's decoder builder: everything is read off the built Swin ``encoder``."""
    return SwinUnetDecoder(encoder)
