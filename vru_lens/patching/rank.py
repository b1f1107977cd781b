"""``rank_heads``: the one entry point from a model and pairs to ``HeadScores``.

Methods (all return per-pair numbers, turned into a score where higher = more important):

- ``"path"``: path patching sender head -> logits (``path.path_patch_logits``), noising.
- ``"activation"``: activation patching of ``component`` (z, q, k, v), noising or denoising.
- ``"attribution"``: its linear estimate from 2 forward + 1 backward passes (``ig_steps`` > 1:
  integrated gradients over that many backward passes, for effects through saturated attention).
- ``"ablation"``: KL of the final next-token distribution with the head ablated (mean or
  scaled-query), no counterfactual needed; ``kind="kl"``.
- ``"gradient"``: gradient x activation of each head's z for the clean answer's log-prob
  (``gradient.gradient_x_activation``), one forward + one backward pass; ``kind="gradient"``.

Each method is a ``RankingMethod`` in ``REGISTRY`` (one signature: model, pairs, options ->
per-pair numbers; auto-circuit's ``PruneAlgo`` is the model); ``RankOptions`` holds every
option, validated once (a bad value is a ``ValueError`` naming the choices, which the CLI
prints as its one-line error).

With ``checkpoint=PATH`` every chunk of ``batch_size`` pairs is saved when done
and a re-run with the same settings resumes from the saved chunks; the file is
removed once the result is complete.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Literal, get_args

import torch

from ..results import model_name
from ..tokens import PairTokens, chat_for, tokenize_pairs
from .ablation import HOWS
from .activation import COMPONENTS, DIRECTIONS
from .checkpoint import Checkpoint, tokens_hash
from .metrics import baseline_logit_diffs, batches
from .scores import HeadScores

Component = Literal[COMPONENTS]  # the one list of each lives beside the code that reads it
Direction = Literal[DIRECTIONS]
Ablation = Literal[HOWS]


def _one_of(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")


@dataclass(frozen=True)
class RankOptions:
    """Every option of every ranking method, validated once here (a bad value is a ValueError)."""

    component: Component = "z"
    direction: Direction = "noising"
    ablation: Ablation = "mean"
    alpha: float = 0.0
    batch_size: int = 8
    max_rows: int = 128
    ig_steps: int = 1  # attribution: integrated-gradient steps (1 = plain attribution patching)

    def __post_init__(self):
        for name, allowed in (("component", Component), ("direction", Direction), ("ablation", Ablation)):
            _one_of(name, getattr(self, name), get_args(allowed))
        if self.batch_size < 1 or self.max_rows < 1:
            raise ValueError(f"batch_size and max_rows must be positive, got {self.batch_size}, {self.max_rows}")
        if self.ig_steps < 1:
            raise ValueError(f"ig_steps must be at least 1 (1 = plain attribution patching), got {self.ig_steps}")


@dataclass(frozen=True)
class RankingMethod:
    """One way to score every head (auto-circuit's ``PruneAlgo`` is the model): ``run(model, pt, opts,
    means, progress)`` gives per-pair numbers [pair, layer, head] and an extra tensor (or an empty one)."""

    key: str
    kind: Callable[[RankOptions], str]  # one of ``scores.KINDS``
    run: Callable
    component_free: bool = False  # patches z whatever ``component`` says
    options: tuple[str, ...] = ()  # the RankOptions it reads (recorded in meta / the checkpoint key)


def _path(model, pt, o, means, progress):
    from .path import path_patch_logits

    return path_patch_logits(model, pt, batch_size=o.batch_size, progress=progress).effects, torch.zeros(0)


def _activation(model, pt, o, means, progress):
    from .activation import activation_patch_heads

    return activation_patch_heads(model, pt, o.component, o.direction, o.batch_size, o.max_rows,
                                  progress=progress), torch.zeros(0)


def _attribution(model, pt, o, means, progress):
    from .attribution import attribution_patch_heads

    return attribution_patch_heads(model, pt, o.component, o.direction, o.batch_size, progress=progress,
                                   ig_steps=o.ig_steps), torch.zeros(0)


def _ablation(model, pt, o, means, progress):
    from .ablation import ablation_kl

    return ablation_kl(model, pt, o.ablation, o.alpha, means, o.batch_size, o.max_rows, progress=progress)


def _gradient(model, pt, o, means, progress):
    from .gradient import gradient_x_activation

    return gradient_x_activation(model, pt, o.batch_size, progress=progress), torch.zeros(0)


REGISTRY: dict[str, RankingMethod] = {m.key: m for m in (
    RankingMethod("path", lambda o: "noising", _path, component_free=True),
    RankingMethod("activation", lambda o: o.direction, _activation, options=("direction",)),
    RankingMethod("attribution", lambda o: o.direction, _attribution, options=("direction", "ig_steps")),
    RankingMethod("ablation", lambda o: "kl", _ablation, component_free=True, options=("ablation", "alpha")),
    RankingMethod("gradient", lambda o: "gradient", _gradient, component_free=True),
)}
METHODS = tuple(REGISTRY)


def ranking_method(method: str) -> RankingMethod:
    """The registered method called ``method`` (ValueError naming the choices otherwise)."""
    _one_of("method", method, METHODS)
    return REGISTRY[method]


def gqa_note(model, component: str) -> dict | None:
    from ..heads import gqa_groups

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
               chat: bool | None = None, ig_steps: int = 1) -> HeadScores:
    """Rank every attention head of ``model`` on ``pairs`` (PairTokens, or VRUBench items to pair up).

    ``component``/``direction`` apply to activation and attribution patching
    (path patching is z, noising; ablation is no-counterfactual). ``n_boot``
    bootstrap resamples of the pairs give CIs and rank stability (0 = none). ``chat`` (items only):
    None = the model's kind (``tokens.chat_for``).
    """
    how = ranking_method(method)
    opts = RankOptions("z" if how.component_free else component, direction, ablation, alpha, batch_size, max_rows,
                       ig_steps)
    pt = pairs if isinstance(pairs, PairTokens) else tokenize_pairs(model.tokenizer, pairs, chat=chat_for(model, chat))
    if len(pt) == 0:
        raise ValueError("no counterfactual pairs: give more items (about half of them pair up)")
    name = model_name(model)
    kind = how.kind(opts)
    read = {o: getattr(opts, o) for o in how.options}  # the options this method reads, and only those
    key = {"model": name, "method": method, "component": opts.component, "kind": kind, "tokens": tokens_hash(pt),
           "batch_size": batch_size, **read}
    ckpt = Checkpoint(checkpoint, key) if checkpoint else None
    means = None
    if read.get("ablation") == "mean":
        from .ablation import head_means

        means = head_means(model, pt, batch_size)  # over all pairs, so chunks share one mean
    t0 = time.perf_counter()
    parts = {"per_pair": [], "clean": [], "corrupt": [], "extra": []}
    chunks = list(batches(len(pt), batch_size))
    for i, sl in enumerate(chunks):
        tag = f"{sl.start}:{sl.stop}"
        saved = ckpt.get(tag) if ckpt else None
        if saved is None:
            sub = pt[sl]
            clean, corrupt = baseline_logit_diffs(model, sub, batch_size)
            per, extra = how.run(model, sub, opts, means, progress and len(chunks) == 1)
            saved = {"per_pair": per, "clean": clean, "corrupt": corrupt, "extra": extra}
            if ckpt:
                ckpt.put(tag, **saved)
            if progress and len(chunks) > 1:
                print(f"{method}: pairs {tag} done ({i + 1}/{len(chunks)} chunks)", flush=True)
        for k in parts:
            parts[k].append(torch.as_tensor(saved[k]).float())
    cat = {k: torch.cat(v) for k, v in parts.items()}
    meta = {"seconds": round(time.perf_counter() - t0, 2), "pairs": pt.pairs.summary() if hasattr(pt.pairs, "summary") else None,
            "resumed_chunks": ckpt.resumed if ckpt else 0, "batch_size": batch_size, **read}
    if cat["extra"].numel():  # ablation: the clean logit difference with each head ablated
        meta["ablated_ld_mean"] = cat["extra"].mean(0).tolist()
    result = HeadScores.from_patched(cat["per_pair"], cat["clean"], cat["corrupt"], method=method, model=name, kind=kind,
                                     component=opts.component, gqa=gqa_note(model, opts.component), meta=meta)
    if n_boot:
        result.bootstrap(n_boot, seed=seed)
    if ckpt:
        ckpt.clear()
    return result
