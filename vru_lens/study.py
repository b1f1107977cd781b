"""The whole study on one model, stage by stage: what `vru-lens run` and `make demo` call.

evaluate -> probes and logit lens -> head rankings with CIs -> knockout curve -> attention of the
top heads -> selective fine-tuning (from the model's base checkpoint where one exists) against
baselines, with forgetting -> the tuned model re-evaluated, re-ranked and re-probed.

Each stage's result is saved as ``OUT/<model>/<stage>-<key>.json``, the key hashing the model,
the data and every setting the stage reads, so a re-run skips what is on disk for the same
settings and recomputes what changed. ``OUT/<model>/study.json`` lists the files of the last run;
the report (``vru_lens.report``) reads every model's list in OUT.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

STAGES = ("eval", "probe", "lens", "rank", "knockout", "attention", "finetune", "after")


@dataclass
class StudyConfig:
    """Every setting of a run (defaults: the study's; ``quick()``: the demo's)."""

    n_eval: int = 300  # test items: evaluation, logit lens, knockout, fine-tuning's test split
    n_probe: int = 1000
    n_pairs: int = 64  # counterfactual pairs for head ranking
    method: str = "path"  # the ranking that chooses heads for knockout and fine-tuning
    compare: tuple = ("activation", "attribution")  # more rankings, shown beside it
    n_boot: int = 1000
    top_k: int | None = None  # heads to fine-tune; None: 32 (the study's), at most a quarter of the heads
    knockout_k: int | None = None  # knockout curve for k = 0..knockout_k; None: 2 * top_k
    n_random: int = 10  # random head sets per k
    components: str = "qkvo"  # W_Q/W_K/W_V/W_O slices
    lr: float | None = None  # Adam; None: 2e-5 as the study (a deficit organism: its repair experiment's)
    batch_size: int | None = None  # None: 32 (a deficit organism: its repair experiment's)
    n_train: int | None = None  # one epoch: n_train / batch_size steps; None: 2000 (a deficit organism: as above)
    epochs: int = 1
    baselines: tuple = ("random", "lora")
    general_n: int = 100  # items per general task (forgetting), 0: skip
    seed: int = 0
    chat: bool | None = None  # None: as the study did (chat for instruction-tuned models)
    stages: tuple = STAGES

    @classmethod
    def quick(cls, **kw) -> "StudyConfig":
        """Minutes on a CPU for a small model: fewer items, resamples and draws."""
        base = dict(n_eval=200, n_probe=400, n_pairs=48, n_boot=200, n_random=4,
                    general_n=20, knockout_k=8)
        return cls(**{**base, **kw})

    def steps(self) -> int:
        return max(1, self.epochs * self.n_train // self.batch_size)

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
            unset = dict(top_k=None, lr=2e-5, batch_size=32, n_train=2000)
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


def slug(name: str) -> str:
    return name.replace("/", "__")


def _key(*parts) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:10]


@dataclass
class Study:
    """One run's bookkeeping: where each stage's file is, and which results are loaded."""

    out: Path
    model: str
    config: StudyConfig
    progress: bool = True
    log: object = print
    files: dict = field(default_factory=dict)  # stage name -> file name inside out/<model>

    @property
    def folder(self) -> Path:
        return self.out / slug(self.model)

    def stage(self, name: str, cls, settings: dict, compute):
        """``cls.load`` of the saved result for these settings, or ``compute()`` saved under them."""
        path = self.folder / f"{name}-{_key(self.model, name, settings)}.json"
        self.files[name] = path.name
        if path.exists():
            return cls.load(path)
        self.log(f"[{self.model}] {name}")
        result = compute()
        result.save(path)
        self.write_manifest()
        return result

    def write_manifest(self) -> None:
        from .results import write_json_atomic

        path = self.folder / "study.json"
        started = json.loads(path.read_text()).get("started") if path.exists() else None
        write_json_atomic(path, {"model": self.model, "config": asdict(self.config), "started": started or time.time(),
                                                       "base": base_checkpoint(self.model),
                                                       "circuit": _circuit(self.model),
                                                       "deficient": _deficient(self.model), "files": self.files})


def run_study(model: str, out: str | Path, config: StudyConfig | None = None, device=None, progress: bool = True,
              log=print, dtype=None) -> Study:
    """Run every stage in ``config.stages`` on ``model`` (loaded here), saving each result under ``out``."""
    import torch

    from .bench import PAIRABLE, make_items
    from functools import partial

    from .evaluate import EvalResult, accuracy, evaluate
    from .logit_lens import LogitLensResult, logit_lens
    from .models import load_model
    from .patching import HeadScores, KnockoutCurve, knockout_curve, rank_heads
    from .probe import ProbeResult, probe
    from .tokens import chat_for, tokenize_pairs
    from .viz import AttentionPatterns, attention_patterns

    cfg = config or StudyConfig()
    unknown = [s for s in cfg.stages if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {', '.join(unknown)}; choose from {', '.join(STAGES)}")
    study = Study(Path(out), model, cfg, progress, log)
    lm = load_model(model, device=device, dtype=dtype)
    chat = chat_for(lm, cfg.chat)
    n_heads = lm.cfg.n_layers * lm.cfg.n_heads
    top_k = cfg.top_k or max(1, min(32, n_heads // 4))
    k_max = min(cfg.knockout_k or 2 * top_k, n_heads - 1)
    data = {"seed": cfg.seed, "chat": chat}
    test_items = make_items(cfg.n_eval, cfg.seed, split="test")
    pair_items = make_items(4 * cfg.n_pairs, cfg.seed + 1, PAIRABLE, split="validation")
    pairs = {}

    def get_pairs(m):
        if id(m.tokenizer) not in pairs:
            pairs[id(m.tokenizer)] = tokenize_pairs(m.tokenizer, pair_items, chat=chat, max_pairs=cfg.n_pairs)
        return pairs[id(m.tokenizer)]

    def measure(st: Study, m, prefix: str = "", full: bool = False) -> dict:
        """Evaluation, probes and the main ranking of ``m``; ``full`` (the model itself) adds the logit lens
        and the other rankings. The base checkpoint and the tuned model get the same measurements."""
        want = (lambda s: s in cfg.stages) if full else (lambda s: s in ("eval", "probe", "rank"))  # noqa: E731
        res = {}
        if want("eval"):
            res["eval"] = st.stage(prefix + "eval", EvalResult, {**data, "n": cfg.n_eval, "method": "both"},
                                   lambda: evaluate(m, test_items, chat=chat, method="both", progress=progress))
        if want("probe"):
            res["probe"] = st.stage(prefix + "probe", ProbeResult, {**data, "n": cfg.n_probe, "target": "heading"},
                                    lambda: probe(m, make_items(cfg.n_probe, cfg.seed + 2, split="train"),
                                                  target="heading", chat=chat, progress=progress))
        if full and want("lens"):
            res["lens"] = st.stage("lens", LogitLensResult, {**data, "n": cfg.n_eval}, lambda: logit_lens(
                m, [it for it in test_items if it["answerable"]], chat=chat, progress=progress))
        if want("rank") or (full and any(s in cfg.stages for s in ("knockout", "attention"))):
            methods = [cfg.method] + ([c for c in cfg.compare if c != cfg.method] if full else [])
            for meth in methods:
                res[f"rank:{meth}"] = st.stage(
                    f"{prefix}rank_{meth}", HeadScores, {**data, "n_pairs": cfg.n_pairs, "n_boot": cfg.n_boot},
                    lambda meth=meth: rank_heads(m, get_pairs(m), method=meth, n_boot=cfg.n_boot, seed=cfg.seed,
                                                 checkpoint=st.folder / f"{prefix}rank_{meth}.partial",
                                                 progress=progress, chat=chat))
        return res

    torch.manual_seed(cfg.seed)
    res = measure(study, lm, full=True)
    if "knockout" in cfg.stages:
        rankings = {k.split(":", 1)[1]: [(l, h) for l, h, _ in v.top(k_max)] for k, v in res.items() if k.startswith("rank:")}

        def curve():
            from .patching.ablation import head_means

            return knockout_curve(lm, test_items, rankings, head_means(lm, get_pairs(lm)), k_max,
                                  n_random=cfg.n_random, seed=cfg.seed,
                                  accuracy=partial(accuracy, chat=chat, batch_size=64))

        study.stage("knockout", KnockoutCurve, {**data, "n": cfg.n_eval, "n_pairs": cfg.n_pairs, "k": k_max,
                                                "n_random": cfg.n_random, "rankings": rankings}, curve)
    if "attention" in cfg.stages:
        heads = [(l, h) for l, h, _ in res[f"rank:{cfg.method}"].top(min(top_k, 6))]
        story = next(it for it in pair_items if it["answerable"])
        study.stage("attention", AttentionPatterns, {**data, "heads": heads, "method": cfg.method},
                    lambda: attention_patterns(lm, story, heads, chat=chat))
    study.write_manifest()
    if "finetune" in cfg.stages or "after" in cfg.stages:
        finetune_stages(study, lm, cfg, top_k, data, measure, progress, device, dtype)
    study.write_manifest()
    return study


def finetune_stages(study: Study, lm, cfg: StudyConfig, top_k: int, data: dict, measure, progress: bool, device,
                    dtype=None):
    """Rank on the checkpoint to tune (the base where one exists), tune the top heads (and baselines),
    then measure the tuned model again. The base's own results live in their own folder."""
    from functools import partial

    from .evaluate import accuracy, vru_breakdown
    from .finetune import TrainConfig
    from .finetune.adapters import merge_deltas
    from .finetune.run import FinetuneConfig, FinetuneResult, run_experiment
    from .general_eval import GeneralSuite, ListRecallSuite
    from .models import load_model
    from .models.organisms import ORGANISMS

    base_name = base_checkpoint(study.model)
    cfg = cfg.for_tuning(base_name)
    top_k = cfg.top_k or top_k
    fresh = lambda: load_model(base_name or study.model, device=device, dtype=dtype)  # noqa: E731
    base = fresh() if base_name else lm
    bst = Study(study.out, base_name, replace(cfg, stages=("eval", "probe", "rank")), progress, study.log) \
        if base_name else study
    before = measure(bst, base, full=not base_name)
    if base_name:
        bst.write_manifest()
        study.files["base"] = base_name
    scores = before[f"rank:{cfg.method}"]
    suite = (ListRecallSuite(seed=cfg.seed) if (base_name or study.model) in ORGANISMS else
             GeneralSuite(n_per_task=cfg.general_n, mmlu_n=cfg.general_n, wiki_n=max(1, cfg.general_n // 2),
                          seed=cfg.seed) if cfg.general_n else None)
    train_cfg = TrainConfig(steps=cfg.steps(), batch_size=cfg.batch_size, lr=cfg.lr, warmup_steps=min(20, cfg.steps()),
                            eval_every=max(1, cfg.steps() // 10), seed=cfg.seed, chat=data["chat"])
    settings = {**data, "tuned": base_name or study.model, "top_k": top_k, "components": cfg.components,
                "vru_accuracy": "fraction",  # results written in points (0-100) by earlier versions are not reused
                "train": asdict(train_cfg), "n_train": cfg.n_train, "n_test": cfg.n_eval, "suite": repr(suite),
                "ranking": study.files.get(f"rank_{cfg.method}") if not base_name else bst.files.get(f"rank_{cfg.method}")}
    deltas = study.folder / f"deltas-{_key(study.model, settings)}.safetensors"

    def experiment(method):
        model = base if method == "heads" else fresh()  # LoRA leaves PEFT's adapter config on its model: a fresh copy
        ecfg = FinetuneConfig(method, top_k, cfg.components, head_seed=cfg.seed, n_train=cfg.n_train, n_val=64,
                              n_test=cfg.n_eval, data_seed=cfg.seed, train=train_cfg)
        bind = dict(chat=data["chat"], batch_size=train_cfg.eval_batch_size)
        return run_experiment(model, ecfg, scores, measure=partial(vru_breakdown, progress=progress, **bind),
                              accuracy=partial(accuracy, **bind), suite=suite,
                              out=deltas if method == "heads" else None, progress=progress, log=lambda *a: None)

    for method in ("heads", *cfg.baselines):
        if method == "heads" and not deltas.exists():  # the deltas are the heads stage's result too
            (study.folder / f"finetune_heads-{_key(study.model, 'finetune_heads', {**settings, 'method': 'heads'})}.json"
             ).unlink(missing_ok=True)
        study.stage(f"finetune_{method}", FinetuneResult, {**settings, "method": method}, lambda m=method: experiment(m))
    if "after" in cfg.stages:
        tuned = merge_deltas(base, deltas)
        try:
            measure(study, base, prefix="after_")
        finally:
            tuned.unmerge(base)
