"""Baselines trained by the same loop on the same data: full fine-tuning, other heads, LoRA.

* ``FullFinetune(model)``: every weight of the wrapped transformers model.
* ``random_heads`` / ``bottom_heads``: k other heads for a ``HeadDeltas`` with the same
  components, hence exactly the same number of trainable parameters as the top-k run.
* ``LoraAdapters(model, budget=...)``: PEFT LoRA on the q/k/v/o projections of every
  layer, its rank chosen so that its parameter count is as close as possible to ``budget``.
"""

from __future__ import annotations

import contextlib
import random

import torch

from .adapters import _proj, geometry


class _NamedParameters:
    """The trainable-set interface of ``train`` over a list of named parameters living in the model."""

    named: list

    def trainable_parameters(self):
        return [p for _, p in self.named]

    def trainable_state(self):
        return {n: p.detach().clone() for n, p in self.named}

    def load_trainable_state(self, state):
        with torch.no_grad():
            for n, p in self.named:
                p.copy_(state[n])

    def active(self, model):
        return contextlib.nullcontext()

    def num_parameters(self) -> int:
        return sum(p.numel() for _, p in self.named)


class FullFinetune(_NamedParameters):
    """All weights trainable (the reference for memory and forgetting)."""

    def __init__(self, model):
        self.module = model.original_model
        self.named = [(n, p) for n, p in self.module.named_parameters()]


    def describe(self) -> dict:
        return {"method": "full", "trainable_params": self.num_parameters()}


def random_heads(model_or_geom, k: int, seed: int = 0, exclude=()) -> list[tuple[int, int]]:
    """k heads drawn uniformly (seeded), avoiding ``exclude``."""
    g = model_or_geom if isinstance(model_or_geom, dict) else geometry(model_or_geom)
    pool = [(l, h) for l in range(g["n_layers"]) for h in range(g["n_heads"]) if (l, h) not in set(map(tuple, exclude))]
    if k > len(pool):
        raise ValueError(f"cannot draw {k} heads from {len(pool)}")
    return sorted(random.Random(seed).sample(pool, k))


def bottom_heads(scores, k: int) -> list[tuple[int, int]]:
    """The k lowest-ranked heads of a HeadScores (or an [n_layers, n_heads] array; higher = more important)."""
    import numpy as np

    arr = np.asarray(getattr(scores, "scores", scores), dtype=float)
    order = np.argsort(arr, axis=None, kind="stable")[:k]
    return sorted((int(i // arr.shape[1]), int(i % arr.shape[1])) for i in order)


class LoraAdapters(_NamedParameters):
    """PEFT LoRA on q/k/v/o of every layer (injected in place into the bridge's wrapped model)."""

    def __init__(self, model, rank: int | None = None, budget: int | None = None, alpha: float | None = None,
                 kinds: str = "qkvo", seed: int = 0):
        from peft import LoraConfig, inject_adapter_in_model

        hf = model.original_model
        names = {id(m): n for n, m in hf.named_modules()}
        targets = [names[id(_proj(model, l, kind))] for l in range(model.cfg.n_layers) for kind in kinds]
        per_rank = 0
        for l in range(model.cfg.n_layers):
            for kind in kinds:
                w = _proj(model, l, kind).weight
                per_rank += w.shape[0] + w.shape[1]
        if rank is None:
            if budget is None:
                raise ValueError("give rank or budget")
            rank = max(1, round(budget / per_rank))
        self.rank, self.alpha = rank, alpha if alpha is not None else 2.0 * rank
        torch.manual_seed(seed)
        config = LoraConfig(r=rank, lora_alpha=self.alpha, lora_dropout=0.0, target_modules=targets, bias="none")
        inject_adapter_in_model(config, hf)
        self.hf = hf
        self.named = [(n, p) for n, p in hf.named_parameters() if "lora_" in n]
        for _, p in self.named:
            p.requires_grad_(True)


    def describe(self) -> dict:
        return {"method": "lora", "rank": self.rank, "alpha": self.alpha, "trainable_params": self.num_parameters()}
