"""Figures shared across stages: accuracy breakdowns (plotly) and attention on a story (circuitsvis).

Each result draws itself (``plot()`` of the result contract, ``vru_lens.results.Result``);
this module holds the views that cut across results (several overlaid) and the attention patterns.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .heads import hook_name
from .results import Result, model_name
from .tokens import chat_for, encode, render, step_positions


def accuracy_figure(results: dict, key: str = "n_steps"):
    """Grouped bars of accuracy by `key` for several EvalResults ({label: result})."""
    import plotly.graph_objects as go

    if not results:
        raise ValueError("pass at least one EvalResult, as {label: result}")
    fig = go.Figure()
    for label, res in results.items():
        groups = res.breakdown(key)
        fig.add_bar(name=f"{label} ({res.accuracy:.0%})", x=[str(k) for k in groups], y=list(groups.values()))
    fig.update_layout(barmode="group", yaxis_tickformat=".0%", yaxis_title="accuracy", xaxis_title=key,
                      title=f"VRUBench accuracy by {key}")
    return fig


@dataclass
class AttentionPatterns(Result):
    """Attention patterns of chosen heads on one story, kept so a report can draw them without the model."""

    model: str
    tokens: list  # key tokens (decoded)
    query_tokens: list  # the rows kept (all tokens, or step ends and the question)
    labels: list  # "L{layer}H{head}" per pattern
    patterns: np.ndarray  # [head, query, key]

    def summary(self) -> dict:
        return {"model": self.model, "heads": self.labels, "n_tokens": len(self.tokens)}

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame([{"head": lab, "query": q, "key": k, "weight": float(w)}
                             for lab, rows in zip(self.labels, self.patterns)
                             for q, row in zip(self.query_tokens, rows) for k, w in zip(self.tokens, row)])

    def plot(self, title: str | None = None):
        """One heatmap [query x key] per head (plotly); ``view()`` is the interactive circuitsvis one."""
        from plotly.subplots import make_subplots

        fig = make_subplots(rows=1, cols=len(self.labels), subplot_titles=self.labels, horizontal_spacing=0.03)
        keys = [f"{i}:{t}" for i, t in enumerate(self.tokens)]  # positions keep repeated tokens apart
        queries = [f"{i}:{t}" for i, t in enumerate(self.query_tokens)]
        for i, pattern in enumerate(self.patterns, start=1):
            fig.add_heatmap(z=pattern, x=keys, y=queries, zmin=0, zmax=1, colorscale="Blues", showscale=i == 1,
                            hovertemplate="query %{y}<br>key %{x}<br>weight %{z:.3f}<extra></extra>", row=1, col=i)
            fig.update_xaxes(showticklabels=False, row=1, col=i)
            fig.update_yaxes(autorange="reversed", showticklabels=i == 1, row=1, col=i)
        fig.update_layout(title=title or f"attention on one story ({self.model})")
        return fig

    def view(self):
        """circuitsvis ``attention_heads`` (an object that renders itself in notebooks; ``.local_src`` is
        standalone HTML with the JavaScript inlined)."""
        import circuitsvis as cv

        return cv.attention.attention_heads(torch.as_tensor(self.patterns), self.tokens, self.labels)


@torch.inference_mode()
def attention_patterns(model, item: dict, heads: list, chat: bool | None = None, query_steps: bool = False) -> AttentionPatterns:
    """Patterns of ``heads`` ((layer, head) pairs, any layers) on one story.

    With ``query_steps=True`` only the rows of step ends and the question are kept
    (where the viewpoint must be bound to an observation), which keeps long stories legible.
    """
    L = model.cfg.n_layers
    heads = [(int(l), int(h)) for l, h in heads]
    bad = [(l, h) for l, h in heads if not (0 <= l < L and 0 <= h < model.cfg.n_heads)]
    if bad:
        raise ValueError(f"heads {bad} outside this model's {L} layers x {model.cfg.n_heads} heads "
                         f"(layer must be in [0, {L}))")
    tok, chat = model.tokenizer, chat_for(model, chat)
    ids = encode(tok, render(item["prompt"], tok, chat), chat)
    names = {hook_name(l, "pattern") for l, _ in heads}
    _, cache = model.run_with_cache(torch.tensor([ids], device=model.cfg.device), names_filter=lambda n: n in names)
    pattern = torch.stack([cache[hook_name(l, "pattern")][0, h] for l, h in heads]).float().cpu()
    tokens = [tok.decode([t]) for t in ids]
    rows = list(range(len(ids)))
    if query_steps:
        rows = step_positions(tok, item, chat)
        keep = max(rows) + 1
        pattern, tokens = pattern[:, rows, :keep], tokens[:keep]
    return AttentionPatterns(model_name(model), tokens, [tokens[r] if r < len(tokens)
                             else "" for r in rows], [f"L{l}H{h}" for l, h in heads], pattern.numpy())


def attention_view(model, item: dict, layer: int, heads: list[int] | None = None, chat: bool | None = None,
                   query_steps: bool = False):
    """circuitsvis attention patterns of chosen heads of one layer on one story (see ``attention_patterns``)."""
    if not 0 <= layer < model.cfg.n_layers:
        raise ValueError(f"layer must be in [0, {model.cfg.n_layers}), got {layer}")
    heads = list(range(model.cfg.n_heads)) if heads is None else heads
    return attention_patterns(model, item, [(layer, h) for h in heads], chat, query_steps).view()


def heatmaps(scores: dict, planted=None, title: str = "Head rankings"):
    """Head score heatmaps side by side ({label: HeadScores}), each scaled to its own largest |score|;
    ``planted`` heads (an organism's G) are outlined on every map."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    if not scores:
        raise ValueError("pass at least one HeadScores, as {label: scores}")
    fig = make_subplots(rows=1, cols=len(scores), subplot_titles=list(scores), horizontal_spacing=0.06)
    for i, sc in enumerate(scores.values(), start=1):
        s = np.asarray(sc.scores, dtype=float)
        lim = float(np.nanmax(np.abs(s))) or 1.0
        text = [[f"{s[l, h]:.3f}" + (f" [{sc.ci_low[l, h]:.3f}, {sc.ci_high[l, h]:.3f}]" if sc.ci_low is not None else "")
                 for h in range(s.shape[1])] for l in range(s.shape[0])]
        fig.add_trace(go.Heatmap(z=s / lim, colorscale="RdBu", zmid=0, zmin=-1, zmax=1, text=text, showscale=i == 1,
                                 colorbar={"title": "score / max|score|", "len": 0.8},
                                 hovertemplate="L%{y} H%{x}<br>score %{text}<extra></extra>"), row=1, col=i)
        if planted:
            fig.add_scatter(x=[h for _, h in planted], y=[l for l, _ in planted], mode="markers", row=1, col=i,
                            marker={"symbol": "square-open", "size": 16, "color": "black", "line": {"width": 2}},
                            name="planted head (G)", showlegend=i == 1, hoverinfo="skip")
        fig.update_xaxes(title_text="head", dtick=1, row=1, col=i)
        fig.update_yaxes(title_text="layer" if i == 1 else None, dtick=1, autorange="reversed", row=1, col=i)
    fig.update_layout(title=title, legend={"orientation": "h", "y": -0.25})
    return fig


def finetune_curves(results: dict):
    """Training loss by step and validation accuracy for fine-tuning runs ({label: FinetuneResult or TrainResult})."""
    from plotly.subplots import make_subplots

    if not results:
        raise ValueError("pass at least one FinetuneResult, as {label: result}")
    fig = make_subplots(rows=1, cols=2, subplot_titles=("training loss (answer token)", "validation accuracy"))
    for i, (label, res) in enumerate(results.items()):
        color = f"hsl({(i * 137) % 360},60%,45%)"
        run = res.train if hasattr(res, "train") else res.to_dict()  # FinetuneResult keeps its TrainResult as a dict
        hist, val = run.get("history", []), run.get("validation", [])
        fig.add_scatter(x=[h["step"] for h in hist], y=[h["loss"] for h in hist], mode="lines", name=label,
                        line={"color": color}, legendgroup=label, row=1, col=1)
        fig.add_scatter(x=[v["step"] for v in val], y=[v["accuracy"] for v in val], mode="lines+markers", name=label,
                        line={"color": color}, legendgroup=label, showlegend=False, row=1, col=2)
    fig.update_xaxes(title_text="optimizer step")
    fig.update_yaxes(title_text="loss", row=1, col=1)
    fig.update_yaxes(title_text="accuracy", tickformat=".0%", row=1, col=2)
    fig.update_layout(title="Fine-tuning curves")
    return fig


def probe_figure(results: dict, title: str | None = None):
    """Probe accuracy by layer for several ProbeResults ({label: result}), each with its control task and chance."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for i, (label, res) in enumerate(results.items()):
        color = f"hsl({(i * 137) % 360},60%,45%)"
        f, control_by = res.to_frame(), res.summary()["control_by"]
        x = [int(l) for l in f["layer"]]
        fig.add_scatter(x=x, y=f["accuracy"], mode="lines+markers", name=f"{label}: probe", line={"color": color})
        fig.add_scatter(x=x, y=f["control_accuracy"], mode="lines", name=f"{label}: control task ({control_by})",
                        line={"color": color, "dash": "dot"})
        fig.add_scatter(x=x, y=f["chance"], mode="lines", name=f"{label}: chance (majority)",
                        line={"color": color, "dash": "dash", "width": 1})
    fig.update_xaxes(dtick=1)
    fig.update_layout(title=title or "Probe accuracy by layer", xaxis_title="layer (resid_post)",
                      yaxis_title="held-out accuracy", yaxis_range=[0, 1.02], yaxis_tickformat=".0%")
    return fig
