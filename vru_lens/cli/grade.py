"""`vru-lens grade`: every ranking method against an organism's known answer, InterpBench-style."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import Json, Out, Seed, Threads, error_line, fail, print_json, set_threads


def grade(
    models: list[str] = typer.Argument(None, help="Organisms (shipped names or trained folders); default: every "
                                                  "shipped one."),
    against: str = typer.Option("auto", help="auto (D on a deficit organism, else C), circuit or deficient."),
    n_pairs: int = typer.Option(120, "--n-pairs", help="Counterfactual pairs every method ranks on."),
    n_boot: int = typer.Option(500, "--n-boot", help="Bootstrap resamples of the pairs (shared by all methods)."),
    methods: str = typer.Option(None, help="Comma list of vru_lens.grading.VARIANTS (default: all)."),
    knockout_items: int = typer.Option(200, "--knockout-items", help="Test items of each knockout curve (0: no "
                                       "curves)."),
    knockout_random: int = typer.Option(5, "--knockout-random", help="Random k-sets per k on each curve."),
    seed: Seed = 0,
    out: Out = None,
    threads: Threads = 0,
    json_out: Json = False,
):
    """AUROC against the known heads and precision at their number, each with a 95% bootstrap CI over pairs,
    and a paired bootstrap test of every two methods' AUROC difference.

    With --knockout-items, each ranking's knockout curve beside random k-sets drawn outside its top k.
    --out DIR writes DIR/grading.json, grading.md (the tables), grading.html (the AUROC figure) and
    knockout_<model>.html (each model's curves).
    """
    from ..grading import VARIANTS

    chosen = methods.split(",") if methods else list(VARIANTS)
    bad = [m for m in chosen if m not in VARIANTS]
    if bad:
        fail(f"unknown method {bad[0]!r}; known: {', '.join(VARIANTS)}")
    if n_pairs < 4 or n_boot < 0 or knockout_items < 0 or knockout_random < 1:
        fail("--n-pairs must be at least 4, --n-boot and --knockout-items 0 or more, --knockout-random at least 1")
    from ..models.organisms import ORGANISMS, organism_card

    names = models or list(ORGANISMS)
    try:
        cards = {name: organism_card(name) for name in names}
    except (ValueError, FileNotFoundError) as err:
        fail(error_line(err) + " (grade needs an organism, whose card names the known heads)")
    set_threads(threads)
    from ..grading import (grade_rankings, grading_figure, grading_markdown, knockout_curves, known_answer, rank_every,
                           vru_pairs)
    from ..models import load_model

    results, curves = {}, {}
    for name, card in cards.items():
        try:
            label, known = known_answer(card, against)
        except ValueError as err:
            fail(f"{name}: {error_line(err)}")
        model = load_model(name, device="cpu")
        pt = vru_pairs(model.tokenizer, n_pairs)
        ranked = rank_every(model, pt, chosen, log=lambda s, name=name: typer.echo(f"{name}: {s}", err=True))
        results[name] = {"against": label, **grade_rankings(ranked, known, n_boot=n_boot, seed=seed)}
        if knockout_items:
            curves[name] = knockout_curves(model, ranked, known, pt, knockout_items, knockout_random, seed)
            results[name]["knockout"] = {**curves[name].summary(), "n_items": knockout_items}
    if out:
        from ..jsonio import write_atomic
        from ..results import write_json_atomic

        write_json_atomic(out / "grading.json", results)
        write_atomic(out / "grading.md", grading_markdown(results))
        grading_figure(results).write_html(out / "grading.html", include_plotlyjs="cdn")
        for name, curve in curves.items():
            curve.plot().write_html(out / f"knockout_{Path(name).name}.html", include_plotlyjs="cdn")
    if json_out:
        print_json(results)
    else:
        typer.echo(grading_markdown(results))
