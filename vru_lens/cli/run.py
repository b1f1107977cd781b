"""`vru-lens run`: the study end to end on one model, resumable stage by stage.

Each stage writes its result to OUT as soon as it finishes; a re-run skips the
stages whose files exist, so an interrupted run loses at most the stage in
progress (and rank-heads resumes inside that stage from its own checkpoint).
"""

from __future__ import annotations

from pathlib import Path

import typer

from .common import fail, print_json

STAGES = ("eval", "probe", "lens", "rank", "knockout")


def run(
    model: str = typer.Option("smollm2-135m-instruct", help="Embedded name, hub id or local folder."),
    out: str = typer.Option("results/run", help="Folder for every stage's result and report.html."),
    n: int = typer.Option(300, "--n", help="Test items for evaluation and the logit lens."),
    n_probe: int = typer.Option(1000, help="Items for the probes."),
    n_pairs: int = typer.Option(32, help="Counterfactual pairs for head ranking and knockout."),
    method: str = typer.Option("path", help="Head ranking method: path, activation, attribution, ablation."),
    top_k: int = typer.Option(10, help="Heads to knock out (against as many random heads)."),
    seed: int = typer.Option(0, help="Seed for every generated item."),
    chat: bool = typer.Option(False, "--chat", help="Use the tokenizer's chat template."),
    stages: str = typer.Option(",".join(STAGES), help="Comma-separated subset of: " + ", ".join(STAGES)),
    device: str = typer.Option(None, help="cpu, cuda, ... (default: cuda when available)."),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON summary of every stage."),
):
    """Evaluate, probe, logit-lens, rank heads and knock them out; write results and an HTML report."""
    wanted = [s for s in stages.split(",") if s]
    unknown = [s for s in wanted if s not in STAGES]
    if unknown:
        fail(f"unknown stage(s) {', '.join(unknown)}; choose from {', '.join(STAGES)}")
    from ..bench import PAIRABLE, make_items
    from ..evaluate import EvalResult, evaluate
    from ..logit_lens import LogitLensResult, logit_lens
    from ..models import load_model
    from ..patching import HeadScores, KnockoutResult, knockout, rank_heads
    from ..probe import ProbeResult, probe
    from ..report import build_report
    from ..tokens import tokenize_pairs

    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        lm = load_model(model, device=device)
    except (ValueError, OSError, ModuleNotFoundError) as err:
        fail(str(err).splitlines()[0])
    quiet = json_out
    test_items = make_items(n, seed, split="test")
    answerable = [it for it in test_items if it["answerable"]]  # the logit lens reads the answer's token
    pairs = None

    def get_pairs():
        nonlocal pairs
        if pairs is None:
            pairs = tokenize_pairs(lm.tokenizer, make_items(4 * n_pairs, seed + 1, PAIRABLE, split="validation"),
                                   chat=chat, max_pairs=n_pairs)
        return pairs

    def stage(name, cls, compute):
        path = folder / f"{name}.json"
        if path.exists():
            return cls.load(path)
        if not quiet:
            typer.echo(f"[{name}] running")
        result = compute()
        result.save(path)
        return result

    results = {}
    if "eval" in wanted:
        results["eval"] = stage("eval", EvalResult, lambda: evaluate(lm, test_items, chat=chat, progress=not quiet))
    if "probe" in wanted:
        results["probe"] = stage("probe", ProbeResult, lambda: probe(
            lm, make_items(n_probe, seed + 2, split="train"), target="heading", chat=chat, progress=not quiet))
    if "lens" in wanted:
        results["lens"] = stage("lens", LogitLensResult, lambda: logit_lens(lm, answerable, chat=chat, progress=not quiet))
    if "rank" in wanted or "knockout" in wanted:
        results["scores"] = stage("scores", HeadScores, lambda: rank_heads(
            lm, get_pairs(), method=method, checkpoint=folder / "scores.partial", progress=not quiet, chat=chat))
    if "knockout" in wanted:
        top = [(l, h) for l, h, _ in results["scores"].top(top_k)]
        results["knockout"] = stage("knockout", KnockoutResult, lambda: knockout(
            lm, get_pairs(), get_pairs().pairs.items, top=top, chat=chat))
    report = build_report(results, folder / "report.html", title=f"vru-lens: {model}")
    summary = {name: (res.summary() if hasattr(res, "summary") else {"top": res.top(top_k)}) for name, res in results.items()}
    if json_out:
        print_json({"out": str(folder), "report": str(report), **summary})
    else:
        typer.echo(f"wrote {', '.join(f'{k}.json' for k in results)} and {report}")
