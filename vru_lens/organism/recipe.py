"""The shipped organism's recipe: train, keep the base checkpoint on the way, write the cards."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import torch

from .train import OrganismConfig, save, train_organism

# The shipped recipe: small enough to train on 2 CPU cores in about half an hour (d_model 64, 8 query
# heads of 8 dimensions in 4 key-value groups), complete circuit C = key-value group 0 of every layer.
# Phase 1 learns the task with C's interchange losses; phase 2 (a lower learning rate, most rows with
# every head outside C resampled, a KL between clean and intervened answers, a small penalty on what
# heads outside C write) narrows what is left of the route outside C (measured: docs/organism.md).
RECIPE = OrganismConfig(d_model=64, d_mlp=256, steps=3000)
POLISH = replace(RECIPE, steps=800, list_warm=0, warmup=20, lr=1e-3, siit_start=0.0, plain_frac=0.15,
                 resample_frac=0.7, consistency_weight=1.0, silence_weight=1.0, eval_every=400)
# Phases 3-5 make the heading readable at every step and make C complete: the attention loss at every
# token (not only the final query) and a stronger per-step heading loss; then a KL (weight 3) that pulls
# the clean answer toward the intervened one as well, so the model answers as C alone does; then the same
# at half the learning rate with every non-plain row resampled outside C (measured: docs/organism.md).
HEADING = replace(POLISH, steps=1000, eval_every=500, attn_everywhere=True, attn_weight=3.0, aux_weight=1.5)
CONSISTENT = replace(HEADING, consistency_both=True, consistency_weight=3.0)
SETTLE = replace(CONSISTENT, steps=1500, lr=5e-4, resample_frac=0.85)
# Issue 24's family. noisy: no attention or write constraint outside C (heads there work on the task's
# positions, with small effects); redundant: the final-turn heads (2,0), (2,1) each have a backup in
# key-value group 1 of layer 2, trained so that either side alone carries the final turn.
BACKUP = (((2, 0), (2, 2)), ((2, 1), (2, 3)))
# deep: the same five phases at 8 layers x 8 query heads (4 key-value groups), C = key-value group 0 of
# every layer (16 of 64 heads), so rankings and the fast paths work at depth; each phase half as long (a
# step costs twice the 4-layer one's; what that costs in completeness: docs/grading.md).
DEEP_CIRCUIT = tuple((l, h) for l in range(8) for h in (0, 1))
PHASES = (RECIPE, POLISH, HEADING, CONSISTENT, SETTLE)
DEEP = tuple(replace(p, n_layers=8, circuit=DEEP_CIRCUIT, steps=p.steps // 2) for p in PHASES)
# issue 24: after those five, 3.5-4.0% of answers changed with every head outside C resampled (bar 2%), mostly
# items the model is unsure of (clean margin under 1 logit); a sixth phase settles longer with nearly every row
# resampled outside C (plain_frac 0.05; with 0.15 plain, a resample_frac above 0.85 changes nothing) and a
# stronger KL between clean and intervened answers
DEEP += (replace(DEEP[-1], steps=1500, plain_frac=0.05, resample_frac=0.95, consistency_weight=5.0),)
# (measured after it: 2.0-2.3% changed on the test's 600 items) and a seventh at half the learning rate with
# the KL doubled
DEEP += (replace(DEEP[-1], lr=2.5e-4, consistency_weight=10.0),)
# (after it: 1.8-2.2%, the changed items at clean margins under 2 logits) and an eighth that makes the heads
# outside C quieter: what they read from the story (attention off BOS, weight 3 -> 10) and what they write
# (silence, 1 -> 3)
DEEP += (replace(DEEP[-1], attn_weight=10.0, silence_weight=3.0),)
# (after it: 0.7-1.5% on the card's items, 1.7-2.5% on the test's) and a ninth, shorter, with the writes
# silenced harder (3 -> 10)
DEEP += (replace(DEEP[-1], steps=1000, silence_weight=10.0),)
# (after it, the shipped weights: 1.2-1.9% on the card's items, 1.7-1.8% on the test's; the four phases took
# 41 min on the shared 2-core CPU, one thread; docs/grading.md, the family)
# redundant: fine-tuned from the shipped vru-organism (STARTS), whose final turn already runs through (2,0),
# (2,1) (resampling them costs 39 points there), each backup first made a copy of its primary (the silent
# (2,2), (2,3) did not learn from scratch: 300 steps left resampling the primaries at -33 points). Trained
# from scratch with backup rows alone (five phases, 83 min) either side kept the answer but so did both
# (-4.3 points): the final turn also went through C's other heads. Here the twin pass also makes the pairs
# the final turn's route (pair_twin_frac: the pairs alone from the flipped twin must give the twin's
# answer) while the backup rows (one side resampled from an unrelated story, answer kept) stay. Measured:
# docs/organism.md, "The family" (a third phase with the pairs from unrelated stories made every bar worse).
REDUNDANT = tuple(replace(SETTLE, circuit=RECIPE.circuit + ((2, 2), (2, 3)), backup=BACKUP, backup_frac=0.6,
                          pair_twin_frac=0.75, **kw) for kw in ({"lr": 1e-3, "steps": 2000, "eval_every": 500},
                                                                {"lr": 5e-4, "steps": 1000, "eval_every": 500}))
# noisy: a sixth phase, settling at half the last learning rate (after five phases 2.3-2.8% of answers changed
# with every head outside C resampled; the bar is 2%; its resample_frac 0.9 is 0.85 in effect: 0.15 of rows
# stay plain), which left 2.1-2.2% on the card's items and 3.2-3.5% on the test's (issue 24); a seventh as
# deep's sixth: nearly every row resampled outside C (plain_frac 0.05) and a KL of weight 10, with a write floor
# (OrganismConfig.write_floor: a hinge that keeps what the heads outside C write at 0.35 or more of what C's
# heads write). Without the floor the same phase left 0.6-1.5% / 1.5-2.0% changed, but the outside heads then
# wrote 0.239 of what C's write (the family test's bar is 0.25; after six phases 0.252)
NOISY = tuple(replace(p, attn_weight=0.0, silence_weight=0.0) for p in PHASES) + (
    replace(SETTLE, attn_weight=0.0, silence_weight=0.0, steps=600, lr=2.5e-4, resample_frac=0.9),)
NOISY += (replace(NOISY[-1], steps=2000, lr=5e-4, plain_frac=0.05, resample_frac=0.95, consistency_weight=10.0,
                  write_floor=0.35),)
# (after it, the shipped weights: 0.9-1.3% on the card's items, 1.3-1.8% on the test's, the outside heads writing
# 0.364 of what C's write; 8 min, one thread)
RECIPES = {"vru-organism": PHASES,
           "vru-organism-d96": (OrganismConfig(d_model=96, d_mlp=384, steps=2500),),
           "vru-organism-noisy": NOISY,
           "vru-organism-redundant": REDUNDANT,
           "vru-organism-deep": DEEP}
# a recipe that fine-tunes a shipped organism: its first phase starts from that organism's weights
STARTS = {"vru-organism-redundant": "vru-organism"}
TINY = OrganismConfig(d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_mlp=64, circuit=((0, 0), (1, 0)), steps=6,
                   stop_after=None, batch=4, list_batch=4, list_warm=2, warmup=2, eval_every=3, eval_n=20,
                   siit_start=0.0)
ROLES_UNMEASURED = "in the circuit by interchange training; role not yet measured (vru-lens organism measure)"
SECOND_TASK = "list recall ('List: a b c d e\\nItem 3:' -> c)"


def card(cfg: OrganismConfig, point: dict) -> dict:
    """The organism's card before measurement: the circuit C by construction; ``measure`` fills in the rest."""
    payload = {"circuit": {f"{l}.{h}": ROLES_UNMEASURED for l, h in cfg.circuit},
               "n_layers": cfg.n_layers, "n_heads": cfg.n_heads, "n_kv_heads": cfg.n_kv_heads,
               "training_eval": point,
               "format": "paper-style VRUBench with the constant instruction (one token), unknown items included; "
                         f"second task: {SECOND_TASK}"}
    if cfg.backup:  # (primary, backup) pairs inside C: either side alone carries what the pair does
        payload["backup"] = [[list(p), list(b)] for p, b in cfg.backup]
    return payload


