"""Agreement of attribution patching (plain and integrated gradients) with exact activation patching.

Issue 12, item 3: on a model without planted heads there is no AUROC, so attribution is graded by
how well it reproduces the exact single-head patching sweep on the same pairs: Spearman over all
heads and top-10 overlap (``patching.agreement``), per direction. Scores compared are the mean over
pairs of the (estimated / exact) patched logit difference; "top" means the heads that move the
logit difference most in the direction that matters (denoising: highest patched ld; noising:
lowest), and ``abs`` ranks by the size of the move |patched - base| whatever its sign.

The pairs are ``bench_patching.py``'s (``make_items(4 * pairs, seed, PAIRABLE)``, plain prompts), so
the denoising row is comparable with the number measured there before the gradient fix.

    python benchmarks/attribution_agreement.py --pairs 16 --ig-steps 1,8 --out agreement.json
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from vru_lens.results import write_json_atomic


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--pairs", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ig-steps", default="1,8", help="comma list; 1 = plain attribution patching")
    ap.add_argument("--directions", default="denoising,noising")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    from vru_lens.bench import PAIRABLE, make_items
    from vru_lens.models import load_model
    from vru_lens.patching import activation_patch_heads, agreement, attribution_patch_heads
    from vru_lens.patching.metrics import baseline_logit_diffs
    from vru_lens.tokens import tokenize_pairs

    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    pt = tokenize_pairs(model.tokenizer, make_items(args.pairs * 4, args.seed, cfg=PAIRABLE), max_pairs=args.pairs)
    n = len(pt)
    if n < args.pairs:
        raise SystemExit(f"only {n} pairs: {pt.pairs.summary()}")
    clean, corrupt = baseline_logit_diffs(model, pt, n)
    report = {"model": args.model, "pairs": n, "seed": args.seed, "threads": args.threads,
              "clean_ld_mean": float(clean.mean()), "corrupt_ld_mean": float(corrupt.mean()), "rows": []}
    print(f"{args.model}: {n} pairs; clean ld {clean.mean():.4f}, corrupted {corrupt.mean():.4f}", flush=True)
    for direction in args.directions.split(","):
        sign = 1.0 if direction == "denoising" else -1.0  # the direction in which a head "matters"
        base_ld = float((corrupt if direction == "denoising" else clean).mean())
        t0 = time.perf_counter()
        exact = activation_patch_heads(model, pt, "z", direction, batch_size=n, max_rows=8 * n, progress=False).mean(0)
        t_exact = time.perf_counter() - t0
        for steps in [int(s) for s in args.ig_steps.split(",")]:
            t0 = time.perf_counter()
            attr = attribution_patch_heads(model, pt, "z", direction, batch_size=n, progress=False, ig_steps=steps).mean(0)
            row = {"direction": direction, "ig_steps": steps, "exact_s": round(t_exact, 1),
                   "attr_s": round(time.perf_counter() - t0, 1),
                   **agreement(sign * attr, sign * exact, k=10),
                   "abs_top10_overlap": agreement((attr - base_ld).abs(), (exact - base_ld).abs(), k=10)["top10_overlap"],
                   "exact_effect_std": float(exact.std()), "attr_effect_std": float(attr.std())}
            report["rows"].append(row)
            print(json.dumps(row), flush=True)
    if args.out:
        write_json_atomic(args.out, report)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
