"""Knockout check: mean-ablate a set of heads together and measure accuracy and logit-difference drop.

The top-k heads of a ranking are compared with several draws of k random
heads (drawn from the heads outside the top-k, seeded), so a ranking is
trusted only if removing its heads hurts more than removing as many others.
"""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass, field

import torch

from ..heads import Head, all_heads, heads_view, hook_name, random_heads
from ..results import Saveable
from .ablation import head_means
from .metrics import baseline_logit_diffs


def set_heads_hooks(model, heads, source) -> list:
    """Forward hooks (one per layer) that set each (layer, head)'s ``z`` to ``source(layer, head, view)``.

    ``view`` is the hook's activation as [batch, pos, head, d_head]; ``source``
    returns what head ``head`` outputs instead (broadcast to [batch, pos, d_head]).
    """
    H = model.cfg.n_heads
    by_layer: dict[int, list[int]] = {}
    for layer, h in heads:
        by_layer.setdefault(int(layer), []).append(int(h))

    def make(layer, hs):
        def hook(act, hook):
            act = act.clone()
            view = heads_view(act, H)
            for h in hs:
                view[:, :, h] = source(layer, h, view)
            return act
        return hook

    return [(hook_name(layer, "z"), make(layer, hs)) for layer, hs in by_layer.items()]


@contextlib.contextmanager
def ablate_heads(model, heads, means):
    """Inside the block, each (layer, head) in ``heads`` outputs its mean ``z`` at every position."""
    mean_of = lambda layer, h, view: means[layer, h].to(view.device, view.dtype)  # noqa: E731
    with model.hooks(fwd_hooks=set_heads_hooks(model, heads, mean_of)):
        yield


@dataclass
class KnockoutResult(Saveable):
    """Accuracy and logit difference with no heads, the top-k heads, and random k-head sets ablated."""

    model: str
    k: int
    top: list  # [[layer, head], ...]
    conditions: list = field(default_factory=list)  # {name, heads, accuracy, mean_ld, normalised_ld}

    def summary(self) -> dict:
        base = self.conditions[0]
        top = next(c for c in self.conditions if c["name"] == "top")
        rand = [c for c in self.conditions if c["name"].startswith("random")]
        mean = lambda key: sum(c[key] for c in rand) / max(len(rand), 1)  # noqa: E731
        return {
            "model": self.model, "k": self.k, "top": self.top,
            "baseline": {"accuracy": base["accuracy"], "mean_ld": base["mean_ld"]},
            "top_k": {"accuracy_drop": base["accuracy"] - top["accuracy"], "ld_drop": base["mean_ld"] - top["mean_ld"],
                      "normalised_ld": top["normalised_ld"]},
            "random_k": {"n_draws": len(rand), "accuracy_drop_mean": base["accuracy"] - mean("accuracy"),
                         "ld_drop_mean": base["mean_ld"] - mean("mean_ld"),
                         "ld_drop_each": [base["mean_ld"] - c["mean_ld"] for c in rand],
                         "accuracy_drop_each": [base["accuracy"] - c["accuracy"] for c in rand]},
        }


def knockout(model, pt, items, top: list[Head], n_random: int = 5, seed: int = 0, means=None,
             batch_size: int = 16, progress: bool = False, chat: bool = False) -> KnockoutResult:
    """Ablate ``top`` together, then ``n_random`` random sets of the same size; evaluate each.

    ``items``: VRUBench items for accuracy (``vru_lens.evaluate``); ``pt``:
    their counterfactual pairs for the logit difference (clean prompts, the
    normalised value uses the unablated clean/corrupted means: 1 = unchanged,
    0 = as if corrupted).
    """
    from ..evaluate import evaluate

    L, H = model.cfg.n_layers, model.cfg.n_heads
    top = [(int(l), int(h)) for l, h in top]
    k = len(top)
    if means is None:
        means = head_means(model, pt, batch_size)
    rng = random.Random(seed)
    others = all_heads(L, H, exclude=top)
    if k < 1 or k > len(others):
        raise ValueError(f"knockout needs 1 <= k <= {len(others)} top heads so that {k} random heads can be drawn "
                         f"from the other {len(others)}; this model has {L * H} heads, got k={k}")
    sets = [("none", []), ("top", top)] + [(f"random{i}", random_heads(L, H, k, rng=rng, exclude=top))
                                          for i in range(n_random)]
    clean0 = corrupt0 = None
    result = KnockoutResult(getattr(model, "vru_name", type(model).__name__), k, [list(h) for h in top])
    for name, heads in sets:
        with ablate_heads(model, heads, means), torch.inference_mode():
            acc = evaluate(model, items, chat=chat, batch_size=batch_size, progress=progress).accuracy
            clean, corrupt = baseline_logit_diffs(model, pt, batch_size)
        if clean0 is None:
            clean0, corrupt0 = clean, corrupt
        norm = float((clean.mean() - corrupt0.mean()) / (clean0.mean() - corrupt0.mean()))
        result.conditions.append({"name": name, "heads": [list(h) for h in heads], "accuracy": float(acc),
                                  "mean_ld": float(clean.mean()), "normalised_ld": norm})
    return result
