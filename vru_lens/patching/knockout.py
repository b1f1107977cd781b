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

from ..results import Head, Saveable
from .ablation import head_means
from .activation import _heads_view, hook_name
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
            view = _heads_view(act, H)
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
    others = [(l, h) for l in range(L) for h in range(H) if (l, h) not in set(top)]
    if k < 1 or k > len(others):
        raise ValueError(f"knockout needs 1 <= k <= {len(others)} top heads so that {k} random heads can be drawn "
                         f"from the other {len(others)}; this model has {L * H} heads, got k={k}")
    sets = [("none", []), ("top", top)] + [(f"random{i}", sorted(rng.sample(others, k))) for i in range(n_random)]
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


@dataclass
class KnockoutCurve(Saveable):
    """Accuracy as a ranking's top-k heads are mean-ablated together, k = 0..K, beside random k-head sets.

    ``random[i]`` holds one accuracy per draw for ``ks[i]`` (k heads drawn from those outside the
    top-k); a ranking is worth something where the top-k curve falls below the random band.
    """

    model: str
    method: str  # the ranking's method
    heads: list  # the ranking's top K heads, best first: [[layer, head], ...]
    ks: list
    top: list  # accuracy with the top-k ablated, per k (k = 0: nothing ablated)
    random: list  # [k][draw] accuracy with k random heads ablated
    n_items: int
    chance: float | None = None
    blind: float | None = None  # the best rotation-blind rule's accuracy on the same items
    planted: list | None = None  # known answer (an organism's G), drawn on the plot

    def random_mean(self) -> list:
        return [sum(r) / len(r) if r else float("nan") for r in self.random]

    def summary(self) -> dict:
        k = self.ks[-1]
        return {"model": self.model, "method": self.method, "k_max": k, "n_items": self.n_items,
                "n_draws": max((len(r) for r in self.random), default=0),
                "base_accuracy": self.top[0], "top_k_accuracy": self.top[-1], "random_k_accuracy": self.random_mean()[-1],
                "curve": {int(kk): {"top": t, "random_mean": m, "random_min": min(r, default=None),
                                    "random_max": max(r, default=None)}
                          for kk, t, m, r in zip(self.ks, self.top, self.random_mean(), self.random)},
                "chance": self.chance, "blind": self.blind}

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame({"k": self.ks, "top": self.top, "random_mean": self.random_mean(),
                             "random_min": [min(r, default=float("nan")) for r in self.random],
                             "random_max": [max(r, default=float("nan")) for r in self.random]})

    def plot(self, title: str | None = None):
        import plotly.graph_objects as go

        f = self.to_frame()
        fig = go.Figure()
        fig.add_scatter(x=f.k, y=f.random_max, mode="lines", line={"width": 0}, showlegend=False, hoverinfo="skip")
        fig.add_scatter(x=f.k, y=f.random_min, mode="lines", line={"width": 0}, fill="tonexty",
                        fillcolor="rgba(120,120,120,0.25)", name="random k heads (min-max)")
        fig.add_scatter(x=f.k, y=f.random_mean, mode="lines", line={"dash": "dot", "color": "grey"},
                        name="random k heads (mean)")
        planted = {tuple(h) for h in self.planted or ()}
        labels = ["none"] + [f"+L{l}H{h}" + (" (planted)" if (l, h) in planted else "") for l, h in self.heads]
        fig.add_scatter(x=f.k, y=f.top, mode="lines+markers", name=f"top k by {self.method}",
                        text=[labels[k] if k < len(labels) else "" for k in self.ks],
                        hovertemplate="k=%{x}: %{y:.1%}<br>%{text}<extra></extra>")
        for value, name, dash in ((self.chance, "chance", "dash"), (self.blind, "best rotation-blind rule", "dashdot")):
            if value is not None:
                fig.add_scatter(x=[f.k.min(), f.k.max()], y=[value, value], mode="lines", name=name,
                                line={"dash": dash, "color": "black", "width": 1})
        fig.update_layout(title=title or f"Knockout curve on {self.model}: top-k heads ({self.method}) vs random k "
                          f"({self.n_items} items)", xaxis_title="heads mean-ablated (k)", yaxis_title="accuracy",
                          yaxis_tickformat=".0%", yaxis_range=[0, 1.02])
        return fig


def knockout_curve(model, pt, items, ranking: list[Head], ks=None, n_random: int = 5, seed: int = 0, means=None,
                   method: str = "", planted=None, batch_size: int = 16, progress: bool = False,
                   chat: bool = False) -> KnockoutCurve:
    """Accuracy on ``items`` with the first k heads of ``ranking`` mean-ablated, for each k in ``ks``
    (default 0..len(ranking)), and with ``n_random`` seeded draws of k heads from outside those k.

    Means come from the clean prompts of ``pt`` (counterfactual pairs), as in ``knockout``.
    """
    from tqdm.auto import tqdm

    from ..bench.shortcuts import best_rule
    from ..evaluate import evaluate

    L, H = model.cfg.n_layers, model.cfg.n_heads
    ranking = [(int(l), int(h)) for l, h, *_ in ranking]
    ks = list(range(len(ranking) + 1)) if ks is None else sorted({int(k) for k in ks})
    if not ks or ks[0] < 0 or ks[-1] > len(ranking) or ks[-1] >= L * H:
        raise ValueError(f"ks must lie in 0..{min(len(ranking), L * H - 1)} (the ranking has {len(ranking)} heads, "
                         f"the model {L * H}), got {ks}")
    if means is None:
        means = head_means(model, pt, batch_size)
    rng = random.Random(seed)
    base = evaluate(model, items, chat=chat, batch_size=batch_size, progress=False)
    accuracy_cache: dict = {(): float(base.accuracy)}

    def acc(heads):
        key = tuple(sorted(heads))
        if key not in accuracy_cache:
            with ablate_heads(model, list(key), means), torch.inference_mode():
                accuracy_cache[key] = float(evaluate(model, items, chat=chat, batch_size=batch_size,
                                                     progress=False).accuracy)
        return accuracy_cache[key]

    top, rand = [], []
    bar = tqdm(total=len(ks) * (1 + n_random), desc="knockout curve", disable=not progress)
    for k in ks:
        top.append(acc(ranking[:k]))
        others = [(l, h) for l in range(L) for h in range(H) if (l, h) not in set(ranking[:k])]
        rand.append([acc(rng.sample(others, k)) for _ in range(n_random)] if k else [top[-1]] * n_random)
        bar.update(1 + n_random)
    bar.close()
    rule = best_rule(items)
    return KnockoutCurve(getattr(model, "vru_name", type(model).__name__), method, [list(h) for h in ranking], ks, top,
                         rand, len(items), base.chance, rule[1] if rule else None,
                         [list(h) for h in planted] if planted else None)
