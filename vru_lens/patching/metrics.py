"""Patching metrics: logit difference between the clean and corrupted answers.

Only the two answer rows of the unembedding are read, at the final position:
the full-vocabulary logits are never needed.
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor


def gather_final(x: Float[Tensor, "batch pos ..."], final_pos: Int[Tensor, "batch"]) -> Float[Tensor, "batch ..."]:
    """x at each row's own final position (batches are right-padded)."""
    return x[torch.arange(x.shape[0], device=x.device), final_pos.to(x.device)]


def logit_diff_from_logits(
    logits: Float[Tensor, "batch pos vocab"], final_pos: Int[Tensor, "batch"],
    clean_answer: Int[Tensor, "batch"], corrupt_answer: Int[Tensor, "batch"],
) -> Float[Tensor, "batch"]:
    """logit(clean answer) - logit(corrupted answer) at the final position."""
    final = gather_final(logits, final_pos)
    rows = torch.arange(final.shape[0], device=final.device)
    return final[rows, clean_answer.to(final.device)] - final[rows, corrupt_answer.to(final.device)]


def logit_diff_from_resid(
    model, resid_final: Float[Tensor, "batch d_model"],
    clean_answer: Int[Tensor, "batch"], corrupt_answer: Int[Tensor, "batch"],
) -> Float[Tensor, "batch"]:
    """Logit difference read from the final residual through ln_final and two unembedding columns."""
    normed = model.ln_final(resid_final)
    direction = model.W_U[:, clean_answer] - model.W_U[:, corrupt_answer]  # [d_model, batch]
    out = (normed * direction.T).sum(-1)
    b_U = getattr(model, "b_U", None)
    if b_U is not None:
        out = out + b_U[clean_answer] - b_U[corrupt_answer]
    return out


def normalise(patched: Tensor, clean: Tensor, corrupt: Tensor) -> Tensor:
    """1 = clean behaviour, 0 = corrupted behaviour (means over pairs in the denominator)."""
    denom = clean.mean() - corrupt.mean()
    if denom.abs() < 1e-8:
        raise ValueError("clean and corrupted logit differences are equal on average; the pairs carry no signal")
    return (patched - corrupt.mean()) / denom


def batches(n: int, batch_size: int):
    """Index slices covering range(n) in chunks."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


@torch.inference_mode()
def baseline_logit_diffs(model, pt, batch_size: int = 16) -> tuple[Float[Tensor, "pair"], Float[Tensor, "pair"]]:
    """Unpatched logit differences of the clean and corrupted runs (pt: tokens.PairTokens)."""
    device = model.cfg.device
    clean, corrupt = [], []
    for sl in batches(len(pt), batch_size):
        fp, a, b = pt.final_pos[sl], pt.clean_answer[sl], pt.corrupt_answer[sl]
        for ids, out in ((pt.clean[sl], clean), (pt.corrupt[sl], corrupt)):
            width = int(fp.max()) + 1
            out.append(logit_diff_from_logits(model(ids[:, :width].to(device)), fp, a, b).float().cpu())
    return torch.cat(clean), torch.cat(corrupt)


def pair_accuracy(model, pt, batch_size: int = 16) -> dict:
    """Does the model's choice between the two answers follow the rotation phrase?

    Each counterfactual pair differs only in its final rotation phrase, which flips the answer.
    ``clean_right``/``corrupt_right``: share of prompts where the right one of the two answers
    has the higher logit. ``both_right``: share of pairs right on both prompts; a model that
    ignores the phrase scores 0 here whatever its accuracy (a coin flip per prompt: 0.25).
    ``same_pick``: share of pairs where the same one of the two answers wins on both prompts
    (the phrase did not move the choice). ``ld_corr``: correlation of the two prompts' logit
    differences (near 1 = phrase ignored).
    """
    if len(pt) < 2:
        raise ValueError(f"need at least 2 counterfactual pairs, got {len(pt)}; generate more items")
    clean, corrupt = baseline_logit_diffs(model, pt, batch_size)
    clean_ok, corrupt_ok = clean > 0, corrupt < 0
    return {"n_pairs": len(pt), "clean_right": float(clean_ok.float().mean()),
            "corrupt_right": float(corrupt_ok.float().mean()),
            "both_right": float((clean_ok & corrupt_ok).float().mean()),
            "same_pick": float(((clean > 0) == (corrupt > 0)).float().mean()),
            "ld_gap": float((clean - corrupt).mean()), "ld_corr": float(torch.corrcoef(torch.stack([clean, corrupt]))[0, 1])}


def items_pair_accuracy(model, items, chat: bool = False, batch_size: int = 16, kind: str = "observed",
                        max_pairs: int | None = None) -> dict | None:
    """``pair_accuracy`` on the counterfactual pairs of one kind (``bench.pairs.KINDS``) these items yield
    for this model's tokenizer, with what was dropped and why (``pairs``); None when they yield fewer than 2.

    ``unknown_first``: share of the pairs' prompts (clean and flipped) on which "unknown" scores
    above every object among all candidates (``evaluate.score_candidates``).
    """
    from ..bench.pairs import UNKNOWN
    from ..evaluate import score_candidates
    from ..tokens import tokenize_pairs

    try:
        pt = tokenize_pairs(model.tokenizer, items, chat=chat, kind=kind, max_pairs=max_pairs)
    except ValueError:  # not a single pair
        return None
    if len(pt) < 2:
        return None
    from ..bench.shortcuts import pair_audit

    best = pair_audit(pt.pairs)["best"]  # the floor: the best rotation-blind rule's both_right
    prompts = [it for it in pt.pairs.items + pt.pairs.corrupt_items if UNKNOWN in it["candidates"]]
    picks = [max(s, key=s.get) for s in score_candidates(model, prompts, chat, batch_size, progress=False)]
    return {**pair_accuracy(model, pt, batch_size), "pairs": pt.pairs.summary(), "kind": kind,
            "yield": pt.pairs.yield_, "best_rule": best,
            "unknown_first": sum(p == UNKNOWN for p in picks) / len(picks) if picks else None}
