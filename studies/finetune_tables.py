"""The fine-tuning tables of docs/finetune.md, from a model's results folder (reads the saved runs only).

    python studies/finetune_tables.py results/real-models/gemma-3-270m [--k 16] [--pairs 64]

Prints four markdown tables: each arm's mean over its fine-tuning seeds with a 95% Student-t interval
(``finetune.run.seed_summary``), top-k minus each other arm with a Welch interval, the general suite task by
task (each arm's mean over seeds), and every run with its Wilson interval over the test items, in the order the
runs were saved.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import time
from pathlib import Path

from vru_lens.finetune.run import SEED_METRICS, FinetuneResult, arms_of, seed_summary
from vru_lens.results import welch_interval, wilson_interval

LABEL = {"heads": "top-{k} heads (path ranking), qkvo", "random": "random-{k} heads outside the top {k}, qkvo",
         "bottom": "bottom-{k} heads of the path ranking, qkvo", "lora": "LoRA at the same budget",
         "full": "full fine-tuning"}
COLUMNS = [("vru_test", "VRU test", "{:.3f}"), ("pairs_both_right", "pairs right on both sides", "{:.3f}"),
           ("transfer_story", "story phrasing", "{:.3f}"), ("transfer_six_actions", "6 actions", "{:.3f}"),
           ("general_average", "general average", "{:.3f}"), ("wiki_ppl", "Wikipedia ppl", "{:.2f}"),
           ("wiki_kl", "KL to base (Wikipedia)", "{:.4f}")]


def runs_of(folder: Path, k: int) -> dict[Path, FinetuneResult]:
    """The fine-tuning stages at top-k ``k`` the folder's manifest names (full fine-tuning, which has no k, with
    every k), by file, in the order the files were saved. A stage named ``finetune_<method>_k<k>...`` ran at that
    k; one without ``_k`` at the run's default k, that of its unsuffixed heads arm."""
    files = json.loads((folder / "study.json").read_text())["files"]
    stages = {s: folder / n for s, n in files.items() if s.startswith("finetune_") and (folder / n).exists()}
    runs = {s: FinetuneResult.load(path) for s, path in stages.items()}
    default_k = next((len(r.heads) for s, r in runs.items() if s.startswith("finetune_heads") and "_k" not in s), None)

    def k_of(stage: str) -> int | None:
        found = re.search(r"_k(\d+)", stage)
        return int(found.group(1)) if found else default_k

    keep = sorted((s for s, r in runs.items() if r.method == "full" or k_of(s) == k), key=lambda s: stages[s].stat().st_mtime)
    return {stages[s]: runs[s] for s in keep}


def number(value, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)  # not measured: a dash, never a made-up number


def interval(t: dict, fmt: str) -> str:
    return fmt.format(t["mean"]) + (f" [{fmt.format(t['ci'][0])}, {fmt.format(t['ci'][1])}]" if t["n"] > 1 else "")


def row(cells) -> str:
    return "| " + " | ".join(map(str, cells)) + " |"


def arms_table(runs: dict, k: int) -> list[str]:
    groups = arms_of(runs.values())
    arms = seed_summary(runs.values())
    first = next(iter(runs.values()))
    before = {"vru_after": first.vru_before, "general_after": first.general_before}
    out = [row(["arm", "n (seeds)", "trainable params", "lr", *[c[1] for c in COLUMNS]]), row(["---"] * (4 + len(COLUMNS))),
           row(["base, before tuning", "-", "-", "-", *[number(SEED_METRICS[m](before), f) for m, _, f in COLUMNS]])]
    for name, a in arms.items():
        rs = groups[name]
        params = "/".join(f"{p:,}" for p in sorted({r.trainable_params for r in rs}))
        out.append(row([LABEL.get(name, name).format(k=k), f"{a['n']} ({', '.join(map(str, sorted(a['seeds'])))})", params,
                        f"{rs[0].train['config']['lr']:g}", *[interval(a[m], f) if m in a else "-" for m, _, f in COLUMNS]]))
    return out


def differences_table(runs: dict, k: int) -> list[str]:
    """Top-k minus each other arm, over seeds (Welch): what the study's claim needs to be positive."""
    by = {name: [r.summary() for r in rs] for name, rs in arms_of(runs.values()).items()}
    if "heads" not in by:
        return []
    out = [row(["top-k minus", "VRU test", "pairs right on both sides", "general average"]), row(["---"] * 4)]
    for name, sums in by.items():
        if name == "heads":
            continue
        cells = []
        for m in ("vru_test", "pairs_both_right", "general_average"):
            d = welch_interval([SEED_METRICS[m](s) for s in by["heads"]], [SEED_METRICS[m](s) for s in sums])
            cells.append(f"{d['diff']:+.3f}" + ("" if math.isnan(d["ci"][0]) else f" [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}]"))
        out.append(row([LABEL.get(name, name).format(k=k), *cells]))
    return out


