"""The study on a model with planted heads G: every number and figure of docs/organism.md from one call.

``run_study(model, out)`` composes the existing stages, graded against the model's card:

1. probes per layer (``probe.capture`` once, ``fit_target`` for heading, cumulative angle and
   object-at-heading, Hewitt & Liang control tasks by phrase);
2. every ranking method (``patching.rank_heads``: exact activation patching, path patching,
   attribution, attribution with integrated gradients, mean ablation, gradient x activation; all
   through the registry) graded against G: AUROC and precision at |G| (``verify.auroc``);
3. knockout curves (``patching.knockout_curve``), k = 1..2|G|, against random k-sets;
4. selective fine-tuning from the base checkpoint (``finetune``: top-k heads by exact activation
   patching on the base vs random, bottom, LoRA at the same budget, full), several seeds; VRU
   accuracy, pairs right on both sides, list recall and KL on list recall before/after;
5. closed loop: the tuned model (top-k deltas merged) re-ranked and re-probed.

Each part saves its result objects (JSON) and figures (plotly HTML) into ``out``; ``study.json``
holds the summary and ``tables.md`` the tables the docs quote.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..heads import ranks, top_heads

PROBE_TARGETS = ("heading", "cum_angle", "object")
FT_METHODS = ("heads", "random", "bottom", "lora", "full")
FT_LR = {"heads": 1e-3, "random": 1e-3, "bottom": 1e-3, "lora": 1e-3, "full": 1e-4}


@dataclass
class StudyConfig:
    n_items: int = 500  # paper-style test items (accuracy, knockout)
    n_pairs: int = 200  # counterfactual pairs (rankings, head means, pair accuracy)
    n_probe: int = 1000  # items for the probes
    n_random: int = 20  # random k-sets per k in the knockout curves
    ig_steps: int = 16  # integrated-gradient steps for the second attribution variant
    ft_steps: int = 300
    ft_batch: int = 16
    ft_train: int = 2000
    ft_seeds: tuple = (0, 1, 2)
    ft_components: str = "qkvo"
    n_list: int = 500  # list-recall items (second task)
    seed: int = 0
    base: str = "vru-organism-deficit"
    parts: tuple = ("probes", "rankings", "knockout", "finetune", "closed_loop")


QUICK = StudyConfig(n_items=60, n_pairs=16, n_probe=40, n_random=2, ig_steps=2, ft_steps=3, ft_batch=4, ft_train=40,
                    ft_seeds=(0,), n_list=30)


# ------------------------------------------------------------------ data
def study_data(model, cfg: StudyConfig) -> dict:
    """Test items (paper style, unknowns included), counterfactual pairs, probe items, list items."""
    from ..bench import PAIRABLE, BenchConfig, make_items
    from ..tokens import tokenize_pairs
    from .data import list_items

    return {"items": make_items(cfg.n_items, cfg.seed + 77, BenchConfig(style="paper")),
            "pairs": tokenize_pairs(model.tokenizer, make_items(cfg.n_pairs, cfg.seed + 5, PAIRABLE, split="validation")),
            "probe_items": make_items(cfg.n_probe, cfg.seed + 2, BenchConfig(style="paper"), split="train"),
            "list": list_items(cfg.n_list, cfg.seed + 5)}


# ------------------------------------------------------------------ measurements
@torch.inference_mode()
def list_recall(model, items, reference: torch.Tensor | None = None) -> tuple[dict, torch.Tensor]:
    """Second-task accuracy and, against ``reference`` (the base's log-probs), mean KL(base || model)
    of the answer-position distribution; returns the summary and this model's log-probs."""
    from .data import encode_plain, list_accuracy

    ids, last, _ = encode_plain(model.tokenizer, items)
    logp = torch.log_softmax(model(ids)[torch.arange(len(items)), last].float(), -1)
    out = {"list_acc": list_accuracy(logp, items, model.tokenizer)}
    if reference is not None:
        out["list_kl"] = float((reference.exp() * (reference - logp)).sum(-1).mean())
    return out, logp


def behaviour(model, data, reference=None) -> dict:
    """VRU accuracy, pairs right on both sides (logit-difference signs), list recall (and its KL)."""
    from ..evaluate import evaluate, pair_accuracy

    acc = evaluate(model, data["items"], batch_size=64, progress=False).accuracy
    lst, _ = list_recall(model, data["list"], reference)
    return {"vru_acc": float(acc), "pairs_both_right": pair_accuracy(model, data["pairs"], 64)["both_right"], **lst}


def probes(model, items) -> dict:
    """One capture, one ProbeResult per target (control task by phrase)."""
    from ..probe import capture, fit_target

    cache = capture(model, items, batch_size=64, progress=False)
    return {t: fit_target(cache, items, t, control_by="phrase") for t in PROBE_TARGETS}


def grade(scores, planted) -> dict:
    """AUROC against G and precision at |G| of a [layer, head] score map (higher = more important)."""
    from .verify import auroc

    s = np.asarray(scores, dtype=float)
    top = top_heads(s, s.size)
    k = len(planted)
    return {"auroc": auroc(s, planted), "precision_at_G": sum(t in planted for t in top[:k]) / k,
            "top": [list(t) for t in top[: 2 * k]], "ranking": [list(t) for t in top]}


def rankings(model, data, planted, ig_steps: int, batch_size: int = 32) -> dict:
    """Every ranking method's HeadScores: {name: HeadScores}."""
    from ..patching.rank import rank_heads

    pt = data["pairs"]
    run = lambda method, **kw: rank_heads(model, pt, method, n_boot=0, progress=False, batch_size=batch_size, **kw)  # noqa: E731
    out = {"activation": run("activation"), "path": run("path"), "attribution": run("attribution"),
           f"attribution_ig{ig_steps}": run("attribution", ig_steps=ig_steps), "ablation": run("ablation"),
           "gradient": run("gradient")}
    return out


def scores_of(x) -> np.ndarray:
    return np.asarray(getattr(x, "scores", x), dtype=float)


# ------------------------------------------------------------------ fine-tuning
def tune_once(model, method: str, k: int, components: str, ranking, train_items, tc, seed: int, measure):
    """One fine-tuning run: choose the trainable slices (``finetune.make_trainable``), train them, and measure
    ``measure(model)`` with them active. Returns the trainable and the run's record (heads, size, time, after)."""
    from ..finetune.run import FinetuneConfig, make_trainable
    from ..finetune.train import train

    trainable, chosen, extra = make_trainable(model, FinetuneConfig(method, k, components, head_seed=seed, train=tc),
                                              ranking)
    t0 = time.perf_counter()
    res = train(model, trainable, train_items, None, tc, progress=False)
    with trainable.active(model):
        after = measure(model)
    return trainable, {"heads": [list(h) for h in chosen], "params": trainable.num_parameters(), "lr": tc.lr,
                       "seconds": round(time.perf_counter() - t0, 1),
                       "final_loss": res.history[-1]["loss"] if res.history else None, "after": after, **extra}


def finetune_runs(cfg: StudyConfig, ranking: list, planted, log=print, deltas_dir: Path | None = None) -> dict:
    """Each method x seed from a fresh copy of the base: before/after behaviour (same data, same steps)."""
    from ..bench import BenchConfig, make_items
    from ..finetune.train import TrainConfig
    from ..models import load_model

    train_items = make_items(cfg.ft_train, cfg.seed + 11, BenchConfig(style="paper"), split="train")
    k = len(planted)
    runs = []
    before = None
    for seed in cfg.ft_seeds:
        for method in FT_METHODS:
            model = load_model(cfg.base, device="cpu")  # LoRA and full fine-tuning change the model in place
            data = study_data(model, cfg)
            if before is None:
                _, ref = list_recall(model, data["list"])
                before = behaviour(model, data, ref)
            tc = TrainConfig(steps=cfg.ft_steps, batch_size=cfg.ft_batch, lr=FT_LR[method],
                             warmup_steps=min(20, cfg.ft_steps), eval_every=0, seed=seed)
            trainable, run = tune_once(model, method, k, cfg.ft_components, ranking, train_items, tc, seed,
                                       lambda m: behaviour(m, data, ref))
            after = run["after"]
            row = {"method": method, "seed": seed, **run,
                   "planted_among": sum(tuple(h) in planted for h in run["heads"])}
            runs.append(row)
            log(f"finetune {method} seed {seed}: {after}")
            if method == "heads" and seed == cfg.ft_seeds[0] and deltas_dir is not None:
                trainable.save(deltas_dir / "deltas_top.safetensors", train_config=asdict(tc))
    return {"before": before, "runs": runs, "summary": finetune_summary(before, runs)}


def finetune_summary(before: dict, runs: list) -> dict:
    """Per method: mean and spread (min, max, std over seeds) of every after-measure."""
    out = {}
    for method in dict.fromkeys(r["method"] for r in runs):
        rows = [r for r in runs if r["method"] == method]
        out[method] = {"params": rows[0]["params"], "n_seeds": len(rows)}
        for key in before:
            vals = np.array([r["after"][key] for r in rows])
            out[method][key] = {"mean": float(vals.mean()), "std": float(vals.std()), "min": float(vals.min()),
                                "max": float(vals.max())}
        vals = np.array([r["after"]["list_kl"] for r in rows])
        out[method]["list_kl"] = {"mean": float(vals.mean()), "std": float(vals.std()), "min": float(vals.min()),
                                  "max": float(vals.max())}
    return out


def closed_loop(cfg: StudyConfig, deltas_path: Path, base_scores, base_probes, base_roles) -> dict:
    """The base with the top-k deltas merged: re-rank (exact activation patching), re-probe, attention roles."""
    from ..finetune.adapters import merge_deltas
    from ..models import load_model
    from .verify import attention_roles

    model = load_model(cfg.base, device="cpu")
    deltas = merge_deltas(model, deltas_path)
    tuned = [tuple(h) for h in deltas.heads]
    data = study_data(model, cfg)
    scores = rankings_activation(model, data)
    pr = probes(model, data["probe_items"])
    answerable = [it for it in data["items"] if it["answerable"]][:300]
    roles = attention_roles(model, answerable, tuned)
    before, after = scores_of(base_scores), scores_of(scores)
    rank_b, rank_a = ranks(before), ranks(after)
    return {"tuned_heads": [list(h) for h in tuned],
            "heads": {f"{l}.{h}": {"score_before": float(before[l, h]), "score_after": float(after[l, h]),
                                   "rank_before": int(rank_b[l, h]), "rank_after": int(rank_a[l, h]),
                                   "attention_before": base_roles.get(f"{l}.{h}"), "attention_after": roles[f"{l}.{h}"]}
                      for l, h in tuned},
            "top_after": [list(t) for t in top_heads(after, 2 * len(tuned))],
            "probes": {t: {"before": base_probes[t].accuracy.tolist(), "after": pr[t].accuracy.tolist()}
                       for t in PROBE_TARGETS}}, scores


def rankings_activation(model, data):
    from ..patching.rank import rank_heads

    return rank_heads(model, data["pairs"], "activation", n_boot=0, progress=False, batch_size=32)


# ------------------------------------------------------------------ the whole study
def run_study(model_name: str = "vru-organism", out="results/organism-study", cfg: StudyConfig = StudyConfig(),
              threads: int = 1, log=print) -> dict:
    """Every part of the study (``cfg.parts``); results and figures in ``out``, the summary returned."""
    from functools import partial

    from ..evaluate import accuracy, evaluate
    from ..models import load_model
    from ..models.organisms import circuit_heads, organism_card
    from ..patching import head_means, knockout_curve
    from .verify import attention_roles

    torch.set_num_threads(threads)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    planted = circuit_heads(organism_card(model_name))
    if cfg.ft_seeds and "finetune" in cfg.parts:
        organism_card(cfg.base)  # fail early: the fine-tuning part starts from the base checkpoint
    model = load_model(model_name, device="cpu")
    data = study_data(model, cfg)
    t0 = time.perf_counter()
    ev = evaluate(model, data["items"], batch_size=64, progress=False)
    summary = {"model": model_name, "planted_heads": [list(h) for h in planted], "config": asdict(cfg),
               "eval": {"accuracy": ev.accuracy, "chance": ev.chance, "best_rule": ev.best_rule,
                        "n_items": ev.n, "n_pairs": len(data["pairs"])}}
    if "probes" in cfg.parts:
        pr = probes(model, data["probe_items"])
        summary["probes"] = {}
        for t, res in pr.items():
            res.save(out / f"probe_{t}.json")
            res.plot(title=f"{model_name}: probe '{t}'").write_html(out / f"probe_{t}.html", include_plotlyjs="cdn")
            summary["probes"][t] = {"accuracy": res.accuracy.tolist(), "control": res.control_accuracy.tolist(),
                                    "selectivity": res.selectivity.tolist(), "chance": res.chance}
        log(f"probes done ({time.perf_counter() - t0:.0f}s)")
    if {"rankings", "knockout"} & set(cfg.parts):
        summary["rankings"] = {}
        for name, sc in rankings(model, data, planted, cfg.ig_steps).items():
            sc.save(out / f"ranking_{name}.json")
            sc.plot(title=f"{name} on {model_name}").write_html(out / f"ranking_{name}.html", include_plotlyjs="cdn")
            summary["rankings"][name] = grade(scores_of(sc), planted)
        log(f"rankings done ({time.perf_counter() - t0:.0f}s)")
    if "knockout" in cfg.parts:
        means = head_means(model, data["pairs"], 64)
        curve = knockout_curve(model, data["items"], {n: g["ranking"] for n, g in summary["rankings"].items()} | {
            "G (planted)": planted}, means, max_k=2 * len(planted), n_random=cfg.n_random, seed=cfg.seed,
            accuracy=partial(accuracy, batch_size=64))
        curve.save(out / "knockout_curves.json")
        curve.plot().write_html(out / "knockout_curves.html", include_plotlyjs="cdn")
        summary["knockout"] = {"base_accuracy": curve.base_accuracy, "ks": curve.ks, "curves": curve.curves,
                               "random": curve.random_summary()}
        log(f"knockout done ({time.perf_counter() - t0:.0f}s)")
    if "finetune" in cfg.parts and cfg.ft_seeds:
        base = load_model(cfg.base, device="cpu")
        bdata = study_data(base, cfg)
        base_scores = rankings_activation(base, bdata)
        base_scores.save(out / "base_ranking_activation.json")
        ranking = top_heads(base_scores, base_scores.scores.size)
        ft = finetune_runs(cfg, ranking, planted, log=log, deltas_dir=out)
        ft["base_ranking"] = grade(base_scores.scores, planted)
        summary["finetune"] = ft
        log(f"fine-tuning done ({time.perf_counter() - t0:.0f}s)")
        if "closed_loop" in cfg.parts:
            base_probes = probes(base, bdata["probe_items"])
            k = len(planted)
            roles = attention_roles(base, [it for it in bdata["items"] if it["answerable"]][:300], ranking[:k])
            loop, tuned_scores = closed_loop(cfg, out / "deltas_top.safetensors", base_scores, base_probes, roles)
            tuned_scores.save(out / "tuned_ranking_activation.json")
            loop["tuned_ranking_vs_G"] = grade(tuned_scores.scores, planted)
            summary["closed_loop"] = loop
            log(f"closed loop done ({time.perf_counter() - t0:.0f}s)")
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    (out / "study.json").write_text(json.dumps(summary, indent=1, default=str))
    (out / "tables.md").write_text(tables(summary))
    return summary


# ------------------------------------------------------------------ tables for the docs
def tables(s: dict) -> str:
    """Markdown tables of a study summary (what docs/organism.md quotes)."""
    pct = lambda x: f"{100 * x:.1f}%"  # noqa: E731
    lines = [f"Model {s['model']}, G = {s['planted_heads']}; accuracy {pct(s['eval']['accuracy'])} on "
             f"{s['eval']['n_items']} items (chance {pct(s['eval']['chance'])}, best rotation-blind rule "
             f"{s['eval']['best_rule']}); {s['eval']['n_pairs']} counterfactual pairs.", ""]
    if "probes" in s:
        lines += ["| target | layer | accuracy | control | selectivity |", "|---|---|---|---|---|"]
        for t, p in s["probes"].items():
            for l, (a, c, sel) in enumerate(zip(p["accuracy"], p["control"], p["selectivity"])):
                lines.append(f"| {t} | {l} | {pct(a)} | {pct(c)} | {100 * sel:+.1f} |")
        lines.append("")
    if "rankings" in s:
        lines += ["| method | AUROC vs G | precision at abs(G) | top abs(G) |", "|---|---|---|---|"]
        k = len(s["planted_heads"])
        for name, g in s["rankings"].items():
            lines.append(f"| {name} | {g['auroc']:.2f} | {g['precision_at_G']:.2f} | "
                         f"{' '.join(f'({l},{h})' for l, h in g['top'][:k])} |")
        lines.append("")
    if "knockout" in s:
        ko = s["knockout"]
        names = list(ko["curves"])
        lines += ["| k | " + " | ".join(names) + " | random k: mean [5-95%] |", "|---" * (len(names) + 2) + "|"]
        for i, k in enumerate(ko["ks"]):
            r = ko["random"][str(k)]
            lines.append(f"| {k} | " + " | ".join(pct(ko["curves"][n][i]) for n in names)
                         + f" | {pct(r['mean'])} [{pct(r['low'])}, {pct(r['high'])}] |")
        lines.append(f"\n(no heads ablated: {pct(ko['base_accuracy'])})\n")
    if "finetune" in s:
        ft = s["finetune"]
        b = ft["before"]
        lines += [f"Base ranking (exact activation patching on the base): AUROC vs G {ft['base_ranking']['auroc']:.2f}, "
                  f"top abs(G) {ft['base_ranking']['top'][:len(s['planted_heads'])]}", "",
                  "| method | params | VRU acc | pairs both right | list acc | list KL |", "|---|---|---|---|---|---|",
                  f"| before (base) | - | {pct(b['vru_acc'])} | {pct(b['pairs_both_right'])} | {pct(b['list_acc'])} | 0 |"]
        for m, row in ft["summary"].items():
            cell = lambda key, f=pct: f"{f(row[key]['mean'])} ± {f(row[key]['std'])} ({f(row[key]['min'])}-{f(row[key]['max'])})"  # noqa: E731
            lines.append(f"| {m} | {row['params']:,} | {cell('vru_acc')} | {cell('pairs_both_right')} | "
                         f"{cell('list_acc')} | {cell('list_kl', lambda x: f'{x:.3f}')} |")
        lines.append(f"\n(mean ± std over {row['n_seeds']} seeds, (min-max))\n")
    if "closed_loop" in s:
        cl = s["closed_loop"]
        lines += ["| tuned head | score before -> after | rank before -> after | attention (final turn / earlier turns / objects / other) before -> after |",
                  "|---|---|---|---|"]
        fmt = lambda a: "/".join(f"{a[k]:.2f}" for k in ("final_turn", "earlier_turns", "objects", "other")) if a else "-"  # noqa: E731
        for h, v in cl["heads"].items():
            lines.append(f"| ({h.replace('.', ',')}) | {v['score_before']:.3f} -> {v['score_after']:.3f} | "
                         f"{v['rank_before']} -> {v['rank_after']} | {fmt(v['attention_before'])} -> {fmt(v['attention_after'])} |")
        lines += ["", "| probe | accuracy per layer before | after |", "|---|---|---|"]
        for t, v in cl["probes"].items():
            lines.append(f"| {t} | {' '.join(pct(x) for x in v['before'])} | {' '.join(pct(x) for x in v['after'])} |")
    return "\n".join(lines) + "\n"
