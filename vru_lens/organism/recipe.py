"""The shipped organism's recipe: train, keep the base checkpoint on the way, write the cards."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

from .train import TrainConfig, save, train

RECIPE = TrainConfig()
TINY = TrainConfig(d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_mlp=64, planted=((0, 0), (1, 0)), steps=6,
                   stop_after=None, batch=4, list_batch=4, list_warm=2, warmup=2, eval_every=3, eval_n=20)
BASE_RANGE = (0.45, 0.65)  # VRU accuracy of the base checkpoint, taken once the list task is learned
ROLES_UNMEASURED = "planted by interchange training; role not yet measured"


def card(cfg: TrainConfig, point: dict, kind: str) -> dict:
    return {"planted_heads": [list(h) for h in cfg.planted],
            "roles": {f"{l}.{h}": ROLES_UNMEASURED for l, h in cfg.planted},
            "n_layers": cfg.n_layers, "n_heads": cfg.n_heads, "n_kv_heads": cfg.n_kv_heads,
            "checkpoint": kind, "at_step": point.get("step"), "training_eval": point,
            "format": "paper-style VRUBench with the constant instruction (one token), unknown items included; "
                      "second task: list recall ('List: a b c d e\\nItem 3:' -> c)"}


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
               on_point=None, **overrides) -> dict:
    """Train ``out`` (final) and ``out``-base (the first evaluation in BASE_RANGE with the list task learned).

    ``on_point(model, tokenizer, point)`` is called after every evaluation (e.g. to keep the latest weights).
    """
    cfg = replace(TINY if tiny else RECIPE, seed=seed, threads=threads, **overrides)
    if steps is not None:
        cfg = replace(cfg, steps=steps, stop_after=None)
    base_dir = Path(str(out).rstrip("/") + "-base")
    state = {"base": None}

    def on_eval(model, tok, point):
        lo, hi = BASE_RANGE
        if state["base"] is None and lo <= point["acc"] <= hi and point["list_acc"] >= 0.95:
            save(model, tok, cfg, [point], base_dir)
            write_card(base_dir, card(cfg, point, "base"))
            state["base"] = point
            log(f"base checkpoint saved to {base_dir} at step {point['step']}")
        if on_point:
            on_point(model, tok, point)

    model, tok, curve = train(cfg, out_dir=out, log=log, on_eval=on_eval)
    payload = {**card(cfg, curve[-1] if curve else {}, "final"), "base": state["base"],
               "config": asdict(cfg)}
    write_card(out, payload)
    if curve:
        plot_curve(curve, Path(out, "curve.html"))
    if state["base"] is None:
        log(f"no evaluation fell in {BASE_RANGE} with the list task learned: no base checkpoint")
    return payload


def _role(att: dict, flips: float) -> str:
    """A head's role in words, read off where it looks from the final query and what patching it alone does."""
    where = max(("final_turn", "earlier_turns", "objects"), key=lambda k: att[k])
    what = {"final_turn": "reads the final turn: heading", "earlier_turns": "reads the earlier turns: heading",
            "objects": "reads the observed objects: retrieval"}[where]
    if att[where] < att["other"]:
        what = "mostly reads BOS and fixed phrases; works at earlier positions"
    return (f"{what} (attention from the final query: final turn {att['final_turn']:.0%}, earlier turns "
            f"{att['earlier_turns']:.0%}, objects {att['objects']:.0%}); patched alone from the flipped prompt, "
            f"turns {flips:.0%} of pairs to the flipped answer")


def measure(folder, n_items: int = 1000, n_pairs: int = 120, log=print) -> dict:
    """Measure a trained organism's card (ground truth, methods graded against G, roles) and write it in.

    The exact experiments of ``verify`` on 1000 paper-style test items (seed 77) and the first 120
    counterfactual pairs of 4000 items (seed 78); the tests repeat them on fewer.
    """
    import time

    from ..bench import BenchConfig, make_items
    from ..bench.pairs import counterfactual_variants
    from ..models import load_model
    from ..tokens import tokenize_pairs
    from .verify import attention_roles, grade_methods, ground_truth, patched_choices

    t0 = time.time()
    path = Path(folder)
    payload = json.loads((path / "organism.json").read_text())
    planted = [tuple(h) for h in payload["planted_heads"]]
    model = load_model(str(path), device="cpu")
    items = make_items(n_items, seed=77, cfg=BenchConfig(style="paper"))
    pairs = [it for it in make_items(4000, seed=78, cfg=BenchConfig(style="paper")) if counterfactual_variants(it)]
    pairs = pairs[:n_pairs]
    truth = ground_truth(model, items, planted, pair_items=pairs)
    truth["methods"] = grade_methods(model, pairs, planted)
    pt = tokenize_pairs(model.tokenizer, pairs)
    flips = {h: sum(a == c for a, c in zip(patched_choices(model, pt, [h]), pt.pairs.corrupt_answers)) / len(pt)
             for h in planted}
    attention = attention_roles(model, items, planted)
    truth["seconds"] = round(time.time() - t0, 1)
    payload.update(measured=truth, attention_from_final_query=attention,
                   roles={f"{l}.{h}": _role(attention[f"{l}.{h}"], flips[(l, h)]) for l, h in planted})
    write_card(path, payload)
    log(json.dumps({k: truth[k] for k in ("accuracy", "pairs_both_right_top1", "patch_G_flipped",
                                          "patch_outside_G_changed", "ablate_G_accuracy")}))
    return payload
