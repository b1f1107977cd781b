"""`vru-lens sweep`: head rankings over a grid (TOML/YAML), cached per cell, in-process or on Ray."""

from __future__ import annotations

import typer

from .common import Json, Out, Progress, error_line, fail, print_json, show_progress


def sweep(
    args: list[str] = typer.Argument(None, metavar="[CONFIG] [ADDRESS]",
                                     help="The sweep file (.toml or .yaml); after --ray, optionally a Ray address."),
    out: Out = None,
    example: bool = typer.Option(False, "--example", help="Run the small built-in grid on tiny models."),
    ray: bool = typer.Option(False, "--ray", help="Run cells as Ray tasks: on the cluster at ADDRESS, else on a "
                                                  "local Ray started for this sweep (1 CPU, no dashboard)."),
    json_out: Json = False,
    progress: Progress = None,
):
    """Rank heads over a grid of models, methods, metrics, pair counts, styles and seeds; resumable.

    A top-level `task = "pairs.jsonl"` in CONFIG ranks on your own prompt pairs (one {"clean", "corrupt",
    "clean_answer", "corrupt_answer"} object a line) instead of VRUBench items; a bad line is refused by number.

    --out DIR (default: beside CONFIG, CONFIG without suffix) holds cells/<hash>.json, cells.csv,
    stability.csv, figures.html and sweep.json. --json prints one object: "cells" (each with its
    "settings", its "top" heads as rows of layer, head, score, and "auroc") and "stability".
    """
    from pathlib import Path

    from ..sweep import EXAMPLE, SweepConfig, gather, run_sweep

    args = list(args or [])
    config_path = None if example else (args.pop(0) if args else None)
    if not example and config_path is None:
        fail("give a sweep file (vru-lens sweep grid.toml) or --example")
    address = args.pop(0) if args else None
    if args:
        fail(f"unexpected arguments {args}: vru-lens sweep [CONFIG] [--ray [ADDRESS]]")
    if address and not ray:
        fail(f"{address!r}: a Ray address goes with --ray (vru-lens sweep CONFIG --ray ADDRESS)")
    try:
        config = SweepConfig.from_dict(EXAMPLE) if example else SweepConfig.from_file(config_path)
    except (ValueError, FileNotFoundError) as err:
        fail(str(err))
    if out is None:
        if example:
            fail("--example needs --out DIR")
        out = Path(config_path).with_suffix("")
    try:
        result = run_sweep(config, out, ray_address=address, use_ray=ray, progress=show_progress(progress, json_out))
    except (ValueError, OSError, ModuleNotFoundError) as err:
        fail(error_line(err))
    summary = gather(result, out, config.options["top_k"])
    if json_out:
        print_json(summary)
        return
    k = config.options["top_k"]
    typer.echo(f"{len(summary['cells'])} cells ({result['ran']} run, {result['cached']} from cache) in {out}")
    for c in summary["cells"]:
        s = c["settings"]
        auroc = "" if c["auroc"] is None else f"  AUROC {c['auroc']:.3f}"
        heads = " ".join(f"L{l}H{h}" for l, h, _ in c["top"][:5])
        typer.echo(f"  {s['model']:<24} {s['method']:<11} {s['metric']:<9} pairs {s['pairs']:<4} {s['style']:<5} "
                   f"seed {s['seed']:<3} top: {heads}{auroc}")
    for row in summary["stability"]:
        fixed = f"seed {row['seed']}" if row["across"] == "method" else row["method"]
        typer.echo(f"  {row['model']} ({fixed}): across {row['across']} {row['a']} vs {row['b']}: Kendall tau "
                   f"{row['kendall_tau']:.3f}, top-{k} overlap {row[f'top{k}_overlap']}/{k}")
    typer.echo(f"figures: {out / 'figures.html'}")
