"""The study's stages graded against a known circuit: what only a model with a card (an organism) can run.

``vru_lens.study.run_study`` runs them as the optional stages ``GRADED_STAGES`` of the one pipeline
(``vru-lens organism study`` and ``vru-lens run --stages ...`` both call it); this module holds the steps:

1. probes per layer (``probe.capture`` once, ``fit_target`` for heading, cumulative angle and
   object-at-heading, Hewitt & Liang control tasks by phrase): ``probes``;
2. every ranking method (``rankings``: exact activation patching, path patching, attribution,
   attribution with integrated gradients, mean ablation, gradient x activation; all through the
   registry) graded against the circuit C: AUROC and precision at |C| (``grade``);
3. knockout curves (``patching.knockout_curve``), k = 1..2|C|, against random k-sets (in ``run_study``);
4. fine-tuning arms from the base checkpoint (``finetune_runs``: top-k heads by exact activation
   patching on the base vs random, bottom, LoRA at the same budget, full; several seeds, each run one
   ``tune_once``); VRU accuracy, pairs right on both sides, list recall and KL on list recall before/after
   (``behaviour``);
5. closed loop (``closed_loop``): the tuned model (top-k deltas merged) re-ranked and re-probed.

``tables`` renders the summary as the Markdown tables docs/organism.md quotes.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..heads import ranks, top_heads

PROBE_TARGETS = ("heading", "cum_angle", "object")


@dataclass
class StudyData:
    """The graded stages' data: paper-style test items (accuracy, knockout), counterfactual pairs (rankings,
    head means, pair accuracy), probe items and list-recall items (the second task)."""

    n_items: int = 500
    n_pairs: int = 200
    n_probe: int = 1000
    n_list: int = 500
    seed: int = 0


# ------------------------------------------------------------------ data
def study_data(model, cfg: StudyData) -> dict:
    """Test items (paper style, unknowns included), counterfactual pairs, probe items, list items."""
    from ..bench import PAIRABLE, BenchConfig, make_items
    from ..tokens import tokenize_pairs
    from .data import list_items

    return {"items": make_items(cfg.n_items, cfg.seed + 77, BenchConfig(style="paper")),
            "pairs": tokenize_pairs(model.tokenizer, make_items(cfg.n_pairs, cfg.seed + 5, PAIRABLE, split="validation")),
            "probe_items": make_items(cfg.n_probe, cfg.seed + 2, BenchConfig(style="paper"), split="train"),
            # the items of ListRecallSuite(n_list, seed), the study's forgetting check: one set for both (the
            # per-item KL is heavy-tailed: the demo's tuned heads read 0.155 on seed 0's 300 items, 0.072 on seed 5's)
            "list": list_items(cfg.n_list, cfg.seed)}


# ------------------------------------------------------------------ measurements
def list_recall(model, items, reference: torch.Tensor | None = None) -> tuple[dict, torch.Tensor]:
    """Second-task accuracy and, against ``reference`` (the base's log-probs), mean KL(base || model)
    of the answer-position distribution; returns the summary and this model's log-probs (read as
    ``general_eval.ListRecallSuite`` reads them: one forgetting check)."""
    from ..general_eval import list_logprobs, mean_kl
    from .data import list_accuracy

    logp = list_logprobs(model, items)
    out = {"list_acc": list_accuracy(logp, items, model.tokenizer)}
    if reference is not None:
        out["list_kl"] = mean_kl(reference, logp)
    return out, logp


def behaviour(model, data, reference=None) -> dict:
    """VRU accuracy, pairs right on both sides (logit-difference signs), list recall (and its KL)."""
    from ..evaluate import evaluate, pair_accuracy

    res = evaluate(model, data["items"], batch_size=64, progress=False)
    lst, _ = list_recall(model, data["list"], reference)
    return {"vru_acc": float(res.accuracy), "rotation_acc": rotation_accuracy(res.per_item),
            "pairs_both_right": pair_accuracy(model, data["pairs"], 64)["both_right"], **lst}


def rotation_accuracy(per_item) -> float:
    """Accuracy on the items whose answer needs the rotation: answerable, net heading not the start's.

    About 30% of paper-style items turn back to the start (the answer is the first object) and about 28%
    are unknowns; a model that cannot rotate still gets many of those right, so the overall accuracy
    dilutes a difference in rotation (the deficit organism: 98% on net-zero items, 10-16% on the others)."""
    rows = [r for r in per_item if r["answerable"] and r["final_angle"] % 360 != 0]
    return sum(r["correct"] for r in rows) / len(rows) if rows else float("nan")


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

    trainable, chosen, extra = make_trainable(model, FinetuneConfig(method, k, components=components, head_seed=seed, train=tc),
                                              ranking)
    t0 = time.perf_counter()
    res = train(model, trainable, train_items, None, tc, progress=False)
    with trainable.active(model):
        after = measure(model)
    return trainable, {"heads": [list(h) for h in chosen], "params": trainable.num_parameters(), "lr": tc.lr,
                       "seconds": round(time.perf_counter() - t0, 1),
                       "final_loss": res.history[-1]["loss"] if res.history else None, "after": after, **extra}


def finetune_runs(base: str, data_cfg: StudyData, ranking: list, planted, *, methods: tuple, seeds: tuple,
                  steps: int, batch_size: int, n_train: int, components: str, lr: dict, log=print,
                  deltas_dir: Path | None = None, device="cpu") -> dict:
    """Each method x seed from a fresh copy of the checkpoint ``base`` (``lr``: {method: learning rate}):
    before/after behaviour (same data, same steps). The first seed's top-k deltas are kept in ``deltas_dir``."""
    from ..bench import BenchConfig, make_items
    from ..finetune.train import TrainConfig
    from ..models import load_model

    train_items = make_items(n_train, data_cfg.seed + 11, BenchConfig(style="paper"), split="train")
    k = len(planted)
    runs = []
    before = None
    for seed in seeds:
        for method in methods:
            model = load_model(base, device=device)  # LoRA and full fine-tuning change the model in place
            data = study_data(model, data_cfg)
            if before is None:
                _, ref = list_recall(model, data["list"])
                before = behaviour(model, data, ref)
            tc = TrainConfig(steps=steps, batch_size=batch_size, lr=lr[method], warmup_steps=min(20, steps),
                             eval_every=0, seed=seed)
            trainable, run = tune_once(model, method, k, components, ranking, train_items, tc, seed,
                                       lambda m: behaviour(m, data, ref))
            after = run["after"]
            row = {"method": method, "seed": seed, **run,
                   "planted_among": sum(tuple(h) in planted for h in run["heads"])}
            runs.append(row)
            log(f"finetune {method} seed {seed}: {after}")
            if method == "heads" and seed == seeds[0] and deltas_dir is not None:
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


def closed_loop(base: str, data_cfg: StudyData, deltas_path: Path, base_scores, base_probes, base_roles,
                device="cpu") -> tuple[dict, object]:
    """The checkpoint ``base`` with the top-k deltas merged: re-rank (exact activation patching), re-probe, attention
    roles. Returns the summary and the tuned model's HeadScores."""
    from ..finetune.adapters import merge_deltas
    from ..models import load_model
    from .verify import attention_roles

    model = load_model(base, device=device)
    deltas = merge_deltas(model, deltas_path)
    tuned = [tuple(h) for h in deltas.heads]
    data = study_data(model, data_cfg)
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
        lines += ["| k | " + " | ".join(f"{n} (random k outside it: mean [5-95%])" for n in names) + " |",
                  "|---" * (len(names) + 1) + "|"]
        for i, k in enumerate(ko["ks"]):
            cell = lambda n: (f"{pct(ko['curves'][n][i])} ({pct(ko['random'][n][str(k)]['mean'])} "  # noqa: E731
                              f"[{pct(ko['random'][n][str(k)]['low'])}, {pct(ko['random'][n][str(k)]['high'])}])")
            lines.append(f"| {k} | " + " | ".join(cell(n) for n in names) + " |")
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
