"""The one study pipeline, stage by stage: what `vru-lens run`, `vru-lens organism study` and `make demo` call.

evaluate -> probes and logit lens -> head rankings with CIs -> knockout curve -> attention of the
top heads -> selective fine-tuning (from the model's base checkpoint where one exists) against
baselines, with forgetting -> the tuned model re-evaluated, re-ranked and re-probed (``STAGES``).

On a model with a known circuit C (an organism's card) the optional stages ``GRADED_STAGES`` grade
against it (their steps are in ``vru_lens.organism.graded``): probes with control tasks, every ranking
method graded against C, knockout curves of the rankings and C against random k-sets, fine-tuning arms
over seeds from the base checkpoint, and the closed loop (the tuned model re-ranked and re-probed).

Each stage of ``STAGES`` saves its result as ``OUT/<model>/<stage>-<key>.json``, the key hashing the model,
the data and every setting the stage reads, so a re-run skips what is on disk for the same
settings and recomputes what changed. ``OUT/<model>/study.json`` lists the files of the last run;
the report (``vru_lens.report``) reads every model's list in OUT. The graded stages write their results
and figures into the same folder, their summary to ``graded.json`` and its tables to ``tables.md``
(recomputed on every run).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from .results import cache_key

STAGES = ("eval", "probe", "lens", "rank", "knockout", "attention", "finetune", "after")
GRADED_STAGES = ("probes", "rankings", "circuit_knockout", "arms", "closed_loop")
PROBE_STAGES = {"heading": "probe", "object": "probe_object"}  # probe target -> the stage (file) holding it
GRADED_FT_SEEDS = (0, 1, 2)  # the graded arms' fine-tuning seeds where StudyConfig.ft_seeds is unset
STUDY_TUNING = dict(lr=2e-5, batch_size=32, n_train=2000)  # the study's fine-tuning settings (Adam lr, batch, items)


def check_stages(stages) -> None:
    """Refuse a stage name the pipeline does not have, and the closed loop without the arms it reads."""
    unknown = [s for s in stages if s not in STAGES + GRADED_STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {', '.join(unknown)}; choose from {', '.join(STAGES)} "
                         f"(and, on a model with a known circuit, {', '.join(GRADED_STAGES)})")
    if "closed_loop" in stages and "arms" not in stages:
        raise ValueError("the closed_loop stage merges the arms stage's top-k deltas: run arms with it")


@dataclass
class StudyConfig:
    """Every setting of a run (defaults: the study's; ``quick()``: the demo's; ``organism()``: the graded study's)."""

    n_eval: int = 300  # test items: evaluation, logit lens, knockout, fine-tuning's test split
    n_probe: int = 1000
    n_pairs: int = 64  # counterfactual pairs for head ranking
    method: str = "path"  # the ranking that chooses heads for knockout and fine-tuning
    compare: tuple = ("activation", "attribution")  # more rankings, shown beside it
    n_boot: int = 1000
    top_k: int | None = None  # heads to fine-tune; None: 32 (the study's), at most a quarter of the heads
    knockout_k: int | None = None  # knockout curve for k = 0..knockout_k; None: 2 * top_k
    knockout_ks: tuple | None = None  # only these k (e.g. 1, 2, 4, ..., 32 on a large model); None: every k
    n_random: int = 10  # random head sets per k
    components: str = "qkvo"  # W_Q/W_K/W_V/W_O slices
    # None: unset. The plain fine-tuning stage fills unset values (``for_tuning``): on a deficit organism the
    # repair experiment's, elsewhere the study's (lr 2e-5 for every method, batch 32, 2,000 items); the graded
    # arms read an unset lr as each method's finetune.DEFAULT_LR.
    lr: float | None = None  # Adam
    method_lr: bool = False  # the plain stage too: lr unset means each method's finetune.DEFAULT_LR, not the study's
    n_val: int = 64  # fine-tuning's validation items (the best step's state is kept)
    warmup: int = 20  # fine-tuning's linear warmup steps (at most all of them)
    batch_size: int | None = None
    n_train: int | None = None  # one epoch: n_train / batch_size steps
    epochs: int = 1
    ft_steps: int | None = None  # fine-tuning steps; None: epochs * n_train // batch_size
    baselines: tuple = ("random", "lora")  # fine-tuned besides the top heads
    general_n: int = 100  # items per general task (forgetting), 0: skip
    n_transfer: int = 0  # fine-tuning's transfer sets (story-style phrasing, 6-action stories): items each, 0: skip
    seed: int = 0
    chat: bool | None = None  # None: as the study did (chat for instruction-tuned models)
    stages: tuple = STAGES
    base: str | None = None  # the checkpoint fine-tuning starts from; None: base_checkpoint(model)
    # read by the graded stages only
    ig_steps: int = 16  # integrated-gradient steps of the second attribution ranking
    # one run of each fine-tuning arm per seed (what training randomises: batch order, the random-k draw, LoRA's
    # init; the items, pairs and ranking stay those of ``seed``). None: the plain stage runs each arm once with
    # ``seed``, the graded arms run ``GRADED_FT_SEEDS``
    ft_seeds: tuple | None = None
    n_list: int = 500  # list-recall items (the organism's second task: accuracy, KL)

    @classmethod
    def quick(cls, **kw) -> "StudyConfig":
        """Minutes on a CPU for a small model: fewer items, resamples and draws."""
        base = dict(n_eval=200, n_probe=400, n_pairs=48, n_boot=200, n_random=4,
                    general_n=20, knockout_k=8)
        return cls(**{**base, **kw})

    @classmethod
    def organism(cls, quick: bool = False, **kw) -> "StudyConfig":
        """The graded study on an organism (what docs/organism.md reports): the graded stages, 500 paper-style
        items, 200 pairs, 20 random sets per k; every fine-tuning arm (top heads, random, bottom, LoRA, full)
        300 steps at batch 16, each method's default learning rate, 3 seeds. ``quick``: tiny settings that
        check the pipeline (the numbers mean nothing)."""
        base = dict(n_eval=500, n_pairs=200, n_probe=1000, n_random=20, ig_steps=16, ft_steps=300, batch_size=16,
                    n_train=2000, ft_seeds=(0, 1, 2), n_list=500, lr=None, baselines=("random", "bottom", "lora", "full"),
                    stages=GRADED_STAGES)
        if quick:
            base.update(n_eval=60, n_pairs=16, n_probe=40, n_random=2, ig_steps=2, ft_steps=3, batch_size=4,
                        n_train=40, ft_seeds=(0,), n_list=30)
        return cls(**{**base, **kw})

    def plain_ft_seeds(self) -> tuple:
        """The plain fine-tuning stage's training seeds: ``ft_seeds``, else the one run of ``seed``."""
        return tuple(self.ft_seeds) if self.ft_seeds is not None else (self.seed,)

    def steps(self) -> int:
        return self.ft_steps or max(1, self.epochs * self.n_train // self.batch_size)

    def lr_for(self, method: str) -> float:
        """The learning rate of fine-tuning ``method``: ``lr``, else the method's ``finetune.DEFAULT_LR``."""
        from .finetune.run import DEFAULT_LR

        return self.lr if self.lr is not None else DEFAULT_LR[method]

    def for_tuning(self, base: str | None) -> "StudyConfig":
        """The fine-tuning settings left unset (None) filled in: on a deficit organism (a card naming its
        deficient heads D) the repair experiment's (top-|D| heads, its lr, batch and steps:
        ``organism.repair.RepairConfig``, measured in docs/organism.md); elsewhere the study's."""
        from .models.organisms import ORGANISMS, organism_card

        card = organism_card(base) if base in ORGANISMS else {}
        if card.get("deficient_heads"):
            from .organism.repair import RepairConfig

            rc = RepairConfig()
            unset = dict(top_k=len(card["deficient_heads"]), lr=rc.lr["top"], batch_size=rc.batch, n_train=rc.n_train)
        else:
            unset = dict(top_k=None, **STUDY_TUNING)
        if self.method_lr:
            unset.pop("lr")
        return replace(self, **{k: v for k, v in unset.items() if getattr(self, k) is None})


def base_checkpoint(name: str) -> str | None:
    """The checkpoint fine-tuning starts from, where the package ships one: an organism's deficit
    checkpoint (vru-organism -> vru-organism-deficit: its circuit weakened in known heads D)."""
    from .models.organisms import ORGANISMS, TUNE_FROM

    start = TUNE_FROM.get(name)
    return start if start in ORGANISMS else None


def _circuit(name: str) -> list | None:
    from .models.organisms import known_circuit

    heads = known_circuit(name)
    return [list(h) for h in heads] if heads else None


def _deficient(name: str) -> list | None:
    """A deficit organism's damaged heads D (the known answer its rankings are graded against), else None."""
    from .models.organisms import ORGANISMS, organism_card

    return organism_card(name).get("deficient_heads") if name in ORGANISMS else None


def weights_dtype(model) -> str:
    """The dtype a model computes in, by name ("float32", "bfloat16")."""
    return str(next(model.parameters()).dtype).removeprefix("torch.")


def slug(name: str) -> str:
    return name.replace("/", "__")


@dataclass
class Study:
    """One run's bookkeeping: where each stage's file is, and which results are loaded."""

    out: Path
    model: str
    config: StudyConfig
    progress: bool = True
    log: object = print
    files: dict = field(default_factory=dict)  # stage name -> file name inside out/<model>
    graded: dict | None = None  # the graded stages' summary (also in graded.json)
    # the weights' dtype of this run, and of the run that computed each file (the manifest's "dtypes"): stage keys
    # do not hold it, so a file computed in another dtype is read back, but never without saying so
    dtype: str | None = None
    dtypes: dict = field(default_factory=dict)

    @property
    def folder(self) -> Path:
        return self.out / slug(self.model)

    @property
    def base(self) -> str | None:
        """The checkpoint fine-tuning starts from: the config's, else the one the package ships for the model."""
        return self.config.base or base_checkpoint(self.model)

    def path(self, name: str, settings: dict) -> Path:
        """Where stage ``name``'s result for these settings is saved."""
        return self.folder / f"{name}-{cache_key([self.model, name, settings])}.json"

    def adopt(self, old: Path, new: Path) -> None:
        """A result saved under an earlier stage name or key (``old``) moved to ``new``, never computed again; the
        manifest stops naming the old file."""
        if old == new or not old.exists() or new.exists():
            return
        old.replace(new)
        self.files = {k: v for k, v in self.files.items() if v != old.name}
        saved = self._manifest()
        if saved:
            from .results import write_json_atomic

            saved["files"] = {k: v for k, v in saved.get("files", {}).items() if v != old.name}
            write_json_atomic(self.folder / "study.json", saved)

    def stage(self, name: str, cls, settings: dict, compute):
        """``cls.load`` of the saved result for these settings, or ``compute()`` saved under them."""
        path = self.path(name, settings)
        self.files[name] = path.name
        if path.exists():
            made = {**self._manifest().get("dtypes", {}), **self.dtypes}.get(path.name)
            if made and self.dtype and made != self.dtype:
                self.log(f"[{self.model}] {name}: reading {path.name}, computed in {made}, into a {self.dtype} run "
                         "(delete the file to compute it in this run's dtype)")
            return cls.load(path)
        self.log(f"[{self.model}] {name}")
        result = compute()
        result.save(path)
        if self.dtype:
            self.dtypes[path.name] = self.dtype
        self.write_manifest()
        return result

    def _manifest(self) -> dict:
        """``study.json`` as saved (other runs' files and dtypes included), or {} before the first."""
        path = self.folder / "study.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def write_manifest(self) -> None:
        from .results import write_json_atomic

        path, old = self.folder / "study.json", self._manifest()
        started = old.get("started")
        # runs of other stages into the same folder add up: their files stay listed, this run's replace theirs
        self.files = {**old.get("files", {}), **self.files}
        self.dtypes = {**old.get("dtypes", {}), **self.dtypes}
        write_json_atomic(path, {"model": self.model, "config": asdict(self.config), "started": started or time.time(),
                                 "base": self.base, "circuit": _circuit(self.model),
                                 "deficient": _deficient(self.model), "files": self.files,
                                 **({"dtypes": self.dtypes} if self.dtypes else {}),
                                 **({"graded": "graded.json"} if self.graded is not None else {})})


def run_study(model: str, out: str | Path, config: StudyConfig | None = None, device=None, progress: bool = True,
              log=print, dtype=None) -> Study:
    """Run every stage in ``config.stages`` on ``model`` (loaded here), saving each result under ``out``:
    ``STAGES`` on any model, ``GRADED_STAGES`` on one with a known circuit (``Study.graded`` their summary)."""
    from .models import load_model

    cfg = config or StudyConfig()
    check_stages(cfg.stages)
    study = Study(Path(out), model, cfg, progress, log)
    graded = [s for s in cfg.stages if s in GRADED_STAGES]
    if graded:
        from .models.organisms import organism_card

        organism_card(model)  # fail before any work: the graded stages read the model's card
        if "arms" in graded:
            if not study.base:
                raise ValueError(f"the arms stage fine-tunes from a base checkpoint and {model} has none the "
                                 "package ships: set StudyConfig.base (--base)")
            organism_card(study.base)
    lm = load_model(model, device=device, dtype=dtype)
    study.dtype = weights_dtype(lm)
    if any(s in STAGES for s in cfg.stages):
        plain_stages(study, lm, device, dtype)
    if graded:
        graded_stages(study, lm, device)
    study.write_manifest()
    return study


@dataclass
class _Inputs:
    """What the plain stages of one study read, made once: the base checkpoint and the tuned model are measured
    on the same items, pairs and settings as the model itself."""

    cfg: StudyConfig
    chat: bool
    test_items: list
    pair_items: list
    pairs: dict = field(default_factory=dict)  # id(tokenizer) -> the ranking's pairs tokenized by it

    @property
    def data(self) -> dict:
        """The settings in every stage's key."""
        return {"seed": self.cfg.seed, "chat": self.chat}

    def pairs_of(self, m):
        """The ranking's pairs for ``m``'s tokenizer, tokenized once per tokenizer."""
        from .tokens import tokenize_pairs

        if id(m.tokenizer) not in self.pairs:
            self.pairs[id(m.tokenizer)] = tokenize_pairs(m.tokenizer, self.pair_items, chat=self.chat,
                                                         max_pairs=self.cfg.n_pairs)
        return self.pairs[id(m.tokenizer)]


def plain_stages(study: Study, lm, device=None, dtype=None) -> None:
    """The stages of ``STAGES`` in ``study.config.stages``, each result saved (or read back) under its key."""
    import torch

    from .bench import make_items
    from .tokens import chat_for

    cfg = study.config
    n_heads = lm.cfg.n_layers * lm.cfg.n_heads
    top_k = cfg.top_k or study_top_k(n_heads)
    k_max = _knockout_k(cfg, n_heads, top_k)
    inp = _Inputs(cfg, chat_for(lm, cfg.chat), make_items(cfg.n_eval, cfg.seed, split="test"), ranking_pair_items(cfg))
    torch.manual_seed(cfg.seed)
    res = measure(study, lm, inp, full=True)
    if "knockout" in cfg.stages:
        _knockout_stage(study, lm, inp, res, k_max)
    if "attention" in cfg.stages:
        _attention_stage(study, lm, inp, res, top_k)
    study.write_manifest()
    if "finetune" in cfg.stages or "after" in cfg.stages:
        finetune_stages(study, lm, inp, study_top_k(n_heads), device, dtype)


def study_top_k(n_heads: int) -> int:
    """The k of a run that names none: the study's 32 heads, at most a quarter of the model's."""
    return max(1, min(32, n_heads // 4))


def _knockout_k(cfg: StudyConfig, n_heads: int, top_k: int) -> int:
    """The largest k the knockout curve reaches: at most half the heads (random k-sets are drawn outside the top k).
    The config's own ks are refused here, before any stage runs, not after the rankings."""
    k_max = min(cfg.knockout_k or 2 * top_k, n_heads // 2)
    if cfg.knockout_ks:
        from .patching.knockout import check_ks

        k_max = check_ks(cfg.knockout_ks, n_heads // 2, "knockout_ks", f" (half of this model's {n_heads} heads: "
                         "random k-sets are drawn outside the top k)")[-1]
    return k_max


def measure(st: Study, m, inp: _Inputs, prefix: str = "", full: bool = False) -> dict:
    """Evaluation, probes and the main ranking of ``m``; ``full`` (the model itself) adds the logit lens
    and the other rankings. The base checkpoint and the tuned model get the same measurements."""
    from .evaluate import EvalResult, evaluate
    from .logit_lens import LogitLensResult, logit_lens

    cfg, data, progress = inp.cfg, inp.data, st.progress
    want = (lambda s: s in cfg.stages) if full else (lambda s: s in ("eval", "probe", "rank"))  # noqa: E731
    res = {}
    if want("eval"):
        res["eval"] = st.stage(prefix + "eval", EvalResult, {**data, "n": cfg.n_eval, "method": "both"},
                               lambda: evaluate(m, inp.test_items, chat=inp.chat, method="both", progress=progress))
    if want("probe"):
        res.update(_probe_stages(st, m, inp, prefix))
    if full and want("lens"):
        res["lens"] = st.stage("lens", LogitLensResult, {**data, "n": cfg.n_eval}, lambda: logit_lens(
            m, [it for it in inp.test_items if it["answerable"]], chat=inp.chat, progress=progress))
    if want("rank") or (full and any(s in cfg.stages for s in ("knockout", "attention"))):
        methods = [cfg.method] + ([c for c in cfg.compare if c != cfg.method] if full else [])
        res.update(_rank_stages(st, m, inp, prefix, methods))
    return res


def _probe_stages(st: Study, m, inp: _Inputs, prefix: str) -> dict:
    """One probe per target (the heading and the object seen at it) over one capture of ``m``, made only when a
    probe is not on disk yet."""
    import functools

    from .bench import make_items
    from .probe import DEFAULT_CONTROL, ProbeResult, capture, fit_target

    cfg = inp.cfg
    probe_items = make_items(cfg.n_probe, cfg.seed + 2, split="train")
    captured = functools.cache(lambda: capture(m, probe_items, chat=inp.chat, progress=st.progress))
    return {stage: st.stage(prefix + stage, ProbeResult, {**inp.data, "n": cfg.n_probe, "target": target},
                            lambda t=target: fit_target(captured(), probe_items, t, control_by=DEFAULT_CONTROL[t]))
            for target, stage in PROBE_STAGES.items()}


def _rank_stages(st: Study, m, inp: _Inputs, prefix: str, methods: list) -> dict:
    """Each method's head ranking of ``m`` on the study's pairs (a partial file lets an interrupted one resume)."""
    from .patching import HeadScores, rank_heads

    cfg = inp.cfg
    return {f"rank:{meth}": st.stage(
        f"{prefix}rank_{meth}", HeadScores, {**inp.data, "n_pairs": cfg.n_pairs, "n_boot": cfg.n_boot},
        lambda meth=meth: rank_heads(m, inp.pairs_of(m), method=meth, n_boot=cfg.n_boot, seed=cfg.seed,
                                     checkpoint=st.folder / f"{prefix}rank_{meth}.partial",
                                     progress=st.progress, chat=inp.chat))
        for meth in methods}


def _knockout_stage(study: Study, lm, inp: _Inputs, res: dict, k_max: int):
    """Accuracy with each ranking's top k heads mean-ablated, k up to ``k_max``, against random k-sets."""
    from functools import partial

    from .evaluate import accuracy
    from .patching import KnockoutCurve, head_means, knockout_curve

    cfg = inp.cfg
    rankings = {k.split(":", 1)[1]: [(l, h) for l, h, _ in v.top(k_max)] for k, v in res.items() if k.startswith("rank:")}

    def curve():
        return knockout_curve(lm, inp.test_items, rankings, head_means(lm, inp.pairs_of(lm)), k_max,
                              n_random=cfg.n_random, seed=cfg.seed,
                              accuracy=partial(accuracy, chat=inp.chat, batch_size=64), ks=cfg.knockout_ks)

    return study.stage("knockout", KnockoutCurve, {**inp.data, "n": cfg.n_eval, "n_pairs": cfg.n_pairs, "k": k_max,
                                                   "n_random": cfg.n_random, "rankings": rankings,
                                                   **({"ks": list(cfg.knockout_ks)} if cfg.knockout_ks else {})}, curve)


def _attention_stage(study: Study, lm, inp: _Inputs, res: dict, top_k: int):
    """The attention patterns of the main ranking's top heads (at most 6) on one answerable story."""
    from .viz import AttentionPatterns, attention_patterns

    cfg = inp.cfg
    heads = [(l, h) for l, h, _ in res[f"rank:{cfg.method}"].top(min(top_k, 6))]
    story = next(it for it in inp.pair_items if it["answerable"])
    return study.stage("attention", AttentionPatterns, {**inp.data, "heads": heads, "method": cfg.method},
                       lambda: attention_patterns(lm, story, heads, chat=inp.chat))


def ranking_pair_items(cfg: StudyConfig) -> list:
    """The validation items whose counterfactual pairs (at most ``cfg.n_pairs``) the rankings read; fine-tuning's
    before/after pair accuracy reads the same pairs (the test items yield only a handful)."""
    from .bench import PAIRABLE, make_items

    return make_items(4 * cfg.n_pairs, cfg.seed + 1, PAIRABLE, split="validation")


def transfer_sets(cfg: StudyConfig) -> dict:
    """Test items fine-tuning never saw the like of: the story style's phrasings and 6-action paper stories
    (VRUBench's have 2-5); accuracy on them tells a learnt rotation from memorised answers."""
    from .bench import BenchConfig, make_items

    if not cfg.n_transfer:
        return {}
    return {"story": make_items(cfg.n_transfer, cfg.seed + 3, BenchConfig(style="story"), split="test"),
            "six_actions": make_items(cfg.n_transfer, cfg.seed + 3, BenchConfig(min_steps=6, max_steps=6), split="test")}


def finetune_stages(study: Study, lm, inp: _Inputs, study_k: int, device, dtype=None):
    """Rank on the checkpoint to tune (the base where one exists), tune the top heads (and baselines),
    then measure the tuned model again. The base's own results live in their own folder."""
    from functools import partial

    from .evaluate import accuracy, vru_breakdown
    from .finetune import TrainConfig
    from .finetune.adapters import merge_deltas
    from .finetune.run import FinetuneResult
    from .models import load_model

    base_name, progress, data = study.base, study.progress, inp.data
    cfg = inp.cfg.for_tuning(base_name)
    top_k = cfg.top_k or study_k
    fresh = partial(load_model, base_name or study.model, device=device, dtype=dtype)
    base = fresh() if base_name else lm
    bst = _base_study(study, cfg, base_name)
    before = measure(bst, base, inp, full=not base_name)
    if base_name:
        bst.write_manifest()
        study.files["base"] = base_name
    scores = before[f"rank:{cfg.method}"]
    suite = _general_suite(cfg, base_name or study.model)
    train_cfg = TrainConfig(steps=cfg.steps(), batch_size=cfg.batch_size, lr=cfg.lr_for("heads"),
                            warmup_steps=min(cfg.warmup, cfg.steps()),
                            eval_every=max(1, cfg.steps() // 10), seed=cfg.seed, chat=data["chat"])
    settings = {**data, "tuned": base_name or study.model, "top_k": top_k, "components": cfg.components,
                "vru_accuracy": "fraction",  # results written in points (0-100) by earlier versions are not reused
                "train": asdict(train_cfg), "n_train": cfg.n_train, "n_test": cfg.n_eval, "suite": repr(suite),
                "pairs": f"{cfg.n_pairs} pairs of the ranking's items",  # before/after pair accuracy (was the test items')
                "ranking": bst.files.get(f"rank_{cfg.method}"),
                **({"n_transfer": cfg.n_transfer} if cfg.n_transfer else {}),
                **({"n_val": cfg.n_val} if cfg.n_val != 64 else {})}
    deltas = study.folder / f"deltas-{cache_key([study.model, settings])}.safetensors"

    # the base's measurement, made once for every method (its key: the data and suite; the folder's: the measure's)
    base_cache = study.folder / f"base-{cache_key([study.model, {k: settings[k] for k in ('seed', 'chat', 'n_test', 'suite', 'pairs')}, settings.get('n_transfer', 0)])}"

    bind = dict(chat=data["chat"], batch_size=train_cfg.eval_batch_size)
    vru = partial(vru_breakdown, progress=progress, transfer=transfer_sets(cfg), pair_items=inp.pair_items,
                  max_pairs=cfg.n_pairs, **bind)  # the same items for every method
    common = dict(measure=vru, accuracy=partial(accuracy, **bind), suite=suite, progress=progress,
                  log=lambda *a: None, cache_dir=base_cache)
    seeds = cfg.plain_ft_seeds()
    deltas_of = lambda s: deltas if s == cfg.seed else deltas.with_name(  # noqa: E731
        f"deltas-{cache_key([study.model, settings, s])}.safetensors")
    # a k other than the run's default (the study's, or a deficit organism's |D|) names its own stages and summary,
    # so grids at two k share one folder; full fine-tuning trains no heads: one run per seed serves every k
    default_k = replace(inp.cfg, top_k=None).for_tuning(base_name).top_k or study_k
    k_suffix = "" if top_k == default_k else f"_k{top_k}"
    runs = []
    for ft_seed in seeds:  # every arm's first seed before any arm's second: a cut grid has as many seeds per arm
        # the seed of ``seed`` keeps the stage, key and deltas file of a one-seed run (earlier results stay valid)
        suffix, seed_deltas = _seed_suffix(cfg, ft_seed), deltas_of(ft_seed)
        for method in ("heads", *cfg.baselines):
            # the heads' config with the method's learning rate and the fine-tuning seed (batch order, LoRA's init;
            # _experiment draws random-k with it too)
            train = replace(train_cfg, lr=cfg.lr_for(method), seed=ft_seed)
            run_settings = {**settings, "method": method, "train": asdict(train)}
            name = f"finetune_{method}{'' if method == 'full' else k_suffix}{suffix}"
            # results saved before stage names carried k (and the full arm's key did): adopted, never recomputed
            legacy = study.path(f"finetune_{method}{suffix}", run_settings)
            if method == "full":
                run_settings.pop("top_k")
            study.adopt(legacy, study.path(name, run_settings))
            if method == "heads" and not seed_deltas.exists():  # the deltas are the heads stage's result too
                study.path(name, run_settings).unlink(missing_ok=True)
            model = (lambda: base) if method == "heads" else fresh  # LoRA leaves PEFT's adapter config on its model
            runs.append(study.stage(name, FinetuneResult, run_settings,
                                    partial(_experiment, method, cfg, top_k, train, scores, model, seed_deltas,
                                            **common)))
            if len(seeds) > 1:  # rewritten after every run: an interrupted grid's summary holds what finished
                _write_seed_summary(study, seeds, runs, k_suffix)
    if "after" in cfg.stages:
        tuned = merge_deltas(base, deltas_of(seeds[0]))  # the first fine-tuning seed's deltas
        try:
            measure(study, base, inp, prefix="after_")
        finally:
            tuned.unmerge(base)


def _write_seed_summary(study: Study, seeds: tuple, runs: list, k_suffix: str) -> None:
    """``finetune_seeds.json`` (``finetune_seeds_k16.json`` for a k other than the default): each arm's mean and
    95% t-interval over the fine-tuning seeds run so far (``finetune.run.seed_summary``; the report computes the
    same from the runs it reads)."""
    from .finetune.run import seed_summary
    from .results import write_json_atomic

    write_json_atomic(study.folder / f"finetune_seeds{k_suffix}.json", {"model": study.model, "seeds": list(seeds),
                                                              "arms": seed_summary(runs)})


def _seed_suffix(cfg: StudyConfig, ft_seed: int) -> str:
    """What a fine-tuning run's stage name adds for its seed: nothing for ``seed``'s (a one-seed run's names)."""
    return "" if ft_seed == cfg.seed else f"_seed{ft_seed}"


def _base_study(study: Study, cfg: StudyConfig, base_name: str | None) -> Study:
    """Where the checkpoint to tune is measured: the base's own folder (its eval, probes and ranking), else the
    study itself."""
    if not base_name:
        return study
    return Study(study.out, base_name, replace(cfg, stages=("eval", "probe", "rank"), base=None), study.progress,
                 study.log, dtype=study.dtype)


def _general_suite(cfg: StudyConfig, tuned: str):
    """What fine-tuning's forgetting is measured on: list recall for an organism (it knows nothing else), the
    general tasks for a language model (None with ``general_n`` 0)."""
    from .general_eval import GeneralSuite, ListRecallSuite
    from .models.organisms import ORGANISMS

    if tuned in ORGANISMS:
        return ListRecallSuite(seed=cfg.seed)
    return GeneralSuite(n_per_task=cfg.general_n, mmlu_n=cfg.general_n, wiki_n=max(1, cfg.general_n // 2),
                        seed=cfg.seed) if cfg.general_n else None


def _experiment(method: str, cfg: StudyConfig, top_k: int, train, scores, model, deltas: Path, **common):
    """One fine-tuning run of ``method`` on the top-k heads of ``scores`` (``model()``: the model to tune; the heads'
    deltas are saved to ``deltas``, the file the after stage merges)."""
    from .finetune.run import FinetuneConfig, run_experiment

    ecfg = FinetuneConfig(method, top_k, components=cfg.components, head_seed=train.seed, n_train=cfg.n_train,
                          n_val=cfg.n_val, n_test=cfg.n_eval, data_seed=cfg.seed, train=train)
    return run_experiment(model(), ecfg, scores, out=deltas if method == "heads" else None, **common)


def graded_stages(study: Study, lm, device=None) -> dict:
    """The stages of ``GRADED_STAGES`` in ``study.config.stages``, graded against the model's circuit C (its card):
    probes with control tasks, every ranking graded against C, knockout curves (the rankings and C against random
    k-sets), fine-tuning arms from the base checkpoint over seeds, closed loop. Results and figures go into the
    study's folder, the summary (returned, and ``study.graded``) to ``graded.json`` and its tables to ``tables.md``."""
    from functools import partial

    from .evaluate import accuracy, evaluate
    from .heads import top_heads
    from .models.organisms import circuit_heads, organism_card
    from .organism import graded as G
    from .organism.verify import attention_roles
    from .patching import head_means, knockout_curve
    from .jsonio import write_atomic
    from .results import write_json_atomic

    cfg, out, log, name = study.config, study.folder, study.log, study.model
    stages = set(cfg.stages)
    out.mkdir(parents=True, exist_ok=True)
    planted = circuit_heads(organism_card(name))
    data_cfg = G.StudyData(n_items=cfg.n_eval, n_pairs=cfg.n_pairs, n_probe=cfg.n_probe, n_list=cfg.n_list,
                           seed=cfg.seed)
    data = G.study_data(lm, data_cfg)
    html = lambda fig, file: fig.write_html(out / file, include_plotlyjs="cdn")  # noqa: E731
    t0 = time.perf_counter()
    ev = evaluate(lm, data["items"], batch_size=64, progress=False)
    summary = {"model": name, "planted_heads": [list(h) for h in planted], "config": asdict(cfg),
               "eval": {"accuracy": ev.accuracy, "chance": ev.chance, "best_rule": ev.best_rule,
                        "n_items": ev.n, "n_pairs": len(data["pairs"])}}
    if "probes" in stages:
        summary["probes"] = {}
        for t, res in G.probes(lm, data["probe_items"]).items():
            res.save(out / f"probe_{t}.json")
            html(res.plot(title=f"{name}: probe '{t}'"), f"probe_{t}.html")
            summary["probes"][t] = {"accuracy": res.accuracy.tolist(), "control": res.control_accuracy.tolist(),
                                    "selectivity": res.selectivity.tolist(), "chance": res.chance}
        log(f"probes done ({time.perf_counter() - t0:.0f}s)")
    if {"rankings", "circuit_knockout"} & stages:
        summary["rankings"] = {}
        for method, sc in G.rankings(lm, data, planted, cfg.ig_steps).items():
            sc.save(out / f"ranking_{method}.json")
            html(sc.plot(title=f"{method} on {name}"), f"ranking_{method}.html")
            summary["rankings"][method] = G.grade(G.scores_of(sc), planted)
        log(f"rankings done ({time.perf_counter() - t0:.0f}s)")
    if "circuit_knockout" in stages:
        curve = knockout_curve(lm, data["items"], {n: g["ranking"] for n, g in summary["rankings"].items()} | {
            "G (planted)": planted}, head_means(lm, data["pairs"], 64), max_k=2 * len(planted),
            n_random=cfg.n_random, seed=cfg.seed, accuracy=partial(accuracy, batch_size=64))
        curve.save(out / "knockout_curves.json")
        html(curve.plot(), "knockout_curves.html")
        summary["knockout"] = {"base_accuracy": curve.base_accuracy, "ks": curve.ks, "curves": curve.curves,
                               "random": curve.random_summary()}
        log(f"knockout done ({time.perf_counter() - t0:.0f}s)")
    seeds = tuple(cfg.ft_seeds) if cfg.ft_seeds is not None else GRADED_FT_SEEDS
    if "arms" in stages and seeds:
        from .models import load_model

        cfg = replace(cfg, **{k: v for k, v in STUDY_TUNING.items() if k != "lr" and getattr(cfg, k) is None})

        base = load_model(study.base, device=device)
        bdata = G.study_data(base, data_cfg)
        base_scores = G.rankings_activation(base, bdata)
        base_scores.save(out / "base_ranking_activation.json")
        ranking = top_heads(base_scores, base_scores.scores.size)  # best first
        methods = ("heads", *cfg.baselines)
        ft = G.finetune_runs(study.base, data_cfg, ranking, planted, methods=methods, seeds=seeds,
                             steps=cfg.steps(), batch_size=cfg.batch_size, n_train=cfg.n_train,
                             components=cfg.components, lr={m: cfg.lr_for(m) for m in methods}, log=log,
                             deltas_dir=out, device=device)
        ft["base_ranking"] = G.grade(base_scores.scores, planted)
        summary["finetune"] = ft
        log(f"fine-tuning done ({time.perf_counter() - t0:.0f}s)")
        if "closed_loop" in stages:
            base_probes = G.probes(base, bdata["probe_items"])
            roles = attention_roles(base, [it for it in bdata["items"] if it["answerable"]][:300],
                                    ranking[:len(planted)])
            loop, tuned_scores = G.closed_loop(study.base, data_cfg, out / "deltas_top.safetensors", base_scores,
                                               base_probes, roles, device=device)
            tuned_scores.save(out / "tuned_ranking_activation.json")
            loop["tuned_ranking_vs_G"] = G.grade(tuned_scores.scores, planted)
            summary["closed_loop"] = loop
            log(f"closed loop done ({time.perf_counter() - t0:.0f}s)")
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    write_json_atomic(out / "graded.json", summary)
    write_atomic(out / "tables.md", G.tables(summary))
    study.graded = summary
    return summary
