"""On a deficit organism (``deficit.py``): what the study measures, and whether selective fine-tuning repairs it.

``measure_deficit``: the heading probe (prefix control) and the logit lens on the same items ("encoded
but not bound": the heading decodes while the answer does not win at the last layers), and every
ranking method's AUROC against the deficient heads D with a bootstrap CI over pairs.

``repair``: the fine-tuning experiment, through ``vru_lens.finetune`` (``FinetuneConfig``,
``make_trainable``, ``train``): the top-k heads of the deficit model's own exact activation-patching
ranking (k = |D| unless set; W_Q/W_K/W_V/W_O slices) against random-k (drawn outside the top k), bottom-k and the
top-k heads ranked the same way for the second task (list recall: LoFiT's control), LoRA at the same
parameter budget and full fine-tuning; same training items, steps and batch for all, several seeds;
VRU accuracy, pairs right on both sides, list-recall accuracy and KL(deficit || tuned) on list recall,
each with a 95% t-interval over seeds.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..results import t_interval
from .deficit import deficient_heads
from .verify import auroc_ci

RANKERS = ("activation", "path", "attribution", "ablation", "gradient")
ARMS = ("top", "random", "bottom", "other_task", "lora", "full")
ARM_METHOD = {"top": "heads", "random": "random", "bottom": "bottom", "other_task": "heads", "lora": "lora",
              "full": "full"}


@dataclass
class RepairConfig:
    steps: int = 200  # 40 steps left the new deficit's top-k at 67% (random 63%); 200 repair it (docs/organism.md)
    batch: int = 16
    n_train: int = 3200  # each training item seen once
    seeds: tuple = (0, 1, 2, 3, 4)
    components: str = "qkvo"
    lr: dict = field(default_factory=lambda: {"top": 3e-3, "random": 3e-3, "bottom": 3e-3, "other_task": 3e-3,
                                              "lora": 3e-3, "full": 3e-4})
    arms: tuple = ARMS
    n_items: int = 300  # VRU test items (accuracy)
    n_pairs: int = 100  # counterfactual pairs (rankings, pairs right on both sides)
    n_list: int = 300  # list-recall items (second task: accuracy, KL)
    n_probe: int = 400
    n_boot: int = 1000
    seed: int = 0
    k: int | None = None  # heads per head-choosing arm; None: |D|


QUICK = RepairConfig(steps=200, batch=16, n_train=3200, seeds=(0,), arms=("top", "random"), n_items=200, n_pairs=48,
                     n_list=100, n_probe=60, n_boot=100)


def _study_cfg(cfg: RepairConfig):
    from .graded import StudyData as StudyConfig

    return StudyConfig(n_items=cfg.n_items, n_pairs=cfg.n_pairs, n_probe=cfg.n_probe, n_list=cfg.n_list,
                       seed=cfg.seed)


# ------------------------------------------------------------------ the second task's pairs
def list_pairs(tokenizer, items):
    """Counterfactual pairs for list recall: the same list asked for item k (clean) and item k' != k (corrupt);
    one token differs, so the answers differ and the lengths match."""
    from ..tokens import PairTokens, pad_id, pad_right
    from .data import LIST_LEN

    clean, corrupt, ca, xa = [], [], [], []
    vocab = tokenizer.get_vocab()
    for i, it in enumerate(items):
        words = it["candidates"]
        k = words.index(it["answer"]) + 1
        k2 = k % LIST_LEN + 1  # the next index, cyclically: always another word
        head = it["prompt"][: it["prompt"].rindex("\nItem ")]
        clean.append(tokenizer(it["prompt"])["input_ids"])
        corrupt.append(tokenizer(f"{head}\nItem {k2}:")["input_ids"])
        ca.append(vocab[it["answer"]])
        xa.append(vocab[words[k2 - 1]])
    pid = pad_id(tokenizer)
    c, lengths = pad_right(clean, pid)
    x, lengths2 = pad_right(corrupt, pid)
    assert torch.equal(lengths, lengths2), "list-recall pairs of unequal length"
    return PairTokens(c, x, lengths, torch.tensor(ca), torch.tensor(xa), None)


# ------------------------------------------------------------------ grading rankings against D
def rank_all(model, pt, methods=RANKERS) -> dict:
    from ..patching.rank import rank_heads

    return {m: rank_heads(model, pt, m, n_boot=0, progress=False, batch_size=32) for m in methods}


# ------------------------------------------------------------------ encoded but not bound
def measure_deficit(name: str, cfg: RepairConfig = RepairConfig(), log=print) -> dict:
    """Heading probe + logit lens on the same items, and every ranking's AUROC (with CI) against D."""
    from ..bench import BenchConfig, make_items
    from ..logit_lens import lens_from_resid
    from ..models import load_model
    from ..models.organisms import organism_card
    from ..probe import capture, fit_target
    from .graded import behaviour, list_recall, study_data

    card = organism_card(name)
    D = deficient_heads(card)
    model = load_model(name, device="cpu")
    data = study_data(model, _study_cfg(cfg))
    _, ref = list_recall(model, data["list"])
    out = {"model": name, "deficient_heads": [list(h) for h in D], "behaviour": behaviour(model, data, ref)}
    items = [it for it in make_items(2 * cfg.n_probe, cfg.seed + 2, BenchConfig(style="paper"), split="train")
             if it["answerable"]][: cfg.n_probe]
    cache = capture(model, items, batch_size=64, final=True, progress=False)
    pr = fit_target(cache, items, "heading")
    lens = lens_from_resid(model, items, cache.final, cache.layers).summary()
    out["probe_heading"] = {"control_by": pr.control_by, "accuracy": pr.accuracy.tolist(),
                            "question_accuracy": pr.question_accuracy.tolist(),
                            "control": pr.control_accuracy.tolist(), "selectivity": pr.selectivity.tolist(),
                            "chance": pr.chance}
    out["logit_lens"] = {k: lens[k] for k in ("gold_top", "margin", "chance_top", "final_gold_top", "final_margin")}
    log(f"probe heading {out['probe_heading']['question_accuracy']} at the question; logit lens gold top "
        f"{lens['gold_top']}")
    scores = rank_all(model, data["pairs"])
    out["rankings"] = {m: auroc_ci(s, D, cfg.n_boot, seed=cfg.seed) for m, s in scores.items()}
    log("AUROC vs D: " + ", ".join(f"{m} {r['auroc']:.2f} [{r['low']:.2f}, {r['high']:.2f}]"
                                   for m, r in out["rankings"].items()))
    return out


