"""Selective fine-tuning of attention heads: head-delta adapters, the training loop, baselines, the experiment.

Fine-tuning never imports the evaluation stage above it: accuracy comes in as a function
(``vru_lens.results.Accuracy``), the stand-in ranking from ``patching.rank``'s registry.
"""

from ..heads import bottom_heads, random_heads  # re-exported: head choice lives in heads
from .adapters import COMPONENTS, HeadDeltas, Slice, geometry, resolve_heads
from .baselines import FullFinetune, LoraAdapters
from .run import METHODS, FinetuneConfig, FinetuneResult, make_trainable, measure_base, run_experiment
from .train import TrainConfig, TrainResult, answer_loss, train

__all__ = ["COMPONENTS", "HeadDeltas", "Slice", "geometry", "resolve_heads", "FullFinetune", "LoraAdapters",
           "bottom_heads", "random_heads", "TrainConfig", "TrainResult", "answer_loss", "train", "METHODS",
           "FinetuneConfig", "FinetuneResult", "make_trainable", "measure_base", "run_experiment"]
