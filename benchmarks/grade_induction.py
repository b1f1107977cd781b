"""Grade every ranking method on SmolLM2-135M-Instruct's induction heads (issue 23; docs/grading.md).

Ground truth: ``grading.induction_scores`` on ``[BOS] x x`` (random tokens repeated once), heads above
``grading.THRESHOLD``. Task: ``grading.induction_pairs`` on the same ``x`` (clean: the second copy continues
the first; corrupt: the first copy's next token changed). Every method in ``patching.rank.REGISTRY`` ranks
the heads on the task; each is graded by AUROC and Spearman against the induction scores (95% bootstrap
CIs over sequences), by the knockout of its top-k against random k-sets on the task's accuracy (the share
of clean prompts where the clean answer beats the corrupt one) and by its faithfulness curve (resample
ablation of the other heads; CPR/CMD with CIs over pairs, beside random orderings).

    python benchmarks/grade_induction.py --seqs 12 --seq-len 10 --out docs/measurements/grading_induction.json
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from vru_lens.results import write_json_atomic


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--seqs", type=int, default=12)
    ap.add_argument("--seq-len", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--top-k", type=int, default=10)
    ap.add_argument("--n-random", type=int, default=10)
    ap.add_argument("--methods", default=None, help="comma list (default: every registered method)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from vru_lens.heads import top_heads
    from vru_lens.grading import THRESHOLD, grade, induction_pairs, induction_scores, random_tokens
    from vru_lens.models import load_model
    from vru_lens.patching import knockout, rank_heads
    from vru_lens.patching.faithfulness import faithfulness_curve
    from vru_lens.patching.rank import METHODS

    t0 = time.perf_counter()
    model = load_model(args.model)
    tok = model.tokenizer
    tokens = random_tokens(tok, args.seqs, args.seq_len, args.seed)
    truth = induction_scores(model, tokens)
    mean_truth = truth.mean(0)
    heads = [[int(l), int(h)] for l, h in np.argwhere(mean_truth > THRESHOLD)]
    order = np.argsort(-mean_truth.ravel())[:10]
    H = mean_truth.shape[1]
    print(f"induction heads (score > {THRESHOLD}): {len(heads)} of {mean_truth.size}: {heads}")
    print("top induction scores:", [(int(i // H), int(i % H), round(float(mean_truth.ravel()[i]), 3)) for i in order])
    pt = induction_pairs(tok, tokens, args.seed)
    out = {"model": args.model, "seqs": args.seqs, "seq_len": args.seq_len, "seed": args.seed, "threshold": THRESHOLD,
           "induction_heads": heads, "induction_scores": mean_truth.tolist(), "methods": {}}
    rankings = {}
    for method in (args.methods.split(",") if args.methods else METHODS):
        t = time.perf_counter()
        hs = rank_heads(model, pt, method, n_boot=0, progress=False, batch_size=args.seqs)
        rankings[method] = hs
        g = grade(truth, hs)
        ko = knockout(model, pt, None, top_heads(hs, args.top_k), n_random=args.n_random, seed=args.seed,
                      batch_size=args.seqs, accuracy=None).summary()
        out["methods"][method] = {**g, "knockout": ko, "seconds": round(time.perf_counter() - t, 1),
                                  "top": [list(h) for h in top_heads(hs, args.top_k)]}
        print(f"{method}: AUROC {g['auroc']} {g['auroc_ci']}, Spearman {g['spearman']:.3f} {g['spearman_ci']}; "
              f"knockout top-{args.top_k} accuracy drop {ko['top_k']['accuracy_drop']:.3f} vs random "
              f"{ko['random_k']['accuracy_drop_mean']:.3f} ({time.perf_counter() - t:.0f}s)", flush=True)
    t = time.perf_counter()
    faith = faithfulness_curve(model, pt, {**rankings, "induction score (truth)": mean_truth},
                               n_random=args.n_random, seed=args.seed, batch_size=args.seqs, progress=False)
    out["faithfulness"] = faith.summary()
    out["baseline"] = {"clean_ld": float(faith.clean_ld.mean()), "corrupt_ld": float(faith.corrupt_ld.mean()),
                       "accuracy": float((faith.clean_ld > 0).mean())}
    for name, r in out["faithfulness"]["rankings"].items():
        print(f"faithfulness {name}: CPR {r['cpr']:.3f} {r['cpr_ci']}, CMD {r['cmd']:.3f} {r['cmd_ci']}")
    rnd = out["faithfulness"]["random"]
    print(f"faithfulness random: CPR {rnd['cpr_mean']:.3f} {rnd['cpr_5_95']}, CMD {rnd['cmd_mean']:.3f} {rnd['cmd_5_95']}"
          f" ({time.perf_counter() - t:.0f}s)")
    out["seconds"] = round(time.perf_counter() - t0, 1)
    if args.out:
        write_json_atomic(args.out, out)
        faith.save(args.out.replace(".json", "_faithfulness.json"))
    print(json.dumps({k: v for k, v in out.items() if k not in ("induction_scores", "faithfulness")})[:3000])


if __name__ == "__main__":
    main()