# ------------------------------------------------------------------ the fine-tuning experiment
def _ranking(scores) -> list:
    from ..heads import top_heads

    s = scores.scores
    return top_heads(s, s.size)


def repair(name: str, cfg: RepairConfig = RepairConfig(), log=print, runs_file: str | Path | None = None) -> dict:
    """Every arm x seed from a fresh copy of the deficit organism ``name``; before/after behaviour.

    ``runs_file``: each finished run is appended there (JSON lines, keyed by model and settings), and a
    re-run with the same settings takes the runs already there instead of training them again."""
    from ..bench import BenchConfig, make_items
    from ..finetune.train import TrainConfig
    from ..models import load_model
    from ..models.organisms import organism_card
    from .graded import behaviour, list_recall, study_data, tune_once

    D = deficient_heads(organism_card(name))
    k = cfg.k or len(D)
    model = load_model(name, device="cpu")
    data = study_data(model, _study_cfg(cfg))
    vru_scores = rank_all(model, data["pairs"], ("activation",))["activation"]
    list_scores = rank_all(model, list_pairs(model.tokenizer, data["list"]), ("activation",))["activation"]
    own, other = _ranking(vru_scores), _ranking(list_scores)
    _, ref = list_recall(model, data["list"])
    before = behaviour(model, data, ref)
    train_items = make_items(cfg.n_train, cfg.seed + 11, BenchConfig(style="paper"), split="train")
    log(f"deficit {name}: D = {D}; before {before}; own top-{k} {own[:k]}; list-task top-{k} {other[:k]}")
    runs = []
    deficit = model
    key = json.dumps({"model": name, **asdict(cfg), "seeds": None, "arms": None}, sort_keys=True, default=str)
    done = {}
    if runs_file is not None and Path(runs_file).exists():
        for line in Path(runs_file).read_text().splitlines():
            row = json.loads(line)
            if row.pop("key") == key:
                done[(row["arm"], row["seed"])] = row
    for seed in cfg.seeds:
        for arm in cfg.arms:
            if (arm, seed) in done:
                runs.append(done[(arm, seed)])
                continue
            # head deltas leave the weights untouched (hooks); LoRA and full fine-tuning change the model in place
            model = load_model(name, device="cpu") if arm in ("lora", "full") else deficit
            tc = TrainConfig(steps=cfg.steps, batch_size=cfg.batch, lr=cfg.lr[arm], warmup_steps=min(20, cfg.steps),
                             eval_every=0, seed=seed)
            _, run = tune_once(model, ARM_METHOD[arm], k, cfg.components, other if arm == "other_task" else own,
                               train_items, tc, seed, lambda m: behaviour(m, data, ref))
            after = run["after"]
            row = {"arm": arm, "seed": seed, **run, "D_among": sum(tuple(h) in D for h in run["heads"])}
            runs.append(row)
            if runs_file is not None:
                with open(runs_file, "a") as f:
                    f.write(json.dumps({"key": key, **row}, default=str) + "\n")
            log(f"{arm} seed {seed} ({row['params']:,} params, {row['seconds']}s): " +
                ", ".join(f"{m} {v:.3f}" for m, v in after.items()))
    return {"model": name, "deficient_heads": [list(h) for h in D], "k": k, "config": asdict(cfg),
            "before": before, "own_ranking_top": [list(h) for h in own[:k]],
            "own_ranking_auroc_vs_D": auroc_ci(vru_scores, D, cfg.n_boot, seed=cfg.seed),
            "list_ranking_top": [list(h) for h in other[:k]], "runs": runs, "summary": summarise(runs),
            "bar": bar(summarise(runs))}


