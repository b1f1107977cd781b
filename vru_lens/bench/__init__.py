"""VRUBench: viewpoint-rotation stories, their solver, pairs and export (no torch)."""

from .export import load, save, to_dataset_dict
from .generate import SPLITS, UNKNOWN, BenchConfig, make_item, make_items, make_splits
from .pairs import PairSet, build_pairs, counterfactual_variants
from .solver import solve
from .templates import ROOMS, ROTATION_TEMPLATES, TEMPLATE_IDS

__all__ = [
    "SPLITS", "UNKNOWN", "BenchConfig", "make_item", "make_items", "make_splits", "PairSet", "build_pairs",
    "counterfactual_variants", "solve", "ROOMS", "ROTATION_TEMPLATES", "TEMPLATE_IDS", "load", "save", "to_dataset_dict",
]
