"""MT-UNet: Mixed Transformer U-Net (Wang et al., "Mixed Transformer U-Net for Medical Image
Segmentation", ICASSP 2022; official code github.com/Dootmaan/MT-UNet), as encoder -> decoder.

**Encoder** (``MTUNetEncoder``): a convolutional stem of residual double-conv blocks at strides
1, 2, 4 (``conv_widths``, max-pooling between), a max-pool and a 1x1 conv-BN-ReLU to stride 8,
then Mixed Transformer Module stages (``widths``, ``depths``; ``mt_attention``) at strides 8 and
16, each followed by a 2x2 stride-2 conv-BN-ReLU, and the MTM bottleneck at stride 32. It returns
six NCHW maps, finest first: the three stem outputs (stride 1, 2, 4), the two MTM stage outputs
(stride 8, 16) and the bottleneck (stride 32, the last, which the domain check reads). All but
the bottleneck are the U-Net's skips.

**Decoder** (``MTUNetDecoder``), mirroring it: two MTM stages (stride 16, then 8), each a 2x2
transposed conv, concatenation with the skip and ``depths`` MTMs (the deeper one reduces the
concatenation by a 1x1 conv first; the shallower one keeps the doubled width, as the official
code does); then three convolutional stages (stride 4, 2, 1): transposed conv, concatenation,
residual double conv; the last gives ``decoder_channels`` at full resolution. **Head**: the
segmenter's 1x1 conv on that map.

**Deep supervision**: the paper has none; the segmenter's auxiliary heads tap the outputs of the
four decoder stages before the last (strides 2, 4, 8, 16), finest first.

Where this differs from the official code, by choice: no absolute position embedding (it fixes
the grid at 28 x 28 tokens, i.e. 224 px tiles; the Gaussian weighting already says where a
window is), so the model takes any tile whose sides are multiples of 32, square or not; windows
pad to whole windows rather than assuming square grids; the axial logits are scaled by
``1/sqrt(C)`` and the Gaussian's width is one learnt positive ``sigma`` per module (the official
code learns a shift and a bias, and the bias cancels in the softmax); DropPath on the MTM
residuals (off in the full configuration, as the paper trains without it).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from training.models.decoders import conv_bn_relu
from training.models.mt_attention import MTMStage


class DoubleConv(nn.Module):
    """MT-UNet's residual double conv: conv-BN-ReLU, conv-BN, plus a 1x1 conv-BN of that, ReLU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.convs = nn.Sequential(
            conv_bn_relu(in_channels, out_channels, 3),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        self.side = nn.Sequential(
            nn.Conv2d(out_channels, out_channels, 1), nn.BatchNorm2d(out_channels)
        )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.convs(x)
        return self.relu(x + self.side(x))


class MTUNetEncoder(nn.Module):
    """MT-UNet's encoder: conv stem, MTM stages, MTM bottleneck; six NCHW maps, finest first."""

    def __init__(self, name: str, input_size: int, args: dict[str, Any]) -> None:
        super().__init__()
        conv_widths = list(args["conv_widths"])
        widths, depths = list(args["widths"]), list(args["depths"])
        if len(depths) != len(widths) or len(widths) < 2:
            raise ValueError(
                f"{name}: widths and depths must have one entry per MTM stage (at least 2, the "
                f"last the bottleneck); got widths {widths}, depths {depths}"
            )
        heads, window = int(args["num_heads"]), int(args["window_size"])
        ea = (int(args["memory_units"]), int(args["ea_expansion"]))
        total = sum(depths)
        rate = float(args.get("drop_path_rate", 0.0))
        rates = [rate * i / max(total - 1, 1) for i in range(total)]  # rising with depth
        self.stem = nn.ModuleList(
            DoubleConv(c_in, c_out)
            for c_in, c_out in zip([3, *conv_widths[:-1]], conv_widths, strict=True)
        )
        self.pool = nn.MaxPool2d(2)
        self.embed = conv_bn_relu(conv_widths[-1], widths[0], 1)
        self.stages = nn.ModuleList()
        self.downs = nn.ModuleList()
        for i, (width, depth) in enumerate(zip(widths, depths, strict=True)):
            start = sum(depths[:i])
            drop = rates[start : start + depth]
            self.stages.append(MTMStage(width, depth, heads, window, ea, drop))
            if i < len(widths) - 1:
                self.downs.append(_down(width, widths[i + 1]))
        self.name = name
        self.input_size = input_size
        # nothing is fixed at build (no position embedding, windows pad): any multiple of 32
        self.fixed_size = False
        self.channels: list[int] = conv_widths + widths
        self.reductions: list[int] = [2**i for i in range(len(self.channels))]

    def check_input_size(self, height: int, width: int) -> None:
        """Raise ``ValueError`` unless both sides are positive multiples of the deepest stride."""
        stride = self.reductions[-1]
        if height <= 0 or width <= 0 or height % stride or width % stride:
            raise ValueError(
                f"{self.name} takes inputs whose sides are multiples of {stride}; "
                f"got {height} x {width}"
            )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        self.check_input_size(x.shape[-2], x.shape[-1])
        features = []
        for i, block in enumerate(self.stem):
            x = block(x if i == 0 else self.pool(x))
            features.append(x)
        x = self.embed(self.pool(x))
        for i, stage in enumerate(self.stages):
            x = stage(x if i == 0 else self.downs[i - 1](x))
            features.append(x)
        return features


