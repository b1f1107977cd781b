"""One fine-tuning experiment in three steps: choose what to train, measure the base, train and measure again.

``FinetuneConfig`` holds every setting (as nanoGPT's ``GPTConfig`` does):

    trainable, heads, extra = make_trainable(model, cfg, ranking)        # choosing the heads
    vru, general = measure_base(model, cfg, measure, suite, cache_dir)   # the base, cached
    result = run_experiment(model, cfg, ranking, measure=..., accuracy=...)  # both, then training

``run_experiment`` is what ``vru-lens finetune`` and the study call; the baselines go
through it too (``cfg.method``), so every method sees the same items and the same
steps. Base-model measurements (VRU accuracy and the general suite with its KL
reference) are cached in ``cache_dir`` keyed by model, data and suite, so a series
of runs computes them once (the key assumes the same ``measure``).

Accuracy comes from the caller, so fine-tuning never imports the evaluation stage
above it: ``measure(model, items) -> dict`` of VRU accuracies as fractions (0-1),
with at least ``"test"`` (``functools.partial(vru_lens.evaluate.vru_breakdown,
chat=..., batch_size=...)``), and ``accuracy(model, items) -> float`` for validation
during training (``vru_lens.evaluate.accuracy`` bound the same way).
"""

from __future__ import annotations

import json
import time
from dataclasses import KW_ONLY, asdict, dataclass, field, replace
from pathlib import Path

from ..results import Accuracy, Result, cache_key, model_name, t_interval
from ..tokens import chat_for
from .adapters import COMPONENTS
from .train import TrainConfig

METHODS = ("heads", "random", "bottom", "full", "lora")
HELDOUT_TEMPLATES = ("spin_deg_to_the_dir", "three_quarter_turn", "face_opposite")
DEFAULT_LR = {"heads": 1e-3, "random": 1e-3, "bottom": 1e-3, "full": 1e-4, "lora": 1e-3}


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
    vru_before: dict  # the measure's dict: test / in_distribution / heldout_templates accuracies (fractions), ...
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


# what ``seed_summary`` averages over seeds: name -> the value of one run's ``summary()`` after tuning (None: not measured)
SEED_METRICS = {
    "vru_test": lambda s: s["vru_after"].get("test"),
    "pairs_both_right": lambda s: (s["vru_after"].get("pairs") or {}).get("both_right"),
    "transfer_story": lambda s: s["vru_after"].get("transfer_story"),
    "transfer_six_actions": lambda s: s["vru_after"].get("transfer_six_actions"),
    "general_average": lambda s: s["general_after"].get("average"),
    "wiki_ppl": lambda s: s["general_after"].get("wiki/ppl"),
    "wiki_kl": lambda s: s["general_after"].get("wiki/kl"),
    "list_acc": lambda s: s["general_after"].get("list/acc"),
    "list_kl": lambda s: s["general_after"].get("list/kl"),
}


def seed_key(result: "FinetuneResult") -> str:
    """What runs of one arm over fine-tuning seeds share: method, data, component slices and training settings but
    the seed (runs that differ in anything else are never averaged together)."""
    train = {k: v for k, v in (result.train.get("config") or {}).items() if k != "seed"}
    return cache_key([result.model, result.method, result.data, result.components, _size(result), train])


def _size(result: "FinetuneResult"):
    """What k a run was made at: its heads' count, or for LoRA the parameter budget it was sized to (no heads)."""
    return len(result.heads) if result.heads else result.extra.get("budget")


def arms_of(results) -> dict[str, list]:
    """FinetuneResults grouped into arms: one method at one setting (``seed_key``), over its seeds. Named by
    method; where one method has runs of more than one setting, by method and k when k tells them apart
    ("heads k=16", "lora budget=2359296"), else by method and key."""
    groups: dict = {}
    for r in results:
        groups.setdefault((r.method, seed_key(r)), []).append(r)
    methods = [m for m, _ in groups]

    def name(method, key, runs):
        if methods.count(method) == 1:
            return method
        sizes = [_size(rs[0]) for (m, _), rs in groups.items() if m == method]
        size = _size(runs[0])
        if sizes.count(size) > 1:
            return f"{method} ({key})"
        return f"{method} {'k' if runs[0].heads else 'budget'}={size}"

    return {name(method, key, runs): runs for (method, key), runs in groups.items()}


