"""Search the organism's recipe on a GPU: several configurations trained side by side, one process each.

Not part of the suite. Each run writes its folder, base checkpoint and card under ``--out``, and after
every full evaluation keeps its latest weights in ``NAME-latest`` (so a run cut short still leaves a model).
How the shipped recipe was found (docs/organism.md):
    python benchmarks/organism_recipe_sweep.py --out runs/sweep --device cuda --steps 3000
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time
from dataclasses import replace
from pathlib import Path

VARIANTS = {  # on a GPU a step of 128 stories costs about what 32 do
    "b128": {"batch": 128, "list_batch": 32},
    "b128_siit2": {"batch": 128, "list_batch": 32, "siit_weight": 2.0},
    "b128_siit2_lr2": {"batch": 128, "list_batch": 32, "siit_weight": 2.0, "lr": 2e-3},
    "b128_siit3_attn2": {"batch": 128, "list_batch": 32, "siit_weight": 3.0, "attn_weight": 2.0},
    "b128_siit2_seed1": {"batch": 128, "list_batch": 32, "siit_weight": 2.0, "seed": 1},
    "b128_siit2_aux1": {"batch": 128, "list_batch": 32, "siit_weight": 2.0, "aux_weight": 1.0},
}


def run_variant(name: str, overrides: dict, out: str, device: str, steps: int) -> None:
    import torch

    from vru_lens.organism import recipe
    from vru_lens.organism.train import save

    try:
        import plotly  # noqa: F401
    except ImportError:  # a GPU image without plotly: the curve stays in training.json
        recipe.plot_curve = lambda *args: None
    torch.set_num_threads(2)
    t0 = time.time()
    folder = Path(out, name)
    folder.mkdir(parents=True, exist_ok=True)
    log = open(Path(out, f"{name}.log"), "w")

    def echo(msg):
        log.write(msg + "\n")
        log.flush()

    cfg = replace(recipe.RECIPE, steps=steps, device=device, **overrides)  # what run_recipe trains

    def keep_latest(model, tok, point):
        if "patch_C_flipped" in point:  # a full evaluation
            save(model, tok, [cfg], [point], Path(out, f"{name}-latest"))

    extra = {k: v for k, v in overrides.items() if k != "seed"}
    recipe.run_recipe(folder, seed=overrides.get("seed", 0), steps=steps, threads=2, log=echo, device=device,
                      on_point=keep_latest, **extra)
    print(f"{name}: {steps} steps in {time.time() - t0:.0f}s", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--only", nargs="*", default=None)
    args = ap.parse_args()
    names = args.only or list(VARIANTS)
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=run_variant, args=(n, VARIANTS[n], args.out, args.device, args.steps)) for n in names]
    for p in procs:
        p.start()
    for p in procs:
        p.join()


if __name__ == "__main__":
    main()
