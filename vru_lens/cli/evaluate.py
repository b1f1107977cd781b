"""`vru-lens eval`: VRUBench accuracy of a model, by number of steps."""

from __future__ import annotations

import typer

from .common import fail, parse_steps, print_json


def load_items(data: str | None, n: int, split: str, seed: int, steps: str = "2-5", slots: int = 4) -> list[dict]:
    """Items from a folder written by `vru-lens bench`, or freshly generated ones."""
    from ..bench import BenchConfig, load, make_items

    if data:
        try:
            splits = load(data)
        except FileNotFoundError as err:
            fail(str(err))
        if split not in splits:
            fail(f"split {split!r} not in {data}; it has {', '.join(splits)}")
        rows = splits[split][:n] if n else splits[split]
        if not rows:
            fail(f"split {split!r} of {data} is empty")
        return rows
    lo, hi = parse_steps(steps)
    try:
        return make_items(n, seed, BenchConfig(n_slots=slots, min_steps=lo, max_steps=hi), split=split)
    except ValueError as err:
        fail(str(err))


def eval_cmd(
    model: str = typer.Option("smollm2-135m-instruct", help="Embedded name, hub id or local folder."),
    data: str = typer.Option(None, help="Folder from `vru-lens bench --out` (else items are generated)."),
    n: int = typer.Option(200, "--n", help="Items to evaluate (0 = the whole split of --data)."),
    split: str = typer.Option("test", help="Split to read or generate."),
    seed: int = typer.Option(0, help="Seed for generated items."),
    steps: str = typer.Option("2-5", help="Steps for generated items."),
    slots: int = typer.Option(4, help="Slots for generated items: 4 or 8."),
    chat: bool = typer.Option(False, "--chat", help="Wrap prompts in the tokenizer's chat template."),
    method: str = typer.Option("logprob", help="logprob (candidate scoring) or generate (greedy + match)."),
    batch_size: int = typer.Option(16, help="Sequences per forward pass."),
    device: str = typer.Option(None, help="cpu, cuda, ... (default: cuda when available)."),
    deltas: str = typer.Option(None, help="Head-delta file from `vru-lens finetune --out`: study the fine-tuned model."),
    pairs: bool = typer.Option(False, "--pairs", help="Also score counterfactual pairs (same story, flipped final rotation): does the choice follow the rotation?"),
    save: str = typer.Option(None, help="Write the full per-item result as JSON here."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object (accuracy, n, by_steps, ...)."),
):
    """Evaluate a model on VRUBench."""
    from ..evaluate import evaluate
    from ..finetune.adapters import merge_deltas
    from ..models import load_model
    from ..patching.metrics import items_pair_accuracy

    if n < 0 or (n == 0 and not data):
        fail(f"--n must be positive (0 only with --data), got {n}")
    items = load_items(data, n, split, seed, steps, slots)
    try:
        lm = load_model(model, device=device)
        if deltas:
            merge_deltas(lm, deltas)
        result = evaluate(lm, items, chat=chat, method=method, batch_size=batch_size, progress=not json_out)
        pair_scores = items_pair_accuracy(lm, items, chat, batch_size) if pairs else None
    except (ValueError, OSError, ModuleNotFoundError) as err:
        fail(str(err).splitlines()[0] if json_out else str(err))
    if pairs and pair_scores is None:
        fail(f"the {len(items)} items yield fewer than 2 counterfactual pairs for this tokenizer; raise --n")
    if save:
        result.save(save)
    summary = result.summary()
    if pair_scores:
        summary["pairs"] = pair_scores
    if json_out:
        print_json(summary)
    else:
        typer.echo(result.table())
        if pair_scores:
            typer.echo("counterfactual pairs ({n_pairs}): clean right {clean_right:.3f}, corrupted right "
                       "{corrupt_right:.3f}, both right {both_right:.3f}, ld correlation {ld_corr:.3f}".format(**pair_scores))

