"""Selective fine-tuning of attention heads: head-delta adapters, the training loop, baselines."""

from .adapters import COMPONENTS, HeadDeltas, Slice, geometry, resolve_heads
from .baselines import FullFinetune, LoraAdapters, bottom_heads, random_heads
from .rank import gradient_head_scores
from .train import TrainConfig, TrainResult, answer_loss, train

__all__ = ["COMPONENTS", "HeadDeltas", "Slice", "geometry", "resolve_heads", "FullFinetune", "LoraAdapters",
           "bottom_heads", "random_heads", "gradient_head_scores", "TrainConfig", "TrainResult", "answer_loss", "train"]
