"""Knockout check: mean-ablate a set of heads together and measure accuracy and logit-difference drop.

The top-k heads of a ranking are compared with several draws of k random
heads (drawn from the heads outside the top-k, seeded), so a ranking is
trusted only if removing its heads hurts more than removing as many others.
Accuracy is the caller's ``accuracy(model, items) -> fraction`` (e.g.
``functools.partial(vru_lens.evaluate.accuracy, chat=..., batch_size=...)``),
run with the heads ablated: patching never imports the evaluation stage.
"""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass, field

import torch

from ..heads import Head, all_heads, random_heads, set_heads_hooks
from ..results import Accuracy, Result, model_name
from .ablation import head_means, mean_source
from .metrics import baseline_logit_diffs


@contextlib.contextmanager
def ablate_heads(model, heads, means):
    """Inside the block, each (layer, head) in ``heads`` outputs its mean ``z`` at every position."""
    with model.hooks(fwd_hooks=set_heads_hooks(model, heads, mean_source(means))):
        yield


@dataclass
class KnockoutResult(Result):
    """Accuracy and logit difference with no heads, the top-k heads, and random k-head sets ablated."""

    model: str
    k: int
    top: list  # [[layer, head], ...]
    conditions: list = field(default_factory=list)  # {name, heads, accuracy, mean_ld, normalised_ld}
    n_items: int = 0  # items scored for accuracy (0: the pairs themselves were scored)
    n_pairs: int = 0

    def summary(self) -> dict:
        """Accuracies (none, top-k, random k: mean, 5-95% band, each draw), and what ablating costs in
        accuracy and logit difference; what ``vru-lens knockout --json`` prints."""
        import numpy as np

        base = self.conditions[0]
        top = next(c for c in self.conditions if c["name"] == "top")
        rand = [c for c in self.conditions if c["name"].startswith("random")]
        acc = [c["accuracy"] for c in rand]
        mean = lambda key: float(np.mean([c[key] for c in rand])) if rand else float("nan")  # noqa: E731
        return {
            "model": self.model, "k": self.k, "top": self.top, "n_items": self.n_items, "n_pairs": self.n_pairs,
            "base_accuracy": base["accuracy"], "top_k_accuracy": top["accuracy"], "random_k_accuracy": mean("accuracy"),
            "random_k_band": [float(np.quantile(acc, 0.05)), float(np.quantile(acc, 0.95))] if acc else None,
            "random_k_each": acc,
            "normalised_ld": {"top_k": top["normalised_ld"], "random_k_mean": mean("normalised_ld")},
            "baseline": {"accuracy": base["accuracy"], "mean_ld": base["mean_ld"]},
            "top_k": {"accuracy_drop": base["accuracy"] - top["accuracy"], "ld_drop": base["mean_ld"] - top["mean_ld"],
                      "normalised_ld": top["normalised_ld"]},
            "random_k": {"n_draws": len(rand), "accuracy_drop_mean": base["accuracy"] - mean("accuracy"),
                         "ld_drop_mean": base["mean_ld"] - mean("mean_ld"),
                         "ld_drop_each": [base["mean_ld"] - c["mean_ld"] for c in rand],
                         "accuracy_drop_each": [base["accuracy"] - c["accuracy"] for c in rand]},
        }

    def to_frame(self):
        """One row per condition (none, top, random0, ...): accuracy and logit difference."""
        import pandas as pd

        return pd.DataFrame([{**c, "n_heads": len(c["heads"])} for c in self.conditions])

    def plot(self, title: str | None = None):
        """Accuracy and normalised logit difference per condition (bars)."""
        import plotly.graph_objects as go

        f = self.to_frame()
        fig = go.Figure([go.Bar(x=f["name"], y=f["accuracy"], name="accuracy"),
                         go.Bar(x=f["name"], y=f["normalised_ld"], name="normalised logit difference")])
        fig.update_layout(barmode="group", title=title or f"knockout of {self.k} heads on {self.model}: "
                          "top-k against random k", xaxis_title="heads mean-ablated", yaxis_title="value")
        return fig


