"""Patching speed on SmolLM2-135M-Instruct (or any model): fast paths against their plain references.

In one run, on the same pairs:
  (1) all-head activation patching (denoising, hook_z, all positions) against
      TransformerLens's get_act_patch_attn_head_out_all_pos;
  (2) path patching sender -> logits against the plain two-forwards-per-sender reference;
  (3) attribution patching against exact activation patching (denoising, as in (1)):
      speed and agreement (Spearman, top-10 overlap).

The references do one full forward per head (270 on SmolLM2). On a small shared
CPU that is tens of minutes, so by default they run on the heads of a few
layers (``--ref-layers``; the same code path, every head costs one forward) and
their full time is extrapolated per head; ``--ref-layers all`` runs them whole.
The fast results are checked against the reference numbers on those layers.
Times are CPU seconds of the process (``time.process_time``); wall times are in
the JSON too (``wall_s_each_timing``, in the order of the timings).

    python benchmarks/bench_patching.py --pairs 16 --out bench_patching.json
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from vru_lens.results import write_json_atomic


def timed(fn):
    """(result, seconds): CPU seconds of this process (threads summed), which a busy shared machine
    disturbs far less than wall time; wall seconds are recorded in WALL."""
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    WALL.append(time.perf_counter() - t)
    return out, time.process_time() - c


WALL: list[float] = []


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--pairs", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ref-layers", default="0,29", help="comma list, or 'all'")
    ap.add_argument("--parts", default="1,2,3")
    ap.add_argument("--out", default=None, help="write the numbers as JSON here")
    ap.add_argument("--deltas", default=None, help="head-delta file: benchmark the fine-tuned model")
    args = ap.parse_args()

    from vru_lens.bench import PAIRABLE, make_items
    from vru_lens.models import load_model
    from vru_lens.patching import (activation_patch_heads, agreement,
                                   attribution_patch_heads, tl_head_out_all_pos)
    from vru_lens.patching.path import path_patch_logits, path_patch_logits_reference
    from vru_lens.tokens import tokenize_pairs

    torch.manual_seed(0)
    model = load_model(args.model)
    if args.deltas:
        from vru_lens.finetune.adapters import merge_deltas

        merge_deltas(model, args.deltas)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    pt = tokenize_pairs(model.tokenizer, make_items(args.pairs * 4, args.seed, cfg=PAIRABLE), max_pairs=args.pairs)
    if len(pt) < args.pairs:
        raise SystemExit(f"only {len(pt)} pairs: {pt.pairs.summary()}")
    ref_layers = list(range(L)) if args.ref_layers == "all" else [int(x) for x in args.ref_layers.split(",")]
    n_ref = len(ref_layers) * H
    scale = (L * H) / n_ref
    parts = {int(p) for p in args.parts.split(",")}
    report = {"model": args.model, "deltas": args.deltas, "pairs": len(pt), "tokens_per_prompt_mean": float(pt.lengths.float().mean()),
              "ref_layers": ref_layers, "reference_extrapolated": scale != 1, "threads": torch.get_num_threads(),
              "loadavg_start": os.getloadavg()[0]}
    n = len(pt)
    with torch.inference_mode():  # warm-up, so no timing below pays first-call costs
        model(pt.clean[:2, : int(pt.lengths[:2].max())].to(model.cfg.device))
    print(f"{args.model}: {n} pairs, {report['tokens_per_prompt_mean']:.0f} tokens/prompt, "
          f"reference on layers {ref_layers} (x{scale:.1f} extrapolated)", flush=True)

    if 1 in parts:
        fast_act, t_fast = timed(lambda: activation_patch_heads(model, pt, "z", "denoising", batch_size=n,
                                                                max_rows=8 * n, progress=False))
        fast = fast_act
        tl, t_tl = timed(lambda: tl_head_out_all_pos(model, pt, layers=ref_layers))
        diff = float((fast.mean(0)[ref_layers] - tl[ref_layers]).abs().max())
        report["activation"] = {"fast_s": t_fast, "tl_s_measured": t_tl, "tl_s_full": t_tl * scale,
                                "ratio": t_tl * scale / t_fast, "max_abs_diff_vs_tl": diff}
        print("(1) activation", json.dumps(report["activation"]), flush=True)

    if 2 in parts:
        fast, t_fast = timed(lambda: path_patch_logits(model, pt, batch_size=n, progress=False).effects)
        senders = [(l, h) for l in ref_layers for h in range(H)]
        ref, t_ref = timed(lambda: path_patch_logits_reference(model, pt, progress=False, batch_size=n,
                                                               senders=senders).effects)
        diff = float((fast[:, ref_layers] - ref[:, ref_layers]).abs().max())
        report["path"] = {"fast_s": t_fast, "ref_s_measured": t_ref, "ref_s_full": t_ref * scale,
                          "ratio": t_ref * scale / t_fast, "max_abs_diff_vs_ref": diff}
        print("(2) path", json.dumps(report["path"]), flush=True)

    if 3 in parts:  # denoising, like (1): reuses (1)'s exact result and reference timing when it ran
        attr, t_attr = timed(lambda: attribution_patch_heads(model, pt, "z", "denoising", batch_size=n, progress=False))
        if 1 in parts:
            exact, t_exact = fast_act, report["activation"]["fast_s"]
            t_ref_full, ref_diff = report["activation"]["tl_s_full"], report["activation"]["max_abs_diff_vs_tl"]
        else:
            exact, t_exact = timed(lambda: activation_patch_heads(model, pt, "z", "denoising", batch_size=n,
                                                                  max_rows=8 * n, progress=False))
            tl, t_tl = timed(lambda: tl_head_out_all_pos(model, pt, layers=ref_layers))
            t_ref_full = t_tl * scale
            ref_diff = float((exact.mean(0)[ref_layers] - tl[ref_layers]).abs().max())
        agree = agreement(attr.mean(0), exact.mean(0), k=10)  # denoising: higher patched ld = more important
        report["attribution"] = {"direction": "denoising", "attr_s": t_attr, "exact_fast_s": t_exact,
                                 "exact_ref_s_full": t_ref_full, "ratio_vs_reference": t_ref_full / t_attr,
                                 "ratio_vs_fast_exact": t_exact / t_attr, "fast_exact_max_abs_diff_vs_ref": ref_diff,
                                 **agree}
        print("(3) attribution", json.dumps(report["attribution"]), flush=True)

    report["wall_s_each_timing"] = WALL
    report["loadavg_end"] = os.getloadavg()[0]
    if args.out:
        write_json_atomic(args.out, report)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
