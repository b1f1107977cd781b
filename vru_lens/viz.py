"""Figures shared across stages: accuracy breakdowns (plotly) and attention on a story (circuitsvis).

Stage-specific plots live on their result objects (`HeadScores.plot()`, probe results' `plot()`);
this module holds the views that cut across them.
"""

from __future__ import annotations

import torch

from .heads import hook_name
from .tokens import encode, render, step_positions


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


@torch.inference_mode()
def attention_view(model, item: dict, layer: int, heads: list[int] | None = None, chat: bool = False,
                   query_steps: bool = False):
    """circuitsvis attention patterns of chosen heads on one story.

    With ``query_steps=True`` only the rows of step ends and the question are kept
    (where the viewpoint must be bound to an observation), which keeps long stories legible.
    """
    import circuitsvis as cv

    if not 0 <= layer < model.cfg.n_layers:
        raise ValueError(f"layer must be in [0, {model.cfg.n_layers}), got {layer}")
    heads = list(range(model.cfg.n_heads)) if heads is None else heads
    tok = model.tokenizer
    ids = encode(tok, render(item["prompt"], tok, chat), chat)
    name = hook_name(layer, "pattern")
    _, cache = model.run_with_cache(torch.tensor([ids], device=model.cfg.device), names_filter=lambda n: n == name)
    pattern = cache[name][0, heads].float().cpu()  # [head, query, key]
    tokens = [tok.decode([t]) for t in ids]
    if query_steps:
        rows = step_positions(tok, item, chat)
        keep = max(rows) + 1
        pattern = pattern[:, rows, :keep]
        return cv.attention.attention_heads(pattern, tokens[:keep], [f"L{layer}H{h}" for h in heads])
    return cv.attention.attention_heads(pattern, tokens, [f"L{layer}H{h}" for h in heads])