def knockout(model, pt, items, top: list[Head], n_random: int = 5, seed: int = 0, means=None,
             batch_size: int = 16, *, accuracy: Accuracy | None) -> KnockoutResult:
    """Ablate ``top`` together, then ``n_random`` random sets of the same size; evaluate each.

    ``items``: VRUBench items scored by ``accuracy(model, items)``; ``pt``:
    their counterfactual pairs for the logit difference (clean prompts, the
    normalised value uses the unablated clean/corrupted means: 1 = unchanged,
    0 = as if corrupted). ``accuracy=None`` (a task of the user's own, ``items``
    None): the share of pairs whose clean prompt gives the clean answer the
    higher logit of the two.
    """
    if accuracy is None and items is not None:
        raise ValueError("items are scored by accuracy=; give one, or items=None to score the pairs themselves")
    L, H = model.cfg.n_layers, model.cfg.n_heads
    top = [(int(l), int(h)) for l, h in top]
    k = len(top)
    if means is None:
        means = head_means(model, pt, batch_size)
    rng = random.Random(seed)
    others = all_heads(L, H, exclude=top)
    if k < 1 or k > len(others):
        raise ValueError(f"knockout needs 1 <= k <= {L * H // 2} top heads so that k random heads can be drawn "
                         f"from the others; this model has {L * H} heads, got k={k}")
    sets = [("none", []), ("top", top)] + [(f"random{i}", random_heads(L, H, k, rng=rng, exclude=top))
                                          for i in range(n_random)]
    clean0 = corrupt0 = None
    result = KnockoutResult(model_name(model), k, [list(h) for h in top], n_items=len(items or ()), n_pairs=len(pt))
    for name, heads in sets:
        with ablate_heads(model, heads, means), torch.inference_mode():
            clean, corrupt = baseline_logit_diffs(model, pt, batch_size)
            acc = accuracy(model, items) if accuracy is not None else (clean > 0).float().mean()
        if clean0 is None:
            clean0, corrupt0 = clean, corrupt
        norm = float((clean.mean() - corrupt0.mean()) / (clean0.mean() - corrupt0.mean()))
        result.conditions.append({"name": name, "heads": [list(h) for h in heads], "accuracy": float(acc),
                                  "mean_ld": float(clean.mean()), "normalised_ld": norm})
    return result


@dataclass
class KnockoutCurve(Result):
    """Accuracy as the top-k heads of each ranking are mean-ablated together, k = 1..max, beside random k-sets.

    ``random[name][k]``: accuracies of ``n_random`` draws of k heads from the heads *outside* that ranking's
    top k (so a random set never shares a head with the set it is compared with); the band is their
    5th-95th percentile.
    """

    model: str
    base_accuracy: float
    ks: list
    curves: dict  # ranking name -> [accuracy at k for k in ks]
    tops: dict  # ranking name -> its heads, best first
    random: dict  # ranking name -> str(k) -> [accuracy of each draw outside that ranking's top k]

    def __post_init__(self):
        if set(self.random) != set(self.curves):
            raise ValueError("this knockout curve's random sets are not drawn per ranking (a file written before "
                             "random k-sets were drawn outside each top k): rerun the knockout stage")

    def random_summary(self) -> dict:
        """ranking name -> str(k) -> mean and 5th-95th percentile of its random k-sets."""
        import numpy as np

        return {name: {k: {"mean": float(np.mean(v)), "low": float(np.quantile(v, 0.05)),
                           "high": float(np.quantile(v, 0.95)), "n_draws": len(v)} for k, v in by_k.items()}
                for name, by_k in self.random.items()}

    def summary(self) -> dict:
        """Accuracy at each k for each ranking and for random k-sets outside its top k (mean, 5th-95th percentile)."""
        return {"model": self.model, "base_accuracy": self.base_accuracy, "ks": list(self.ks),
                "curves": {name: list(accs) for name, accs in self.curves.items()},
                "tops": {name: [list(h) for h in heads] for name, heads in self.tops.items()},
                "random": self.random_summary()}

    def to_frame(self):
        """One row per (ranking, k), with the mean and 5-95% band of the random k-sets outside its top k."""
        import pandas as pd

        rnd = self.random_summary()
        return pd.DataFrame([{"ranking": name, "k": k, "accuracy": acc, "random_mean": rnd[name][str(k)]["mean"],
                              "random_low": rnd[name][str(k)]["low"], "random_high": rnd[name][str(k)]["high"]}
                             for name, accs in self.curves.items() for k, acc in zip(self.ks, accs)])

    def plot(self, title: str | None = None):
        import plotly.colors
        import plotly.graph_objects as go

        rnd = self.random_summary()
        fig = go.Figure()
        palette = plotly.colors.qualitative.Plotly
        for i, (name, accs) in enumerate(self.curves.items()):
            color = palette[i % len(palette)]
            lo, hi, mean = ([rnd[name][str(k)][x] for k in self.ks] for x in ("low", "high", "mean"))
            fig.add_scatter(x=self.ks + self.ks[::-1], y=hi + lo[::-1], fill="toself", line={"width": 0},
                            fillcolor=color, opacity=0.15, legendgroup=name, name=f"{name}: random k outside, 5-95%")
            fig.add_scatter(x=self.ks, y=mean, line={"dash": "dash", "color": color}, legendgroup=name,
                            name=f"{name}: random k outside, mean")
            fig.add_scatter(x=self.ks, y=accs, name=name, mode="lines+markers", line={"color": color},
                            legendgroup=name)
        fig.update_layout(title=title or f"knockout curves on {self.model}", xaxis_title="heads mean-ablated (k)",
                          yaxis_title="accuracy", yaxis_range=[0, 1.02])
        return fig


