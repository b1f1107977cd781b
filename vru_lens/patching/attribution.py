"""Attribution patching: every head from 2 forward + 1 backward passes, and its agreement with exact patching.

Linear estimate of activation patching (Nanda 2023; Syed et al. 2023): with
the base run's activation ``x``, the source run's ``x'`` and the gradient
``g`` of the logit difference at ``x`` in the base run,

    patched_ld[pair, layer, head] ~= base_ld + sum_{pos, d} (x' - x) * g

over every position (padding positions have zero gradient). Same directions,
components and return shape as ``activation.activation_patch_heads``, so the
two compare head for head (``agreement``).

``g`` is the full derivative: it flows through every later head, so a head
that acts through later layers is estimated too (the activations are watched
in the graph, never cut out of it: an earlier version made each hooked
activation a detached leaf, which kept only paths that skip every later
attention layer and scored layer-0 heads of the organism at 0).

A first-order estimate fails where an effect passes through saturated
attention (a head whose small change moves nothing, whose full change flips a
later softmax). ``ig_steps`` > 1 averages ``g`` over runs whose token
embeddings move from the base prompt's to the source prompt's (alpha = k /
ig_steps, k = 0 .. ig_steps - 1): integrated gradients along the path from
one prompt to the other, as EAP-IG does (Hanna et al. 2024); ig_steps = 1 is
plain attribution patching.
"""

from __future__ import annotations

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from ..heads import heads_view, hook_name, n_heads_of, top_heads
from ..readout import logit_diff_from_logits
from .activation import base_and_source, check_variant
from .metrics import batches


def attribution_patch_heads(model, pt, component: str = "z", direction: str = "noising", batch_size: int = 8,
                            progress: bool = True, ig_steps: int = 1) -> Float[Tensor, "pair layer head"]:
    """Estimated patched logit difference for every head (see module docstring)."""
    check_variant(component, direction)
    if ig_steps < 1:
        raise ValueError(f"ig_steps must be at least 1 (1 = plain attribution patching), got {ig_steps}")
    L, H = model.cfg.n_layers, n_heads_of(model, component)
    names = [hook_name(layer, component) for layer in range(L)]
    base_ids, src_ids = base_and_source(pt, direction)
    device = model.cfg.device
    out = torch.empty(len(pt), L, H)
    for sl in tqdm(list(batches(len(pt), batch_size)), disable=not progress, desc=f"attribution ({component})"):
        fp, a, b = pt.final_pos[sl], pt.clean_answer[sl], pt.corrupt_answer[sl]
        width = int(fp.max()) + 1
        base, src = base_ids[sl, :width].to(device), src_ids[sl, :width].to(device)
        with torch.inference_mode():
            _, cache = model.run_with_cache(src, names_filter=lambda name: name in names or name == EMBED)
            source = {name: cache[name].clone() for name in [*names, EMBED]}
        grads = [0.0] * L
        for k in range(ig_steps):
            watched, g_k, ld_k = _gradients(model, base, names, fp, a, b, source[EMBED], k / ig_steps)
            if k == 0:
                ld, at_base = ld_k, watched
            grads = [g + gk / ig_steps for g, gk in zip(grads, g_k)]
        with torch.no_grad():
            for layer, (name, g) in enumerate(zip(names, grads)):
                delta = heads_view(source[name], H) - heads_view(at_base[name], H)
                est = (delta * heads_view(g, H)).sum(dim=(1, 3))  # [batch, head]
                out[sl, layer] = (ld[:, None] + est).float().cpu()
    return out


EMBED = "hook_embed"


def _gradients(model, base, names, fp, a, b, source_embed, alpha: float):
    """One forward + backward on ``base`` (token embeddings moved ``alpha`` of the way to the source's):
    the hooked activations, d(logit difference)/d(each), and the logit difference."""
    watched = {}

    def embed(act, hook):
        act = act + alpha * (source_embed.to(act.dtype) - act) if alpha else act
        return act.detach().requires_grad_(True)  # the graph starts here, so every later path is in it

    def watch(act, hook):
        watched[hook.name] = act
        return act

    with torch.enable_grad(), model.hooks(fwd_hooks=[(EMBED, embed)] + [(name, watch) for name in names]):
        logits = model(base)
        ld = logit_diff_from_logits(logits, fp, a, b)
        grads = torch.autograd.grad(ld.sum(), [watched[name] for name in names])
    return {k: v.detach() for k, v in watched.items()}, grads, ld.detach()


def agreement(approx, exact, k: int = 10) -> dict:
    """Spearman correlation over all heads and top-k overlap between two score maps (HeadScores or arrays)."""
    from scipy.stats import spearmanr

    a = np.asarray(getattr(approx, "scores", approx), dtype=float)
    e = np.asarray(getattr(exact, "scores", exact), dtype=float)
    if a.shape != e.shape:
        raise ValueError(f"score maps differ in shape: {a.shape} vs {e.shape}")
    top = lambda s: set(top_heads(s, k))  # noqa: E731
    return {"spearman": float(spearmanr(a.ravel(), e.ravel()).statistic),
            f"top{k}_overlap": len(top(a) & top(e)), "k": k}