def general_table(runs: dict, k: int) -> list[str]:
    """The general suite task by task: before tuning, and each arm's mean after over its seeds."""
    import numpy as np

    first = next(iter(runs.values()))
    keys = [key for key in first.general_before if key != "average"] + ["average"]
    fmt = lambda key, v: number(v, "{:.2f}" if key == "wiki/ppl" else "{:.4f}" if key == "wiki/kl" else  # noqa: E731
                                "{:.1f}" if "logprob" in key else "{:.3f}")
    out = [row(["arm", "n", *keys]), row(["---"] * (2 + len(keys))),
           row(["base, before tuning", "-", *[fmt(key, first.general_before.get(key)) for key in keys]])]
    for name, rs in arms_of(runs.values()).items():
        after = [r.general_after for r in rs]
        out.append(row([LABEL.get(name, name).format(k=k), len(after),
                        *[fmt(key, float(np.mean([a[key] for a in after])) if all(key in a for a in after) else None)
                          for key in keys]]))
    return out


def runs_table(runs: dict, k: int, n_pairs: int) -> list[str]:
    out = [row(["arm", "seed", "VRU test [95% Wilson]", f"pairs both right (of {n_pairs})", "same pick both sides",
                "'unknown' first", "story", "6 actions", "general average", "MMLU gold log-prob", "Wikipedia ppl", "KL",
                "best validation (step)", "train s", "saved (UTC)"]), row(["---"] * 15)]
    for path, r in runs.items():
        va, ga, t = r.vru_after, r.general_after, r.train
        lo, hi = wilson_interval(va["test"], va["n"])
        p = va.get("pairs") or {}
        saved = time.strftime("%d %b %H:%M", time.gmtime(path.stat().st_mtime))
        both = p.get("both_right")
        out.append(row([LABEL.get(r.method, r.method).format(k=k), t["config"]["seed"], f"{va['test']:.2f} [{lo:.2f}, {hi:.2f}]",
                        "-" if both is None else round(both * n_pairs), number(p.get("same_pick"), "{:.2f}"),
                        number(p.get("unknown_first"), "{:.2f}"), number(va.get("transfer_story"), "{:.3f}"),
                        number(va.get("transfer_six_actions"), "{:.3f}"), number(ga.get("average"), "{:.3f}"),
                        number(ga.get("mmlu/gold_logprob"), "{:.1f}"), number(ga.get("wiki/ppl"), "{:.2f}"),
                        number(ga.get("wiki/kl"), "{:.4f}"),
                        f"{number(t.get('best_accuracy'), '{:.4f}')} ({t.get('best_step', '-')})",
                        number(t.get("seconds"), "{:.0f}"), saved]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path, help="a model's folder under a study's --out, e.g. results/real-models/gemma-3-270m")
    ap.add_argument("--k", type=int, default=16, help="the top-k of the runs to tabulate (with full fine-tuning's)")
    ap.add_argument("--pairs", type=int, default=64, help="the number of counterfactual pairs measured")
    a = ap.parse_args()
    if not (a.folder / "study.json").exists():
        raise SystemExit(f"no study.json in {a.folder}: pass a model's folder under the study's --out")
    runs = runs_of(a.folder, a.k)
    if not runs:
        raise SystemExit(f"no fine-tuning runs at k = {a.k} in {a.folder}: run the study's finetune stage first")
    first = next(iter(runs.values()))
    print(f"Before tuning: best rotation-blind rule {first.vru_before.get('blind_baseline')}, "
          f"same pick on both sides {(first.vru_before.get('pairs') or {}).get('same_pick')}, "
          f"'unknown' first {(first.vru_before.get('pairs') or {}).get('unknown_first')}\n")
    # arms in LABEL's order (top-k first), whatever order their runs were saved in; runs in saved order
    by_arm = dict(sorted(runs.items(), key=lambda item: list(LABEL).index(item[1].method) if item[1].method in LABEL else len(LABEL)))
    for table in (arms_table(by_arm, a.k), differences_table(by_arm, a.k), general_table(by_arm, a.k),
                  runs_table(runs, a.k, a.pairs)):
        print("\n".join(table), end="\n\n")


if __name__ == "__main__":
    main()
