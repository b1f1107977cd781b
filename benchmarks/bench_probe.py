"""Probe training: vru-lens's batched all-layer trainer against scikit-learn, on the same cached activations.

Both fit the same objective on the same standardised features: multinomial
logistic regression with an L2 penalty (vru-lens: mean cross-entropy +
wd/2 ||W||^2; sklearn: C = 1 / (wd * n_train)), one probe per layer, train /
test split by item. vru-lens trains every layer at once (bound-optimisation
steps by default, or Adam; a fixed number of steps); sklearn fits ``StandardScaler + LogisticRegression``
(lbfgs, to its own tolerance) layer after layer. Prints per-layer accuracies,
wall times and their ratio (same process, same threads).

    python benchmarks/bench_probe.py --cache acts.pt            # reuse activations
    python benchmarks/bench_probe.py --model smollm2-135m-instruct --n 1000 --cache acts.pt  # capture first

scikit-learn is a benchmark-only dependency (the ``dev`` extra).
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--n", type=int, default=1000, help="items (the cache must hold these)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--target", default="heading")
    ap.add_argument("--cache", type=Path, help="ResidCache file: loaded if present, else captured and written")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--weight-decay", type=float, default=1e-2)
    ap.add_argument("--solver", default="bound", help="vru-lens solver: bound | adam")
    ap.add_argument("--steps", type=int, default=None, help="vru-lens steps (default: the solver's)")
    ap.add_argument("--lr", type=float, default=0.03, help="adam only")
    ap.add_argument("--max-iter", type=int, default=1000, help="sklearn lbfgs iteration cap")
    ap.add_argument("--test-frac", type=float, default=0.2)
    ap.add_argument("--json", type=Path, help="write the numbers here")
    args = ap.parse_args()

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from vru_lens.bench import make_items
    from vru_lens.probe import ResidCache, capture, split_items, target_labels, train_probes

    items = make_items(args.n, seed=args.seed)
    if args.cache is not None and args.cache.exists():
        cache = ResidCache.load(args.cache)
        if cache.meta.get("item_ids") != [it["id"] for it in items]:
            raise SystemExit(f"{args.cache} holds other items than --n {args.n} --seed {args.seed}")
    else:
        from vru_lens.models import load_model

        cache = capture(load_model(args.model), items, batch_size=args.batch_size, progress=True)
        cache.meta.update(n_items=len(items), item_ids=[it["id"] for it in items])
        if args.cache is not None:
            cache.save(args.cache)
    y, classes = target_labels(items, cache, args.target)
    test = split_items(len(items), args.test_frac, args.seed)[cache.item]
    tr, te = torch.from_numpy(~test), torch.from_numpy(test)
    X_tr, X_te = cache.resid[:, tr].contiguous(), cache.resid[:, te].contiguous()
    y_tr, y_te = y[~test], y[test]
    n_layers, n_tr, d = X_tr.shape
    print(f"{cache.meta.get('model', args.model)}: {n_layers} layers, {n_tr} train / {len(y_te)} test rows, d={d}, "
          f"{len(classes)} classes, torch threads {torch.get_num_threads()}")

    def run_ours():
        t0 = time.perf_counter()
        probes = train_probes(X_tr, y_tr, len(classes), weight_decay=args.weight_decay, steps=args.steps, lr=args.lr,
                              seed=args.seed, solver=args.solver)
        acc = (probes.predict(X_te) == torch.from_numpy(y_te)[None]).float().mean(1).numpy()
        return acc, time.perf_counter() - t0

    ours, t_before = run_ours()  # timed before and after sklearn: the machine's load drifts

    C = 1.0 / (args.weight_decay * n_tr)
    theirs, iters = np.zeros(n_layers), []
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for l in range(n_layers):
            clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=args.max_iter))
            clf.fit(X_tr[l].numpy(), y_tr)
            theirs[l] = clf.score(X_te[l].numpy(), y_te)
            iters.append(int(clf[-1].n_iter_.max()))
    t_sk = time.perf_counter() - t0
    _, t_after = run_ours()
    t_ours = (t_before + t_after) / 2

    gap = ours - theirs
    print(f"{'layer':>5} {'vru-lens':>9} {'sklearn':>8} {'gap':>7} {'lbfgs it':>8}")
    for l in range(n_layers):
        print(f"{cache.layers[l]:>5} {ours[l]:>9.4f} {theirs[l]:>8.4f} {gap[l]:>+7.4f} {iters[l]:>8}")
    out = {
        "model": cache.meta.get("model", args.model), "target": args.target, "n_items": args.n,
        "n_train_rows": n_tr, "n_test_rows": int(len(y_te)), "layers": [int(l) for l in cache.layers],
        "vru_lens_seconds": round(t_ours, 3), "vru_lens_seconds_runs": [round(t_before, 3), round(t_after, 3)], "sklearn_seconds": round(t_sk, 3), "speedup": round(t_sk / t_ours, 2),
        "vru_lens_accuracy": [round(float(a), 4) for a in ours], "sklearn_accuracy": [round(float(a), 4) for a in theirs],
        "max_abs_gap_points": round(float(np.abs(gap).max() * 100), 2), "mean_gap_points": round(float(gap.mean() * 100), 2),
        "best_layer_vru_lens": int(cache.layers[int(ours.argmax())]), "best_layer_sklearn": int(cache.layers[int(theirs.argmax())]),
        "best_accuracy_gap_points": round(float((ours.max() - theirs.max()) * 100), 2),
        "sklearn_iterations": iters, "solver": args.solver, "steps": args.steps, "lr": args.lr, "weight_decay": args.weight_decay, "C": C,
    }
    print(f"vru-lens {t_ours:.2f} s (all layers, {args.solver}, mean of 2 runs)  sklearn {t_sk:.2f} s (per layer)  "
          f"speedup {out['speedup']:.1f}x  |gap| max {out['max_abs_gap_points']:.2f} pt, mean {out['mean_gap_points']:+.2f} pt")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
