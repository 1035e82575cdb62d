"""MT-UNet's Mixed Transformer Module (Wang et al., ICASSP 2022): LGG-SA, then External Attention.

Tokens are kept channels-last, ``(B, H, W, C)``, so that windows and axial lines are reshapes.

* **LGG-SA** (local-global Gaussian-weighted self-attention): multi-head self-attention inside
  non-overlapping ``window x window`` windows (local); each window is pooled to one coarse token
  by learned weights over its tokens (the official code's "DlightConv"); the coarse tokens attend
  to each other along their row and their column (axial global attention) with the logits
  lowered by ``d^2 / (2 sigma^2)``, ``d`` the distance between the two windows and ``sigma`` a
  learnable width (the Gaussian weighting); the global result is upsampled to the token grid,
  concatenated with the local one and fused by a linear layer. Grids that are not whole windows
  are padded at the bottom and right (as timm's Swin pads) and cropped back.
* **EA** (external attention, Guo et al. 2021, multi-head as in MT-UNet): two small linear
  memories ``M_k`` and ``M_v`` shared by all samples; attention ``x M_k^T`` is normalised twice
  (softmax over the tokens, then L1 over the memory units), the output is ``attn M_v``.

The MTM is ``x + LGG-SA(LN(x))`` then ``x + EA(LN(x))``, as in the official code: it has no
separate feed-forward layer, EA's two memories with their normalisation are its position-wise
two-layer map (this is what gives the paper's parameter count).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.layers import DropPath, trunc_normal_
from torch import nn


def pad_to_windows(x: torch.Tensor, window: int) -> torch.Tensor:
    """``(B, H, W, C)`` padded with zeros at the bottom and right to whole windows."""
    pad_h = -x.shape[1] % window
    pad_w = -x.shape[2] % window
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    return x


class WindowAttention(nn.Module):
    """Multi-head self-attention inside non-overlapping windows of a padded grid."""

    def __init__(self, dim: int, num_heads: int, window: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.window = window
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, Hp, Wp, C)`` with ``Hp, Wp`` whole windows -> windows ``(B, Gh, Gw, w*w, C)``."""
        b, hp, wp, c = x.shape
        w = self.window
        gh, gw = hp // w, wp // w
        windows = x.reshape(b, gh, w, gw, w, c).permute(0, 1, 3, 2, 4, 5)
        windows = windows.reshape(b * gh * gw, w * w, c)
        qkv = self.qkv(windows).reshape(-1, w * w, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(1, 2).reshape(-1, w * w, c)
        return self.proj(out).reshape(b, gh, gw, w * w, c)


class WindowPool(nn.Module):
    """One coarse token per window: its tokens weighted by a softmax that a linear layer reads
    from the window's mean (the official code's "DlightConv")."""

    def __init__(self, dim: int, window: int) -> None:
        super().__init__()
        self.weights = nn.Linear(dim, window * window)

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        """``(B, Gh, Gw, w*w, C)`` -> ``(B, Gh, Gw, C)``."""
        weights = self.weights(windows.mean(dim=-2)).softmax(dim=-1)
        return (windows * weights.unsqueeze(-1)).sum(dim=-2)


class GaussianAxialAttention(nn.Module):
    """Self-attention of each coarse token along its row and its column, the logits lowered by
    ``d^2 / (2 sigma^2)`` for a distance of ``d`` windows; ``sigma`` is learnt (log-scale, so it
    stays positive). Single-headed, as in the official code."""

    def __init__(self, dim: int, sigma: float = 2.0) -> None:
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim)
        self.log_sigma = nn.Parameter(torch.tensor(math.log(sigma)))
        self.scale = dim**-0.5

    def _along_last_grid_axis(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        n = q.shape[-2]
        positions = torch.arange(n, device=q.device, dtype=q.dtype)
        distance2 = (positions[:, None] - positions[None, :]) ** 2
        gaussian = -distance2 / (2 * torch.exp(2 * self.log_sigma.to(q.dtype)))
        logits = (q @ k.transpose(-1, -2)) * self.scale + gaussian
        return logits.softmax(dim=-1) @ v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, Gh, Gw, C)`` -> ``(B, Gh, Gw, C)``: the row and the column results summed."""
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        rows = self._along_last_grid_axis(q, k, v)
        t = [a.transpose(1, 2) for a in (q, k, v)]
        columns = self._along_last_grid_axis(*t).transpose(1, 2)
        return rows + columns


class LGGSelfAttention(nn.Module):
    """Local window attention plus Gaussian-weighted global attention among pooled windows."""

    def __init__(self, dim: int, num_heads: int, window: int) -> None:
        super().__init__()
        self.window = window
        self.local = WindowAttention(dim, num_heads, window)
        self.pool = WindowPool(dim, window)
        self.glob = GaussianAxialAttention(dim)
        self.fuse = nn.Linear(2 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, H, W, C)`` -> ``(B, H, W, C)``."""
        b, h, w, c = x.shape
        padded = pad_to_windows(x, self.window)
        hp, wp = padded.shape[1:3]
        windows = self.local(padded)
        gh, gw, s = windows.shape[1], windows.shape[2], self.window
        local = windows.reshape(b, gh, gw, s, s, c).permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, c)
        coarse = self.glob(self.pool(windows)).permute(0, 3, 1, 2)
        coarse = F.interpolate(coarse, size=(hp, wp), mode="bilinear", align_corners=False)
        fused = self.fuse(torch.cat([coarse.permute(0, 2, 3, 1), local], dim=-1))
        return fused[:, :h, :w]


