"""Why the deficit's repair missed the issue's bar, and the construction that meets it: separate D from the second task, then damage.

Not part of the suite. In the deficit shipped until 2026-12-05 the heads D = (2,0), (2,1) also wrote on list-recall prompts, so
tuning them on VRU alone moves list recall (top-2 list KL 0.014, bar 0.01). Here the complete organism is
first trained so that D is silent on list prompts (``deficit.separate``: D's z there pushed toward zero,
relative to its norm at VRU queries, while its answers on both tasks stay the source's), and only then is D's
W_O scrambled (``deficit.make_deficit``, kind ``scramble``) and the repair experiment run (``repair.repair``).
Variants:

  confined     the construction shipped until 2026-12-05 (no separation; scrambled, then ``confine`` 300 steps)
  all          separation trains every weight (600 steps, silence weight 1)
  narrow       separation trains D's W_Q/W_K/W_V rows, layer 2's MLP and all of layer 3 (600 steps, weight 1)
  narrow_d     ``narrow``, then 400 more steps training D's W_Q/W_K/W_V rows only (silence weight 10)
  below        D's W_Q/W_K/W_V rows, the embedding and layers 0-1 (``deficit.separate``'s ``below``), 600 steps
  below_085    ``below``, damage amount 0.85 instead of bisection's (the shipped deficit since 2026-12-05)
  (and all_slow, narrow_below, below_narrow, narrow_below1, below_095: see VARIANTS)

    python benchmarks/deficit_separation.py --out results/deficit-separation --seeds 0,1,2
writes OUT/separation.json (per variant: D's silence on list prompts, the deficit's amount, its own
ranking's top-k and the repair arms' means with 95% t-intervals over seeds, the bar) and OUT/separation.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch

D_HEADS = [(2, 0), (2, 1)]
# separation stages (scope, steps, silence weight[, lr]) and the damage amount (None: bisection to the band)
VARIANTS = {"confined": ([], None), "all": ([("all", 600, 1.0)], None), "narrow": ([("narrow", 600, 1.0)], None),
            "narrow_d": ([("narrow", 600, 1.0), ("d", 400, 10.0)], None),
            "all_slow": ([("all", 600, 1.0, 3e-4)], None), "below": ([("below", 600, 1.0)], None),
            "narrow_below": ([("narrow", 600, 1.0), ("below", 400, 10.0)], None),
            "below_narrow": ([("below", 600, 1.0), ("narrow", 400, 1.0)], None),
            "narrow_below1": ([("narrow", 600, 1.0), ("below", 400, 1.0)], None),
            "below_085": ([("below", 600, 1.0)], 0.85), "below_095": ([("below", 600, 1.0)], 0.95)}


def build(variant: str, out: Path, log=print) -> tuple[str, dict]:
    """The deficit organism of one variant (a folder) and what its construction measured."""
    from vru_lens.models.loader import load_hf
    from vru_lens.models.organisms import organism_dir
    from vru_lens.organism.deficit import make_deficit, separate

    stages, amount = VARIANTS[variant]
    folder = out / f"{variant}-deficit"
    if not stages:  # the construction shipped before 2026-12-05: scramble to the band, then confine 300 steps
        card = make_deficit("vru-organism", folder, D_HEADS, band=(0.55, 0.65), kind="scramble", confine_steps=300,
                            log=lambda *a: None)
        return str(folder), {"amount": card["deficit"]["damage"]["amount"], "accuracy": card["deficit"]["accuracy"]}
    src = organism_dir("vru-organism")
    model, _ = load_hf(str(src))
    complete, _ = load_hf(str(src))
    record = []
    for scope, steps, w, *lr in stages:
        lr = lr[0] if lr else 1e-3
        record.append(separate(model, complete, D_HEADS, scope, steps, w, lr, log=log)
                      | {"scope": scope, "steps": steps, "weight": w, "lr": lr})
    source = out / f"{variant}-source"
    shutil.rmtree(source, ignore_errors=True)
    shutil.copytree(src, source, ignore=shutil.ignore_patterns("*.html", "*.png"))
    model.save_pretrained(source)
    card = make_deficit(str(source), folder, D_HEADS, band=(0.55, 0.65), kind="scramble", amount=amount,
                        log=lambda *a: None)
    return str(folder), {"separation": record, "amount": card["deficit"]["damage"]["amount"],
                         "accuracy": card["deficit"]["accuracy"]}


def main() -> None:
    from vru_lens.organism.repair import RepairConfig, repair

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="results/deficit-separation")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    args = ap.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = tuple(int(s) for s in args.seeds.split(","))
    path = out / "separation.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    for variant in args.variants.split(","):
        if variant not in VARIANTS:
            raise SystemExit(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
        t0 = time.perf_counter()
        torch.manual_seed(0)
        name, built = build(variant, out)
        cfg = RepairConfig(seeds=seeds, arms=("top", "random", "bottom", "other_task"), n_boot=200)
        r = repair(name, cfg, log=lambda *a: None)
        results[variant] = {**built, "deficit": name, "before": r["before"], "own_top": r["own_ranking_top"],
                            "own_auroc_vs_D": r["own_ranking_auroc_vs_D"]["auroc"],
                            "bottom": next(x["heads"] for x in r["runs"] if x["arm"] == "bottom"),
                            "arms": {a: {k: v for k, v in s.items() if isinstance(v, dict) and "ci" in v}
                                     for a, s in r["summary"].items()},
                            "bar": r["bar"], "seeds": list(seeds), "seconds": round(time.perf_counter() - t0, 1)}
        path.write_text(json.dumps(results, indent=1, default=str))
        print(variant, json.dumps({a: round(s["vru_acc"]["mean"], 4) for a, s in results[variant]["arms"].items()}),
              "top list KL", round(results[variant]["arms"]["top"]["list_kl"]["mean"], 4), flush=True)
    (out / "separation.md").write_text(table(results))


def table(results: dict) -> str:
    pct = lambda s: f"{100 * s['mean']:.1f} [{100 * s['ci'][0]:.1f}, {100 * s['ci'][1]:.1f}]"  # noqa: E731
    lines = ["| variant | D silent on list (z² ratio) | amount | own top-2 | top-2 VRU % | random-2 | bottom-2 | "
             "other-task-2 | top-2 list KL | margins (random / bottom / other) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for v, r in results.items():
        a = r["arms"]
        sep = r.get("separation", [])
        ratio = sep[-1]["d_z2_list_over_vru"] if sep else "-"
        margins = " / ".join(f"{100 * (a['top']['vru_acc']['mean'] - a[o]['vru_acc']['mean']):.1f}"
                             for o in ("random", "bottom", "other_task"))
        lines.append(f"| {v} | {ratio} | {r.get('amount', '-')} | {r['own_top']} | {pct(a['top']['vru_acc'])} | "
                     f"{pct(a['random']['vru_acc'])} | {pct(a['bottom']['vru_acc'])} | {pct(a['other_task']['vru_acc'])} | "
                     f"{a['top']['list_kl']['mean']:.4f} | {margins} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
