"""`vru-lens knockout`: mean-ablate the top-k heads of a ranking together, against random k-head sets."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import (N, AllowOtherModel, Chat, Data, Deltas, Device, Json, Model, Out, Seed, Threads, chat_for, error_line, fail, find_input,
                     load_items, out_file, print_json, set_threads)


def knockout(
    model: Model = "smollm2-135m-instruct",
    heads: Path = typer.Option(..., "--heads", help="The ranking: the --out folder of `vru-lens rank-heads` (or its "
                               "ranking.json), a gradient ranking, or a JSON list of (layer, head) pairs, best first."),
    top_k: int = typer.Option(..., "--top-k", help="How many of its top heads to ablate together."),
    n: N = 500,
    data: Data = None,
    n_pairs: int = typer.Option(100, "--n-pairs", help="Counterfactual pairs for the head means and logit differences."),
    n_random: int = typer.Option(20, "--n-random", help="Random k-head sets (drawn from the heads outside the top k)."),
    seed: Seed = 0,
    chat: Chat = None,
    batch_size: int = typer.Option(32, help="Items per forward pass."),
    device: Device = None,
    deltas: Deltas = None,
    allow_other_model: AllowOtherModel = False,
    out: Out = None,
    threads: Threads = 0,
    json_out: Json = False,
):
    """Accuracy with no heads, the top-k heads and random k-head sets mean-ablated.

    --n test items for accuracy (generated, or the test split of --data); --out DIR writes DIR/knockout.json (what --json prints).
    """
    heads = find_input(heads, "ranking.json", "--heads", "vru-lens rank-heads")
    from ..finetune.adapters import DELTAS_FILE

    deltas = find_input(deltas, DELTAS_FILE, "--deltas", "vru-lens finetune")
    if top_k < 1 or n < 1 or n_pairs < 2 or n_random < 1:
        fail("--top-k, --n and --n-random must be positive and --n-pairs at least 2")
    set_threads(threads)
    saved = out_file(out, "knockout.json")
    items = load_items(data, n, "test", seed)
    from functools import partial

    from ..bench import PAIRABLE, make_items
    from ..evaluate import accuracy
    from ..finetune.adapters import resolve_heads
    from ..models import load_model
    from ..patching import knockout as run
    from ..tokens import tokenize_pairs

    try:
        resolve_heads(heads, top_k)  # a file that is no ranking: refused before the model is loaded
        lm = load_model(model, device=device, deltas=deltas)
        top = resolve_heads(heads, top_k, lm, allow_other_model)
        chat = chat_for(lm, chat)
        L, H = lm.cfg.n_layers, lm.cfg.n_heads
        if top_k > L * H // 2:
            fail(f"--top-k {top_k}: knockout draws random sets of k heads from the other {L * H - top_k} of this "
                 f"model's {L * H}, so k can be at most {L * H // 2}")
        pt = tokenize_pairs(lm.tokenizer, make_items(n_pairs, seed + 1, PAIRABLE, split="validation"), chat=chat)
        res = run(lm, pt, items, top, n_random=n_random, seed=seed, batch_size=batch_size,
                  accuracy=partial(accuracy, chat=chat, batch_size=batch_size))
    except (ValueError, OSError, KeyError, ModuleNotFoundError) as err:
        fail(error_line(err))
    payload = {**res.summary(), "model": model}
    if saved:
        res.save(saved)  # a typed KnockoutResult: load_result reads it back, summary() gives payload's numbers
    if json_out:
        print_json(payload)
        return
    typer.echo(f"{model}: accuracy {payload['base_accuracy']:.3f}; top {res.k} ablated {payload['top_k_accuracy']:.3f}; "
               f"random {res.k} ablated {payload['random_k_accuracy']:.3f} (5-95%: {payload['random_k_band'][0]:.3f}-"
               f"{payload['random_k_band'][1]:.3f}, {n_random} draws)")
