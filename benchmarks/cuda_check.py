"""The CUDA path, checked and timed: every ranking method on the organism on CPU and on CUDA, same inputs.

Not part of the suite (CI has no GPU). Prints, per method, the largest score difference between CPU and CUDA,
whether the top |G| agree, and each device's seconds; the fast activation sweep is compared with the
one-hook-per-head reference on CUDA too. Writes JSON to ``--out``.
    python benchmarks/cuda_check.py --out cuda_check.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from vru_lens.bench import BenchConfig, make_items
from vru_lens.bench.pairs import counterfactual_variants
from vru_lens.evaluate import evaluate
from vru_lens.models import load_model
from vru_lens.models.organisms import circuit_heads, organism_card
from vru_lens.patching import activation_patch_heads, activation_patch_heads_reference, rank_heads
from vru_lens.results import write_json_atomic
from vru_lens.tokens import tokenize_pairs


def _timed(fn):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="cuda_check.json")
    ap.add_argument("--model", default="vru-organism")
    ap.add_argument("--pairs", type=int, default=60)
    ap.add_argument("--devices", nargs=2, default=["cpu", "cuda"], help="the two devices compared (cpu cpu:2 checks the script)")
    args = ap.parse_args()
    planted = set(circuit_heads(organism_card(args.model)))
    pool = make_items(3000, seed=78, cfg=BenchConfig(style="paper"))
    pair_items = [it for it in pool if counterfactual_variants(it)][: args.pairs]
    items = make_items(300, seed=77, cfg=BenchConfig(style="paper"))
    report = {"torch": torch.__version__, "python": platform.python_version(),
              "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "methods": {}}
    models = {d: load_model(args.model, device=d.split(":")[0]) for d in args.devices}
    for d, m in models.items():
        ev, sec = _timed(lambda: evaluate(m, items, progress=False))
        report[f"eval_{d}"] = {"accuracy": ev.accuracy, "seconds": round(sec, 3)}
    pts = {d: tokenize_pairs(m.tokenizer, pair_items) for d, m in models.items()}
    for method in ("activation", "path", "attribution", "ablation"):
        row = {}
        scores = {}
        for d, m in models.items():
            hs, sec = _timed(lambda: rank_heads(m, pts[d], method, n_boot=0, progress=False))
            scores[d] = torch.as_tensor(hs.scores).float()
            row[f"seconds_{d}"] = round(sec, 3)
            row[f"top_{d}"] = [[l, h] for l, h, _ in hs.top(len(planted))]
        a, b = scores[args.devices[0]], scores[args.devices[1]]
        diff = (a - b).nan_to_num().abs().max().item()
        row["max_abs_diff"] = diff
        row["scale"] = a.nan_to_num().abs().max().item()
        row["top_equal"] = row[f"top_{args.devices[0]}"] == row[f"top_{args.devices[1]}"]
        row["planted_in_top"] = sum(tuple(h) in planted for h in row[f"top_{args.devices[1]}"])
        report["methods"][method] = row
        print(method, json.dumps(row), flush=True)
    m, pt = models[args.devices[1]], pts[args.devices[1]]
    fast, t_fast = _timed(lambda: activation_patch_heads(m, pt, progress=False))
    ref, t_ref = _timed(lambda: activation_patch_heads_reference(m, pt, progress=False))
    report["activation_fast_vs_reference_cuda"] = {
        "max_abs_diff": (fast - ref).abs().max().item(), "seconds_fast": round(t_fast, 3),
        "seconds_reference": round(t_ref, 3), "speedup": round(t_ref / t_fast, 2)}
    print(json.dumps(report, indent=1))
    write_json_atomic(args.out, report)


if __name__ == "__main__":
    main()
