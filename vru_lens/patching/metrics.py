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
