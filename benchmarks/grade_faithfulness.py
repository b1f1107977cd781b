"""Faithfulness curves (MIB style) of every ranking method on VRU counterfactual pairs (issue 23; docs/grading.md).

VRUBench pairs (``tokenize_pairs`` on ``make_items``, the style and chat the model reads) are ranked by every
method in ``patching.rank.REGISTRY``. Each ranking's faithfulness curve is measured with
``patching.faithfulness.faithfulness_curve``: the top-k heads keep their clean z, every other head gets the
pair's corrupt z (``--ablation resample``, or mean / zero), and f(k) is the fraction of the clean-minus-corrupt
logit difference recovered. CPR (area under f) and CMD (area of |1 - f|) come with 95% bootstrap CIs over
pairs; random orderings of the heads give the baseline band. On a model with a known circuit (the organisms:
the card's ``circuit`` key, ``models.organisms.circuit_heads``) the circuit C is also a ranking (C first, in
layer order, then the rest), and each method's AUROC against C is reported with its bootstrap CI over pairs.

    python benchmarks/grade_faithfulness.py --model vru-organism --pairs 32 --out docs/measurements/faithfulness_organism.json
    python benchmarks/grade_faithfulness.py --model smollm2-135m-instruct --pairs 16 --n-random 10 \\
        --out docs/measurements/faithfulness_smollm2.json

Writes ``OUT`` (summary: baseline logit differences, per method AUROC/CPR/CMD, the random band) and
``OUT`` with ``_curves.json`` in place of ``.json`` (the ``FaithfulnessResult``, ``load_result(...).plot()``).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from vru_lens.results import write_json_atomic

CIRCUIT = "circuit C (known answer)"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="vru-organism")
    ap.add_argument("--pairs", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--style", default="paper", choices=("paper", "story"))
    ap.add_argument("--chat", default=None, choices=("true", "false"), help="default: the model's kind")
    ap.add_argument("--ablation", default="resample", choices=("resample", "mean", "zero"))
    ap.add_argument("--n-random", type=int, default=20)
    ap.add_argument("--ks", default=None, help="comma list of head counts (default: faithfulness.default_ks)")
    ap.add_argument("--methods", default=None, help="comma list (default: every registered method)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from vru_lens.bench import PAIRABLE, PAIRABLE_STORY, make_items
    from vru_lens.models import load_model
    from vru_lens.models.organisms import known_circuit
    from vru_lens.organism.verify import auroc_ci
    from vru_lens.patching import rank_heads
    from vru_lens.patching.faithfulness import faithfulness_curve
    from vru_lens.patching.rank import METHODS
    from vru_lens.tokens import chat_for, tokenize_pairs

    t0 = time.perf_counter()
    model = load_model(args.model)
    chat = chat_for(model, None if args.chat is None else args.chat == "true")
    cfg = PAIRABLE_STORY if args.style == "story" else PAIRABLE
    pt = tokenize_pairs(model.tokenizer, make_items(args.pairs * 4, args.seed, cfg=cfg), chat=chat,
                        max_pairs=args.pairs)
    circuit = known_circuit(args.model)
    print(f"{args.model}: {len(pt)} pairs ({args.style}, chat {chat}), {int(pt.lengths.float().mean())} tokens per "
          f"prompt on average; circuit: {circuit}", flush=True)
    out = {"model": args.model, "pairs": len(pt), "seed": args.seed, "style": args.style, "chat": chat,
           "ablation": args.ablation, "n_random": args.n_random, "threads": args.threads,
           "tokens_per_prompt": float(pt.lengths.float().mean()),
           "circuit": [list(h) for h in circuit] if circuit else None, "methods": {}}
    rankings = {}
    for method in (args.methods.split(",") if args.methods else METHODS):
        t = time.perf_counter()
        hs = rank_heads(model, pt, method, n_boot=0, progress=False, batch_size=args.batch_size)
        rankings[method] = hs
        row = {"seconds_rank": round(time.perf_counter() - t, 1)}
        if circuit:
            g = auroc_ci(hs, circuit, n_boot=1000)
            row["auroc"], row["auroc_ci"] = g["auroc"], [g["low"], g["high"]]
        out["methods"][method] = row
        print(f"{method}: ranked in {row['seconds_rank']}s" +
              (f", AUROC vs C {row['auroc']:.3f} [{row['auroc_ci'][0]:.3f}, {row['auroc_ci'][1]:.3f}]" if circuit else ""),
              flush=True)
    if circuit:
        rankings[CIRCUIT] = circuit
    t = time.perf_counter()
    ks = [int(k) for k in args.ks.split(",")] if args.ks else None
    faith = faithfulness_curve(model, pt, rankings, ks=ks, ablation=args.ablation, n_random=args.n_random, seed=args.seed,
                               batch_size=args.batch_size, progress=False)
    out["seconds_faithfulness"] = round(time.perf_counter() - t, 1)
    s = faith.summary()
    out["ks"] = s["ks"]
    out["baseline"] = {"clean_ld": float(faith.clean_ld.mean()), "corrupt_ld": float(faith.corrupt_ld.mean()),
                       "gap": float(faith.clean_ld.mean() - faith.corrupt_ld.mean()),
                       "clean_accuracy": float((faith.clean_ld > 0).mean()),
                       "corrupt_flipped": float((faith.corrupt_ld < 0).mean())}
    for name, r in s["rankings"].items():
        out["methods"].setdefault(name, {}).update({k: r[k] for k in ("cpr", "cpr_ci", "cmd", "cmd_ci", "f")})
        if circuit and len(circuit) in faith.ks:  # the top |C| heads alone, with a CI over pairs
            out["methods"][name]["f_at_circuit_size"] = faith.at(name, len(circuit))
        print(f"faithfulness {name}: CPR {r['cpr']:.3f} [{r['cpr_ci'][0]:.3f}, {r['cpr_ci'][1]:.3f}], "
              f"CMD {r['cmd']:.3f} [{r['cmd_ci'][0]:.3f}, {r['cmd_ci'][1]:.3f}]", flush=True)
    out["random"] = s["random"]
    if circuit and len(circuit) in faith.ks:
        out["random"]["f_at_circuit_size"] = faith.at("random", len(circuit))
    rnd = s["random"]
    print(f"faithfulness random ({rnd['n_draws']} orderings): CPR {rnd['cpr_mean']:.3f} 5-95% {rnd['cpr_5_95']}, "
          f"CMD {rnd['cmd_mean']:.3f} 5-95% {rnd['cmd_5_95']} ({out['seconds_faithfulness']}s)")
    b = out["baseline"]
    print(f"baseline: clean LD {b['clean_ld']:.3f}, corrupt LD {b['corrupt_ld']:.3f} (gap {b['gap']:.3f}); clean "
          f"answer wins on {b['clean_accuracy']:.0%}, corrupt answer wins on the corrupt prompt on {b['corrupt_flipped']:.0%}")
    out["seconds"] = round(time.perf_counter() - t0, 1)
    if args.out:
        write_json_atomic(args.out, out)
        faith.save(args.out.replace(".json", "_curves.json"))
    print(json.dumps({k: v for k, v in out.items() if k not in ("methods", "random")}, default=float)[:2000])


if __name__ == "__main__":
    main()