def summarise(runs: list) -> dict:
    out = {}
    for arm in dict.fromkeys(r["arm"] for r in runs):
        rows = [r for r in runs if r["arm"] == arm]
        out[arm] = {"params": rows[0]["params"], "D_among": [r["D_among"] for r in rows],
                    **{key: t_interval([r["after"][key] for r in rows]) for key in rows[0]["after"]
                       if all(key in r["after"] for r in rows)}}  # runs kept from before a metric existed lack it
    return out


def bar(summary: dict) -> dict:
    """The issue's bar: top-k >= 90% VRU, list accuracy >= 99% and KL <= 0.01, and >= 10 points above every
    other head choice (random, bottom, other-task) with non-overlapping 95% CIs."""
    if "top" not in summary:
        return {"met": False, "why": "no top-k arm"}
    top = summary["top"]
    checks = {"top_vru_ge_90": top["vru_acc"]["mean"] >= 0.90, "top_list_acc_ge_99": top["list_acc"]["mean"] >= 0.99,
              "top_list_kl_le_0.01": top["list_kl"]["mean"] <= 0.01}
    for arm in ("random", "bottom", "other_task"):
        if arm in summary:
            o = summary[arm]["vru_acc"]
            checks[f"beats_{arm}_by_10"] = top["vru_acc"]["mean"] - o["mean"] >= 0.10
            checks[f"ci_above_{arm}"] = top["vru_acc"]["ci"][0] > o["ci"][1]
    out = {"met": all(checks.values()), **checks}
    if "rotation_acc" in top:  # reported beside the bar, not part of it: the items that need the rotation
        out["on_rotation_items"] = {f"beats_{arm}_by_10": top["rotation_acc"]["mean"] - summary[arm]["rotation_acc"]["mean"]
                                    >= 0.10 for arm in ("random", "bottom", "other_task") if arm in summary}
    return out


def table(result: dict) -> str:
    """The fine-tuning table of docs/organism.md."""
    pct = lambda x: f"{100 * x:.1f}"  # noqa: E731
    cell = lambda s, f=pct: f"{f(s['mean'])} [{f(s['ci'][0])}, {f(s['ci'][1])}]"  # noqa: E731
    b = result["before"]
    n = len(result["config"]["seeds"])
    rot = "rotation_acc" in b
    lines = ["| arm | params | heads in D | VRU acc % |" + (" rotation items % |" if rot else "")
             + " pairs both right % | list acc % | list KL |", "|---|---|---|---|" + ("---|" if rot else "") + "---|---|---|",
             f"| before (deficit) | - | - | {pct(b['vru_acc'])} |" + (f" {pct(b['rotation_acc'])} |" if rot else "")
             + f" {pct(b['pairs_both_right'])} | {pct(b['list_acc'])} | 0 |"]
    for arm, s in result["summary"].items():
        lines.append(f"| {arm} | {s['params']:,} | {np.mean(s['D_among']):.1f} | {cell(s['vru_acc'])} |"
                     + (f" {cell(s['rotation_acc'])} |" if rot else "")
                     + f" {cell(s['pairs_both_right'])} | {cell(s['list_acc'])} | {cell(s['list_kl'], lambda x: f'{x:.4f}')} |")
    lines.append(f"\n(mean [95% t-interval] over {n} seeds; {result['config']['steps']} steps, batch "
                 f"{result['config']['batch']}, same {result['config']['n_train']} training items for every arm)")
    return "\n".join(lines) + "\n"


