"""napari sample data: one synthetic phantom per organ (generated, nothing downloaded), and a
real held-out kidney image with its expert outlines from the shared data, when it is present."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

import numpy as np

LayerData = tuple[Any, dict[str, Any], str]

SHARED_DATA_ENV = "NAPARI_FTU_SHARED_DATA"
KIDNEY_SET = "hubmap-kidney-pas"
# Held out from the default model's training (ids 245 and above, scripts/split_kidney.py); seven
# glomeruli, the most of the held-out tiles.
KIDNEY_SAMPLE_ID = "279"


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


def shared_data_dir() -> Path:
    """The shared data folder: ``$NAPARI_FTU_SHARED_DATA``, else ``shared/data`` beside the
    repository (the layout of a source checkout)."""
    configured = os.environ.get(SHARED_DATA_ENV)
    if configured:
        return Path(configured).expanduser()
    import napari_ftu

    return Path(napari_ftu.__file__).resolve().parents[2] / "shared" / "data"


def real_kidney_layers(image_id: str = KIDNEY_SAMPLE_ID) -> list[LayerData]:
    """A real PAS-stained HuBMAP kidney image and its expert glomerulus outlines (one label per
    glomerulus), scaled in micrometres. Raises FileNotFoundError, saying where it looked, when
    the shared data is absent."""
    from scipy import ndimage

    from training.data.rle import decode
    from training.slides import open_slide

    folder = shared_data_dir()
    if folder.name != KIDNEY_SET:  # the variable may also name the kidney folder itself
        folder = folder / KIDNEY_SET
    path = folder / "train_images" / f"{image_id}.tiff"
    table = folder / "train.csv"
    if not (path.is_file() and table.is_file()):
        raise FileNotFoundError(
            f"the real kidney sample needs {path} and {table}, which are absent; set "
            f"{SHARED_DATA_ENV} to the folder that holds {KIDNEY_SET}/ (the project's shared data)"
        )
    with open(table, newline="") as handle:
        row = next((r for r in csv.DictReader(handle) if r["id"] == image_id), None)
    if row is None:
        raise FileNotFoundError(f"{table} has no row for image {image_id}")
    shape = (int(row["img_height"]), int(row["img_width"]))
    with open_slide(path) as slide:
        image = slide.read_region(0, 0, *shape)
    # the README's estimate; the table is the dataset's record of it
    pixel_size = float(row["pixel_size"])
    labels, _ = ndimage.label(decode(row["rle"], shape))
    scale = (pixel_size, pixel_size)
    # "source", not "path": a sample is an image in memory, so the plugin keeps its FTU mask
    # in memory too instead of writing a mask store into the shared data folder
    metadata = {
        "source": str(path.resolve()),
        "pixel_size_um": pixel_size,
        "organ": "kidney",
        "real": True,
    }
    return [
        (
            image,
            {
                "name": f"kidney {image_id} (real, PAS)",
                "rgb": True,
                "scale": scale,
                "units": ("um", "um"),
                "metadata": metadata,
            },
            "image",
        ),
        (
            labels.astype(np.uint16),
            {
                "name": f"kidney {image_id} expert glomeruli",
                "scale": scale,
                "units": ("um", "um"),
                "opacity": 0.4,
                "metadata": {**metadata, "ground_truth": True},
            },
            "labels",
        ),
    ]


def kidney_real() -> list[LayerData]:
    """Real held-out HuBMAP kidney image (PAS) with expert glomerulus outlines."""
    return real_kidney_layers()
