"""Boundary Patch Refinement (BPR, Tang et al., CVPR 2021): a small network re-predicts patches
along each object's outline at a finer pixel size than the coarse probability map."""

from training.refine.metrics import boundary_f_score
from training.refine.model import build_refiner, load_refiner, save_refiner
from training.refine.stage import RefineOptions, Refiner, refine_map

__all__ = [
    "RefineOptions",
    "Refiner",
    "boundary_f_score",
    "build_refiner",
    "load_refiner",
    "refine_map",
    "save_refiner",
]
