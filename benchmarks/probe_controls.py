"""Which control task says something about the heading probe: phrase vs prefix (vs token).

Issue 20, item 2: the phrase control (a random class per rotation phrase) is solvable from the
local phrase alone, so a probe's selectivity against it says nothing about whether the heading is
tracked. The prefix control (a random class per whole sequence of turns so far) can only be solved
by memorising turn sequences. One capture per model; the heading probe and each control on the
same split; also how many held-out rows have a control type never seen in training.

    OMP_NUM_THREADS=1 python benchmarks/probe_controls.py --model vru-organism --items 400
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="vru-organism")
    ap.add_argument("--items", type=int, default=400)
    ap.add_argument("--target", default="heading")
    ap.add_argument("--controls", default="prefix,phrase,token")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from vru_lens.bench import BenchConfig, make_items
    from vru_lens.models import load_model
    from vru_lens.probe import capture, control_labels, control_types, fit, split_items, target_labels
    from vru_lens.tokens import is_chat_model

    model = load_model(args.model, device="cpu")
    chat = is_chat_model(model, args.model)
    items = make_items(args.items, args.seed + 2, BenchConfig(style="paper"), split="train")
    t0 = time.perf_counter()
    cache = capture(model, items, chat=chat, batch_size=32, progress=False)
    y, classes = target_labels(items, cache, args.target)
    test = split_items(len(items), 0.2, args.seed)[cache.item]
    out = {"model": args.model, "items": args.items, "target": args.target, "rows": len(cache),
           "capture_s": round(time.perf_counter() - t0, 1), "controls": {}}
    for by in args.controls.split(","):
        types = control_types(items, cache, by, y)
        seen = {t for t, tr in zip(types, ~test) if tr}
        unseen = float(np.mean([t not in seen for t, te in zip(types, test) if te]))
        res = fit(cache, y, classes, target=args.target, control_by=by, seed=args.seed,
                  control=control_labels(types, y, len(classes), seed=args.seed + 1))
        out["controls"][by] = {"n_types": len(set(types)), "test_rows_unseen_type": round(unseen, 3),
                               "control_accuracy": [round(float(a), 3) for a in res.control_accuracy],
                               "selectivity": [round(float(a), 3) for a in res.selectivity]}
        out["accuracy"] = [round(float(a), 3) for a in res.accuracy]
        out["question_accuracy"] = [round(float(a), 3) for a in res.question_accuracy]
        out["chance"] = round(res.chance, 3)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    text = json.dumps(out, indent=1)
    print(text)
    if args.out:
        from vru_lens.results import write_json_atomic

        write_json_atomic(args.out, out)


if __name__ == "__main__":
    main()