def seed_summary(results) -> dict:
    """Each arm's runs over fine-tuning seeds (FinetuneResults; runs with other settings are kept apart:
    ``arms_of``) -> {arm: {"method", "n", "seeds", "before": {metric: value}, metric: t_interval(values after)}}, the
    95% Student-t interval over seeds of every ``SEED_METRICS`` entry measured in each run (n = 1: the point)."""
    out = {}
    for name, runs in arms_of(results).items():
        sums = [r.summary() for r in runs]
        arm = {"method": runs[0].method, "n": len(runs), "seeds": [(r.train.get("config") or {}).get("seed") for r in runs],
               "before": {}}
        for metric, get in SEED_METRICS.items():
            after = [get(s) for s in sums]
            if any(v is None for v in after):
                continue
            arm["before"][metric] = get({"vru_after": sums[0]["vru_before"], "general_after": sums[0]["general_before"]})
            arm[metric] = t_interval(after)
        out[name] = arm
    return out


@dataclass
class FinetuneConfig:
    """Every setting of one experiment: what to train, on which data, how (``train``: None = the method's
    default learning rate, ``DEFAULT_LR``)."""

    method: str = "heads"  # one of METHODS
    top_k: int = 16  # heads (and LoRA's parameter budget)
    _: KW_ONLY  # the rest by name
    components: str = "qo"  # head-delta slices, one of finetune.COMPONENTS
    lora_rank: int | None = None  # None: matched to the head-delta budget
    head_seed: int = 0  # random-k draws
    n_train: int = 2000
    n_val: int = 64
    n_test: int = 300
    data_seed: int = 0
    heldout_templates: tuple = HELDOUT_TEMPLATES
    train: TrainConfig | None = None

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.components not in COMPONENTS:
            raise ValueError(f"components must be one of {', '.join(COMPONENTS)}, got {self.components!r}")
        if min(self.top_k, self.n_train, self.n_test) < 1 or self.n_val < 0:
            raise ValueError("top_k, n_train and n_test must be positive and n_val not negative")
        self.heldout_templates = tuple(self.heldout_templates)
        if self.train is None:
            self.train = TrainConfig(lr=DEFAULT_LR[self.method])

    def for_model(self, model) -> "FinetuneConfig":
        """This config with ``train.chat`` resolved for ``model`` (None: the model's kind, ``tokens.chat_for``)."""
        return replace(self, train=replace(self.train, chat=chat_for(model, self.train.chat)))

    def data(self) -> dict:
        """The data settings (recorded in the result and keying the base-measurement cache)."""
        return {"n_train": self.n_train, "n_val": self.n_val, "n_test": self.n_test, "seed": self.data_seed,
                "heldout_templates": list(self.heldout_templates), "chat": self.train.chat}

    def splits(self) -> dict:
        from ..bench import BenchConfig, make_splits

        return make_splits(self.n_train, self.n_val, self.n_test, self.data_seed, BenchConfig(),
                           heldout_templates=self.heldout_templates)


# ------------------------------------------------------------------ choosing the heads
def make_trainable(model, cfg: FinetuneConfig, heads=None, allow_other_model: bool = False):
    """What ``cfg.method`` trains on ``model``: (trainable, chosen heads, extra facts). ``heads``: a ranking (file,
    HeadScores or list) for top/bottom-k and for the heads random-k avoids; LoRA's rank matches the head budget.
    A ranking of another model is refused unless ``allow_other_model`` (``resolve_heads``)."""
    from .adapters import HeadDeltas, geometry, resolve_heads
    from ..heads import random_heads
    from .baselines import FullFinetune, LoraAdapters

    method, top_k = cfg.method, cfg.top_k
    geom = geometry(model)
    chosen, extra = [], {}
    if method in ("heads", "random", "bottom"):
        if method == "heads":
            if heads is None:
                raise ValueError("method heads needs a ranking (a ranking file, HeadScores or a list of heads)")
            chosen = resolve_heads(heads, top_k, model, allow_other_model)
        elif method == "random":
            exclude = resolve_heads(heads, top_k, model, allow_other_model) if heads is not None else ()
            chosen = random_heads(geom["n_layers"], geom["n_heads"], top_k, seed=cfg.head_seed, exclude=exclude)
        else:
            if heads is None:
                raise ValueError("bottom-k needs a ranking (a ranking file or HeadScores)")
            ranked = resolve_heads(heads, geom["n_layers"] * geom["n_heads"], model, allow_other_model)  # best first
            chosen = sorted(ranked[-top_k:])
        trainable = HeadDeltas(model, chosen, cfg.components)
        extra["kv_sharing"] = trainable.kv_sharing
    elif method == "full":
        trainable = FullFinetune(model)
    else:
        budget = 2 * top_k * geom["d_head"] * geom["d_model"] * (1 if cfg.components == "qo" else 2)
        trainable = LoraAdapters(model, rank=cfg.lora_rank, budget=None if cfg.lora_rank else budget, seed=cfg.train.seed)
        extra["lora_rank"], extra["lora_alpha"], extra["budget"] = trainable.rank, trainable.alpha, budget
    return trainable, chosen, extra


