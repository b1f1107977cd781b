"""Activation patching of every attention head: z (head output), q, k or v; all positions or by position.

Conventions (the same in every function here):

- ``direction="noising"`` (default): run the *clean* prompt and patch in one
  head's activation from the *corrupted* prompt; an important head pulls the
  logit difference down. ``direction="denoising"``: run the corrupted prompt
  with one clean activation (what ``transformer_lens.patching.
  get_act_patch_attn_head_out_all_pos`` does); an important head restores it.
- Every function returns the per-pair *patched logit difference*
  ``Float[Tensor, "pair layer head"]``; ``HeadScores`` turns it into a score.
- ``component`` "z" and "q" index query heads (``n_heads``); "k" and "v"
  index key/value heads (``n_key_value_heads`` on GQA models, where one K/V
  head is read by a group of query heads: ``gqa_groups`` says which).

The fast functions batch the patched variants, start at the patched layer from
the recorded residual stream, recompute only positions from the first token
where the pair differs, and unembed only the two answer columns at the final
position (see ``tail.py``). ``*_reference`` functions do one plain hooked
forward per head and exist to check them.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from ..heads import gqa_groups, heads_view, hook_name, n_heads_of  # noqa: F401  (gqa_groups re-exported)
from ..readout import logit_diff_from_logits, logit_diff_from_resid
from .metrics import batches
from .fallback import FastPathUnsupported, warn_fallback
from .tail import TailRunner, first_diff

COMPONENTS = ("z", "q", "k", "v")
DIRECTIONS = ("noising", "denoising")


def check_variant(component: str, direction: str) -> None:
    if component not in COMPONENTS:
        raise ValueError(f"component must be one of {COMPONENTS}, got {component!r}")
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")


def base_and_source(pt, direction: str):
    """(ids patched into, ids the patch comes from)."""
    return (pt.clean, pt.corrupt) if direction == "noising" else (pt.corrupt, pt.clean)


def _sweep(model, pt, component, direction, batch_size, max_rows, progress, by_pos, layers=None):
    """Tail replays from the first differing token; whole-sequence replays, then the plain
    reference, where a runner's self-check fails (see ``tail.py``)."""
    check_variant(component, direction)
    what = "activation patching"
    try:
        starts = first_diff(pt.clean, pt.corrupt, pt.lengths)
        return _sweep_tails(model, pt, component, direction, batch_size, max_rows, progress, by_pos, layers, starts)
    except FastPathUnsupported as err:
        warn_fallback(what, err, "replaying whole sequences instead of tails")
    try:
        starts = torch.zeros_like(pt.lengths)
        return _sweep_tails(model, pt, component, direction, batch_size, max_rows, progress, by_pos, layers, starts)
    except FastPathUnsupported as err:
        warn_fallback(what, err, "running one plain hooked forward per head")
    return activation_patch_heads_reference(model, pt, component, direction, batch_size, progress, layers, by_pos)