def write_card(folder, payload: dict) -> None:
    Path(folder, "organism.json").write_text(json.dumps(payload, indent=1))


CURVE_KEYS = ("acc", "pairs_both", "patch_C_flipped", "resample_outside_C_acc", "resample_outside_C_changed",
              "list_acc")


def plot_curve(curve: list[dict], path) -> None:
    """The learning curve (accuracy, pairs, the circuit checks, list task) as an offline HTML figure."""
    import plotly.graph_objects as go

    fig = go.Figure([go.Scatter(x=[p["step"] for p in curve], y=[p.get(k) for p in curve], name=k, mode="lines+markers")
                     for k in CURVE_KEYS])
    fig.update_layout(title="VRU organism: learning curve", xaxis_title="step", yaxis_title="fraction",
                      yaxis_range=[0, 1.02])
    fig.write_html(str(path), include_plotlyjs=True)


def run_recipe(out, seed: int = 0, steps: int | None = None, threads: int = 1, tiny: bool = False, log=print,
               on_point=None, recipe: str = "vru-organism", start: str | Path | None = None, **overrides) -> dict:
    """Train the named recipe into ``out`` and write its card (``measure`` then completes it).

    ``on_point(model, tokenizer, point)`` is called after every evaluation (e.g. to keep the latest weights).
    ``start``: a folder this recipe saved after its first phases (its training.json lists them): training
    goes on from there with the phases after those, as a run from scratch would (each phase starts fresh
    from the weights the one before left). Without it, a recipe of ``STARTS`` fine-tunes that shipped
    organism (its backups first made copies of their primaries), every other recipe trains from scratch.
    """
    if not tiny and recipe not in RECIPES:
        raise ValueError(f"unknown organism recipe {recipe!r}; known: {', '.join(RECIPES)}")
    phases = [replace(p, seed=seed, threads=threads, **overrides) for p in ((TINY,) if tiny else RECIPES[recipe])]
    if steps is not None:
        phases = [replace(p, steps=steps, stop_after=None) for p in phases]

    model, curve, done = None, [], 0
    if start is not None:
        model, curve, done = _resume(start, phases)
    elif not tiny and recipe in STARTS:  # a shipped organism, its backups made copies of their primaries
        model = _shipped(STARTS[recipe], phases[0].backup)
    for i, cfg in enumerate(phases):
        if i < done:
            continue
        log(f"phase {i + 1} of {len(phases)}")
        model, tok, part = train_organism(cfg, log=log, on_eval=on_point, start=model)
        curve += [{**p, "phase": i + 1} for p in part]
    save(model, tok, phases, curve, out)
    payload = {**card(phases[-1], curve[-1] if curve else {}), "recipe": "tiny" if tiny else recipe,
               "phases": [asdict(p) for p in phases]}
    if not tiny and recipe in STARTS:
        payload["start"] = STARTS[recipe]
    write_card(out, payload)
    if curve:
        plot_curve(curve, Path(out, "curve.html"))
    return payload


