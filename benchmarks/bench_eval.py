"""Items per second of `vru_lens.evaluate` against one-item-at-a-time transformers loops, same items, one run.

References (both plain transformers, no hooks, full logits):
  naive  - one forward per (item, candidate) on prompt + candidate, the obvious loop;
  shared - one forward per item on the prompt (first tokens of all candidates) plus one per
           multi-token candidate: the same work plan as vru-lens, without batching or readout.
Also checks that every method picks the same answers and scores agree to 1e-3.

    .venv/bin/python benchmarks/bench_eval.py --n 64
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from vru_lens.bench import make_items
from vru_lens.evaluate import score_candidates
from vru_lens.models import load_hf, load_model
from vru_lens.tokens import answer_ids, chat_for, encode, render

from eval_floor import counts_for  # the work each schedule does, counted (the script's folder is on sys.path)


@torch.inference_mode()
def naive_loop(hf, tok, items, chat):
    out = []
    for it in items:
        prompt = encode(tok, render(it["prompt"], tok, chat), chat)
        scores = {}
        for c in it["candidates"]:
            ids = answer_ids(tok, c, chat)
            lp = hf(input_ids=torch.tensor([prompt + ids])).logits[0].log_softmax(-1)
            scores[c] = sum(lp[len(prompt) - 1 + k, t].item() for k, t in enumerate(ids))
        out.append(scores)
    return out


@torch.inference_mode()
def shared_loop(hf, tok, items, chat):
    out = []
    for it in items:
        prompt = encode(tok, render(it["prompt"], tok, chat), chat)
        first = hf(input_ids=torch.tensor([prompt])).logits[0, -1].log_softmax(-1)
        scores = {}
        for c in it["candidates"]:
            ids = answer_ids(tok, c, chat)
            if len(ids) == 1:
                scores[c] = first[ids[0]].item()
            else:
                lp = hf(input_ids=torch.tensor([prompt + ids[:-1]])).logits[0].log_softmax(-1)
                scores[c] = sum(lp[len(prompt) - 1 + k, t].item() for k, t in enumerate(ids))
        out.append(scores)
    return out


def timed(fn, *args):
    start = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()

    items = make_items(args.n, seed=2024, split="test")
    model = load_model(args.model, device="cpu")
    hf, _ = load_hf(args.model)
    hf.eval()
    tok = model.tokenizer  # the same token ids for every method (BOS prepended, as the bridge sets up)
    chat = chat_for(model, None)  # score_candidates' default (chat for an instruct model), given to every method
    score_candidates(model, items[:4], chat=chat, batch_size=4, progress=False)  # warm-up
    ours, t_ours = timed(lambda: score_candidates(model, items, chat=chat, batch_size=args.batch_size, progress=False))
    shared, t_shared = timed(shared_loop, hf, tok, items, chat)
    naive, t_naive = timed(naive_loop, hf, tok, items, chat)
    max_diff = max(abs(a[c] - b[c]) for x, y in ((ours, shared), (ours, naive)) for a, b in zip(x, y) for c in a)
    same = all(max(a, key=a.get) == max(b, key=b.get) for a, b in zip(ours, naive))
    report = {
        "model": args.model, "chat": chat, "items": args.n, "batch_size": args.batch_size, "threads": torch.get_num_threads(),
        "items_per_s": {"vru_lens": args.n / t_ours, "shared_loop": args.n / t_shared, "naive_loop": args.n / t_naive},
        "speedup_vs_shared_loop": t_shared / t_ours, "speedup_vs_naive_loop": t_naive / t_ours,
        "max_abs_score_diff": max_diff, "same_predictions": same,
        "work": counts_for(model, items, args.batch_size),  # token-forwards of each schedule and the floor
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
