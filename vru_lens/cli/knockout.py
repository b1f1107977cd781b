"""`vru-lens knockout`: mean-ablate the top-k heads of a ranking together, against random k-head sets."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import fail, print_json


def knockout(
    model: str = typer.Option("smollm2-135m-instruct", "--model", help="Embedded name, hub id or local folder."),
    heads: Path = typer.Option(..., "--heads", help="Ranking JSON: `vru-lens rank-heads --out`, a gradient ranking, "
                               "or a list [[layer, head], ...] best first."),
    top_k: int = typer.Option(..., "--top-k", help="How many of its top heads to ablate together."),
    n: int = typer.Option(500, "--n", help="VRUBench test items for accuracy."),
    n_pairs: int = typer.Option(100, "--n-pairs", help="Counterfactual pairs for the head means and logit differences."),
    n_random: int = typer.Option(20, "--n-random", help="Random k-head sets (drawn from the heads outside the top k)."),
    seed: int = typer.Option(0, help="Seed for items and random draws."),
    chat: bool = typer.Option(False, "--chat", help="Use the tokenizer's chat template."),
    batch_size: int = typer.Option(32, help="Items per forward pass."),
    device: str = typer.Option(None, help="cpu, cuda, ... (default: cuda when available)."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object."),
):
    """Accuracy with no heads, the top-k heads and random k-head sets mean-ablated."""
    if not heads.exists():
        fail(f"no ranking file at {heads}; write one with `vru-lens rank-heads --out {heads}`")
    if top_k < 1 or n < 1 or n_pairs < 2 or n_random < 1:
        fail("--top-k, --n and --n-random must be positive and --n-pairs at least 2")
    import numpy as np

    from functools import partial

    from ..bench import PAIRABLE, make_items
    from ..evaluate import accuracy
    from ..finetune.adapters import resolve_heads
    from ..models import load_model
    from ..patching import knockout as run
    from ..tokens import tokenize_pairs

    try:
        top = resolve_heads(heads, top_k)
        lm = load_model(model, device=device)
        L, H = lm.cfg.n_layers, lm.cfg.n_heads
        bad = [h for h in top if not (0 <= h[0] < L and 0 <= h[1] < H)]
        if bad:
            fail(f"heads {bad} are outside this model's {L} layers x {H} heads: is {heads} a ranking of {model}?")
        pt = tokenize_pairs(lm.tokenizer, make_items(n_pairs, seed + 1, PAIRABLE, split="validation"), chat=chat)
        res = run(lm, pt, make_items(n, seed, split="test"), top, n_random=n_random, seed=seed, batch_size=batch_size,
                  accuracy=partial(accuracy, chat=chat, batch_size=batch_size))
    except (ValueError, OSError, KeyError, ModuleNotFoundError) as err:
        fail(str(err).splitlines()[0])
    by = {c["name"]: c for c in res.conditions}
    rand = [c["accuracy"] for c in res.conditions if c["name"].startswith("random")]
    payload = {"model": model, "k": res.k, "top": res.top, "n_items": n, "n_pairs": len(pt),
               "base_accuracy": by["none"]["accuracy"], "top_k_accuracy": by["top"]["accuracy"],
               "random_k_accuracy": float(np.mean(rand)),
               "random_k_band": [float(np.quantile(rand, 0.05)), float(np.quantile(rand, 0.95))],
               "random_k_each": rand, "normalised_ld": {"top_k": by["top"]["normalised_ld"],
                                                        "random_k_mean": float(np.mean([c["normalised_ld"] for c in res.conditions if c["name"].startswith("random")]))}}
    if json_out:
        print_json(payload)
        return
    typer.echo(f"{model}: accuracy {payload['base_accuracy']:.3f}; top {res.k} ablated {payload['top_k_accuracy']:.3f}; "
               f"random {res.k} ablated {payload['random_k_accuracy']:.3f} (5-95%: {payload['random_k_band'][0]:.3f}-"
               f"{payload['random_k_band'][1]:.3f}, {n_random} draws)")
