"""Cost of head-delta fine-tuning against full fine-tuning and PEFT LoRA, one run each.

Each method runs in its own subprocess (so peak memory is its own): load the
model, build the trainable, run ``--steps`` optimizer steps of the shared
training loop on the same VRUBench batches, and report

* trainable parameters and optimizer-state bytes (AdamW's tensors, counted
  from ``optimizer.state``);
* peak memory: resident set size sampled every 5 ms from /proc/self/statm by a
  thread during training (``peak_rss``), and that peak minus the RSS right after
  loading the model (``train_rss``: what training adds on top of the weights);
  also ``ru_maxrss`` for the whole process, load included;
* step time: mean wall time of an optimizer step after the first (warm-up) one.

Ratios are against full fine-tuning in the same run. Targets from the issue:
optimizer state <= 2% of full fine-tuning's and peak memory <= 0.7x.

    .venv/bin/python benchmarks/bench_finetune.py --steps 4 --out results/finetune/bench.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def worker(args) -> dict:
    import torch

    sys.path.insert(0, str(ROOT))
    from vru_lens.bench import make_items
    from vru_lens.finetune import FullFinetune, HeadDeltas, LoraAdapters, TrainConfig, resolve_heads, train
    from vru_lens.models import load_model

    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    rss_loaded = _rss()
    items = make_items(args.steps * args.batch_size, seed=0, split="train")
    geom_budget = None
    heads = resolve_heads(args.heads, args.top_k) if args.heads else [(l, 0) for l in range(args.top_k)]
    if args.method == "heads":
        trainable = HeadDeltas(model, heads, args.components)
    elif args.method == "full":
        trainable = FullFinetune(model)
    else:
        d, dh = model.cfg.d_model, model.cfg.d_head
        geom_budget = 2 * args.top_k * d * dh * (1 if args.components == "qo" else 2)
        trainable = LoraAdapters(model, budget=geom_budget)
    peak = [_rss()]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.005)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    lr = {"heads": 1e-3, "full": 2e-5, "lora": 1e-3}[args.method]
    res = train(model, trainable, items, None, TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=lr,
                                                           warmup_steps=1, eval_every=0), progress=False)
    done.set()
    thread.join()
    times = [h["seconds"] for h in res.history[1:]] or [res.history[0]["seconds"]]
    return {"method": args.method, "heads": heads if args.method == "heads" else None,
            "trainable_params": res.trainable_params, "optimizer_state_bytes": res.optimizer_state_bytes,
            "rss_loaded": rss_loaded, "peak_rss": peak[0], "train_rss": peak[0] - rss_loaded,
            "ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "step_seconds": sum(times) / len(times), "lora_rank": getattr(trainable, "rank", None),
            "loss_first": res.history[0]["loss"], "loss_last": res.history[-1]["loss"]}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--heads", default=None, help="ranking JSON; default: the stand-in ranking of `vru-lens finetune --out results/finetune` if present")
    p.add_argument("--top-k", type=int, default=16)
    p.add_argument("--components", default="qo")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--methods", default="heads,full,lora")
    p.add_argument("--out", default="results/finetune/bench.json")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.heads is None:
        guess = ROOT / "results/finetune" / "ranking.json"
        args.heads = str(guess) if guess.exists() else None
    if args.worker:
        args.method = args.worker
        print("RESULT " + json.dumps(worker(args)))
        return
    rows = {}
    for method in args.methods.split(","):
        cmd = [sys.executable, __file__, "--worker", method, "--model", args.model, "--top-k", str(args.top_k),
               "--components", args.components, "--steps", str(args.steps), "--batch-size", str(args.batch_size),
               "--threads", str(args.threads)] + (["--heads", args.heads] if args.heads else [])
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        line = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")]
        if not line:
            sys.exit(f"{method} failed:\n{out.stderr[-3000:]}")
        rows[method] = json.loads(line[-1][7:])
        r = rows[method]
        print(f"{method:>5}: params {r['trainable_params']:>12,}  opt state {r['optimizer_state_bytes'] / 2**20:9.2f} MiB  "
              f"peak RSS {r['peak_rss'] / 2**30:6.2f} GiB (train adds {r['train_rss'] / 2**30:5.2f})  "
              f"step {r['step_seconds']:6.2f} s", flush=True)
    if "full" in rows:
        f = rows["full"]
        for method, r in rows.items():
            r["ratio_opt_state"] = r["optimizer_state_bytes"] / f["optimizer_state_bytes"]
            r["ratio_peak_rss"] = r["peak_rss"] / f["peak_rss"]
            r["ratio_train_rss"] = r["train_rss"] / max(1, f["train_rss"])
            r["ratio_step_time"] = r["step_seconds"] / f["step_seconds"]
            print(f"{method:>5} / full: opt state {r['ratio_opt_state']:.4f}  peak RSS {r['ratio_peak_rss']:.3f}  "
                  f"train-added RSS {r['ratio_train_rss']:.3f}  step time {r['ratio_step_time']:.2f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "methods": rows}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
