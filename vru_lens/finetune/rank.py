"""A cheap stand-in head ranking for fine-tuning when no patching ranking exists yet.

Gradient x activation on every head's ``hook_z`` for the answer loss (a
first-order estimate of what zero-ablating the head would do to the loss):
score[l, h] = mean over items of |sum over positions of dL/dz . z|. One
forward and one backward pass per batch. The real ranking comes from
``vru-lens rank-heads`` (activation / path patching); this one is only used
when that file is missing, and says so in its JSON.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..heads import hook_name, top_heads
from .train import answer_loss, encode_examples


def gradient_head_scores(model, items, chat: bool = False, batch_size: int = 8, progress: bool = False) -> np.ndarray:
    examples = encode_examples(model.tokenizer, items, chat)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    total = torch.zeros(L, H)
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        for start in range(0, len(examples), batch_size):
            batch = examples[start : start + batch_size]
            saved = {}

            def keep(z, hook):
                if not z.requires_grad:
                    z.requires_grad_(True)
                saved[hook.name] = z
                return z

            names = [hook_name(l, "z") for l in range(L)]
            with model.hooks(fwd_hooks=[(n, keep) for n in names]):
                loss = answer_loss(model, batch) * len(batch)
                zs = [saved[n] for n in names]
                grads = torch.autograd.grad(loss, zs, allow_unused=True)
            for l, (z, g) in enumerate(zip(zs, grads)):
                if g is not None:  # z, g: [batch, pos, head, d_head]
                    total[l] += (g * z).sum(-1).sum(1).abs().sum(0).detach()
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
    return (total / len(examples)).numpy()


def save_scores(scores: np.ndarray, path: str | Path, model_name: str, n_items: int, **settings) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"type": "GradientHeadScores", "method": "grad_x_act_hook_z_answer_loss",
                                "model": model_name, "n_items": n_items, **settings, "scores": scores.tolist()}))
    return path


def ranking_for(model, path: str | Path | None = None, seed: int = 0, chat: bool = False, n_items: int = 64,
                log=print) -> list[tuple[int, int]]:
    """Every head, best first, by the stand-in ranking on ``n_items`` training items (seed ``seed + 1``):
    what fine-tuning uses when no patching ranking is given. Kept at ``path`` when given; a file
    there for the same model and items is reused, one for others is recomputed."""
    from ..bench import make_items

    name = getattr(model, "vru_name", None) or model.cfg.model_name
    settings = {"seed": seed, "chat": chat}
    path = Path(path) if path is not None else None
    if path is not None and path.exists():
        old = json.loads(path.read_text())
        if (old.get("model"), old.get("n_items"), {k: old.get(k) for k in settings}) == (name, n_items, settings):
            return top_heads(old["scores"], model.cfg.n_layers * model.cfg.n_heads)
    log(f"no ranking given: ranking heads by gradient x activation on {n_items} training items"
        + (f" -> {path}" if path else ""))
    scores = gradient_head_scores(model, make_items(n_items, seed=seed + 1, split="train"), chat=chat)
    if path is not None:
        save_scores(scores, path, name, n_items, **settings)
    return top_heads(scores, scores.size)


top_from_array = top_heads  # the earlier name
