"""`vru-lens organism`: train the VRU model organism, print its card."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import Device, Json, Model, Out, Seed, Threads, error_line, fail, print_json, set_threads

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="The VRU model organisms: small Llamas whose complete circuit C is known.")


@app.command("train")
def train_cmd(
    out: Out,
    seed: Seed = 0,
    steps: int = typer.Option(None, help="Optimizer steps (default: the shipped recipe's)."),
    threads: Threads = 1,
    tiny: bool = typer.Option(False, help="A tiny variant for a few steps: checks the training code."),
    recipe: str = typer.Option("vru-organism", "--recipe", help="A named recipe (vru_lens.organism.recipe.RECIPES)."),
    device: Device = None,
    start: Path = typer.Option(None, "--start", help="A folder this recipe saved after its first phases: go on "
                               "from there with the phases after them."),
):
    """Train from scratch (vru-organism-redundant: fine-tuned from the shipped vru-organism, its backups made
    copies of their primaries); prints the learning curve as it goes and saves the model and its card.

    --out DIR: the trained model and its card (then `vru-lens organism measure DIR` measures the card).
    """
    from ..models import pick_device
    from ..organism.recipe import RECIPES, run_recipe

    if not tiny and recipe not in RECIPES:
        fail(f"unknown organism recipe {recipe!r}; known: {', '.join(RECIPES)}")
    try:
        card = run_recipe(str(out), seed=seed, steps=steps, threads=threads, tiny=tiny, log=typer.echo,
                          recipe=recipe, device=pick_device(device), start=start)
    except (ValueError, FileNotFoundError) as err:
        fail(error_line(err))
    typer.echo(f"saved {out} (circuit {', '.join(card['circuit'])})")


@app.command("measure")
def measure_cmd(
    folder: str = typer.Argument(..., help="A trained organism folder (with organism.json)."),
):
    """Measure the card: completeness of C, the final-turn subset, every ranking method graded against C, roles."""
    from ..organism.recipe import measure

    try:
        measure(folder, log=typer.echo)
    except (ValueError, FileNotFoundError) as err:
        fail(str(err))


@app.command("info")
def info_cmd(
    model: Model = "vru-organism",
    json_out: Json = False,
):
    """The organism's card: its circuit C with each head's role, the final-turn subset, shape and measurements."""
    from ..models.organisms import organism_card

    try:
        card = organism_card(model)
    except (ValueError, FileNotFoundError) as err:
        fail(str(err))
    if json_out:
        print_json(card)
        return
    for key in ("circuit", "final_turn", "n_layers", "n_heads", "n_kv_heads", "completeness", "measured"):
        typer.echo(f"{key}: {card.get(key)}")


# the command's part names -> the pipeline's graded stages (vru_lens.study.GRADED_STAGES)
PARTS = {"probes": "probes", "rankings": "rankings", "knockout": "circuit_knockout", "finetune": "arms",
         "closed_loop": "closed_loop"}


@app.command("study")
def study_cmd(
    model: Model = "vru-organism",
    out: Out = Path("results/organism-study"),
    base: str = typer.Option("vru-organism-deficit", "--base", help="Starting checkpoint of the fine-tuning experiment."),
    quick: bool = typer.Option(False, "--quick", help="Tiny settings (checks the pipeline; the numbers mean nothing)."),
    seeds: int = typer.Option(None, "--seeds", help="Fine-tuning seeds (default 3; --quick 1)."),
    ft_steps: int = typer.Option(None, "--ft-steps", help="Fine-tuning steps per run (default 300; --quick 3)."),
    parts: str = typer.Option(",".join(PARTS), "--parts", help="Comma-separated parts."),
    threads: Threads = 1,
    json_out: Json = False,
):
    """The study on the organism: probes, every ranking graded against G, knockout curves, fine-tuning, closed loop.

    The graded stages of the one study pipeline (``vru_lens.study.run_study`` with ``StudyConfig.organism()``).
    --model: an organism name or a trained folder (with organism.json). --out DIR: every result and figure,
    study.json, graded.json (the summary) and tables.md go into DIR/MODEL/.
    """
    from ..study import StudyConfig, run_study

    set_threads(threads)
    wanted = tuple(p for p in parts.split(",") if p)
    unknown = [p for p in wanted if p not in PARTS]
    if unknown:
        fail(f"unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    if ft_steps is not None and ft_steps < 1:
        fail(f"--ft-steps must be at least 1, got {ft_steps}")
    kw = {"base": base, "stages": tuple(PARTS[p] for p in wanted)}
    if seeds:
        kw["ft_seeds"] = tuple(range(seeds))
    if ft_steps:
        kw["ft_steps"] = ft_steps
    try:
        study = run_study(model, out, StudyConfig.organism(quick, **kw), progress=False,
                          log=(lambda m: None) if json_out else typer.echo)
    except (ValueError, FileNotFoundError) as err:
        fail(str(err))
    if json_out:
        print_json(study.graded)
        return
    typer.echo((study.folder / "tables.md").read_text())
    typer.echo(f"wrote {study.folder}/graded.json, tables.md and the figures")


@app.command("deficit")
def deficit_cmd(
    out: Out,
    source: str = typer.Option("vru-organism", "--from", help="A complete organism (name or folder with organism.json)."),
    heads: str = typer.Option(None, "--heads", help="Deficient heads D as 'layer.head,layer.head' "
                              "(default: the source card's final-turn heads)."),
    low: float = typer.Option(0.45, "--low", help="Lowest accuracy the damage may leave."),
    high: float = typer.Option(0.70, "--high", help="Highest accuracy the damage may leave."),
    kind: str = typer.Option("query", "--kind", help="query: W_Q/W_K of D toward a seeded random matrix; "
                             "output: D's W_O columns scaled toward zero; scramble: D's W_O columns toward a seeded random matrix."),
    confine_steps: int = typer.Option(0, "--confine-steps", help="Then train D's own slices this many steps so the "
                                      "damage stays in the task (list recall answered as the source does); 0: off."),
    separate_steps: int = typer.Option(0, "--separate-steps", help="First train the layers under D and D's "
                                       "query/key/value rows this many steps so D is silent on list-recall prompts "
                                       "(answers kept); 0: off."),
    amount: float = typer.Option(None, "--amount", help="Damage amount in [0, 1] (refused unless its accuracy lies "
                                 "in [--low, --high]); default: bisection."),
    seed: Seed = 0,
    threads: Threads = 1,
):
    """A deficit organism: the heads D damaged (--kind) by the amount that bisection finds for an accuracy in
    [--low, --high] (or --amount); saved to --out with a card naming D and the damage."""
    import torch

    from ..organism.deficit import make_deficit

    if out is None:
        fail("--out is required: the folder the deficit organism is written to")
    try:
        parsed = None if heads is None else [tuple(int(x) for x in h.split(".")) for h in heads.split(",") if h]
    except ValueError:
        fail(f"--heads {heads!r}: write the heads as layer.head separated by commas, e.g. 1.0,1.1")
    if parsed is not None and any(len(h) != 2 for h in parsed):
        fail(f"--heads {heads!r}: write the heads as layer.head separated by commas, e.g. 1.0,1.1")
    if confine_steps < 0:
        fail(f"--confine-steps must be 0 (off) or more, got {confine_steps}")
    if separate_steps < 0:
        fail(f"--separate-steps must be 0 (off) or more, got {separate_steps}")
    if amount is not None and not 0.0 <= amount <= 1.0:
        fail(f"--amount must lie in [0, 1], got {amount}")
    if threads:
        torch.set_num_threads(threads)
    try:
        make_deficit(source, out, parsed, band=(low, high), seed=seed, kind=kind, confine_steps=confine_steps,
                     separate_steps=separate_steps, amount=amount,
                     log=typer.echo)
    except (ValueError, FileNotFoundError) as err:
        fail(error_line(err))


@app.command("deficit-study")
def deficit_study_cmd(
    model: Model = "vru-organism-deficit",
    out: Out = Path("results/deficit-study"),
    quick: bool = typer.Option(False, "--quick", help="Tiny settings (checks the pipeline; the numbers mean nothing)."),
    seeds: int = typer.Option(None, "--seeds", help="Fine-tuning seeds (default 5; --quick 1)."),
    steps: int = typer.Option(None, "--steps", help="Fine-tuning steps per run (default: RepairConfig's)."),
    k: int = typer.Option(None, "--k", help="Heads each head-choosing arm tunes (default: |D|)."),
    parts: str = typer.Option("measure,repair", "--parts", help="Comma-separated: measure, repair."),
    threads: Threads = 1,
    into_card: bool = typer.Option(False, "--into-card", help="Also keep the numbers in the organism's card "
                                   "(key full_run: what `vru-lens run`'s report compares a quick run with)."),
    json_out: Json = False,
):
    """On a deficit organism: heading probe and logit lens, every ranking's AUROC vs D with CIs, and the
    fine-tuning experiment (own top-k vs random/bottom/other-task k, LoRA, full; several seeds, 95% CIs).

    Writes DIR/deficit_study.json and DIR/tables.md (the tables of docs/organism.md)."""
    from dataclasses import replace

    from ..organism.repair import QUICK, RepairConfig, run

    wanted = tuple(p for p in parts.split(",") if p)
    unknown = [p for p in wanted if p not in ("measure", "repair")]
    if unknown:
        fail(f"unknown part(s) {', '.join(unknown)}; choose from measure, repair")
    if any(v is not None and v < 1 for v in (seeds, steps, k)):
        fail("--seeds, --steps and --k must be at least 1")
    cfg = QUICK if quick else RepairConfig()
    cfg = replace(cfg, **({"seeds": tuple(range(seeds))} if seeds else {}), **({"steps": steps} if steps else {}),
                  **({"k": k} if k else {}))
    try:
        result = run(model, out, cfg, parts=wanted, threads=threads, log=(lambda m: None) if json_out else typer.echo)
    except (ValueError, FileNotFoundError) as err:
        fail(error_line(err))
    if into_card:
        import sys

        from ..models.organisms import ORGANISMS, organism_card, organism_dir
        from ..organism.recipe import write_card
        from ..organism.repair import card_entry

        folder = organism_dir(model) if model in ORGANISMS else Path(model)
        card = organism_card(model)
        card["full_run"] = {**card.get("full_run", {}),
                            **card_entry(result, "vru-lens organism " + " ".join(sys.argv[2:]))}
        write_card(folder, card)
    if json_out:
        print_json(result)
        return
    typer.echo((out / "tables.md").read_text())
    typer.echo(f"wrote {out}/deficit_study.json and tables.md")
