"""``vru-lens probe``: layer-wise probes of a VRUBench label (and, optionally, the logit lens of the answer)."""

from __future__ import annotations

from typing import Optional

import typer

from .common import (N, Chat, Deltas, Device, Json, Model, Out, Progress, Seed, Threads, chat_for, error_line, fail,
                     find_input, out_file, parse_ints, parse_steps, print_json, set_threads, show_progress)


def probe(
    model: Model = "smollm2-135m-instruct",
    n: N = 1000,
    target: str = typer.Option("heading", "--target", help="heading | cum_angle | observed | object"),
    seed: Seed = 0,
    steps: str = typer.Option("2-5", "--steps", help="rotation steps per story, e.g. 2-5"),
    slots: int = typer.Option(4, "--slots", help="viewpoint slots (4 or 8)"),
    chat: Chat = None,
    batch_size: int = typer.Option(16, "--batch-size"),
    layers: Optional[str] = typer.Option(None, "--layers", help="comma-separated layers (default: all)"),
    control_by: Optional[str] = typer.Option(None, "--control-by", help="control-task type: prefix | phrase | token | "
                                             "label (default: prefix for heading and cum_angle, phrase otherwise)"),
    test_frac: float = typer.Option(0.2, "--test-frac", help="held-out fraction of items"),
    weight_decay: float = typer.Option(1e-2, "--weight-decay"),
    solver: str = typer.Option("bound", "--solver", help="bound (Boehning steps) | adam"),
    train_steps: Optional[int] = typer.Option(None, "--train-steps", help="default: 20 (bound) or 200 (adam)"),
    lr: float = typer.Option(0.03, "--lr", help="adam only"),
    lens: bool = typer.Option(False, "--lens", help="also the logit lens of the answer (same forward pass)"),
    out: Out = None,
    device: Device = None,
    deltas: Deltas = None,
    threads: Threads = 0,
    json_out: Json = False,
    progress: Progress = None,
) -> None:
    """Probe every layer's resid_post for a VRUBench label; report accuracy, control accuracy, selectivity.

    --n answerable items. --out DIR writes DIR/probe.json (the ProbeResult) and DIR/probe.html, with
    --lens DIR/lens.json and DIR/lens.html, and keeps the captured activations in DIR/resid.pt: a
    re-run on the same model, items, --chat and --layers refits from them without running the model
    (another --target or --control-by, say); one for other settings is refused.
    """
    from ..probe import CONTROL_TYPES, MIN_ITEMS, SOLVERS, TARGETS

    if target not in TARGETS:
        fail(f"unknown target {target!r}; valid targets: {', '.join(TARGETS)}")
    if control_by is not None and control_by not in CONTROL_TYPES:
        fail(f"unknown --control-by {control_by!r}; valid: {', '.join(CONTROL_TYPES)}")
    if solver not in SOLVERS:
        fail(f"unknown --solver {solver!r}; valid: {', '.join(SOLVERS)}")
    if n < MIN_ITEMS:
        fail(f"--n {n} is too few: probing splits by item and needs at least {MIN_ITEMS} items")
    lo, hi = parse_steps(steps)
    layer_list = None if layers is None else parse_ints(layers, "--layers")
    set_threads(threads)
    from ..finetune.adapters import DELTAS_FILE

    deltas = find_input(deltas, DELTAS_FILE, "--deltas", "vru-lens finetune")
    saved = out_file(out, "probe.json")

    import time

    from ..bench import BenchConfig, make_items
    from ..models import load_model
    from ..probe import ResidCache, fit_target
    from ..results import model_name

    try:
        cfg = BenchConfig(n_slots=slots, min_steps=lo, max_steps=hi, unanswerable_frac=0.0)
        items = make_items(n, seed=seed, cfg=cfg)
        bridge = load_model(model, device=device, deltas=deltas)
        chat = chat_for(bridge, chat)
        name = model_name(bridge)
        t0 = time.perf_counter()
        acts = ResidCache.cached(out / "resid.pt" if out else None, bridge, items, layers=layer_list, chat=chat,
                                 batch_size=batch_size, final=lens, progress=show_progress(progress, json_out))
        t_capture = time.perf_counter() - t0
        t1 = time.perf_counter()
        result = fit_target(acts, items, target, control_by=control_by, test_frac=test_frac,
                            weight_decay=weight_decay, steps=train_steps, lr=lr, seed=seed, solver=solver)
        t_fit = time.perf_counter() - t1
    except (ValueError, OSError, ModuleNotFoundError) as err:
        fail(error_line(err))
    summary = {"model": name, "n_items": n, **result.summary(),
               "seconds": {"capture": round(t_capture, 2), "fit": round(t_fit, 2)}}
    if saved:
        result.save(saved)
        result.plot(title=f"{name}: probe '{target}' ({n} items)").write_html(saved.with_suffix(".html"))
    if lens:
        from ..logit_lens import lens_from_resid

        lens_result = lens_from_resid(bridge, items, acts.final, acts.layers, chat)
        if saved:
            lens_result.save(out / "lens.json")
            lens_result.plot(title=f"{name}: logit lens of the answer ({n} items)").write_html(out / "lens.html")
        summary["logit_lens"] = {k: v for k, v in lens_result.summary().items() if k != "layers"}
    if json_out:
        print_json(summary)
        return
    typer.echo(f"{name}  target={target}  {result.n_train_items} train / {result.n_test_items} test items  "
               f"chance={result.chance:.3f}  control by {result.control_by}")
    typer.echo(result.to_frame().to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    typer.echo(f"best layer {summary['best_layer']}: accuracy {summary['best_accuracy']:.3f}, "
               f"selectivity {summary['best_selectivity']:.3f}")
    if lens:
        ll = summary["logit_lens"]
        typer.echo(f"logit lens: gold top among candidates peaks at layer {ll['peak_layer']} ({ll['peak_gold_top']:.3f}); "
                   f"last layer {ll['final_gold_top']:.3f} (chance {ll['chance_top']:.3f})")
