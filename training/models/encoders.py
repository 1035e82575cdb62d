"""timm encoders with ``features_only``, returning NCHW feature maps at strides 4, 8, 16, 32."""

from __future__ import annotations

import os
import textwrap
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
        if pretrained is None:
            self.model = timm.create_model(name, pretrained=False, **args)
        else:
            self.model = create_with_weights(name, pretrained, args)
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


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a local weights file: ``.safetensors``, or a torch file (``.pth``, ``.pt``)
    holding a state dict, possibly under ``state_dict``/``model`` (timm's own reader)."""
    from timm.models import load_state_dict

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"pretrained encoder weights not found: {path} (napari-ftu never downloads weights; "
            "give the path of a local .safetensors or .pth file)"
        )
    try:
        # torch files are read with weights_only=True: no code from the file runs
        state = load_state_dict(str(path))
    except Exception as exc:  # torch, safetensors and zip errors alike mean "not readable"
        raise ValueError(f"{path.name} is not a readable weights file: {exc}") from exc
    if not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path.name} holds no state dict of tensors (wrong file?)")
    return state


def create_with_weights(name: str, path: str | os.PathLike, args: dict[str, Any]) -> nn.Module:
    """``timm.create_model(name, features_only=True, ...)`` with backbone weights from ``path``.

    The weights go through timm's own loading: the model's checkpoint filter (key renames of
    older formats, resized relative position tables and patch embeddings), then a strict
    ``load_state_dict`` into the backbone before timm wraps it for features. Every backbone
    tensor must come from the file; only a classifier head in the file is left unused.
    """
    import timm

    path = Path(path)
    state = read_state_dict(path)
    classifier = timm.models.get_pretrained_cfg(name).classifier or ()
    heads = {c.split(".")[0] for c in ([classifier] if isinstance(classifier, str) else classifier)}
    # The head is dropped by its top-level name before timm's filter (which may rename it) and
    # the backbone is built headless (num_classes=0), so timm keeps its strict load.
    state = {k: v for k, v in state.items() if k.split(".")[0] not in heads}
    if not state:
        raise ValueError(f"{path.name} holds only a classifier head, no backbone weights")
    overlay = {
        "state_dict": state,
        "num_classes": 0,
        # No other weight source may be consulted, so nothing can reach the network.
        "file": None,
        "url": None,
        "hf_hub_id": None,
        "hf_hub_filename": None,
        "source": None,
        "custom_load": False,
    }
    # AttributeError: timm's Swin filter looks up each of the file's blocks by name, so a file
    # of a deeper Swin (ImageNet's Swin-T into Swin-Unet's 2, 2, 2, 2) fails before the load
    try:
        model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, **args)
    except (RuntimeError, KeyError, ValueError, AttributeError) as exc:
        detail = textwrap.shorten(" ".join(str(exc).split()), 400)
        raise ValueError(
            f"{path.name} does not fit the encoder {name} (weights of another model?): {detail}"
        ) from None
    # timm keeps its pretrained config (which now holds copies of the weights) on the modules
    for module in model.modules():
        config = getattr(module, "pretrained_cfg", None)
        if isinstance(config, dict):
            config.pop("state_dict", None)
    return model