def gradient_ranking(model, path: str | Path | None = None, chat: bool | None = None, seed: int = 0, n_items: int = 128,
                     log=print):
    """The stand-in ranking where no patching ranking exists yet: ``rank_heads(..., "gradient")`` on the
    counterfactual pairs of ``n_items`` training items (seed ``seed + 1``), a HeadScores. Kept at ``path``
    when given; a file there for the same model and settings is reused, one for others is recomputed."""
    from ..bench import PAIRABLE, make_items
    from ..patching.rank import rank_heads
    from ..patching.scores import HeadScores

    chat = chat_for(model, chat)
    stand_in = {"seed": seed, "chat": chat, "n_items": n_items}
    path = Path(path) if path is not None else None
    if path is not None and path.exists():
        old = HeadScores.load(path)
        if old.model == model_name(model) and old.method == "gradient" and old.meta.get("stand_in") == stand_in:
            return old
    log(f"no ranking given: ranking heads by gradient x activation on the pairs of {n_items} training items"
        + (f" -> {path}" if path else ""))
    scores = rank_heads(model, make_items(n_items, seed + 1, PAIRABLE, split="train"), "gradient", n_boot=0,
                        progress=False, chat=chat)
    scores.meta["stand_in"] = stand_in
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        scores.save(path)
    return scores


# ------------------------------------------------------------------ measuring (cached)
def measure_base(model, cfg: FinetuneConfig, measure, suite=None, cache_dir: str | Path | None = None,
                 progress: bool = True, test_items=None):
    """The base model's VRU measurement (``measure(model, test items)``) and general suite result (with its
    KL reference), read from ``cache_dir`` when there and written there otherwise."""
    from ..general_eval import GeneralResult

    name, cfg = model_name(model), cfg.for_model(model)
    cache = Path(cache_dir) if cache_dir else None
    if cache:
        cache.mkdir(parents=True, exist_ok=True)
    items = test_items if test_items is not None else cfg.splits()["test"]
    vru_file = cache / f"vru_base_{name}_{cache_key([cfg.data(), 'fractions'])}.json" if cache else None
    if vru_file and vru_file.exists():
        from ..jsonio import load_json

        vru = load_json(vru_file)
    else:
        vru = measure(model, items)
        if vru_file:
            from ..results import write_json_atomic

            write_json_atomic(vru_file, vru)  # strict JSON: a NaN (no held-out items) is null and flagged
    general = None
    if suite is not None:
        gkey = cache_key([name, asdict(suite), "fractions"])  # earlier versions cached accuracies in points
        gfile, rfile = (cache / f"general_base_{name}_{gkey}.json", cache / f"general_base_{name}_{gkey}.pt") if cache else (None, None)
        if gfile and gfile.exists() and rfile.exists():
            general = GeneralResult.load(gfile).load_reference(rfile)
        else:
            general = suite.run(model, reference=None, progress=progress)
            if gfile:
                general.save(gfile)
                general.save_reference(rfile)
    return vru, general


