"""`vru-lens organism`: train the VRU model organism, print its card."""

from __future__ import annotations

import typer

from .common import fail, print_json

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="The VRU model organism: a small Llama whose planted heads G carry the final rotation.")


@app.command("train")
def train_cmd(
    out: str = typer.Option(..., "--out", help="Folder for the trained model (and DIR-base for the base checkpoint)."),
    seed: int = typer.Option(0, help="Training seed."),
    steps: int = typer.Option(None, help="Optimizer steps (default: the shipped recipe's)."),
    threads: int = typer.Option(1, help="torch threads (one is fastest on a busy 2-core machine)."),
    tiny: bool = typer.Option(False, help="A tiny variant for a few steps: checks the training code."),
    device: str = typer.Option("cpu", help="Torch device to train on (cpu, cuda)."),
):
    """Train from scratch; prints the learning curve as it goes and saves the model, base checkpoint and card."""
    from ..organism.recipe import run_recipe

    try:
        card = run_recipe(out, seed=seed, steps=steps, threads=threads, tiny=tiny, log=typer.echo, device=device)
    except ValueError as err:
        fail(str(err))
    typer.echo(f"saved {out} (planted heads {card['planted_heads']})")


@app.command("measure")
def measure_cmd(
    folder: str = typer.Argument(..., help="A trained organism folder (with organism.json)."),
):
    """Measure the card: ground truth, every ranking method graded against G, each planted head's role."""
    from ..organism.recipe import measure

    try:
        measure(folder, log=typer.echo)
    except (ValueError, FileNotFoundError) as err:
        fail(str(err))


@app.command("info")
def info_cmd(
    model: str = typer.Option("vru-organism", "--model", help="An organism name or a trained folder."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON."),
):
    """The organism's card: planted heads G, their roles, shape and measured ground truth."""
    from ..models.organisms import organism_card

    try:
        card = organism_card(model)
    except (ValueError, FileNotFoundError) as err:
        fail(str(err))
    if json_out:
        print_json(card)
        return
    for key in ("planted_heads", "roles", "n_layers", "n_heads", "n_kv_heads", "measured"):
        typer.echo(f"{key}: {card.get(key)}")
