"""Path patching to the logits on SmolLM2: fast recurrence vs the plain hook reference, same process.

    python benchmarks/bench_path_patching.py                 # 16 pairs, reference on 6 sampled senders
    python benchmarks/bench_path_patching.py --senders all   # the whole reference (270 forwards; long on CPU)

The reference costs one forward per sender (plus two cache forwards); on CPU
all 270 senders of SmolLM2 take tens of minutes, so by default it runs on a
sample of senders spread over the layers, and its full time is extrapolated as
cache time + 270 x measured time per sender. The maximum absolute difference is
taken over the senders the reference computed. A plain forward of the same
batch is timed too, to show how close the fast path is to its floor (two cache
forwards + the MLP recurrence).
"""

from __future__ import annotations

import argparse
import time

import torch

from vru_lens.bench import PAIRABLE, make_items
from vru_lens.models import load_model
from vru_lens.patching.metrics import baseline_logit_diffs
from vru_lens.patching.path import path_patch_logits, path_patch_logits_reference
from vru_lens.tokens import tokenize_pairs


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--pairs", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--senders", default="6", help="'all', or how many senders the reference samples")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--receivers", default=None,
                    help="instead: time sender -> receivers, e.g. '3.0,3.1' (layer.head; k/v heads for k/v)")
    ap.add_argument("--component", default="k", choices=["q", "k", "v"])
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model = load_model(args.model, device="cpu")
    pt = tokenize_pairs(model.tokenizer, make_items(20 * args.pairs, seed=args.seed, cfg=PAIRABLE), max_pairs=args.pairs)
    L, H, n = model.cfg.n_layers, model.cfg.n_heads, len(pt)
    print(f"{args.model}: {L} layers x {H} heads, {n} pairs, {int(pt.lengths.max())} tokens max, "
          f"{torch.get_num_threads()} threads")
    if args.receivers:
        return bench_receivers(model, pt, args)
    if args.senders == "all":
        senders = [(l, h) for l in range(L) for h in range(H)]
    else:
        k = max(1, int(args.senders))
        layers = torch.linspace(0, L - 1, k).round().long().tolist()
        senders = sorted({(l, (i * 4) % H) for i, l in enumerate(layers)})

    width = int(pt.final_pos.max()) + 1
    with torch.inference_mode():
        model(pt.clean[:, :width])  # warm-up
        _, t_fwd = timed(lambda: model(pt.clean[:, :width]))
    fast, t_fast = timed(lambda: path_patch_logits(model, pt, batch_size=n, progress=False).effects)
    _, t_cache = timed(lambda: path_patch_logits_reference(model, pt, progress=False, batch_size=n, senders=[]))
    ref, t_ref = timed(lambda: path_patch_logits_reference(model, pt, progress=False, batch_size=n,
                                                           senders=senders).effects)

    per_sender = max(t_ref - t_cache, 0.0) / len(senders)
    t_ref_full = t_cache + per_sender * L * H
    idx = torch.tensor(senders)
    diff = (fast[:, idx[:, 0], idx[:, 1]] - ref[:, idx[:, 0], idx[:, 1]]).abs().max().item()
    print(f"one plain forward ({n} pairs)      {t_fwd:8.2f} s")
    print(f"fast path, all {L * H} senders       {t_fast:8.2f} s   (= {t_fast / t_fwd:.1f} plain forwards)")
    print(f"reference, {len(senders)} senders measured   {t_ref:8.2f} s   ({per_sender:.2f} s per sender, "
          f"{t_cache:.2f} s caches)")
    what = "measured" if len(senders) == L * H else "extrapolated"
    print(f"reference, all {L * H} senders ({what}) {t_ref_full:8.1f} s")
    print(f"speed-up (reference / fast): {t_ref_full / t_fast:.0f}x")
    print(f"max abs diff fast vs reference over {len(senders)} senders x {n} pairs: {diff:.2e}")
    clean, corrupt = baseline_logit_diffs(model, pt, batch_size=n)
    effect = (fast - clean[:, None, None]).abs()
    print(f"clean / corrupted logit diff (mean): {clean.mean():.3f} / {corrupt.mean():.3f}; "
          f"|patched - clean| max {effect.max():.3f}, mean {effect.mean():.4f}")


def bench_receivers(model, pt, args) -> None:
    """Sender -> receivers' q/k/v: fast (recurrence + one forward per sender) vs reference (two forwards)."""
    from vru_lens.patching.path import path_patch_receivers, path_patch_receivers_reference

    receivers = [tuple(int(v) for v in r.split(".")) for r in args.receivers.split(",")]
    n = len(pt)
    fast, t_fast = timed(lambda: path_patch_receivers(model, pt, receivers, args.component, batch_size=8,
                                                      progress=False))
    ref, t_ref = timed(lambda: path_patch_receivers_reference(model, pt, receivers, args.component,
                                                              batch_size=8, progress=False))
    top = max(l for l, _ in receivers)
    print(f"receivers {receivers} ({args.component}; query heads touched: {fast.receiver_query_heads})")
    print(f"{top * model.cfg.n_heads} senders x {n} pairs: fast {t_fast:.1f} s, reference {t_ref:.1f} s, "
          f"speed-up {t_ref / t_fast:.1f}x, max abs diff {(fast.effects - ref.effects).abs().max().item():.2e}, "
          f"max |patched - clean| {(ref.effects - ref.clean_ld[:, None, None]).abs().max().item():.3f}")


if __name__ == "__main__":
    main()
