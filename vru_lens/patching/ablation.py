"""No-counterfactual head importance: KL of the final next-token distribution when one head is ablated.

``how="mean"``: the head's output ``z`` is replaced, at every position, by its
mean over the clean prompts' real tokens (``head_means``). ``how="scaled_query"``:
the head's query is multiplied by ``alpha`` (0 by default: uniform attention
over the prefix, the head then averages its values). The score of a head is
``KL(p_clean || p_ablated)`` at the final position, per pair; the ablated
logit difference is returned too. Fast path: ``tail.TailRunner`` from the
ablated layer on (all positions change here), with logits only at the final
position; ``ablation_reference`` does one plain hooked forward per head.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from ..heads import heads_view, hook_name, set_heads_hooks
from ..readout import gather_final, logit_diff_from_logits, resid_log_probs
from .metrics import batches
from .fallback import FastPathUnsupported, warn_fallback
from .tail import TailRunner

HOWS = ("mean", "scaled_query")


@torch.inference_mode()
def head_means(model, pt, batch_size: int = 8, prompts: str = "clean") -> Float[Tensor, "layer head d_head"]:
    """Mean ``z`` of every head over the real tokens (not padding) of the clean prompts."""
    L, H = model.cfg.n_layers, model.cfg.n_heads
    names = [hook_name(layer, "z") for layer in range(L)]
    total, count = None, 0
    for _, sub in pt.chunks(batch_size):
        ids = (sub.clean if prompts == "clean" else sub.corrupt).to(model.cfg.device)
        _, cache = model.run_with_cache(ids, names_filter=lambda name: name in names)
        real = (torch.arange(ids.shape[1])[None] < sub.lengths[:, None]).to(ids.device)
        z = torch.stack([heads_view(cache[n], H) for n in names])  # [L, b, pos, H, d]
        s = (z * real[None, :, :, None, None]).sum(dim=(1, 2))
        total = s if total is None else total + s
        count += int(real.sum())
    return (total / count).float()


def _kl(logp_clean: Tensor, logp: Tensor) -> Tensor:
    return (logp_clean.exp() * (logp_clean - logp)).sum(-1)


def mean_source(means: Tensor):
    """A ``heads.set_heads_hooks`` source giving each head its mean ``z`` (``head_means``) at every position."""
    return lambda layer, h, view: means[layer, h].to(view.device, view.dtype)


def _ablated(how: str) -> str:
    """The component an ablation acts on: the head output for mean ablation, the query for scaled-query."""
    return "z" if how == "mean" else "q"


def ablation_kl(model, pt, how: str = "mean", alpha: float = 0.0, means: Tensor | None = None, batch_size: int = 8,
                max_rows: int = 128, progress: bool = True
                ) -> tuple[Float[Tensor, "pair layer head"], Float[Tensor, "pair layer head"]]:
    """(KL at the final position, ablated logit difference) for every head ablated alone, per pair.

    Falls back to ``ablation_reference`` where a replay's self-check fails (see ``tail.py``).
    """
    if how not in HOWS:
        raise ValueError(f"how must be one of {HOWS}, got {how!r}")
    if how == "mean" and means is None:
        means = head_means(model, pt, batch_size)
    try:
        return _ablation_tails(model, pt, how, alpha, means, batch_size, max_rows, progress)
    except FastPathUnsupported as err:
        warn_fallback("ablation", err, "running one plain hooked forward per head")
    return ablation_reference(model, pt, how, alpha, means, batch_size, progress)


def _ablation_tails(model, pt, how, alpha, means, batch_size, max_rows, progress):
    L, H = model.cfg.n_layers, model.cfg.n_heads
    n = len(pt)
    kl, lds = torch.empty(n, L, H), torch.empty(n, L, H)
    bar = tqdm(total=L * ((n + batch_size - 1) // batch_size), disable=not progress, desc=f"ablation ({how})")
    with torch.inference_mode():
        for sl in batches(n, batch_size):
            lengths = pt.lengths[sl]
            a, b = pt.clean_answer[sl].to(model.cfg.device), pt.corrupt_answer[sl].to(model.cfg.device)
            base = TailRunner(model, pt.clean[sl], lengths, torch.zeros_like(lengths))
            nb = base.b
            logp_clean = torch.log_softmax(base.final_logits.float(), dim=-1)
            per = max(1, max_rows // nb)
            for layer in range(L):
                name = hook_name(layer, _ablated(how))
                for c0 in range(0, H, per):
                    heads = list(range(c0, min(H, c0 + per)))
                    rows = torch.arange(nb).repeat(len(heads))

                    def patch(act, hook, heads=heads, layer=layer):
                        act = act.clone()
                        view = heads_view(act, H).view(len(heads), nb, act.shape[1], H, -1)
                        for j, h in enumerate(heads):
                            if how == "mean":
                                view[j, :, :, h] = means[layer, h].to(act.device, act.dtype)
                            else:
                                view[j, :, :, h] *= alpha
                        return act

                    fin = base.run(layer, rows, fwd_hooks=[(name, patch)])
                    logp = resid_log_probs(model, fin)
                    rr = rows.to(logp.device)
                    k = _kl(logp_clean[rr], logp).cpu().view(len(heads), nb)
                    d = (logp[torch.arange(len(rr)), a[rr]] - logp[torch.arange(len(rr)), b[rr]]).cpu().view(len(heads), nb)
                    for j, h in enumerate(heads):
                        kl[sl, layer, h] = k[j]
                        lds[sl, layer, h] = d[j]
                bar.update(1)
    bar.close()
    return kl, lds


@torch.inference_mode()
def ablation_reference(model, pt, how: str = "mean", alpha: float = 0.0, means: Tensor | None = None,
                       batch_size: int = 8, progress: bool = True) -> tuple[Tensor, Tensor]:
    """Plain reference of ``ablation_kl``: one full hooked forward per head."""
    L, H = model.cfg.n_layers, model.cfg.n_heads
    if how == "mean" and means is None:
        means = head_means(model, pt, batch_size)
    source = mean_source(means) if how == "mean" else lambda layer, h, view: view[:, :, h] * alpha
    kl, lds = torch.empty(len(pt), L, H), torch.empty(len(pt), L, H)
    for sl in tqdm(list(batches(len(pt), batch_size)), disable=not progress, desc="ablation reference"):
        fp, a, b = pt.final_pos[sl], pt.clean_answer[sl], pt.corrupt_answer[sl]
        ids = pt.clean[sl, : int(fp.max()) + 1].to(model.cfg.device)
        logp_clean = torch.log_softmax(gather_final(model(ids), fp).float(), -1)
        for layer in range(L):
            for h in range(H):
                hooks = set_heads_hooks(model, [(layer, h)], source, component=_ablated(how))
                logits = model.run_with_hooks(ids, fwd_hooks=hooks)
                logp = torch.log_softmax(gather_final(logits, fp).float(), -1)
                kl[sl, layer, h] = _kl(logp_clean, logp).cpu()
                lds[sl, layer, h] = logit_diff_from_logits(logits, fp, a, b).float().cpu()
    return kl, lds
