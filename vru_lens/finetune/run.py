"""One fine-tuning experiment end to end: VRU + general ability before, train, after.

``run_experiment`` is what ``vru-lens finetune`` calls; the baselines go through
it too (``method``), so every method sees the same items and the same steps.
Base-model measurements (VRU accuracy and the general suite with its KL
reference) are cached in ``cache_dir`` keyed by model, data and suite, so a
series of runs computes them once.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..results import Result

METHODS = ("heads", "random", "bottom", "full", "lora")
HELDOUT_TEMPLATES = ("spin_deg_to_the_dir", "three_quarter_turn", "face_opposite")
DEFAULT_LR = {"heads": 1e-3, "random": 1e-3, "bottom": 1e-3, "full": 2e-5, "lora": 1e-3}


@dataclass
class FinetuneResult(Result):
    model: str
    method: str
    heads: list
    components: str
    trainable_params: int
    optimizer_state_bytes: int
    vru_accuracy_before: float
    vru_accuracy_after: float
    vru_before: dict  # test / in_distribution / heldout_templates accuracies
    vru_after: dict
    general_before: dict
    general_after: dict
    general_delta: dict
    train: dict  # TrainResult as a dict
    data: dict
    extra: dict = field(default_factory=dict)

    def summary(self) -> dict:
        return {k: getattr(self, k) for k in ("model", "method", "heads", "components", "trainable_params",
                                               "optimizer_state_bytes",
                                               "vru_accuracy_before", "vru_accuracy_after", "vru_before", "vru_after",
                                               "general_before", "general_after", "general_delta")}

    def to_frame(self):
        """One row per measurement (VRU splits, general metrics): before, after and the change."""
        import pandas as pd

        rows = [{"metric": f"vru/{k}", "before": v, "after": self.vru_after.get(k)}
                for k, v in self.vru_before.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
        rows += [{"metric": k, "before": v, "after": self.general_after.get(k)} for k, v in self.general_before.items()]
        f = pd.DataFrame(rows, columns=["metric", "before", "after"]).astype({"before": float, "after": float})
        return f.assign(delta=f["after"] - f["before"])

    def plot(self, title: str | None = None):
        """Training loss and validation accuracy by step (``viz.finetune_curves``)."""
        from ..viz import finetune_curves

        fig = finetune_curves({self.method: self})
        return fig.update_layout(title=title) if title else fig


def vru_breakdown(model, items, chat: bool = False, batch_size: int = 16, progress: bool = False) -> dict:
    """VRU accuracy (points) on the test split, on its items using held-out templates, and on the rest."""
    from ..patching.metrics import items_pair_accuracy
    from .train import score_items

    ok = score_items(model, items, chat, batch_size, progress)
    held = [c for c, it in zip(ok, items) if it.get("uses_heldout_template")]
    seen = [c for c, it in zip(ok, items) if not it.get("uses_heldout_template")]
    pct = lambda xs: 100.0 * sum(xs) / len(xs) if xs else float("nan")  # noqa: E731
    return {"test": pct(ok), "n": len(ok), "heldout_templates": pct(held), "in_distribution": pct(seen),
            "n_heldout": len(held), "n_in_distribution": len(seen),
            # an accuracy gain that leaves pairs' both_right at 0 did not come from following the rotation
            "pairs": items_pair_accuracy(model, items, chat, batch_size), "blind_baseline": blind_points(items)}


def blind_points(items) -> float | None:
    """The rotation-blind guess's accuracy in points (``bench.shortcuts``): the floor a VRU gain must clear."""
    from ..bench.shortcuts import blind_accuracy

    blind = blind_accuracy(items)
    return None if blind is None else 100.0 * blind


def _key(*parts) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def make_trainable(model, method: str, heads=None, top_k: int = 16, components: str = "qo",
                   lora_rank: int | None = None, head_seed: int = 0, seed: int = 0):
    """What ``method`` trains on ``model``: (trainable, chosen heads, extra facts). ``heads``: a ranking (file,
    HeadScores or list) for top/bottom-k and for the heads random-k avoids; LoRA's rank matches the head budget."""
    from .adapters import HeadDeltas, geometry, resolve_heads
    from .baselines import FullFinetune, LoraAdapters, random_heads

    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    geom = geometry(model)
    chosen, extra = [], {}
    if method in ("heads", "random", "bottom"):
        if method == "heads":
            chosen = resolve_heads(heads, top_k)
        elif method == "random":
            exclude = resolve_heads(heads, top_k) if heads is not None else ()
            chosen = random_heads(geom, top_k, seed=head_seed, exclude=exclude)
        else:
            if heads is None:
                raise ValueError("bottom-k needs a ranking (a ranking file or HeadScores)")
            ranked = resolve_heads(heads, geom["n_layers"] * geom["n_heads"])  # best first
            chosen = sorted(ranked[-top_k:])
        trainable = HeadDeltas(model, chosen, components)
        extra["kv_sharing"] = trainable.kv_sharing
    elif method == "full":
        trainable = FullFinetune(model)
    else:
        budget = 2 * top_k * geom["d_head"] * geom["d_model"] * (1 if components == "qo" else 2)
        trainable = LoraAdapters(model, rank=lora_rank, budget=None if lora_rank else budget, seed=seed)
        extra["lora_rank"], extra["lora_alpha"], extra["budget"] = trainable.rank, trainable.alpha, budget
    return trainable, chosen, extra


