"""The obvious candidate scorer the tests compare ``score_candidates`` with: one unpadded forward per
(item, candidate) on prompt + candidate, summing the candidate tokens' log-probabilities."""

from __future__ import annotations

import torch

from vru_lens.tokens import answer_ids, encode, render


def candidate_loop(forward, tok, items, chat=False):
    """``forward(ids [1, pos]) -> logits [pos, vocab]``: the bridge's forward, or the transformers model's."""
    out = []
    with torch.inference_mode():
        for it in items:
            prompt = encode(tok, render(it["prompt"], tok, chat), chat)
            scores = {}
            for c in it["candidates"]:
                ids = answer_ids(tok, c, chat)
                lp = forward(torch.tensor([prompt + ids])).float().log_softmax(-1)
                scores[c] = sum(lp[len(prompt) - 1 + k, t].item() for k, t in enumerate(ids))
            out.append(scores)
    return out