def _down(in_channels: int, out_channels: int) -> nn.Sequential:
    """The official patch merging: 2x2 stride-2 conv, BN, ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 2, stride=2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class _UpStage(nn.Module):
    """Transposed conv x2, concatenation with the skip, then ``block``; ``reduce`` (a 1x1 conv
    of the concatenation) or ``None``."""

    def __init__(self, up: nn.Module, block: nn.Module, reduce: nn.Module | None = None) -> None:
        super().__init__()
        self.up, self.reduce, self.block = up, reduce, block

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = torch.cat([self.up(x), skip], dim=1)
        if self.reduce is not None:
            x = self.reduce(x)
        return self.block(x)


class MTUNetDecoder(nn.Module):
    """MT-UNet's decoder: MTM up-stages on the transformer skips, conv up-stages on the stem's.

    ``forward(features)`` returns the full-resolution map and the four earlier stages' outputs
    (finest first) for deep supervision."""

    def __init__(self, args: dict[str, Any], decoder_channels: int) -> None:
        """``args``: the encoder's (the decoder mirrors it); ``decoder_channels``: the width of
        the full-resolution map the head reads."""
        super().__init__()
        conv_widths, widths, depths = args["conv_widths"], args["widths"], args["depths"]
        heads, window = int(args["num_heads"]), int(args["window_size"])
        ea = (int(args["memory_units"]), int(args["ea_expansion"]))
        self.stages = nn.ModuleList()
        stage_channels = []
        channels = widths[-1]
        for i in range(len(widths) - 2, -1, -1):
            up = nn.ConvTranspose2d(channels, widths[i], 2, stride=2)
            # the shallowest MTM stage keeps the concatenation's width (official code)
            reduce = nn.Conv2d(2 * widths[i], widths[i], 1) if i > 0 else None
            channels = widths[i] if i > 0 else 2 * widths[i]
            block = MTMStage(channels, depths[i], heads, window, ea, [0.0] * depths[i])
            self.stages.append(_UpStage(up, block, reduce))
            stage_channels.append(channels)
        for i in range(len(conv_widths) - 1, -1, -1):
            up = nn.ConvTranspose2d(channels, conv_widths[i], 2, stride=2)
            channels = conv_widths[i] if i > 0 else decoder_channels
            self.stages.append(_UpStage(up, DoubleConv(2 * conv_widths[i], channels)))
            stage_channels.append(channels)
        self.out_channels = channels
        # every stage's output but the last, finest first
        self.level_channels = stage_channels[:-1][::-1]

    def forward(self, features: Sequence[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = features[-1]
        outputs = []
        for stage, skip in zip(self.stages, reversed(features[:-1]), strict=True):
            x = stage(x, skip)
            outputs.append(x)
        return x, outputs[:-1][::-1]


def mt_unet_encoder(
    name: str, input_size: int, pretrained: str | os.PathLike | None, args: dict[str, Any]
) -> nn.Module:
    """The registry's builder of ``MTUNetEncoder`` (``pretrained`` is refused: none exists)."""
    if pretrained is not None:
        raise ValueError(
            f"{name} has no ImageNet encoder file: MT-UNet is trained from scratch "
            "(leave out --pretrained)"
        )
    return MTUNetEncoder(name, input_size, args)


def mt_unet_decoder(encoder: nn.Module, config: dict[str, Any]) -> nn.Module:
    """The registry's builder of ``MTUNetDecoder`` (it mirrors the encoder's arguments)."""
    return MTUNetDecoder(config["encoder_args"], int(config["decoder_channels"]))