def run(name: str, out: str | Path, cfg: RepairConfig = RepairConfig(), parts=("measure", "repair"),
        threads: int = 1, log=print) -> dict:
    """Both parts; ``out``/deficit_study.json and ``out``/tables.md."""
    torch.set_num_threads(threads)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    result = {}
    if "repair" in parts:
        result["repair"] = repair(name, cfg, log, runs_file=out / "repair_runs.jsonl")
    if "measure" in parts:
        result["measure"] = measure_deficit(name, cfg, log)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    result["config"] = asdict(cfg)
    (out / "deficit_study.json").write_text(json.dumps(result, indent=1, default=str))
    (out / "tables.md").write_text(tables(result))
    return result


def card_entry(result: dict, command: str) -> dict:
    """What the deficit card keeps of a full run (``full_run``): the numbers a quick run is compared with
    (``report``), each with its interval, and the settings that produced them."""
    import datetime

    entry = {"command": command, "date": datetime.date.today().isoformat()}
    if "measure" in result:
        m = result["measure"]
        entry["behaviour"] = m["behaviour"]
        entry["rankings"] = {k: {x: r[x] for x in ("auroc", "low", "high")} for k, r in m["rankings"].items()}
        entry["probe_heading"] = {"accuracy": m["probe_heading"]["accuracy"], "n_items": result["config"]["n_probe"]}
    if "repair" in result:
        r = result["repair"]
        cfg = r["config"]
        entry["repair"] = {"arms": {arm: {k: v for k, v in s.items() if isinstance(v, dict) and "ci" in v}
                                    for arm, s in r["summary"].items()},
                           "settings": {"steps": cfg["steps"], "batch": cfg["batch"], "n_train": cfg["n_train"],
                                        "lr": cfg["lr"], "seeds": list(cfg["seeds"]), "n_items": cfg["n_items"],
                                        "templates": "every template in training; the last step is measured"}}
    return entry


def tables(result: dict) -> str:
    lines = []
    if "measure" in result:
        m = result["measure"]
        pct = lambda x: f"{100 * x:.1f}"  # noqa: E731
        lines += [f"Deficit organism {m['model']}, D = {m['deficient_heads']}: VRU accuracy "
                  f"{pct(m['behaviour']['vru_acc'])}%, pairs right on both sides {pct(m['behaviour']['pairs_both_right'])}%, "
                  f"list recall {pct(m['behaviour']['list_acc'])}%.", "",
                  "| layer | heading probe (all rows) % | at the question % | control (" + m["probe_heading"]["control_by"]
                  + ") % | selectivity | logit lens: gold answer top % | margin |", "|---|---|---|---|---|---|---|"]
        p, lens = m["probe_heading"], m["logit_lens"]
        for l in range(len(p["accuracy"])):
            lines.append(f"| {l} | {pct(p['accuracy'][l])} | {pct(p['question_accuracy'][l])} | {pct(p['control'][l])} | "
                         f"{p['selectivity'][l]:+.2f} | {pct(lens['gold_top'][l])} | {lens['margin'][l]:+.2f} |")
        lines += ["", "| ranking method | AUROC vs D [95% bootstrap CI over pairs] |", "|---|---|"]
        for meth, r in m["rankings"].items():
            lines.append(f"| {meth} | {r['auroc']:.2f} [{r['low']:.2f}, {r['high']:.2f}] |")
        lines.append("")
    if "repair" in result:
        r = result["repair"]
        lines += [f"Own exact activation-patching ranking: top-{r['k']} {r['own_ranking_top']}, AUROC vs D "
                  f"{r['own_ranking_auroc_vs_D']['auroc']:.2f}; list-recall ranking top-{r['k']} {r['list_ranking_top']}.",
                  "", table(r), f"Bar: {r['bar']}", ""]
    return "\n".join(lines)


