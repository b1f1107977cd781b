"""`vru-lens eval`: VRUBench accuracy of a model (generation and candidate scoring), beside chance and the best rule."""

from __future__ import annotations

import typer

from .common import (N, Chat, Data, Deltas, Device, Json, Model, Out, Progress, Seed, Threads, chat_for, error_line, fail,
                     find_input, load_items, out_file, print_json, set_threads, show_progress)


def _pairs_line(name: str, p: dict) -> str:
    rule = p.get("best_rule") or ["-", 0.0]
    unknown = "-" if p.get("unknown_first") is None else f"{p['unknown_first']:.3f}"
    return (f"{name} pairs ({p['n_pairs']}, yield {p['yield']:.0%}): clean right {p['clean_right']:.3f}, corrupted "
            f"right {p['corrupt_right']:.3f}, both right {p['both_right']:.3f} [best rotation-blind rule "
            f"{rule[1]:.3f} ({rule[0]})], same pick {p['same_pick']:.3f}, 'unknown' ranked first {unknown}, "
            f"ld correlation {p['ld_corr']:.3f}")


def eval_cmd(
    model: Model = "smollm2-135m-instruct",
    data: Data = None,
    n: N = 200,
    split: str = typer.Option("test", help="Split to read or generate."),
    seed: Seed = 0,
    style: str = typer.Option("paper", help="Generated items: paper (the study's format) or story (our sentences)."),
    steps: str = typer.Option("2-5", help="Steps for generated items."),
    slots: int = typer.Option(4, help="Slots for generated items: 4 or 8 (story only)."),
    chat: Chat = None,
    method: str = typer.Option("both", help="both, logprob (candidate scoring) or generate (greedy, exact match "
                                            "after the study's normalisation)."),
    batch_size: int = typer.Option(16, help="Sequences per forward pass."),
    device: Device = None,
    dtype: str = typer.Option("float32", help="Weights and activations: float32, bfloat16 (half the memory; faster "
                                              "where the processor has bfloat16 units) or float16."),
    deltas: Deltas = None,
    pairs: bool = typer.Option(False, "--pairs", help="Also score counterfactual pairs (final direction flipped): "
                                                      "object-object pairs from --n pairable items, object-unknown "
                                                      "pairs from the evaluated items."),
    max_pairs: int = typer.Option(None, help="With --pairs: at most this many pairs of each kind."),
    out: Out = None,
    threads: Threads = 0,
    json_out: Json = False,
    progress: Progress = None,
):
    """Evaluate a model on VRUBench. --n 0 with --data: every item of the split.

    --out DIR writes DIR/eval.json, the full per-item result (before the pairs are scored, so an
    interrupted --pairs run keeps the accuracies), and with --pairs DIR/pairs.json.
    """
    from ..bench import PAIRABLE, make_items
    from ..evaluate import METHODS, evaluate, items_pair_accuracy
    from ..models import load_model

    if n < 0 or (n == 0 and not data):
        fail(f"--n must be positive (0 only with --data), got {n}")
    if method not in METHODS:
        fail(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
    set_threads(threads)
    from ..finetune.adapters import DELTAS_FILE

    deltas = find_input(deltas, DELTAS_FILE, "--deltas", "vru-lens finetune")
    save = out_file(out, "eval.json")
    items = load_items(data, n, split, seed, steps, slots, style)
    pair_scores = {}
    try:
        lm = load_model(model, device=device, dtype=dtype, deltas=deltas)
        chat = chat_for(lm, chat)
        result = evaluate(lm, items, chat=chat, method=method, batch_size=batch_size,
                          progress=show_progress(progress, json_out))
        if save:
            result.save(save)  # before the pairs: an interrupted --pairs run keeps the accuracies
        if pairs:
            sources = {"observed": items if data else make_items(len(items), seed + 1, PAIRABLE, split=split),
                       "unknown": items}
            for kind, source in sources.items():
                got = items_pair_accuracy(lm, source, chat, batch_size, kind=kind, max_pairs=max_pairs)
                if got:
                    pair_scores[kind] = got
    except (ValueError, OSError, ModuleNotFoundError) as err:
        fail(error_line(err))
    if pairs and not pair_scores:
        fail(f"the {len(items)} items yield fewer than 2 counterfactual pairs for this tokenizer; raise --n")
    if pairs and out:
        from ..results import write_json_atomic

        write_json_atomic(out / "pairs.json", pair_scores)
    summary = result.summary()
    summary["dtype"] = str(next(lm.parameters()).dtype).removeprefix("torch.")
    if pairs:
        summary["pairs"] = pair_scores.get("observed")
        summary["unknown_pairs"] = pair_scores.get("unknown")
    if json_out:
        print_json(summary)
    else:
        typer.echo(result.table())
        for kind, label in (("observed", "object-object"), ("unknown", "object-unknown")):
            if kind in pair_scores:
                typer.echo(_pairs_line(label, pair_scores[kind]))
