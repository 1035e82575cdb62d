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
    state dict) or ``None`` for random initialisation. ``timm_args`` go to ``timm.create_model``
    unchecked: the registry decides what may reach them.
    """

    def __init__(
        self,
        name: str,
        img_size: int,
        pretrained: str | os.PathLike | None = None,
        **timm_args: Any,
    ) -> None:
        import timm
        from timm.layers import Format

        super().__init__()
        args = {"features_only": True, "img_size": img_size, **timm_args}
        self.model = timm.create_model(name, pretrained=False, **args)
        if pretrained is not None:
            load_encoder_weights(self.model, pretrained)
        self.name = name
        self.input_size = img_size
        self.channels: list[int] = list(self.model.feature_info.channels())
        self.reductions: list[int] = list(self.model.feature_info.reduction())
        # timm says how each backbone lays out its features (Swin keeps tokens channels-last);
        # everything downstream expects NCHW.
        self.channels_last_output = Format(self.model.output_fmt) is Format.NHWC
        # A timm patch embedding with strict_img_size takes only the size it was built for, and
        # CoaT's forward also reshapes its tokens to that grid: such a model takes one tile size.
        self.fixed_size = any(getattr(m, "strict_img_size", False) for m in self.model.modules())

    def check_input_size(self, height: int, width: int) -> None:
        """Raise ``ValueError`` unless the encoder takes ``height x width`` inputs."""
        if self.fixed_size and (height, width) != (self.input_size, self.input_size):
            raise ValueError(
                f"{self.name} takes only {self.input_size} x {self.input_size} px inputs (its "
                f"patch embeddings fix the grid); got {height} x {width}. To run other tiles, "
                f"build the model with input_size={height}"
            )
        stride = max(self.reductions)
        if height % stride or width % stride:
            raise ValueError(
                f"{self.name} takes inputs whose sides are multiples of {stride}; "
                f"got {height} x {width}"
            )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        self.check_input_size(x.shape[-2], x.shape[-1])
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
