"""Read the model's output only where it is needed.

``final_normed`` runs the model up to ``ln_final`` and stops there, so the
unembedding is never applied to every position; callers unembed the few
rows (positions, answer columns) they read.
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor


class _Stop(Exception):
    pass


def final_normed(model, ids: Int[Tensor, "batch pos"], positions: Int[Tensor, "batch k"]) -> Float[Tensor, "batch k d_model"]:
    """ln_final output at the given positions (per row), without computing logits."""
    grabbed = {}

    def grab(x, hook):
        rows = torch.arange(x.shape[0], device=x.device)[:, None]
        grabbed["x"] = x[rows, positions.to(x.device)]
        raise _Stop

    try:
        with model.hooks(fwd_hooks=[("ln_final.hook_out", grab)]):
            model(ids.to(model.cfg.device))
    except _Stop:
        pass
    if "x" not in grabbed:
        raise RuntimeError("the model never reached ln_final; is this a decoder-only language model?")
    return grabbed["x"]


def unembed_rows(model, normed: Float[Tensor, "... d_model"]) -> Float[Tensor, "... vocab"]:
    """Full-vocabulary logits for a few residual rows (W_U and b_U, with any final soft cap)."""
    logits = normed @ model.W_U
    b_U = getattr(model, "b_U", None)
    if b_U is not None:
        logits = logits + b_U
    cap = getattr(model.cfg, "output_logits_soft_cap", None) or 0.0
    if cap > 0:
        logits = cap * torch.tanh(logits / cap)
    return logits


def rows_logits(model, ids: Int[Tensor, "batch pos"], positions: Int[Tensor, "batch k"]) -> Float[Tensor, "batch k vocab"]:
    """Full-vocabulary logits at ``positions`` only.

    Runs the bridge's wrapped transformers body (``original_model.base_model``) to its final
    hidden states and applies the output head to the rows read. The bridge has rewired that
    body with its own components, so TransformerLens hooks, head deltas and LoRA all apply;
    it skips the bridge's top-level bookkeeping (about half the CPU time on SmolLM2). Models
    without that structure fall back to ``final_normed`` + ``unembed_rows``.
    """
    hf = getattr(model, "original_model", None)
    base = getattr(hf, "base_model", None)
    head = hf.get_output_embeddings() if base is not None and base is not hf else None
    if head is None:
        return unembed_rows(model, final_normed(model, ids, positions))
    device = head.weight.device
    hidden = base(input_ids=ids.to(device), use_cache=False).last_hidden_state
    rows = torch.arange(hidden.shape[0], device=device)[:, None]
    logits = head(hidden[rows, positions.to(device)])
    cap = getattr(hf.config, "final_logit_softcapping", None)
    if cap:
        logits = cap * torch.tanh(logits / cap)
    return logits
