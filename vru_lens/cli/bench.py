"""`vru-lens bench`: generate VRUBench splits, convert published data, or audit the rotation-blind rules."""

from __future__ import annotations

import typer

from .common import N, Json, Out, Seed, error_line, fail, out_file, parse_steps, print_json


def _audit_table(report: dict, title: str) -> str:
    lines = [f"{title}: {report['n']} items, chance {report['chance']:.1%} (mean of 1/candidates)"]
    for name, acc in sorted(report["rules"].items(), key=lambda kv: -kv[1]):
        lines.append(f"  {name:<34} {acc:6.1%}  ({(acc - report['chance']) * 100:+.1f} points)")
    return "\n".join(lines)


def bench(
    n: N = None,
    seed: Seed = 0,
    style: str = typer.Option("paper", help="paper (the study's format, the default) or story (our sentences)."),
    steps: str = typer.Option("2-5", help="Rotation steps per story, e.g. 2-5 or 3."),
    slots: int = typer.Option(4, help="Viewpoint slots: 4 (every 90 degrees) or 8 (every 45; story only)."),
    train: int = typer.Option(0, help="Items in the train split."),
    validation: int = typer.Option(0, help="Items in the validation split."),
    unanswerable: float = typer.Option(None, help="Fraction of items whose answer is 'unknown' (default: balanced, "
                                                  "unknown as likely as each object; 0 = answerable only)."),
    holdout_templates: str = typer.Option("", help="Comma-separated template ids seen only in the test split (story)."),
    audit: bool = typer.Option(False, "--audit", help="Score every rotation-blind rule beside chance on the test "
                                                      "split (default 5,000 items) instead of writing data."),
    from_file: str = typer.Option(None, "--from", help="Convert a JSON/JSONL file in the published format "
                                                       "(prompt/question/input + answer/label/output)."),
    out: Out = None,
    json_out: Json = False,
):
    """Generate VRUBench splits (or --audit the shortcut rules, or convert a published file --from FILE).

    --n: test items (default 1000; --audit: 5000); --train and --validation add those splits, each from
    its own seed derived from --seed. --out DIR: a datasets.DatasetDict and one JSONL per split
    (DIR/test.jsonl, ...), what --data of the other commands reads.
    """
    from ..bench import BenchConfig, make_items, make_splits, read_published, save, solve
    from ..evaluate import audit as run_audit

    if from_file:
        if not out:
            fail("--from needs --out FOLDER to write the converted items to")
        out_file(out, "test.jsonl")
        try:
            rows, report = read_published(from_file)
        except (FileNotFoundError, ValueError, OSError) as err:
            fail(error_line(err))
        path = save({"test": rows}, out)
        rules = run_audit(rows)
        summary = {"out": str(path), "records": report.n_records, "kept": report.kept,
                   "disagreements": report.disagreements, "unreadable": report.unreadable,
                   "chance": rules["chance"], "best_rule": rules["best"]}
        if json_out:
            print_json(summary)
        else:
            typer.echo(f"{report.summary()}; wrote {path}")
            typer.echo(f"chance {rules['chance']:.1%}, best rotation-blind rule {rules['best'][1]:.1%} ({rules['best'][0]})")
        return
    lo, hi = parse_steps(steps)
    n = n if n is not None else (5000 if audit else 1000)
    if n < 1:
        fail(f"--n must be at least 1, got {n}")
    held = tuple(t for t in holdout_templates.split(",") if t)
    try:
        cfg = BenchConfig(style=style, n_slots=slots, min_steps=lo, max_steps=hi, unanswerable_frac=unanswerable,
                          heldout_templates=held)
        if audit:
            report = run_audit(make_items(n, seed, cfg, split="test"))
            if json_out:
                print_json({"style": style, **report})
            else:
                typer.echo(_audit_table(report, f"rotation-blind rules, style {style}, seed {seed}"))
            return
        if not out:
            fail("--out FOLDER is required to write items (or use --audit)")
        out_file(out, "test.jsonl")
        splits = make_splits(train, validation, n, seed, cfg, heldout_templates=held)
    except ValueError as err:
        fail(str(err))
    wrong = [it["id"] for rows in splits.values() for it in rows if solve(it["prompt"])[0] != it["answer"]]
    if wrong:
        fail(f"the independent solver disagrees on {len(wrong)} items (first: {wrong[0]}); this is a bug")
    path = save(splits, out)
    summary = {"out": str(path), "splits": {k: len(v) for k, v in splits.items()}, "seed": seed, "style": style,
               "steps": [lo, hi], "slots": slots}
    if json_out:
        print_json(summary)
    else:
        typer.echo(f"wrote {summary['splits']} ({style} style) to {path} (solver agrees on every item)")
