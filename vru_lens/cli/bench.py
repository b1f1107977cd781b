"""`vru-lens bench`: generate VRUBench splits and write them to disk."""

from __future__ import annotations

import typer

from .common import fail, parse_steps, print_json


def bench(
    n: int = typer.Option(1000, "--n", help="Items in the test split (train/validation: --train/--validation)."),
    seed: int = typer.Option(0, help="Base seed; splits use disjoint seeds derived from it."),
    steps: str = typer.Option("2-5", help="Rotation steps per story, e.g. 2-5 or 3."),
    slots: int = typer.Option(4, help="Viewpoint slots: 4 (every 90 degrees) or 8 (every 45)."),
    train: int = typer.Option(0, help="Items in the train split."),
    validation: int = typer.Option(0, help="Items in the validation split."),
    unanswerable: float = typer.Option(0.0, help="Fraction of items whose answer is 'unknown'."),
    holdout_templates: str = typer.Option("", help="Comma-separated template ids seen only in the test split."),
    out: str = typer.Option(..., "--out", help="Folder to write (DatasetDict + one JSONL per split)."),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON summary."),
):
    """Generate VRUBench train/validation/test splits."""
    from ..bench import BenchConfig, make_splits, save, solve

    lo, hi = parse_steps(steps)
    if n < 1:
        fail(f"--n must be at least 1, got {n}")
    held = tuple(t for t in holdout_templates.split(",") if t)
    try:
        cfg = BenchConfig(n_slots=slots, min_steps=lo, max_steps=hi, unanswerable_frac=unanswerable,
                          heldout_templates=held)
        splits = make_splits(train, validation, n, seed, cfg, heldout_templates=held)
    except ValueError as err:
        fail(str(err))
    wrong = [it["id"] for rows in splits.values() for it in rows if solve(it["prompt"])[0] != it["answer"]]
    if wrong:
        fail(f"the independent solver disagrees on {len(wrong)} items (first: {wrong[0]}); this is a bug")
    path = save(splits, out)
    summary = {"out": str(path), "splits": {k: len(v) for k, v in splits.items()}, "seed": seed,
               "steps": [lo, hi], "slots": slots}
    if json_out:
        print_json(summary)
    else:
        typer.echo(f"wrote {summary['splits']} to {path} (solver agrees on every item)")
