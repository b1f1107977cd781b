"""Gradient x activation: a first-order estimate of what zero-ablating a head does to the answer.

Per pair and head: ``|sum over positions and d_head of dL/dz * z|`` on the clean
prompt, with L = -log p(clean answer's first token) at the final position (one
forward and one backward pass per batch, no counterfactual read). A cheap
stand-in ranking where no patching ranking exists yet (``vru-lens finetune``
without ``--heads``); ``HeadScores`` kind ``"gradient"`` (score = mean over pairs).
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from ..heads import heads_view, hook_name
from ..readout import rows_logits
from ..tokens import batches


def answer_nll(model, ids: Tensor, final_pos: Tensor, answer: Tensor) -> Tensor:
    """Sum over rows of -log p(answer) at each row's final position (bias and soft-cap included)."""
    logp = rows_logits(model, ids, final_pos[:, None].to(ids.device)).float().log_softmax(-1)[:, 0]
    return -logp.gather(-1, answer[:, None].to(logp.device)).sum()


def gradient_x_activation(model, pt, batch_size: int = 8, progress: bool = True) -> Float[Tensor, "pair layer head"]:
    """|grad . z| per pair and head (see module docstring); the model's parameters get no gradient."""
    L, H = model.cfg.n_layers, model.cfg.n_heads
    names = [hook_name(layer, "z") for layer in range(L)]
    out = torch.empty(len(pt), L, H)
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        for sl in tqdm(list(batches(len(pt), batch_size)), disable=not progress, desc="gradient x activation"):
            fp = pt.final_pos[sl]
            ids = pt.clean[sl, : int(fp.max()) + 1].to(model.cfg.device)
            saved = {}

            def keep(z, hook):
                if not z.requires_grad:  # layer 0 (nothing upstream needs a gradient): make it a leaf that does
                    z.requires_grad_(True)
                saved[hook.name] = z
                return z

            with torch.enable_grad(), model.hooks(fwd_hooks=[(n, keep) for n in names]):
                loss = answer_nll(model, ids, fp, pt.clean_answer[sl])
                zs = [saved[n] for n in names]
                grads = torch.autograd.grad(loss, zs, allow_unused=True)
            for layer, (z, g) in enumerate(zip(zs, grads)):
                if g is None:
                    out[sl, layer] = 0.0
                else:  # [batch, pos, head, d_head] -> [batch, head]
                    out[sl, layer] = (heads_view(g, H) * heads_view(z, H)).sum((-1, 1)).abs().detach().float().cpu()
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
    return out