def _shipped(name, backup=()):
    """A shipped organism's weights, to fine-tune (eager attention: the training's attention loss reads it),
    with every backup head made a copy of its primary (``duplicate_heads``)."""
    from transformers import AutoModelForCausalLM

    from ..models.organisms import organism_dir

    model = AutoModelForCausalLM.from_pretrained(organism_dir(name), attn_implementation="eager")
    duplicate_heads(model, backup)
    return model


@torch.no_grad()
def duplicate_heads(model, pairs) -> None:
    """Each backup head becomes a copy of its primary: the backup's query rows, its key-value group's key and
    value rows, and each side writing half of what the primary wrote (o_proj columns), so the model computes
    what it did less what the backups wrote before (on vru-organism, silent heads: at most 0.09 of a logit). A silent head (attending to BOS, writing nothing) has almost no gradient to learn
    from (measured: 300 fine-tuning steps left resampling the primaries at -33 points); a copy starts as a
    backup. A backup's key-value group must hold only backups, whose primaries share one group in the same
    order (a group's key and value projections serve all its query heads)."""
    cfg = model.config
    H, KV = cfg.num_attention_heads, cfg.num_key_value_heads
    d, per = cfg.hidden_size // H, H // KV
    groups = {}
    for (lp, hp), (lb, hb) in pairs:
        if lp != lb or hb % per != hp % per:
            raise ValueError(f"backup ({lb},{hb}) of ({lp},{hp}): a backup must sit in the primary's layer at the "
                             "same place in its key-value group")
        groups.setdefault((lb, hb // per), set()).add(hp // per)
    for (l, g), src in groups.items():
        members = {hb for (lp, hp), (lb, hb) in pairs if lb == l and hb // per == g}
        if len(src) != 1 or len(members) != per:
            raise ValueError(f"key-value group {g} of layer {l}: every head of it must back up a head of one group")
        attn = model.model.layers[l].self_attn
        (gs,) = src
        for proj in (attn.k_proj, attn.v_proj):
            proj.weight[g * d:(g + 1) * d] = proj.weight[gs * d:(gs + 1) * d]
    for (l, hp), (_, hb) in pairs:
        attn = model.model.layers[l].self_attn
        attn.q_proj.weight[hb * d:(hb + 1) * d] = attn.q_proj.weight[hp * d:(hp + 1) * d]
        half = attn.o_proj.weight[:, hp * d:(hp + 1) * d] / 2
        attn.o_proj.weight[:, hp * d:(hp + 1) * d] = half
        attn.o_proj.weight[:, hb * d:(hb + 1) * d] = half


def _resume(start, phases) -> tuple:
    """The model saved in ``start``, its curve, and how many of ``phases`` it has done (they must match)."""
    from transformers import AutoModelForCausalLM

    saved = json.loads(Path(start, "training.json").read_text())
    done = len(saved["phases"])
    mine = [asdict(p) for p in phases[:done]]
    # a setting added since the folder was saved reads as its default (what that training used)
    default = json.loads(json.dumps(asdict(OrganismConfig())))
    strip = lambda d: {k: v for k, v in {**default, **d}.items() if k not in ("threads", "device")}  # noqa: E731
    if done >= len(phases) or [strip(p) for p in saved["phases"]] != [strip(json.loads(json.dumps(p))) for p in mine]:
        raise ValueError(f"{start} was not saved by this recipe after some of its phases (it has {done} of "
                         f"{len(phases)}, or other settings): train from scratch")
    model = AutoModelForCausalLM.from_pretrained(start, attn_implementation="eager")
    return model, saved["curve"], done


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


PROBE_BAR = (0.95, 0.3)  # issue 20: heading probe accuracy at step ends, selectivity against the prefix control


def heading_probe(model, n_items: int = 2000, seed: int = 2) -> dict:
    """The heading probe at step ends per layer (paper-style train-split items, the default prefix control)
    and the first layer from which every layer meets ``PROBE_BAR`` (None if none does): what the card states."""
    from ..bench import BenchConfig, make_items
    from ..probe import probe

    res = probe(model, make_items(n_items, seed=seed, cfg=BenchConfig(style="paper"), split="train"),
                target="heading", progress=False)
    acc, sel = [float(a) for a in res.accuracy], [float(x) for x in res.selectivity]
    good = [a >= PROBE_BAR[0] and s >= PROBE_BAR[1] for a, s in zip(acc, sel)]
    start = next((l for l in range(len(good)) if all(good[l:])), None)
    return {"n_items": n_items, "seed": seed, "control": res.control_by, "n_test_rows": res.n_test_rows,
            "accuracy": acc, "control_accuracy": [float(c) for c in res.control_accuracy], "selectivity": sel,
            "question_accuracy": [float(q) for q in res.question_accuracy], "bar": list(PROBE_BAR),
            "from_layer": start}


def measure(folder, n_items: int = 1000, n_pairs: int = 120, log=print) -> dict:
    """Measure a trained organism's card and write it in: completeness of C, the subset G of C that
    carries the final turn, the pair-patching ground truth, every ranking method graded against C,
    and each head's role.

    The exact experiments of ``verify`` on 1000 paper-style test items (seed 77) and the first 120
    counterfactual pairs of 4000 items (seed 78); the tests repeat them on fewer.
    """
    import time

    from ..bench import BenchConfig, make_items
    from ..bench.pairs import counterfactual_variants
    from ..models import load_model
    from ..models.organisms import circuit_heads
    from ..tokens import tokenize_pairs
    from .verify import (attention_roles, backup_flips, backup_takeover, completeness, final_turn_subset,
                         grade_methods, ground_truth)

    t0 = time.time()
    path = Path(folder)
    payload = json.loads((path / "organism.json").read_text())
    circuit = circuit_heads(payload)
    model = load_model(str(path), device="cpu")
    items = make_items(n_items, seed=77, cfg=BenchConfig(style="paper"))
    pairs = [it for it in make_items(4000, seed=78, cfg=BenchConfig(style="paper")) if counterfactual_variants(it)]
    pairs = pairs[:n_pairs]
    pt = tokenize_pairs(model.tokenizer, pairs)
    complete = completeness(model, items, circuit)
    final_turn, flips = final_turn_subset(model, pt, circuit)
    if payload.get("backup"):  # the greedy search adds heads by their single flip rates, which backups hide
        flips["backup_pairs"] = backup_flips(model, pt, payload["backup"])
        sides = sorted(tuple(h) for pair in payload["backup"] for h in pair)
        if flips["backup_pairs"]["both"] >= 0.9 and len(sides) < len(final_turn):
            flips["greedy"] = {"heads": [list(h) for h in final_turn], "together": flips["together"]}
            final_turn, flips["together"] = sides, flips["backup_pairs"]["both"]
    truth = ground_truth(model, items, circuit, pair_items=pairs)
    truth["methods"] = grade_methods(model, pairs, circuit)
    if payload.get("backup"):
        truth["backup_takeover"] = backup_takeover(model, items, payload["backup"], pt)
    attention = attention_roles(model, items, circuit)
    heading = heading_probe(model)
    truth["seconds"] = round(time.time() - t0, 1)
    payload.update(final_turn=[list(h) for h in final_turn], completeness=complete, measured=truth,
                   heading_probe=heading,
                   final_turn_flips=flips, attention_from_final_query=attention,
                   circuit={f"{l}.{h}": _role(attention[f"{l}.{h}"], flips["single"][f"{l}.{h}"])
                            for l, h in circuit})
    write_card(path, payload)
    log(json.dumps({"completeness": complete, "final_turn": final_turn, "together": flips["together"],
                    **({"backup_pairs": flips["backup_pairs"], "backup_takeover": truth["backup_takeover"]}
                       if "backup_pairs" in flips else {}),
                    **{k: truth[k] for k in ("accuracy", "pairs_both_right_top1", "patch_C_flipped",
                                             "patch_outside_C_changed", "ablate_C_accuracy")}}))
    return payload