def _sweep_tails(model, pt, component, direction, batch_size, max_rows, progress, by_pos, layers, starts_all):
    L, H = model.cfg.n_layers, n_heads_of(model, component)
    layers = list(range(L)) if layers is None else list(layers)
    n, S = len(pt), pt.clean.shape[1]
    out = torch.full((n, L, H, S) if by_pos else (n, L, H), float("nan"))
    base_ids, src_ids = base_and_source(pt, direction)
    names = tuple(hook_name(layer, component) for layer in layers)
    bar = tqdm(total=len(layers) * ((n + batch_size - 1) // batch_size), disable=not progress,
               desc=f"activation patching ({component}, {direction})")
    with torch.inference_mode():
        for sl in batches(n, batch_size):
            lengths, starts = pt.lengths[sl], starts_all[sl]
            a, b = pt.clean_answer[sl].to(model.cfg.device), pt.corrupt_answer[sl].to(model.cfg.device)
            base = TailRunner(model, base_ids[sl], lengths, starts)
            src = TailRunner(model, src_ids[sl], lengths, starts, record=names)
            nb = base.b
            # the unpatched run read the way every patched row is (readout.logit_diff_from_resid)
            base_ld = logit_diff_from_resid(model, base.last_out[torch.arange(nb), base.final_rel], a, b).float().cpu()
            if by_pos:  # positions before the first difference: patching changes nothing
                pos = torch.arange(S)
                fill = torch.where((pos[None] < starts[:, None])[:, None, :], base_ld[:, None, None], float("nan"))
                for layer in layers:
                    out[sl, layer] = fill.expand(nb, H, S)
            for layer in layers:
                name = hook_name(layer, component)
                source = heads_view(src.acts[name], H)
                variants = [(h, t) for h in range(H) for t in range(base.T)] if by_pos else [(h, None) for h in range(H)]
                per = max(1, max_rows // nb)
                for c0 in range(0, len(variants), per):
                    chunk = variants[c0:c0 + per]
                    rows = torch.arange(nb).repeat(len(chunk))

                    def patch(act, hook, chunk=chunk, source=source):
                        act = act.clone()
                        view = heads_view(act, H).view(len(chunk), nb, *source.shape[1:])
                        for j, (h, t) in enumerate(chunk):
                            if t is None:
                                view[j, :, :, h] = source[:, :, h]
                            else:
                                view[j, :, t, h] = source[:, t, h]
                        return act

                    fin = base.run(layer, rows, fwd_hooks=[(name, patch)])
                    ld = logit_diff_from_resid(model, fin, a[rows.to(a.device)], b[rows.to(b.device)])
                    ld = ld.float().cpu().view(len(chunk), nb)
                    for j, (h, t) in enumerate(chunk):
                        if t is None:
                            out[sl, layer, h] = ld[j]
                        else:
                            abs_pos = starts + t
                            real = abs_pos < lengths
                            rows_i = torch.arange(sl.start, sl.stop)[real]
                            out[rows_i, layer, h, abs_pos[real]] = ld[j][real]
                bar.update(1)
    bar.close()
    return out


def activation_patch_heads(model, pt, component: str = "z", direction: str = "noising", batch_size: int = 8,
                           max_rows: int = 128, progress: bool = True, layers=None) -> Float[Tensor, "pair layer head"]:
    """Patched logit difference for every head of ``component``, patched over all positions.

    ``max_rows``: sequences per forward (variants x pairs), the memory knob.
    ``layers``: restrict to some layers (others are NaN).
    """
    return _sweep(model, pt, component, direction, batch_size, max_rows, progress, by_pos=False, layers=layers)


def activation_patch_heads_by_pos(model, pt, component: str = "z", direction: str = "noising", batch_size: int = 8,
                                  max_rows: int = 128, progress: bool = True, layers=None
                                  ) -> Float[Tensor, "pair layer head pos"]:
    """Patched logit difference for every head and every single position (absolute index).

    Positions before the pair's first differing token equal the unpatched
    run (the activations there are the same in both prompts); positions past
    a pair's length are NaN.
    """
    return _sweep(model, pt, component, direction, batch_size, max_rows, progress, by_pos=True, layers=layers)


def activation_patch_heads_reference(model, pt, component: str = "z", direction: str = "noising",
                                     batch_size: int = 8, progress: bool = True, layers=None, by_pos: bool = False
                                     ) -> Float[Tensor, "pair layer head"] | Float[Tensor, "pair layer head pos"]:
    """Plain reference: one full hooked forward per (layer, head[, position]), full logits.

    ``by_pos``: patch one position at a time (absolute index; NaN past a pair's length).
    """
    check_variant(component, direction)
    L, H = model.cfg.n_layers, n_heads_of(model, component)
    layers = list(range(L)) if layers is None else list(layers)
    S = pt.clean.shape[1]
    out = torch.full((len(pt), L, H, S) if by_pos else (len(pt), L, H), float("nan"))
    base_ids, src_ids = base_and_source(pt, direction)
    device = model.cfg.device
    with torch.inference_mode():
        for sl in tqdm(list(batches(len(pt), batch_size)), disable=not progress, desc="reference patching"):
            fp, a, b = pt.final_pos[sl], pt.clean_answer[sl], pt.corrupt_answer[sl]
            width = int(fp.max()) + 1
            base, src = base_ids[sl, :width].to(device), src_ids[sl, :width].to(device)
            names = [hook_name(layer, component) for layer in layers]
            _, cache = model.run_with_cache(src, names_filter=lambda name: name in names)
            for layer in layers:
                name = hook_name(layer, component)
                for h in range(H):
                    for t in (range(width) if by_pos else [slice(None)]):
                        def patch(act, hook, h=h, name=name, t=t):
                            act = act.clone()
                            heads_view(act, H)[:, t, h] = heads_view(cache[name], H)[:, t, h]
                            return act
                        logits = model.run_with_hooks(base, fwd_hooks=[(name, patch)])
                        ld = logit_diff_from_logits(logits, fp, a, b).float().cpu()
                        if by_pos:
                            rows = torch.arange(sl.start, sl.stop)
                            keep = t < pt.lengths[sl]
                            out[rows[keep], layer, h, t] = ld[keep]
                        else:
                            out[sl, layer, h] = ld
    return out


def tl_head_out_all_pos(model, pt, layers=None) -> Float[Tensor, "layer head"]:
    """TransformerLens's ``get_act_patch_attn_head_out_all_pos`` (denoising) on one batch of pairs.

    The metric is the mean logit difference over the pairs, so the result
    equals ``activation_patch_heads(..., direction="denoising").mean(0)``.
    ``layers`` restricts the sweep (through ``generic_activation_patch``'s
    ``index_df``, the same code path) so a benchmark can time a subset.
    """
    import itertools

    import pandas as pd
    from transformer_lens import patching as tlp

    device = model.cfg.device
    width = int(pt.final_pos.max()) + 1
    clean, corrupt = pt.clean[:, :width].to(device), pt.corrupt[:, :width].to(device)
    fp, a, b = pt.final_pos, pt.clean_answer, pt.corrupt_answer
    metric = lambda logits: logit_diff_from_logits(logits, fp, a, b).mean()  # noqa: E731
    with torch.inference_mode():
        _, cache = model.run_with_cache(clean, names_filter=lambda name: name.endswith("attn.hook_z"))
        if layers is None:
            return tlp.get_act_patch_attn_head_out_all_pos(model, corrupt, cache, metric).float().cpu()
        L, H = model.cfg.n_layers, model.cfg.n_heads
        index_df = pd.DataFrame(list(itertools.product(layers, range(H))), columns=["layer", "head"])
        flat = tlp.generic_activation_patch(
            model, corrupt, cache, metric, patch_setter=tlp.layer_head_vector_patch_setter,
            activation_name="z", index_df=index_df)
        out = torch.full((L, H), float("nan"))
        for (layer, h), v in zip(index_df.itertuples(index=False), flat.float().cpu()):
            out[layer, h] = v
        return out
