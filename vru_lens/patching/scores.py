"""``HeadScores``: one score per (layer, head), built from per-pair raw numbers, with bootstrap CIs.

Sign convention: **higher = more important**.

- ``kind="noising"`` (clean run, one head given its corrupted activation;
  path patching works this way): score = drop of the normalised logit
  difference, ``(mean clean_ld - mean patched) / (mean clean_ld - mean corrupt_ld)``
  = ``1 - normalise(patched).mean()``. 1 = patching this head alone turns the
  clean behaviour into the corrupted one; 0 = no effect; negative = the head
  pushes against the answer.
- ``kind="denoising"`` (corrupted run, one clean activation): score = the
  normalised logit difference recovered, ``normalise(patched).mean()``.
- ``kind="kl"`` (ablation, no counterfactual): ``per_pair`` holds the KL of
  the final next-token distribution per pair; score = its mean.
- ``kind="gradient"`` (gradient x activation, no counterfactual): ``per_pair``
  holds ``|dL/dz . z|`` per pair; score = its mean.

The per-pair numbers (``per_pair``, ``clean_ld``, ``corrupt_ld``) are kept, so
the bootstrap resamples pairs and recomputes the score, normalisation
included, on every resample.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..heads import ranks, top_heads
from ..results import Result

KINDS = ("noising", "denoising", "kl", "gradient")
UNNORMALISED = ("kl", "gradient")  # the score is the mean of per_pair, no logit-difference normaliser


def score_from(per_pair: np.ndarray, clean_ld: np.ndarray, corrupt_ld: np.ndarray, kind: str) -> np.ndarray:
    """[layer, head] score from [pair, layer, head] raw numbers (see module docstring)."""
    if kind in UNNORMALISED:
        return np.nanmean(per_pair, axis=0)
    denom = clean_ld.mean() - corrupt_ld.mean()
    if abs(denom) < 1e-8:
        raise ValueError("clean and corrupted logit differences are equal on average; the pairs carry no signal")
    patched = np.nanmean(per_pair, axis=0)
    if kind == "noising":
        return (clean_ld.mean() - patched) / denom
    if kind == "denoising":
        return (patched - corrupt_ld.mean()) / denom
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


def kendall_tau(x: np.ndarray, y: np.ndarray) -> float:
    from scipy.stats import kendalltau

    return float(kendalltau(x.ravel(), y.ravel()).statistic)


@dataclass
class HeadScores(Result):
    """Scores [n_layers, n_heads] (or [n_layers, n_kv_heads] for k/v patching) with their raw per-pair numbers."""

    method: str  # a key of ``patching.rank.REGISTRY``: "path", "activation", "attribution", "ablation", "gradient"
    model: str
    kind: str  # one of KINDS
    per_pair: np.ndarray  # [pair, layer, head]: patched logit difference (or KL for kind="kl")
    clean_ld: np.ndarray  # [pair]
    corrupt_ld: np.ndarray  # [pair]
    component: str = "z"  # which head activation was patched: z, q, k, v
    gqa: dict | None = None  # {"n_key_value_heads", "groups": {kv: [query heads]}, "note"}
    meta: dict = field(default_factory=dict)  # anything else (seconds, dropped pairs, agreement, ...)
    ci_low: np.ndarray | None = None
    ci_high: np.ndarray | None = None
    ci_level: float | None = None
    boot_taus: np.ndarray | None = None  # Kendall tau between consecutive bootstrap resamples
    boot_ranks: np.ndarray | None = None  # [n_boot, layer, head] rank (1 = top) on each resample

    def __post_init__(self):
        self.per_pair = np.asarray(self.per_pair, dtype=np.float64)
        self.clean_ld = np.asarray(self.clean_ld, dtype=np.float64)
        self.corrupt_ld = np.asarray(self.corrupt_ld, dtype=np.float64)
        if self.per_pair.ndim != 3:
            raise ValueError(f"per_pair must be [pair, layer, head], got shape {self.per_pair.shape}")
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.gqa and "groups" in self.gqa:  # JSON turns int keys into str
            self.gqa = {**self.gqa, "groups": {int(k): list(v) for k, v in self.gqa["groups"].items()}}

    @classmethod
    def from_patched(cls, patched, clean_ld, corrupt_ld, *, method: str, model: str, kind: str = "noising",
                     component: str = "z", gqa: dict | None = None, meta: dict | None = None) -> "HeadScores":
        """From torch tensors or arrays: patched [pair, layer, head], clean_ld / corrupt_ld [pair]."""
        as_np = lambda x: x.detach().cpu().double().numpy() if hasattr(x, "detach") else np.asarray(x)  # noqa: E731
        return cls(method=method, model=model, kind=kind, per_pair=as_np(patched), clean_ld=as_np(clean_ld),
                   corrupt_ld=as_np(corrupt_ld), component=component, gqa=gqa, meta=dict(meta or {}))

    # -- the numbers -------------------------------------------------------
    @property
    def n_pairs(self) -> int:
        return self.per_pair.shape[0]

    @property
    def shape(self) -> tuple[int, int]:
        return self.per_pair.shape[1:]

    @property
    def scores(self) -> np.ndarray:
        return score_from(self.per_pair, self.clean_ld, self.corrupt_ld, self.kind)

    @property
    def ld_effect(self) -> np.ndarray:
        """[layer, head] un-normalised effect in logits (noising: clean - patched; denoising: patched - corrupt).

        The normalised score divides by the clean-corrupted gap; when a model barely
        tells the two prompts apart that gap is near 0 and the score blows up, so
        this is the number to read then (``signal()`` says when)."""
        patched = np.nanmean(self.per_pair, axis=0)
        if self.kind == "noising":
            return self.clean_ld.mean() - patched
        if self.kind == "denoising":
            return patched - self.corrupt_ld.mean()
        return patched

    def signal(self, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> dict:
        """The normaliser, mean clean_ld - mean corrupt_ld, with a bootstrap CI over pairs.

        ``ok`` is False when the CI includes 0: the model does not separate clean from
        corrupted prompts, so normalised scores (and their CIs) are not meaningful."""
        gap = self.clean_ld - self.corrupt_ld
        rng = np.random.default_rng(seed)
        boots = np.array([gap[rng.integers(0, len(gap), len(gap))].mean() for _ in range(n_boot)])
        lo, hi = np.quantile(boots, [(1 - level) / 2, 1 - (1 - level) / 2])
        return {"gap": float(gap.mean()), "gap_ci": [float(lo), float(hi)], "ok": bool(lo > 0 or hi < 0)}

    def top(self, k: int = 10) -> list[tuple[int, int, float]]:
        """The k highest-scoring heads as (layer, head, score), best first (NaN heads last)."""
        s = self.scores
        return [(l, h, float(s[l, h])) for l, h in top_heads(s, k)]

    def ranks(self) -> np.ndarray:
        """[layer, head] rank, 1 = highest score."""
        return ranks(self.scores)

    # -- uncertainty ---------------------------------------------------------
    def bootstrap(self, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> "HeadScores":
        """Percentile CIs over pairs (normalisation recomputed per resample), in place; returns self."""
        rng = np.random.default_rng(seed)
        n = self.n_pairs
        boots = np.empty((n_boot, *self.shape))
        for i in range(n_boot):
            idx = rng.integers(0, n, n)
            try:
                boots[i] = score_from(self.per_pair[idx], self.clean_ld[idx], self.corrupt_ld[idx], self.kind)
            except ValueError:  # degenerate resample (no signal): skip it
                boots[i] = np.nan
        ok = ~np.isnan(boots).all(axis=(1, 2))
        boots = boots[ok]
        alpha = (1 - level) / 2
        self.ci_low = np.nanquantile(boots, alpha, axis=0)
        self.ci_high = np.nanquantile(boots, 1 - alpha, axis=0)
        self.ci_level = level
        self.boot_ranks = np.stack([ranks(b) for b in boots]).astype(np.int32)
        self.boot_taus = np.array([kendall_tau(boots[i], boots[i + 1]) for i in range(len(boots) - 1)])
        self.meta = {**self.meta, "n_boot": int(len(boots)), "boot_seed": seed}
        if self.kind not in UNNORMALISED:
            sig = self.signal(n_boot, level, seed)
            self.meta["signal"] = sig
            if not sig["ok"]:
                self.meta["warning"] = (f"clean - corrupted logit difference {sig['gap']:.4g} has a {level:.0%} CI "
                                        f"{sig['gap_ci'][0]:.4g}..{sig['gap_ci'][1]:.4g} that includes 0: the model "
                                        "does not tell the prompts apart, so normalised scores and CIs are not "
                                        "meaningful; read ld_effect")
        return self

    def stability(self, k: int = 10) -> dict:
        """Rank stability: mean/min Kendall tau between resamples and how often each top-k head stays top-k."""
        if self.boot_ranks is None:
            raise ValueError("no bootstrap yet: call .bootstrap() first")
        out = {"kendall_tau_mean": float(np.mean(self.boot_taus)), "kendall_tau_min": float(np.min(self.boot_taus))}
        out["top_k_frequency"] = {f"L{l}H{h}": float((self.boot_ranks[:, l, h] <= k).mean())
                                  for l, h, _ in self.top(k)}
        return out

    # -- views ---------------------------------------------------------------
    def summary(self, k: int = 10) -> dict:
        """The method, the pairs, the signal and the top-k heads (with their CIs once bootstrapped)."""
        f = self.to_frame().head(k)
        top = [{c: (int(v) if c in ("layer", "head", "rank", "kv_head") else round(float(v), 4))
                for c, v in row.items()} for row in f.to_dict("records")]
        gap = self.clean_ld - self.corrupt_ld
        out = {"method": self.method, "model": self.model, "kind": self.kind, "component": self.component,
               "n_pairs": self.n_pairs, "shape": [int(n) for n in self.shape], "ci_level": self.ci_level, "top": top}
        if self.kind != "kl":
            out["gap"] = round(float(gap.mean()), 4)  # mean clean - corrupted logit difference: the normaliser
        if self.boot_taus is not None and len(self.boot_taus):
            out["kendall_tau_mean"] = round(float(np.mean(self.boot_taus)), 4)
        if "warning" in self.meta:
            out["warning"] = self.meta["warning"]
        return out

    def ranking(self, k: int = 10) -> dict:
        """The top-k heads as [layer, head, score], best first, with their effects in logits (and CIs and rank
        stability once bootstrapped), the whole score map and the signal: what ``rank-heads --json`` prints.
        Unrounded, unlike ``summary``, so a reader gets back exactly ``top(k)``."""
        top, effect = self.top(k), self.ld_effect
        out = {"method": self.method, "model": self.model, "kind": self.kind, "component": self.component,
               "n_pairs": self.n_pairs, "top": [[l, h, s] for l, h, s in top], "scores": self.scores.tolist(),
               "gqa": self.gqa, "seconds": self.meta.get("seconds"),
               "top_ld_effect": [float(effect[l, h]) for l, h, _ in top],
               "signal": self.meta.get("signal"), "warning": self.meta.get("warning")}
        if self.ci_low is not None:
            out["top_ci"] = [[float(self.ci_low[l, h]), float(self.ci_high[l, h])] for l, h, _ in top]
            out["stability"] = self.stability(k)
        return out

    def to_frame(self):
        """One row per head: layer, head, score, rank (+ ci_low, ci_high, kv_head where known)."""
        import pandas as pd

        s, r, eff = self.scores, self.ranks(), self.ld_effect
        rows = []
        for layer in range(s.shape[0]):
            for head in range(s.shape[1]):
                row = {"layer": layer, "head": head, "score": float(s[layer, head]), "rank": int(r[layer, head]),
                       "ld_effect": float(eff[layer, head])}
                if self.ci_low is not None:
                    row["ci_low"] = float(self.ci_low[layer, head])
                    row["ci_high"] = float(self.ci_high[layer, head])
                if self.gqa and self.component in ("z", "q"):
                    row["kv_head"] = next(kv for kv, qs in self.gqa["groups"].items() if head in qs)
                rows.append(row)
        return pd.DataFrame(rows).sort_values("rank").reset_index(drop=True)

    def plot(self, title: str | None = None):
        """Plotly heatmap [layer x head] of the score."""
        import plotly.graph_objects as go

        s = self.scores
        lim = float(np.nanmax(np.abs(s))) or 1.0
        text = None
        if self.ci_low is not None:
            text = [[f"{s[l, h]:.3f} [{self.ci_low[l, h]:.3f}, {self.ci_high[l, h]:.3f}]" for h in range(s.shape[1])]
                    for l in range(s.shape[0])]
        fig = go.Figure(go.Heatmap(z=s, colorscale="RdBu", zmid=0, zmin=-lim, zmax=lim, text=text,
                                   hovertemplate="layer %{y} head %{x}<br>score %{z:.4f}<br>%{text}<extra></extra>"))
        unit = "KV head" if self.component in ("k", "v") and self.gqa else "head"
        fig.update_layout(title=title or f"{self.method} ({self.kind}, {self.component}) on {self.model}, "
                                         f"{self.n_pairs} pairs", xaxis_title=unit, yaxis_title="layer")
        fig.update_yaxes(autorange="reversed")
        return fig

    def plot_stability(self, k: int = 10):
        """Rank stability: Kendall tau between bootstrap resamples, and the rank spread of the top-k heads."""
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        if self.boot_ranks is None:
            raise ValueError("no bootstrap yet: call .bootstrap() first")
        fig = make_subplots(rows=1, cols=2, subplot_titles=("Kendall tau between resamples", f"rank of the top {k}"))
        fig.add_trace(go.Histogram(x=self.boot_taus, nbinsx=30, name="tau"), row=1, col=1)
        for l, h, _ in self.top(k):
            fig.add_trace(go.Box(y=self.boot_ranks[:, l, h], name=f"L{l}H{h}"), row=1, col=2)
        fig.update_yaxes(autorange="reversed", title_text="rank (1 = top)", row=1, col=2)
        fig.update_layout(showlegend=False, title=f"rank stability, {self.meta.get('n_boot', '?')} resamples")
        return fig


_ranks = ranks  # the earlier name
