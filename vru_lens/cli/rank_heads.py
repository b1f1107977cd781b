"""`vru-lens rank-heads`: rank every attention head by path/activation/attribution patching or ablation."""

from __future__ import annotations

import typer

from .common import (N, Chat, Deltas, Device, Json, Model, Out, Progress, Seed, Threads, chat_for, error_line, fail,
                     find_input, out_file, print_json, set_threads, show_progress)


def rank_heads(
    model: Model = "smollm2-135m-instruct",
    n: N = 64,
    method: str = typer.Option("path", help="path, activation, attribution, ablation or gradient."),
    top_k: int = typer.Option(10, "--top-k", help="Heads to list."),
    out: Out = None,
    max_pairs: int = typer.Option(None, help="Use at most this many pairs."),
    component: str = typer.Option("z", help="Activation/attribution patching: z, q, k or v."),
    direction: str = typer.Option("noising", help="Activation/attribution patching: noising or denoising."),
    ablation: str = typer.Option("mean", help="Ablation method: mean or scaled_query."),
    ig_steps: int = typer.Option(1, "--ig-steps", help="Attribution: integrated-gradient steps (1 = plain attribution patching)."),
    seed: Seed = 0,
    n_boot: int = typer.Option(1000, help="Bootstrap resamples over pairs for CIs (0 = none)."),
    batch_size: int = typer.Option(8, help="Pairs per chunk (and per checkpoint)."),
    chat: Chat = None,
    device: Device = None,
    deltas: Deltas = None,
    threads: Threads = 0,
    json_out: Json = False,
    progress: Progress = None,
):
    """Rank attention heads by how much they carry the clean-vs-corrupted answer.

    --n pairable items are generated; about half pair up into counterfactual pairs. --out DIR writes
    DIR/ranking.json (a HeadScores: what --heads of finetune and knockout reads) and DIR/ranking.html
    (the heatmap); DIR/ranking.json.partial is the checkpoint a re-run resumes from. --json prints
    HeadScores.ranking: method, top (rows of layer, head, score), scores, ...
    """
    from ..patching.rank import RankOptions, ranking_method

    try:  # the library validates; fail before loading the model
        RankOptions(component, direction, ablation, batch_size=batch_size)
        ranking_method(method)
    except ValueError as err:
        fail(str(err))
    if n < 2:
        fail(f"--n must be at least 2, got {n}")
    if top_k < 1:
        fail(f"--top-k must be positive, got {top_k}")
    if n_boot < 0:
        fail(f"--n-boot must be 0 (no CIs) or more, got {n_boot}")
    if max_pairs is not None and max_pairs < 2:
        fail(f"--max-pairs must be at least 2, got {max_pairs}")
    from ..bench import PAIRABLE, make_items
    from ..models import load_model
    from ..patching.rank import rank_heads as run
    from ..tokens import tokenize_pairs

    set_threads(threads)
    from ..finetune.adapters import DELTAS_FILE

    deltas = find_input(deltas, DELTAS_FILE, "--deltas", "vru-lens finetune")
    saved = out_file(out, "ranking.json")
    try:
        lm = load_model(model, device=device, deltas=deltas)
        chat = chat_for(lm, chat)
        pt = tokenize_pairs(lm.tokenizer, make_items(n, seed, cfg=PAIRABLE), chat=chat, max_pairs=max_pairs)
        if len(pt) < 2:
            fail(f"only {len(pt)} counterfactual pair(s) from {n} items ({pt.pairs.summary()}); raise --n")
        checkpoint = saved.with_name(saved.name + ".partial") if saved else None
        result = run(lm, pt, method, component=component, direction=direction, ablation=ablation,
                     batch_size=batch_size, n_boot=n_boot, seed=seed, checkpoint=checkpoint,
                     progress=show_progress(progress, json_out), chat=chat, ig_steps=ig_steps)
    except (ValueError, OSError, ModuleNotFoundError) as err:
        fail(error_line(err))
    if saved:
        result.save(saved)
        result.plot().write_html(saved.with_suffix(".html"))
    if json_out:
        print_json({**result.ranking(top_k), "model": model})  # the name asked for, as knockout --json prints it
        return
    top = result.top(top_k)
    typer.echo(f"{method} ({result.kind}, {result.component}) on {model}: {result.n_pairs} pairs, "
               f"{result.meta.get('seconds')} s")
    for rank, (l, h, s) in enumerate(top, 1):
        ci = f"  [{result.ci_low[l, h]:.3f}, {result.ci_high[l, h]:.3f}]" if result.ci_low is not None else ""
        typer.echo(f"{rank:3d}. L{l}H{h}  {s:.4f}{ci}")
    if result.gqa:
        typer.echo(f"GQA: {result.gqa['note']}")
    if result.meta.get("warning"):
        typer.echo(f"warning: {result.meta['warning']}")
    if saved:
        typer.echo(f"saved {saved} and {saved.with_suffix('.html')}")
