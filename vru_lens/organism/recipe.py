"""The shipped organism's recipe: train, keep the base checkpoint on the way, write the cards."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

from .train import TrainConfig, save, train

RECIPE = TrainConfig()
TINY = TrainConfig(d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_mlp=64, planted=((0, 0), (1, 0)), steps=6,
                   batch=4, list_batch=4, list_warm=2, warmup=2, eval_every=3, eval_n=20)
BASE_RANGE = (0.45, 0.65)  # VRU accuracy of the base checkpoint, taken once the list task is learned
ROLES_UNMEASURED = "planted by interchange training; role not yet measured"


def card(cfg: TrainConfig, point: dict, kind: str) -> dict:
    return {"planted_heads": [list(h) for h in cfg.planted],
            "roles": {f"{l}.{h}": ROLES_UNMEASURED for l, h in cfg.planted},
            "n_layers": cfg.n_layers, "n_heads": cfg.n_heads, "n_kv_heads": cfg.n_kv_heads,
            "checkpoint": kind, "at_step": point.get("step"), "training_eval": point,
            "format": "paper-style VRUBench with the constant instruction (one token), unknown items included; "
                      "second task: list recall ('List: a b c\\nFind: b\\nNext:' -> c)"}


def write_card(folder, payload: dict) -> None:
    Path(folder, "organism.json").write_text(json.dumps(payload, indent=1))


CURVE_KEYS = ("acc", "pairs_both", "patch_G_flipped", "patch_nonG_changed", "list_acc")


def plot_curve(curve: list[dict], path) -> None:
    """The learning curve (accuracy, pairs, the two patching checks, list task) as an offline HTML figure."""
    import plotly.graph_objects as go

    fig = go.Figure([go.Scatter(x=[p["step"] for p in curve], y=[p.get(k) for p in curve], name=k, mode="lines+markers")
                     for k in CURVE_KEYS])
    fig.update_layout(title="VRU organism: learning curve", xaxis_title="step", yaxis_title="fraction",
                      yaxis_range=[0, 1.02])
    fig.write_html(str(path), include_plotlyjs=True)


def run_recipe(out, seed: int = 0, steps: int | None = None, threads: int = 2, tiny: bool = False, log=print,
               **overrides) -> dict:
    """Train ``out`` (final) and ``out``-base (the first evaluation in BASE_RANGE with the list task learned)."""
    cfg = replace(TINY if tiny else RECIPE, seed=seed, threads=threads, **overrides)
    if steps is not None:
        cfg = replace(cfg, steps=steps)
    base_dir = Path(str(out).rstrip("/") + "-base")
    state = {"base": None}

    def on_eval(model, tok, point):
        lo, hi = BASE_RANGE
        if state["base"] is None and lo <= point["acc"] <= hi and point["list_acc"] >= 0.95:
            save(model, tok, cfg, [point], base_dir)
            write_card(base_dir, card(cfg, point, "base"))
            state["base"] = point
            log(f"base checkpoint saved to {base_dir} at step {point['step']}")

    model, tok, curve = train(cfg, out_dir=out, log=log, on_eval=on_eval)
    payload = {**card(cfg, curve[-1] if curve else {}, "final"), "base": state["base"],
               "config": asdict(cfg)}
    write_card(out, payload)
    if curve:
        plot_curve(curve, Path(out, "curve.html"))
    if state["base"] is None:
        log(f"no evaluation fell in {BASE_RANGE} with the list task learned: no base checkpoint")
    return payload
