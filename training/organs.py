"""The organs napari-ftu knows and their functional tissue units, named in one place.

Imported by the data catalogue, the models, the configuration, the QuPath export and the
plugin's widgets; nothing heavy is imported here, so the widgets can read it without torch.
"""

from __future__ import annotations

__all__ = ["FTU_COLOURS", "FTU_NAMES", "ORGANS"]

ORGANS = ("kidney", "largeintestine", "spleen", "lung", "prostate")  # the competition's names
FTU_NAMES = {  # the FTU of each organ, as QuPath classes and the docs name it
    "kidney": "glomerulus",
    "largeintestine": "crypt",
    "spleen": "white pulp",
    "lung": "alveolus",
    "prostate": "gland",
}
FTU_COLOURS = {  # QuPath's classification colours, RGB
    "kidney": (0, 200, 0),
    "largeintestine": (230, 160, 0),
    "spleen": (200, 0, 200),
    "lung": (0, 160, 230),
    "prostate": (230, 60, 60),
}
assert set(FTU_NAMES) == set(FTU_COLOURS) == set(ORGANS)