class ExternalAttention(nn.Module):
    """Multi-head external attention: shared memories ``M_k`` (``memory_k``) and ``M_v``
    (``memory_v``) of ``units`` rows, double normalisation (softmax over tokens, L1 over units).

    As in MT-UNet, the tokens are first widened ``expansion`` times and split into
    ``expansion * num_heads`` heads that share the two memories."""

    def __init__(self, dim: int, num_heads: int, units: int, expansion: int) -> None:
        super().__init__()
        self.heads = num_heads * expansion
        head_dim = dim * expansion // self.heads
        self.query = nn.Linear(dim, dim * expansion)
        self.memory_k = nn.Linear(head_dim, units, bias=False)
        self.memory_v = nn.Linear(units, head_dim, bias=False)
        self.proj = nn.Linear(dim * expansion, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, H, W, C)`` -> ``(B, H, W, C)``."""
        b, h, w, _ = x.shape
        q = self.query(x).reshape(b, h * w, self.heads, -1).transpose(1, 2)
        attn = self.memory_k(q).softmax(dim=-2)  # over the tokens of a sample
        attn = attn / (attn.sum(dim=-1, keepdim=True) + 1e-9)  # over the memory units
        out = self.memory_v(attn).transpose(1, 2).reshape(b, h, w, -1)
        return self.proj(out)


class MixedTransformerModule(nn.Module):
    """MTM: ``x + LGG-SA(LN(x))``, then ``x + EA(LN(x))``, on ``(B, H, W, C)`` tokens."""

    def __init__(
        self, dim: int, num_heads: int, window: int, ea: tuple[int, int], drop_path: float = 0.0
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"MTM width {dim} is not divisible by num_heads {num_heads}")
        units, expansion = ea
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.lgg = LGGSelfAttention(dim, num_heads, window)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.ea = ExternalAttention(dim, num_heads, units, expansion)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.lgg(self.norm1(x)))
        return x + self.drop_path(self.ea(self.norm2(x)))


class MTMStage(nn.Module):
    """``depth`` MTMs on an NCHW map (tokens are channels-last inside)."""

    def __init__(
        self, dim: int, depth: int, num_heads: int, window: int, ea: tuple[int, int], dpr: list
    ) -> None:
        super().__init__()
        self.blocks = nn.Sequential(
            *(MixedTransformerModule(dim, num_heads, window, ea, dpr[i]) for i in range(depth))
        )
        self.apply(_init_linear)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2).contiguous()


def _init_linear(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