def run_experiment(model, method: str = "heads", heads=None, top_k: int = 16, components: str = "qo",
                   train_cfg=None, n_train: int = 2000, n_val: int = 64, n_test: int = 300, data_seed: int = 0,
                   heldout_templates=HELDOUT_TEMPLATES, suite=None, out: str | Path | None = None,
                   checkpoint: str | Path | None = None, resume: bool = False, cache_dir: str | Path | None = None,
                   lora_rank: int | None = None, head_seed: int = 0, progress: bool = True, log=print) -> FinetuneResult:
    """Train one method on VRUBench and measure VRU and general ability before and after."""
    import torch

    from ..bench import BenchConfig, make_splits
    from ..general_eval import GeneralResult, compare
    from .adapters import HeadDeltas
    from .baselines import LoraAdapters
    from .train import TrainConfig, train

    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    cfg = train_cfg or TrainConfig(lr=DEFAULT_LR[method])
    name = getattr(model, "vru_name", "model")
    splits = make_splits(n_train, n_val, n_test, data_seed, BenchConfig(), heldout_templates=tuple(heldout_templates))
    data = {"n_train": n_train, "n_val": n_val, "n_test": n_test, "seed": data_seed,
            "heldout_templates": list(heldout_templates), "chat": cfg.chat}
    cache = Path(cache_dir) if cache_dir else None

    # ---- base measurements (cached) ----
    t0 = time.perf_counter()
    vru_file = cache / f"vru_base_{name}_{_key(data)}.json" if cache else None
    if vru_file and vru_file.exists():
        vru_before = json.loads(vru_file.read_text())
        if "pairs" not in vru_before or "blind_baseline" not in vru_before:  # cached by an older version
            from ..patching.metrics import items_pair_accuracy

            if "pairs" not in vru_before:
                vru_before["pairs"] = items_pair_accuracy(model, splits["test"], cfg.chat, cfg.eval_batch_size)
            vru_before["blind_baseline"] = blind_points(splits["test"])
            vru_file.write_text(json.dumps(vru_before))
    else:
        vru_before = vru_breakdown(model, splits["test"], cfg.chat, cfg.eval_batch_size, progress)
        if vru_file:
            vru_file.parent.mkdir(parents=True, exist_ok=True)
            vru_file.write_text(json.dumps(vru_before))
    general_before = None
    if suite is not None:
        gkey = _key(name, asdict(suite))
        gfile, rfile = (cache / f"general_base_{name}_{gkey}.json", cache / f"general_base_{name}_{gkey}.pt") if cache else (None, None)
        if gfile and gfile.exists() and rfile.exists():
            general_before = GeneralResult.load(gfile).load_reference(rfile)
        else:
            general_before = suite.run(model, progress=progress)
            if gfile:
                general_before.save(gfile)
                general_before.save_reference(rfile)
    log(f"base measured in {time.perf_counter() - t0:.0f}s: VRU {vru_before}")

    # ---- what to train ----
    trainable, chosen, extra = make_trainable(model, method, heads, top_k, components, lora_rank, head_seed, cfg.seed)
    log(f"{method}: {trainable.num_parameters():,} trainable parameters" + (f", heads {chosen}" if chosen else ""))

    # ---- train ----
    result = train(model, trainable, splits["train"], splits.get("validation"), cfg, checkpoint=checkpoint,
                   resume=resume, progress=progress)
    log(f"trained {cfg.steps} steps in {result.seconds:.0f}s; best validation {result.best_accuracy:.3f} at step {result.best_step}")
    if out is not None and isinstance(trainable, HeadDeltas):
        trainable.save(out, train_config=asdict(cfg), extra={"method": method, "data": data,
                                                             "best_step": result.best_step})
    elif out is not None and isinstance(trainable, LoraAdapters):
        from safetensors.torch import save_file

        Path(out).parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in trainable.trainable_state().items()}, str(out),
                  metadata={"method": "lora", "rank": str(trainable.rank), "train_config": json.dumps(asdict(cfg))})

    # ---- after ----
    with trainable.active(model), torch.no_grad():
        vru_after = vru_breakdown(model, splits["test"], cfg.chat, cfg.eval_batch_size, progress)
        general_after = suite.run(model, reference=general_before, progress=progress, keep_reference=False) if suite else None
    gb = general_before.headline() if general_before else {}
    ga = general_after.headline() if general_after else {}
    delta = {}
    if general_before is not None:
        table = compare(general_before, general_after)
        delta = dict(zip(table.metric, table.delta))
        gb = dict(zip(table.metric, table.before))
    return FinetuneResult(name, method, [list(h) for h in chosen], components if chosen else "", trainable.num_parameters(),
                          result.optimizer_state_bytes, vru_before["test"], vru_after["test"], vru_before, vru_after,
                          gb, ga, delta, result.to_dict(), data, extra)
