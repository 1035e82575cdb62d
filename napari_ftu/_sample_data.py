"""napari sample data: one synthetic phantom per organ (generated, nothing downloaded)."""

from __future__ import annotations

from typing import Any

LayerData = tuple[Any, dict[str, Any], str]


def phantom_layers(organ: str, size: int = 1536, seed: int = 0) -> list[LayerData]:
    """A phantom slide and its ground-truth FTU labels, scaled in micrometres."""
    from training.synthetic import make_phantom

    image, mask, meta = make_phantom(organ, "hpa", size=size, seed=seed)
    scale = (meta["pixel_size_um"],) * 2
    meta_common = {"organ": organ, "pixel_size_um": meta["pixel_size_um"], "synthetic": True}
    return [
        (
            image,
            {
                "name": f"{organ} phantom",
                "rgb": True,
                "scale": scale,
                "units": ("um", "um"),
                "metadata": meta_common,
            },
            "image",
        ),
        (
            mask,
            {
                "name": f"{organ} phantom ground truth",
                "scale": scale,
                "units": ("um", "um"),
                "opacity": 0.4,
                "metadata": meta_common,
            },
            "labels",
        ),
    ]


def phantom_kidney() -> list[LayerData]:
    """Kidney phantom with glomeruli."""
    return phantom_layers("kidney")


def phantom_largeintestine() -> list[LayerData]:
    """Large intestine phantom with crypts."""
    return phantom_layers("largeintestine")


def phantom_spleen() -> list[LayerData]:
    """Spleen phantom with white pulp."""
    return phantom_layers("spleen")


def phantom_lung() -> list[LayerData]:
    """Lung phantom with alveoli."""
    return phantom_layers("lung")


def phantom_prostate() -> list[LayerData]:
    """Prostate phantom with glands."""
    return phantom_layers("prostate")