# ------------------------------------------------------------------ training, and the whole experiment
def save_trainable(trainable, out: str | Path, cfg: FinetuneConfig, best_step: int) -> None:
    """Head deltas or LoRA weights as .safetensors with their settings (full fine-tuning writes nothing)."""
    from .adapters import HeadDeltas
    from .baselines import LoraAdapters

    if isinstance(trainable, HeadDeltas):
        trainable.save(out, train_config=asdict(cfg.train), extra={"method": cfg.method, "data": cfg.data(),
                                                                    "best_step": best_step})
    elif isinstance(trainable, LoraAdapters):
        from safetensors.torch import save_file

        Path(out).parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in trainable.trainable_state().items()}, str(out),
                  metadata={"method": "lora", "rank": str(trainable.rank), "train_config": json.dumps(asdict(cfg.train))})


def run_experiment(model, cfg: FinetuneConfig, heads=None, *, measure, accuracy: Accuracy, suite=None,
                   out: str | Path | None = None, checkpoint: str | Path | None = None, resume: bool = False,
                   cache_dir: str | Path | None = None, progress: bool = True, log=print,
                   allow_other_model: bool = False, splits: dict | None = None) -> FinetuneResult:
    """Train ``cfg.method`` on VRUBench and measure VRU (``measure``) and general ability (``suite``) before and
    after; ``accuracy`` scores validation. The model's own weights are unchanged on return. A ranking of
    another model is refused before any work unless ``allow_other_model``.

    ``splits``: a task of the user's own instead of VRUBench, {"train": PairTokens, "validation": PairTokens or
    None, "test": PairTokens} (``PairTokens.from_prompts``); training reads the train pairs' clean answers and
    ``measure``/``accuracy`` get the PairTokens. The base measurement is then not cached (its key is VRUBench's).
    """
    import torch

    from ..general_eval import compare
    from .adapters import resolve_heads
    from .train import train

    if splits is not None and (splits.get("train") is None or splits.get("test") is None):
        raise ValueError("splits needs train and test pairs (PairTokens.from_prompts), and validation or None")
    if heads is not None and cfg.method in ("heads", "random", "bottom"):
        resolve_heads(heads, cfg.top_k, model, allow_other_model)  # a wrong ranking: refused before measuring
    cfg = cfg.for_model(model)
    tc, name = cfg.train, model_name(model)
    data = cfg.data()
    if splits is None:
        splits = cfg.splits()
    else:
        from ..patching.checkpoint import tokens_hash

        if splits.get("train") is None or splits.get("test") is None:
            raise ValueError("splits needs train and test pairs (PairTokens.from_prompts), and validation or None")
        cache_dir = None
        data = {"pairs": {k: len(v) for k, v in splits.items() if v is not None},
                "tokens": {k: tokens_hash(v) for k, v in splits.items() if v is not None}}
    t0 = time.perf_counter()
    vru_before, general_before = measure_base(model, cfg, measure, suite, cache_dir, progress, splits["test"])
    log(f"base measured in {time.perf_counter() - t0:.0f}s: VRU {vru_before}")

    trainable, chosen, extra = make_trainable(model, cfg, heads, allow_other_model)
    log(f"{cfg.method}: {trainable.num_parameters():,} trainable parameters" + (f", heads {chosen}" if chosen else ""))
    result = train(model, trainable, splits["train"], splits.get("validation"), tc, checkpoint=checkpoint,
                   resume=resume, progress=progress, accuracy=accuracy)
    log(f"trained {tc.steps} steps in {result.seconds:.0f}s; best validation {result.best_accuracy:.3f} at step {result.best_step}")
    if out is not None:
        save_trainable(trainable, out, cfg, result.best_step)

    with trainable.active(model), torch.no_grad():
        vru_after = measure(model, splits["test"])
        general_after = suite.run(model, reference=general_before, progress=progress, keep_reference=False) if suite else None
    gb = general_before.headline() if general_before else {}
    ga = general_after.headline() if general_after else {}
    delta = {}
    if general_before is not None:
        table = compare(general_before, general_after)
        delta = dict(zip(table.metric, table.delta))
        gb = dict(zip(table.metric, table.before))
    return FinetuneResult(name, cfg.method, [list(h) for h in chosen], cfg.components if chosen else "",
                          trainable.num_parameters(), result.optimizer_state_bytes, vru_before["test"], vru_after["test"],
                          vru_before, vru_after, gb, ga, delta, result.to_dict(), data, extra)
