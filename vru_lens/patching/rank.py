"""``rank_heads``: the one entry point from a model and pairs to ``HeadScores``.

Methods (all return per-pair numbers, turned into a score where higher = more important):

- ``"path"``: path patching sender head -> logits (``path.path_patch_logits``), noising.
- ``"activation"``: activation patching of ``component`` (z, q, k, v), noising or denoising.
- ``"attribution"``: its linear estimate from 2 forward + 1 backward passes (``ig_steps`` > 1:
  integrated gradients over that many backward passes, for effects through saturated attention).
- ``"ablation"``: KL of the final next-token distribution with the head ablated (mean or
  scaled-query), no counterfactual needed; ``kind="kl"``.

With ``checkpoint=PATH`` every chunk of ``batch_size`` pairs is saved when done
and a re-run with the same settings resumes from the saved chunks; the file is
removed once the result is complete.
"""

from __future__ import annotations

import time

import torch

from ..tokens import PairTokens, tokenize_pairs
from .checkpoint import Checkpoint, tokens_hash
from .metrics import baseline_logit_diffs, batches
from .scores import HeadScores

METHODS = ("path", "activation", "attribution", "ablation")


def subset(pt: PairTokens, sl: slice) -> PairTokens:
    """Pairs ``sl`` of a PairTokens (the bench PairSet is kept whole)."""
    width = int(pt.lengths[sl].max())
    return PairTokens(pt.clean[sl, :width], pt.corrupt[sl, :width], pt.lengths[sl], pt.clean_answer[sl],
                      pt.corrupt_answer[sl], pt.pairs)


def gqa_note(model, component: str) -> dict | None:
    from .activation import gqa_groups

    groups = gqa_groups(model)
    if groups is None:
        return None
    if component in ("k", "v"):
        note = (f"scores index key/value heads ({len(groups)} per layer); patching one changes the "
                f"{component} read by every query head of its group")
    else:
        note = "scores index query heads; query heads of one group share a key/value head"
    return {"n_key_value_heads": len(groups), "groups": groups, "note": note}


def rank_heads(model, pairs, method: str = "path", *, component: str = "z", direction: str = "noising",
               ablation: str = "mean", alpha: float = 0.0, batch_size: int = 8, max_rows: int = 128,
               n_boot: int = 1000, seed: int = 0, checkpoint=None, progress: bool = True,
               chat: bool = False, ig_steps: int = 1) -> HeadScores:
    """Rank every attention head of ``model`` on ``pairs`` (PairTokens, or VRUBench items to pair up).

    ``component``/``direction`` apply to activation and attribution patching
    (path patching is z, noising; ablation is no-counterfactual). ``n_boot``
    bootstrap resamples of the pairs give CIs and rank stability (0 = none).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method in ("path", "ablation"):
        component = "z"
    pt = pairs if isinstance(pairs, PairTokens) else tokenize_pairs(model.tokenizer, pairs, chat=chat)
    if len(pt) == 0:
        raise ValueError("no counterfactual pairs: give more items (about half of them pair up)")
    name = getattr(model, "vru_name", type(model).__name__)
    kind = "kl" if method == "ablation" else ("noising" if method == "path" else direction)
    key = {"model": name, "method": method, "component": component, "kind": kind, "tokens": tokens_hash(pt),
           "ablation": ablation if method == "ablation" else None, "alpha": alpha if method == "ablation" else None,
           "batch_size": batch_size, **({"ig_steps": ig_steps} if method == "attribution" and ig_steps != 1 else {})}
    ckpt = Checkpoint(checkpoint, key) if checkpoint else None
    means = None
    if method == "ablation" and ablation == "mean":
        from .ablation import head_means

        means = head_means(model, pt, batch_size)  # over all pairs, so chunks share one mean
    t0 = time.perf_counter()
    parts = {"per_pair": [], "clean": [], "corrupt": [], "extra": []}
    chunks = list(batches(len(pt), batch_size))
    for i, sl in enumerate(chunks):
        tag = f"{sl.start}:{sl.stop}"
        saved = ckpt.get(tag) if ckpt else None
        if saved is None:
            sub = subset(pt, sl)
            clean, corrupt = baseline_logit_diffs(model, sub, batch_size)
            extra = torch.zeros(0)
            show = progress and len(chunks) == 1
            if method == "path":
                from .path import path_patch_logits

                per = path_patch_logits(model, sub, batch_size=batch_size, progress=show)
            elif method == "activation":
                from .activation import activation_patch_heads

                per = activation_patch_heads(model, sub, component, direction, batch_size, max_rows, progress=show)
            elif method == "attribution":
                from .attribution import attribution_patch_heads

                per = attribution_patch_heads(model, sub, component, direction, batch_size, progress=show,
                                              ig_steps=ig_steps)
            else:
                from .ablation import ablation_kl

                per, extra = ablation_kl(model, sub, ablation, alpha, means, batch_size, max_rows, progress=show)
            saved = {"per_pair": per, "clean": clean, "corrupt": corrupt, "extra": extra}
            if ckpt:
                ckpt.put(tag, **saved)
            if progress and len(chunks) > 1:
                print(f"{method}: pairs {tag} done ({i + 1}/{len(chunks)} chunks)", flush=True)
        for k in parts:
            parts[k].append(torch.as_tensor(saved[k]).float())
    cat = {k: torch.cat(v) for k, v in parts.items()}
    meta = {"seconds": round(time.perf_counter() - t0, 2), "pairs": pt.pairs.summary() if hasattr(pt.pairs, "summary") else None,
            "resumed_chunks": ckpt.resumed if ckpt else 0, "batch_size": batch_size}
    if method == "ablation":
        meta["ablation"] = ablation
        if ablation == "scaled_query":
            meta["alpha"] = alpha
        meta["ablated_ld_mean"] = cat["extra"].mean(0).tolist()
    if method in ("activation", "attribution"):
        meta["direction"] = direction
    if method == "attribution":
        meta["ig_steps"] = ig_steps
    result = HeadScores.from_patched(cat["per_pair"], cat["clean"], cat["corrupt"], method=method, model=name, kind=kind,
                                     component=component, gqa=gqa_note(model, component), meta=meta)
    if n_boot:
        result.bootstrap(n_boot, seed=seed)
    if ckpt:
        ckpt.clear()
    return result
