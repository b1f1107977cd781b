"""VRUBench: viewpoint-rotation items in two styles, their solver, shortcut rules, pairs, export (no torch).

The rules' accuracies (``audit``) are computed in ``vru_lens.evaluate``, which owns every accuracy.
"""

from .answers import UNKNOWN
from .export import load, save, to_dataset_dict
from .generate import PAIRABLE, PAIRABLE_STORY, SPLITS, BenchConfig, make_item, make_items, make_splits
from .published import load_vrubench, read_published
from .pairs import PairSet, build_pairs, counterfactual_variants
from .shortcuts import RULES
from .solver import solve
from .styles import STYLES
from .templates import ROOMS, ROTATION_TEMPLATES, TEMPLATE_IDS

__all__ = [
    "SPLITS", "UNKNOWN", "BenchConfig", "make_item", "make_items", "make_splits", "PairSet", "build_pairs",
    "counterfactual_variants", "solve", "ROOMS", "ROTATION_TEMPLATES", "TEMPLATE_IDS", "load", "save", "to_dataset_dict",
    "RULES", "STYLES", "PAIRABLE", "PAIRABLE_STORY", "load_vrubench", "read_published",
]
