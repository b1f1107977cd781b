"""Faithfulness curves (MIB's circuit track): how much of the behaviour the top-k heads of a ranking carry alone.

For each k on a grid, the top-k heads keep their clean ``z`` (cached from the clean run) and every
other head's ``z`` is replaced, at every position, on the clean prompt:

- ``"resample"``: by its ``z`` on the pair's own counterfactual (corrupt) prompt,
- ``"mean"``: by its mean ``z`` over the corrupt prompts' real tokens (``ablation.head_means``),
- ``"zero"``: by 0.

The curve is the fraction of the clean-minus-corrupt logit difference recovered,
``f(k) = (mean LD_k - mean LD_corrupt) / (mean LD_clean - mean LD_corrupt)`` (``metrics.normalise``):
f(n) = 1 exactly (every head at its clean value); f(0) is what the MLPs and embeddings carry with every
head replaced (not 0 in general). Over x = k / n heads, CPR is the area under f and CMD the area of
|1 - f| (MIB: higher CPR, lower CMD are better). The baseline is ``n_random`` random orderings of the heads
(each a curve of nested k-sets), giving a 5-95% band per k and CPR/CMD distributions; bootstrap
resamples of the pairs give each ranking's CPR/CMD a CI. One forward per (curve, k, batch of pairs).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np
import torch

from ..heads import all_heads, heads_view, hook_name, set_heads_hooks, top_heads
from ..readout import record, unembed
from ..results import Result, model_name
from .ablation import head_means, mean_source
from .metrics import baseline_logit_diffs

ABLATIONS = ("resample", "mean", "zero")
FINAL = "ln_final.hook_out"  # the normed final residual: two unembedding columns are read there, nothing more


def default_ks(n_heads: int) -> list[int]:
    """Every k when there are at most 64 heads; else MIB-like fractions of the heads (0 and n included)."""
    if n_heads <= 64:
        return list(range(n_heads + 1))
    fractions = (0, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)
    return sorted({int(round(f * n_heads)) for f in fractions})


def ordering(model, ranking) -> list[tuple[int, int]]:
    """Every head of ``model``, best first: a HeadScores / [layer, head] map, or a list of heads (the rest follow
    in layer-major order)."""
    L, H = model.cfg.n_layers, model.cfg.n_heads
    if hasattr(ranking, "scores") or isinstance(ranking, np.ndarray):
        s = np.asarray(getattr(ranking, "scores", ranking))
        if s.shape != (L, H):
            raise ValueError(f"a ranking for faithfulness scores query heads [{L}, {H}], got a map of shape {s.shape} "
                             "(k/v rankings index key/value heads: rank with component z)")
        return top_heads(s, L * H)
    heads = [(int(l), int(h)) for l, h in ranking]
    bad = [h for h in heads if not (0 <= h[0] < L and 0 <= h[1] < H)]
    if bad or len(set(heads)) != len(heads):
        raise ValueError(f"a ranking lists distinct heads of this {L} x {H} model, got {bad or 'repeats'}")
    return heads + all_heads(L, H, exclude=heads)


def _area(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2))


def cpr_cmd(fracs: np.ndarray, f: np.ndarray) -> tuple[float, float]:
    """(area under f, area of |1 - f|) over the x = k / n grid (trapezoids; MIB's CPR and CMD)."""
    return _area(fracs, f), _area(fracs, np.abs(1 - f))


@dataclass
class FaithfulnessResult(Result):
    """Per-pair logit differences with the top-k of each ranking kept clean, k over ``ks``, beside random orderings."""

    model: str
    ablation: str
    n_heads: int
    ks: list
    clean_ld: np.ndarray  # [pair]
    corrupt_ld: np.ndarray  # [pair]
    curves: dict  # ranking name -> [k, pair] logit differences
    random: np.ndarray  # [draw, k, pair]
    orders: dict  # ranking name -> its heads, best first (the first max(ks))
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        self.clean_ld, self.corrupt_ld = np.asarray(self.clean_ld, float), np.asarray(self.corrupt_ld, float)
        self.curves = {k: np.asarray(v, float) for k, v in self.curves.items()}
        self.random = np.asarray(self.random, float)

    @property
    def fracs(self) -> np.ndarray:
        return np.asarray(self.ks, float) / self.n_heads

    def faithfulness(self, lds: np.ndarray, pairs=None) -> np.ndarray:
        """f per k from [k, pair] logit differences (``pairs``: indices of a resample)."""
        sel = slice(None) if pairs is None else pairs
        clean, corrupt = self.clean_ld[sel].mean(), self.corrupt_ld[sel].mean()
        if abs(clean - corrupt) < 1e-8:
            raise ValueError("clean and corrupted logit differences are equal on average; the pairs carry no signal")
        return (lds[:, sel].mean(1) - corrupt) / (clean - corrupt)

    def areas(self, name: str, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
        """CPR and CMD of one ranking with bootstrap CIs over pairs."""
        lds, x = self.curves[name], self.fracs
        cpr, cmd = cpr_cmd(x, self.faithfulness(lds))
        rng = np.random.default_rng(seed)
        n = len(self.clean_ld)
        boot = [cpr_cmd(x, self.faithfulness(lds, rng.integers(0, n, n))) for _ in range(n_boot)]
        lo, hi = (1 - level) / 2, 1 - (1 - level) / 2
        b = np.asarray(boot) if boot else np.full((1, 2), np.nan)
        return {"cpr": cpr, "cmd": cmd, "cpr_ci": [float(np.quantile(b[:, 0], lo)), float(np.quantile(b[:, 0], hi))],
                "cmd_ci": [float(np.quantile(b[:, 1], lo)), float(np.quantile(b[:, 1], hi))]}

    def at(self, name: str, k: int, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
        """f of one ranking at ``k`` heads kept (one of ``ks``) with a bootstrap CI over pairs; ``name``
        "random" gives the random orderings' mean f and their 5-95% range instead."""
        if k not in self.ks:
            raise ValueError(f"k = {k} is not on this curve's grid {list(self.ks)}")
        j = list(self.ks).index(k)
        if name == "random":
            f = self.random_curves()[:, j]
            return {"k": k, "f": float(f.mean()), "low": float(np.quantile(f, 0.05)), "high": float(np.quantile(f, 0.95))}
        lds, n = self.curves[name][j : j + 1], len(self.clean_ld)
        rng = np.random.default_rng(seed)
        boot = [float(self.faithfulness(lds, rng.integers(0, n, n))[0]) for _ in range(n_boot)]
        lo, hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2]) if boot else (np.nan, np.nan)
        return {"k": k, "f": float(self.faithfulness(lds)[0]), "low": float(lo), "high": float(hi)}

    def random_curves(self) -> np.ndarray:
        """[draw, k] f of each random ordering."""
        return np.stack([self.faithfulness(r) for r in self.random])

    def summary(self, n_boot: int = 1000) -> dict:
        """f per k, CPR and CMD (95% CIs over pairs) for each ranking; random orderings' mean, 5-95% band and areas."""
        x, rnd = self.fracs, self.random_curves()
        areas = np.asarray([cpr_cmd(x, f) for f in rnd])
        q = lambda a: [float(np.quantile(a, 0.05)), float(np.quantile(a, 0.95))]  # noqa: E731
        return {"model": self.model, "ablation": self.ablation, "n_heads": self.n_heads, "n_pairs": len(self.clean_ld),
                "ks": list(self.ks),
                "rankings": {name: {"f": self.faithfulness(lds).tolist(), **self.areas(name, n_boot)}
                             for name, lds in self.curves.items()},
                "random": {"n_draws": len(rnd), "f_mean": rnd.mean(0).tolist(), "f_low": np.quantile(rnd, 0.05, 0).tolist(),
                           "f_high": np.quantile(rnd, 0.95, 0).tolist(), "cpr_mean": float(areas[:, 0].mean()),
                           "cmd_mean": float(areas[:, 1].mean()), "cpr_5_95": q(areas[:, 0]), "cmd_5_95": q(areas[:, 1])}}

    def to_frame(self):
        """One row per (ranking, k): f; random orderings as ranking "random" (mean, with the 5-95% band)."""
        import pandas as pd

        rows = [{"ranking": name, "k": k, "fraction": k / self.n_heads, "f": f}
                for name, lds in self.curves.items() for k, f in zip(self.ks, self.faithfulness(lds))]
        rnd = self.random_curves()
        rows += [{"ranking": "random", "k": k, "fraction": k / self.n_heads, "f": float(rnd[:, i].mean()),
                  "low": float(np.quantile(rnd[:, i], 0.05)), "high": float(np.quantile(rnd[:, i], 0.95))}
                 for i, k in enumerate(self.ks)]
        return pd.DataFrame(rows)

    def plot(self, title: str | None = None):
        """f against the fraction of heads kept, each ranking beside the random band (CPR/CMD in the legend)."""
        import plotly.graph_objects as go

        x, rnd = list(self.fracs), self.random_curves()
        lo, hi = np.quantile(rnd, 0.05, 0).tolist(), np.quantile(rnd, 0.95, 0).tolist()
        fig = go.Figure([go.Scatter(x=x + x[::-1], y=hi + lo[::-1], fill="toself", line={"width": 0},
                                    fillcolor="rgba(128,128,128,0.25)", name="random heads: 5-95%"),
                         go.Scatter(x=x, y=rnd.mean(0).tolist(), name="random heads: mean",
                                    line={"dash": "dash", "color": "gray"})])
        for name, lds in self.curves.items():
            cpr, cmd = cpr_cmd(self.fracs, self.faithfulness(lds))
            fig.add_scatter(x=x, y=self.faithfulness(lds).tolist(), mode="lines+markers",
                            name=f"{name} (CPR {cpr:.2f}, CMD {cmd:.2f})")
        fig.add_hline(y=1, line={"dash": "dot", "color": "black"})
        fig.update_layout(title=title or f"faithfulness on {self.model} ({self.ablation} for the other heads)",
                          xaxis_title="fraction of heads kept clean (k / n)",
                          yaxis_title="logit difference recovered f(k)")
        return fig


def _kept_hooks(model, keep: set, clean: dict, other: dict | None, means):
    """Hooks on every head's z: heads in ``keep`` get their clean z, the others their z in ``other`` (resample),
    their mean ``means`` (mean) or 0 (zero)."""
    H = model.cfg.n_heads
    fill = mean_source(means) if means is not None else lambda layer, h, view: 0.0

    def source(layer, h, view):
        name = hook_name(layer, "z")
        if (layer, h) in keep:
            return heads_view(clean[name], H)[:, :, h]
        if other is not None:
            return heads_view(other[name], H)[:, :, h]
        return fill(layer, h, view)

    return set_heads_hooks(model, all_heads(model.cfg.n_layers, H), source)


@torch.inference_mode()
def _curve_lds(model, pt, orders: list[list[tuple[int, int]]], ks: list[int], ablation: str, means,
               batch_size: int, progress: bool) -> np.ndarray:
    """[order, k, pair] logit differences with each order's top-k clean and the rest replaced."""
    from tqdm.auto import tqdm

    names = [hook_name(layer, "z") for layer in range(model.cfg.n_layers)]
    out = np.zeros((len(orders), len(ks), len(pt)))
    device = model.cfg.device
    chunks = list(pt.chunks(batch_size))
    bar = tqdm(total=len(chunks) * len(orders) * len(ks), desc="faithfulness", disable=not progress, leave=False)
    for sl, sub in chunks:
        fp, a, b = sub.final_pos, sub.clean_answer, sub.corrupt_answer
        clean_ids = sub.clean.to(device)
        _, clean = record(model, clean_ids, names)
        other = record(model, sub.corrupt.to(device), names)[1] if ablation == "resample" else None
        for i, order in enumerate(orders):
            for j, k in enumerate(ks):
                hooks = _kept_hooks(model, set(order[:k]), clean, other, means)
                _, got = record(model, clean_ids, [FINAL], final_pos=fp, fwd_hooks=hooks, stop_after=FINAL)
                out[i, j, sl] = (unembed(model, got[FINAL], a) - unembed(model, got[FINAL], b)).float().cpu().numpy()
                bar.update(1)
    bar.close()
    return out


def faithfulness_curve(model, pt, rankings: dict, ks: list[int] | None = None, ablation: str = "resample",
                       n_random: int = 20, seed: int = 0, batch_size: int = 8, progress: bool = True
                       ) -> FaithfulnessResult:
    """Faithfulness of each ranking ({name: HeadScores, [layer, head] map or heads best first}) on pairs ``pt``.

    ``ks``: head counts (default ``default_ks``); ``ablation``: what the other heads get (``ABLATIONS``);
    ``n_random`` random orderings of the heads (seeded) give the baseline band.
    """
    if ablation not in ABLATIONS:
        raise ValueError(f"ablation must be one of {', '.join(ABLATIONS)}, got {ablation!r}")
    L, H = model.cfg.n_layers, model.cfg.n_heads
    n = L * H
    ks = default_ks(n) if ks is None else sorted({int(k) for k in ks})
    if not ks or ks[0] < 0 or ks[-1] > n or len(ks) < 2:
        raise ValueError(f"ks must hold at least two head counts in 0..{n} (this model's heads), got {ks}")
    if not rankings or n_random < 1:
        raise ValueError("give at least one ranking ({name: HeadScores or heads}) and n_random >= 1")
    if len(pt) == 0:
        raise ValueError("no pairs to measure faithfulness on")
    orders = {name: ordering(model, r) for name, r in rankings.items()}
    rng = random.Random(seed)
    every = all_heads(L, H)
    random_orders = [rng.sample(every, n) for _ in range(n_random)]
    means = head_means(model, pt, batch_size, prompts="corrupt") if ablation == "mean" else None
    clean, corrupt = baseline_logit_diffs(model, pt, batch_size)
    lds = _curve_lds(model, pt, [*orders.values(), *random_orders], ks, ablation, means, batch_size, progress)
    top = max(ks)
    return FaithfulnessResult(model_name(model), ablation, n, ks, clean.numpy(), corrupt.numpy(),
                              {name: lds[i] for i, name in enumerate(orders)}, lds[len(orders):],
                              {name: [list(h) for h in order[:top]] for name, order in orders.items()},
                              {"seed": seed, "batch_size": batch_size})
