"""Logit lens of the answer: at which layer does the gold object win, and is it overtaken later?

For every answerable item and every layer l, the residual ``blocks.{l}.hook_resid_post``
at the last prompt token (where the answer is read) goes through ``ln_final``
and the unembedding, as if the model stopped at layer l. Each candidate object
is represented by the first token of its answer (``tokens.answer_ids``).

Two readings per (item, layer):
- *rank among candidates*: 0 = the gold answer's first token has the highest
  logit of all candidates' first tokens (wrong candidates whose first token is
  the gold's own are left out: they cannot be told apart at one token);
- *log-probability and rank over the full vocabulary* (log-softmax of all
  logits at that layer; rank 0 = the top token), for the gold answer and for
  the most likely wrong candidate at that layer (the wrong candidate with the
  highest logit, chosen per layer).
The last layer's reading equals the model's own output.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from .readout import resid_logits
from .results import Result
from .tokens import answer_ids, chat_for


@dataclass
class LogitLensResult(Result):
    """Per item and layer: the gold answer against the strongest wrong candidate."""

    layers: np.ndarray  # [layer]
    item_ids: list
    gold_rank: np.ndarray  # [item, layer] rank among candidates' first tokens, 0 = top
    gold_logprob: np.ndarray  # [item, layer] log-softmax over the full vocabulary
    wrong_logprob: np.ndarray  # [item, layer] the most likely wrong candidate (chosen per layer)
    gold_vocab_rank: np.ndarray  # [item, layer] rank of the gold first token in the whole vocabulary, 0 = top
    wrong_vocab_rank: np.ndarray  # [item, layer] the same for the most likely wrong candidate
    n_candidates: np.ndarray  # [item] distinct-first-token candidates compared

    def to_frame(self):
        """One row per layer: means over items."""
        import pandas as pd

        margin = self.gold_logprob - self.wrong_logprob
        return pd.DataFrame({
            "layer": self.layers,
            "gold_top": (self.gold_rank == 0).mean(0),  # fraction of items where gold beats every candidate
            "gold_rank": self.gold_rank.mean(0),
            "gold_logprob": self.gold_logprob.mean(0),
            "wrong_logprob": self.wrong_logprob.mean(0),
            "margin": margin.mean(0),  # gold - best wrong, log-prob
            "gold_vocab_rank_median": np.median(self.gold_vocab_rank, 0),
            "wrong_vocab_rank_median": np.median(self.wrong_vocab_rank, 0),
            "chance_top": (1.0 / self.n_candidates).mean(),
        })

    def summary(self) -> dict:
        """Where the gold answer peaks (top-among-candidates rate and margin) and what the last layers do."""
        f = self.to_frame()
        peak = int(f["gold_top"].values.argmax())
        peak_margin = int(f["margin"].values.argmax())
        last = len(f) - 1
        top_peak = self.gold_rank[:, peak] == 0
        return {
            "n_items": len(self.item_ids), "layers": [int(l) for l in self.layers],
            "gold_top": [round(float(v), 4) for v in f["gold_top"]],
            "margin": [round(float(v), 4) for v in f["margin"]],
            "gold_logprob": [round(float(v), 4) for v in f["gold_logprob"]],
            "wrong_logprob": [round(float(v), 4) for v in f["wrong_logprob"]],
            "chance_top": round(float(f["chance_top"].iloc[0]), 4),
            "peak_layer": int(self.layers[peak]), "peak_gold_top": round(float(f["gold_top"].iloc[peak]), 4),
            "peak_margin_layer": int(self.layers[peak_margin]), "peak_margin": round(float(f["margin"].iloc[peak_margin]), 4),
            "final_gold_top": round(float(f["gold_top"].iloc[last]), 4),
            "final_margin": round(float(f["margin"].iloc[last]), 4),
            # of the items where gold is top at the peak layer, the share no longer top at the last layer
            "overtaken_after_peak": round(float((self.gold_rank[top_peak, last] > 0).mean()) if top_peak.any() else 0.0, 4),
        }

    def plot(self, title: str | None = None):
        from plotly.subplots import make_subplots

        f = self.to_frame()
        x = [int(l) for l in self.layers]
        fig = make_subplots(rows=1, cols=2, subplot_titles=(
            "log-prob (full vocabulary) at the final position", "gold answer ranks first among candidates"))
        fig.add_scatter(x=x, y=f["gold_logprob"], name="gold answer", mode="lines+markers", row=1, col=1)
        fig.add_scatter(x=x, y=f["wrong_logprob"], name="most likely wrong candidate", mode="lines+markers", row=1, col=1)
        fig.add_scatter(x=x, y=f["gold_top"], name="gold top among candidates", mode="lines+markers", row=1, col=2)
        fig.add_scatter(x=x, y=f["chance_top"], name="chance", mode="lines", line={"dash": "dash", "color": "grey"},
                        row=1, col=2)
        fig.update_xaxes(title_text="layer (resid_post through ln_final + unembedding)")
        fig.update_yaxes(title_text="mean log-prob", row=1, col=1)
        fig.update_yaxes(title_text="fraction of items", range=[0, 1], row=1, col=2)
        fig.update_layout(title=title or f"Logit lens of the answer ({len(self.item_ids)} answerable items)")
        return fig


def _candidate_ids(tokenizer, item: dict, chat: bool) -> tuple[int, list[int]]:
    gold = answer_ids(tokenizer, item["answer"], chat)[0]
    wrong = sorted({answer_ids(tokenizer, c, chat)[0] for c in item["candidates"] if c != item["answer"]} - {gold})
    return gold, wrong


def lens_from_resid(
    model, items: list[dict], final: Float[Tensor, "layer item d_model"], layers: list[int] | None = None,
    chat: bool | None = None, chunk: int = 128,
) -> LogitLensResult:
    """The logit lens from already captured final-position residuals (e.g. ``ResidCache.final``)."""
    n_layers, n_items, _ = final.shape
    if n_items != len(items):
        raise ValueError(f"{n_items} residual rows but {len(items)} items")
    unanswerable = [it.get("id", i) for i, it in enumerate(items) if not it.get("answerable", True)]
    if unanswerable:
        raise ValueError(f"the logit lens needs answerable items; {len(unanswerable)} are not "
                         f"(e.g. {unanswerable[:3]}): generate with unanswerable_frac=0 or filter them out")
    layers = list(range(n_layers)) if layers is None else list(layers)
    tok, chat = model.tokenizer, chat_for(model, chat)
    cands = [_candidate_ids(tok, it, chat) for it in items]
    no_rival = [items[i].get("id", i) for i, (_, w) in enumerate(cands) if not w]
    if no_rival:
        raise ValueError(f"items {no_rival[:3]} have no wrong candidate with a distinct first token")
    device = model.W_U.device
    shape = (n_items, n_layers)
    out = {k: np.zeros(shape, dtype=np.float32) for k in ("gold_logprob", "wrong_logprob")}
    ranks = {k: np.zeros(shape, dtype=np.int64) for k in ("gold_rank", "gold_vocab_rank", "wrong_vocab_rank")}
    gold = torch.tensor([g for g, _ in cands], device=device)
    width = max(len(w) for _, w in cands)
    wrong = torch.tensor([w + [w[0]] * (width - len(w)) for _, w in cands], device=device)  # padded with a duplicate
    valid = torch.arange(width, device=device)[None] < torch.tensor([len(w) for _, w in cands], device=device)[:, None]
    with torch.inference_mode():
        for j in range(n_layers):
            for s in range(0, n_items, chunk):
                rows = slice(s, s + chunk)
                logits = resid_logits(model, final[j, rows]).float()
                lse = logits.logsumexp(-1)
                g = logits.gather(1, gold[rows, None]).squeeze(1)
                w = logits.gather(1, wrong[rows])  # [n, width]
                best = w.max(1).values
                out["gold_logprob"][rows, j] = (g - lse).cpu().numpy()
                out["wrong_logprob"][rows, j] = (best - lse).cpu().numpy()
                ranks["gold_rank"][rows, j] = ((w > g[:, None]) & valid[rows]).sum(1).cpu().numpy()
                ranks["gold_vocab_rank"][rows, j] = (logits > g[:, None]).sum(1).cpu().numpy()
                ranks["wrong_vocab_rank"][rows, j] = (logits > best[:, None]).sum(1).cpu().numpy()
    return LogitLensResult(
        layers=np.asarray(layers), item_ids=[it.get("id", i) for i, it in enumerate(items)], **ranks, **out,
        n_candidates=np.asarray([len(w) + 1 for _, w in cands]),
    )


def logit_lens(
    model, items: list[dict], chat: bool | None = None, batch_size: int = 16, progress: bool = True, cache=None,
) -> LogitLensResult:
    """Logit lens of the answer for answerable ``items`` (one forward pass, final position only kept).

    ``cache``: a ``probe.ResidCache`` captured with ``final=True`` to reuse instead of running the model.
    """
    from .probe import capture

    chat = chat_for(model, chat)
    if cache is None:
        cache = capture(model, items, chat=chat, batch_size=batch_size, final=True, progress=progress)
    if cache.final is None:
        raise ValueError("this cache has no final-position residuals; capture it with final=True")
    return lens_from_resid(model, items, cache.final, cache.layers, chat)
