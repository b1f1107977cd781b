"""``vru-lens probe``: layer-wise probes of a VRUBench label (and, optionally, the logit lens of the answer)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import fail, print_json


def probe(
    model: str = typer.Option("smollm2-135m-instruct", "--model", help="model name, hub id or folder"),
    n: int = typer.Option(1000, "--n", help="number of VRUBench items (answerable)"),
    target: str = typer.Option("heading", "--target", help="heading | cum_angle | observed | object"),
    seed: int = typer.Option(0, "--seed", help="items, split, control task and probe init"),
    steps: str = typer.Option("2-5", "--steps", help="rotation steps per story, e.g. 2-5"),
    slots: int = typer.Option(4, "--slots", help="viewpoint slots (4 or 8)"),
    chat: bool = typer.Option(False, "--chat", help="render prompts with the chat template"),
    batch_size: int = typer.Option(16, "--batch-size"),
    layers: Optional[str] = typer.Option(None, "--layers", help="comma-separated layers (default: all)"),
    control_by: str = typer.Option("phrase", "--control-by", help="control-task type: phrase | token | label"),
    test_frac: float = typer.Option(0.2, "--test-frac", help="held-out fraction of items"),
    weight_decay: float = typer.Option(1e-2, "--weight-decay"),
    solver: str = typer.Option("bound", "--solver", help="bound (Boehning steps) | adam"),
    train_steps: Optional[int] = typer.Option(None, "--train-steps", help="default: 20 (bound) or 200 (adam)"),
    lr: float = typer.Option(0.03, "--lr", help="adam only"),
    cache: Optional[Path] = typer.Option(None, "--cache", help="activations file: reused if it exists, else written"),
    out: Optional[Path] = typer.Option(None, "--out", help="save the ProbeResult JSON here (and a .html plot)"),
    lens_out: Optional[Path] = typer.Option(None, "--lens-out",
                                            help="also run the logit lens of the answer (same forward pass), save JSON + .html"),
    as_json: bool = typer.Option(False, "--json", help="print the result summary as JSON"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Probe every layer's resid_post for a VRUBench label; report accuracy, control accuracy, selectivity."""
    from ..probe import CONTROL_TYPES, MIN_ITEMS, SOLVERS, TARGETS

    if target not in TARGETS:
        fail(f"unknown target {target!r}; valid targets: {', '.join(TARGETS)}")
    if control_by not in CONTROL_TYPES:
        fail(f"unknown --control-by {control_by!r}; valid: {', '.join(CONTROL_TYPES)}")
    if solver not in SOLVERS:
        fail(f"unknown --solver {solver!r}; valid: {', '.join(SOLVERS)}")
    if n < MIN_ITEMS:
        fail(f"--n {n} is too few: probing splits by item and needs at least {MIN_ITEMS} items")
    from .common import parse_steps

    lo, hi = parse_steps(steps)
    try:
        layer_list = None if layers is None else [int(x) for x in layers.split(",") if x.strip()]
    except ValueError:
        fail(f"--layers must be comma-separated integers, got {layers!r}")

    import time

    from ..bench import BenchConfig, make_items
    from ..models import load_model
    from ..probe import ResidCache, capture, fit_target

    try:
        cfg = BenchConfig(n_slots=slots, min_steps=lo, max_steps=hi, unanswerable_frac=0.0)
        items = make_items(n, seed=seed, cfg=cfg)
        bridge = load_model(model)
    except (ValueError, OSError, ModuleNotFoundError) as err:
        fail(str(err))
    want = {"model": getattr(bridge, "vru_name", model), "chat": chat, "n_items": n,
            "item_ids": [it["id"] for it in items]}
    t0 = time.perf_counter()
    acts = None
    if cache is not None and cache.exists():
        try:
            acts = ResidCache.load(cache).check(want, layer_list, final=lens_out is not None)
        except ValueError as err:
            fail(f"{cache}: {err}")
    try:
        if acts is None:
            acts = capture(bridge, items, layers=layer_list, chat=chat, batch_size=batch_size,
                           final=lens_out is not None, progress=progress)
            acts.meta.update(want)
            if cache is not None:
                acts.save(cache)
        t_capture = time.perf_counter() - t0
        t1 = time.perf_counter()
        result = fit_target(acts, items, target, control_by=control_by, test_frac=test_frac,
                            weight_decay=weight_decay, steps=train_steps, lr=lr, seed=seed, solver=solver)
        t_fit = time.perf_counter() - t1
    except ValueError as err:
        fail(str(err))
    summary = {"model": want["model"], "n_items": n, **result.summary(),
               "seconds": {"capture": round(t_capture, 2), "fit": round(t_fit, 2)}}
    if out is not None:
        result.save(out)
        result.plot(title=f"{want['model']}: probe '{target}' ({n} items)").write_html(out.with_suffix(".html"))
    if lens_out is not None:
        from ..logit_lens import lens_from_resid

        lens = lens_from_resid(bridge, items, acts.final, acts.layers, chat)
        lens.save(lens_out)
        lens.plot(title=f"{want['model']}: logit lens of the answer ({n} items)").write_html(lens_out.with_suffix(".html"))
        summary["logit_lens"] = {k: v for k, v in lens.summary().items() if k != "layers"}
    if as_json:
        print_json(summary)
        return
    typer.echo(f"{want['model']}  target={target}  {result.n_train_items} train / {result.n_test_items} test items  "
               f"chance={result.chance:.3f}  control by {control_by}")
    typer.echo(result.to_frame().to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    typer.echo(f"best layer {summary['best_layer']}: accuracy {summary['best_accuracy']:.3f}, "
               f"selectivity {summary['best_selectivity']:.3f}")
    if lens_out is not None:
        ll = summary["logit_lens"]
        typer.echo(f"logit lens: gold top among candidates peaks at layer {ll['peak_layer']} ({ll['peak_gold_top']:.3f}); "
                   f"last layer {ll['final_gold_top']:.3f} (chance {ll['chance_top']:.3f})")
