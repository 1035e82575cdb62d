"""timm encoders with ``features_only``, returning NCHW feature maps at strides 4, 8, 16, 32."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn


class TimmEncoder(nn.Module):
    """A timm backbone as a list of NCHW feature maps; ``channels`` lists their widths.

    Weights never come from the network: ``pretrained`` is a local file (safetensors or a torch
    state dict) or ``None`` for random initialisation.
    """

    def __init__(
        self,
        name: str,
        img_size: int,
        pretrained: str | os.PathLike | None = None,
        **kwargs: Any,
    ) -> None:
        import timm

        super().__init__()
        self.model = timm.create_model(
            name, pretrained=False, features_only=True, img_size=img_size, **kwargs
        )
        self.channels: list[int] = list(self.model.feature_info.channels())
        self.reductions: list[int] = list(self.model.feature_info.reduction())
        # timm's Swin keeps its tokens channels-last; everything downstream expects NCHW.
        self.channels_last_output = name.startswith("swin")
        if pretrained is not None:
            load_encoder_weights(self.model, pretrained)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = self.model(x)
        if self.channels_last_output:
            features = [f.permute(0, 3, 1, 2) for f in features]
        return [f.contiguous() for f in features]


def load_encoder_weights(model: nn.Module, path: str | os.PathLike) -> None:
    """Load ImageNet (or other) backbone weights from a local file into a features-only model."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"pretrained encoder weights not found: {path} (napari-ftu never downloads weights; "
            "give the path of a local .safetensors or .pth file)"
        )
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        if isinstance(state, dict) and "model" in state:
            state = state["model"]
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise ValueError(f"{path.name}: no tensor in this file fits the encoder (wrong model?)")
    model.load_state_dict(usable, strict=False)
