"""The whole study (``vru-lens run``'s stages) on a random Qwen2.5-7B-shaped model, every stage timed.

Builds a randomly initialised Qwen2 model of Qwen2.5-7B-Instruct's shape (``bench_7b_memory.QWEN_7B``;
random weights cost the same compute as trained ones), saves it with a tokenizer to a folder, and runs
``vru_lens.study.run_study`` on that folder: the same code ``vru-lens run --model FOLDER`` runs. Each
stage is timed from the moment the study announces it to the next announcement (the first row is the
load), and on CUDA its peak GPU memory is ``torch.cuda.max_memory_allocated``, reset per stage.

``--shape small`` keeps the 7B model's head layout (28 query heads, 4 key/value heads) at width 448
and 4 layers, so the CPU run goes through the same code paths in minutes; it checks that nothing in
the study needs a GPU-only feature. The study's own settings are the defaults of ``--study``.

    python benchmarks/bench_study_7b.py --shape small --threads 1 --out study_small.json          # CPU check
    python benchmarks/bench_study_7b.py --device cuda --study --tokenizer TOK --out study_7b.json  # the GPU run
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_7b_memory as b7  # noqa: E402  (the 7B shape, its builder and tokenizer)

SMALL = dict(b7.QWEN_7B, hidden_size=448, intermediate_size=1216, num_hidden_layers=4)  # d_head 16, GQA 7:1
# The study at its size (issue 26): 2,000 evaluation items, probes of every layer, 64 pairs ranked with CIs,
# fine-tuning of the top 32 heads on 19.6k sequences, the general suite.
STUDY = dict(n_eval=2000, n_probe=1000, n_pairs=64, n_boot=1000, n_train=19600, batch_size=32, general_n=100)
QUICK = dict(n_eval=8, n_probe=24, n_pairs=2, n_boot=20, n_random=2, n_train=4, batch_size=2, general_n=2,
             knockout_k=2, top_k=2, baselines=())


class StageClock:
    """The study's ``log``: every announcement closes the previous stage's row and opens a new one."""

    def __init__(self, device: str):
        self.cuda = str(device).startswith("cuda")
        self.rows: list[dict] = []
        self.name, self.t0 = "load", time.perf_counter()
        self._reset()

    def _reset(self):
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()

    def close(self):
        row = {"stage": self.name, "seconds": round(time.perf_counter() - self.t0, 2)}
        if self.cuda:
            torch.cuda.synchronize()
            row["peak_gpu_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 2)
        self.rows.append(row)
        print(row, flush=True)

    def __call__(self, message: str):
        self.close()
        self.name = message.split("] ", 1)[-1]
        self._reset()
        self.t0 = time.perf_counter()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=("7b", "small"), default="7b")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--study", action="store_true", help="the study's sizes (default: a quick pass of every stage)")
    ap.add_argument("--stages", default=None, help="comma list of vru_lens.study.STAGES (default: all)")
    ap.add_argument("--tokenizer", default=None, help="a folder with Qwen2.5's tokenizer (default: the cached 0.5B)")
    ap.add_argument("--folder", default=None, help="where the random model is saved (default: a temporary folder)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="write the timings here as JSON")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from vru_lens.results import write_json_atomic
    from vru_lens.study import STAGES, StudyConfig, run_study

    shape = b7.QWEN_7B if args.shape == "7b" else SMALL
    folder = Path(args.folder or tempfile.mkdtemp(prefix="vru-7b-shape-"))
    t = time.perf_counter()
    if not (folder / "config.json").exists():
        model = b7.build_model(shape, torch.bfloat16, args.device)
        model.save_pretrained(folder)
        tok, tok_name = b7.tokenizer(args.tokenizer)
        tok.save_pretrained(folder)
        print(f"tokenizer: {tok_name}", flush=True)
        del model
        if str(args.device).startswith("cuda"):
            torch.cuda.empty_cache()
    built = time.perf_counter() - t
    cfg = StudyConfig(**(STUDY if args.study else QUICK),
                      stages=tuple(args.stages.split(",")) if args.stages else STAGES)
    clock = StageClock(args.device)
    out = Path(tempfile.mkdtemp(prefix="vru-7b-study-"))
    run_study(str(folder), out, cfg, device=args.device, progress=False, log=clock, dtype=torch.bfloat16)
    clock.close()
    total = sum(r["seconds"] for r in clock.rows)
    print(f"whole study: {total:.1f} s ({total / 60:.1f} min) on {args.device}, shape {args.shape}; "
          f"building and saving the random model took {built:.1f} s more", flush=True)
    if args.out:
        write_json_atomic(args.out, {"shape": shape, "device": args.device, "config": asdict(cfg),
                                     "build_s": round(built, 1), "stages": clock.rows, "total_s": round(total, 1),
                                     "torch": torch.__version__, "results": str(out)})


if __name__ == "__main__":
    main()