def check_ks(ks, limit: int, name: str, why: str = "") -> list[int]:
    """``ks`` as ints if they increase within 1..limit, else one error line naming ``name``."""
    ks = [int(k) for k in ks]
    if not ks or ks != sorted(set(ks)) or ks[0] < 1 or ks[-1] > limit:
        raise ValueError(f"{name} must be increasing values in 1..{limit}{why}, got {ks}")
    return ks


def knockout_curve(model, items, rankings: dict, means, max_k: int, n_random: int = 20, seed: int = 0, *,
                   accuracy: Accuracy, ks=None) -> KnockoutCurve:
    """``accuracy(model, items)`` with the top-k of each ranking ({name: [(layer, head), ...] best first})
    ablated, k = 1..max_k (or the increasing ``ks`` in that range: a large model's curve at 1, 2, 4, ...),
    and with ``n_random`` random k-sets drawn outside that top k (seeded per ranking and k, so a ranking's
    draws do not depend on the others); ``means``: ``head_means`` of the model."""
    score = accuracy

    def accuracy(heads) -> float:
        with ablate_heads(model, heads, means), torch.inference_mode():
            return float(score(model, items))

    L, H = model.cfg.n_layers, model.cfg.n_heads
    every = [(l, h) for l in range(L) for h in range(H)]
    if not 1 <= max_k <= len(every):
        raise ValueError(f"max_k must lie in 1..{len(every)} (this model's heads), got {max_k}")
    ks = list(range(1, max_k + 1)) if ks is None else check_ks(ks, max_k, "ks", " (max_k)")
    tops = {name: [(int(l), int(h)) for l, h in heads][:max_k] for name, heads in rankings.items()}
    if max_k > len(every) // 2:
        raise ValueError(f"max_k = {max_k} leaves fewer than k heads outside the top k to draw random sets from "
                         f"(this model has {len(every)} heads): use max_k <= {len(every) // 2}")

    def outside(top, k):
        rng = random.Random(f"{seed}:{'.'.join(f'{l}-{h}' for l, h in top[:k])}")
        return [accuracy(random_heads(L, H, k, exclude=top[:k], rng=rng)) for _ in range(n_random)]

    return KnockoutCurve(model_name(model), accuracy([]), ks,
                         {name: [accuracy(top[:k]) for k in ks] for name, top in tops.items()},
                         {name: [list(h) for h in top] for name, top in tops.items()},
                         {name: {str(k): outside(top, k) for k in ks} for name, top in tops.items()})
