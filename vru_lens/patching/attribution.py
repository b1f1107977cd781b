"""Attribution patching: every head from 2 forward + 1 backward passes, and its agreement with exact patching.

Linear estimate of activation patching (Nanda 2023; Syed et al. 2023): with
the base run's activation ``x``, the source run's ``x'`` and the gradient
``g`` of the logit difference at ``x`` in the base run,

    patched_ld[pair, layer, head] ~= base_ld + sum_{pos, d} (x' - x) * g

over every position (padding positions have zero gradient). Same directions,
components and return shape as ``activation.activation_patch_heads``, so the
two compare head for head (``agreement``).
"""

from __future__ import annotations

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from ..heads import heads_view, hook_name, n_heads_of, top_heads
from ..readout import logit_diff_from_logits
from .activation import _check, base_and_source
from .metrics import batches


def attribution_patch_heads(model, pt, component: str = "z", direction: str = "noising", batch_size: int = 8,
                            progress: bool = True) -> Float[Tensor, "pair layer head"]:
    """Estimated patched logit difference for every head (see module docstring)."""
    _check(component, direction)
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
            _, cache = model.run_with_cache(src, names_filter=lambda name: name in names)
            source = {name: cache[name].clone() for name in names}
        leaves = {}

        def leaf(act, hook):
            act = act.detach().requires_grad_(True)
            leaves[hook.name] = act
            return act

        with torch.enable_grad(), model.hooks(fwd_hooks=[(name, leaf) for name in names]):
            logits = model(base)
            ld = logit_diff_from_logits(logits, fp, a, b)
            grads = torch.autograd.grad(ld.sum(), [leaves[name] for name in names])
        with torch.no_grad():
            for layer, (name, g) in enumerate(zip(names, grads)):
                delta = heads_view(source[name], H) - heads_view(leaves[name].detach(), H)
                est = (delta * heads_view(g, H)).sum(dim=(1, 3))  # [batch, head]
                out[sl, layer] = (ld.detach()[:, None] + est).float().cpu()
    return out


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
