"""``vru-lens finetune``: train head deltas (or a baseline) and measure VRU and general ability before/after."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import fail, print_json


def finetune(
    model: str = typer.Option("smollm2-135m-instruct", "--model", help="model name, hub id or folder"),
    heads: Optional[Path] = typer.Option(None, "--heads", help="head ranking JSON (vru-lens rank-heads --out); "
                                         "if missing, a gradient x activation ranking is computed and saved next to --out"),
    top_k: int = typer.Option(16, "--top-k", help="number of heads"),
    components: str = typer.Option("qo", "--components", help="qo: W_Q and W_O slices; qkvo: also the W_K/W_V slices of each head's KV group"),
    method: str = typer.Option("heads", "--method", help="heads | random | bottom | full | lora"),
    steps: int = typer.Option(200, "--steps"),
    batch_size: int = typer.Option(8, "--batch-size"),
    grad_accum: int = typer.Option(1, "--grad-accum"),
    lr: Optional[float] = typer.Option(None, "--lr", help="default: 1e-3 for head deltas and LoRA, 2e-5 for full"),
    warmup: int = typer.Option(20, "--warmup"),
    eval_every: int = typer.Option(50, "--eval-every"),
    n_train: int = typer.Option(2000, "--n-train"),
    n_val: int = typer.Option(64, "--n-val"),
    n_test: int = typer.Option(300, "--n-test"),
    general_n: int = typer.Option(100, "--general-n", help="items per general task (0: skip the general suite)"),
    mmlu_n: Optional[int] = typer.Option(None, "--mmlu-n", help="MMLU questions (default: --general-n)"),
    wiki_n: int = typer.Option(50, "--wiki-n", help="Wikipedia articles for perplexity and KL"),
    tasks: str = typer.Option("hellaswag,arc_easy,piqa,winogrande,boolq,lambada", "--tasks", help="zero-shot tasks"),
    lora_rank: Optional[int] = typer.Option(None, "--lora-rank", help="default: matched to the head-delta budget"),
    seed: int = typer.Option(0, "--seed"),
    chat: bool = typer.Option(False, "--chat/--plain"),
    out: Optional[Path] = typer.Option(None, "--out", help="deltas .safetensors (head methods and LoRA)"),
    results: Optional[Path] = typer.Option(None, "--results", help="write the full result JSON here"),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="checkpoint file (written every --eval-every steps)"),
    resume: bool = typer.Option(False, "--resume", help="continue from --checkpoint"),
    cache_dir: Optional[Path] = typer.Option(Path("results/finetune/cache"), "--cache-dir", help="base-model measurements"),
    as_json: bool = typer.Option(False, "--json", help="print the summary as JSON"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bars"),
    activation_checkpointing: bool = typer.Option(False, "--activation-checkpointing", help="recompute each block's "
                                                  "activations in backward: memory of one layer's activations "
                                                  "instead of all (large models), ~1/3 more compute"),
    threads: int = typer.Option(0, "--threads", help="torch CPU threads (0: torch's default). On a shared, "
                                "oversubscribed CPU, 1 avoids OpenMP barrier spinning (much faster there)"),
):
    """Fine-tune only the top heads' W_Q/W_O (and W_K/W_V) slices; report VRU and general ability before/after."""
    from ..finetune.run import DEFAULT_LR, METHODS

    if method not in METHODS:
        fail(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
    if components not in ("qo", "qkvo"):
        fail(f"--components must be qo or qkvo, got {components!r}")
    if resume and checkpoint is None:
        fail("--resume needs --checkpoint")
    if heads is not None and not heads.exists():
        fail(f"no ranking file at {heads}; create one with `vru-lens rank-heads --out {heads}` or leave --heads out")
    if method == "bottom" and heads is None:
        fail("--method bottom needs --heads ranking.json")
    log = (lambda *a, **k: None) if as_json else (lambda msg: typer.echo(msg, err=True))

    import torch

    if threads > 0:
        torch.set_num_threads(threads)
    from functools import partial

    from ..evaluate import accuracy, vru_breakdown
    from ..finetune import TrainConfig
    from ..finetune.run import FinetuneConfig, gradient_ranking, run_experiment
    from ..general_eval import GeneralSuite
    from ..models import load_model

    try:
        m = load_model(model)
    except (ValueError, OSError) as err:
        fail(str(err))
    torch.manual_seed(seed)
    ranking = heads
    if ranking is None and method in ("heads", "random", "bottom"):
        ranking = (out.parent if out else Path("results/finetune")) / f"ranking_grad_{model.replace('/', '_')}.json"
        if not ranking.exists():
            log(f"no --heads given: ranking heads by gradient x activation on training pairs -> {ranking}")
        gradient_ranking(m, ranking, chat=chat, seed=seed)
    cfg = TrainConfig(steps=steps, batch_size=batch_size, grad_accum=grad_accum, lr=lr or DEFAULT_LR[method],
                      warmup_steps=min(warmup, steps), eval_every=eval_every, seed=seed, chat=chat,
                      checkpoint_every=eval_every if checkpoint else 0, activation_checkpointing=activation_checkpointing)
    try:
        suite = GeneralSuite(n_per_task=general_n, mmlu_n=general_n if mmlu_n is None else mmlu_n, wiki_n=wiki_n,
                             seed=seed, tasks=tuple(t for t in tasks.split(",") if t)) if general_n > 0 else None
    except ValueError as err:
        fail(str(err))
    try:
        experiment = FinetuneConfig(method, top_k, components, lora_rank, seed, n_train, n_val, n_test, seed, train=cfg)
        res = run_experiment(m, experiment, ranking, measure=partial(vru_breakdown, chat=chat, batch_size=cfg.eval_batch_size,
                                                                     progress=not (quiet or as_json)),
                             accuracy=partial(accuracy, chat=chat, batch_size=cfg.eval_batch_size), suite=suite,
                             out=out, checkpoint=checkpoint, resume=resume, cache_dir=cache_dir,
                             progress=not (quiet or as_json), log=log)
    except (ValueError, FileNotFoundError, NotImplementedError, KeyError) as err:
        fail(str(err))
    if results:
        res.save(results)
    summary = res.summary()
    if as_json:
        print_json(summary)
        return
    typer.echo(f"{method} on {model}: {res.trainable_params:,} trainable parameters")
    vb, va = res.vru_before, res.vru_after
    for k in ("test", "in_distribution", "heldout_templates"):
        if k in vb:
            typer.echo(f"  VRU {k:<18} {vb[k]:6.1%} -> {va[k]:6.1%}")
    if vb.get("blind_baseline") is not None:
        typer.echo(f"  best rotation-blind rule {vb['blind_baseline']:6.1%}  (the floor; evaluate.audit)")
    if vb.get("pairs") and va.get("pairs"):
        typer.echo(f"  VRU pairs both right  {vb['pairs']['both_right']:6.1%} -> {va['pairs']['both_right']:6.1%}"
                   f"  (of {va['pairs']['n_pairs']} counterfactual pairs; 0 = the rotation phrase is ignored)")
    for k, b in res.general_before.items():
        a = res.general_after.get(k, float("nan"))
        typer.echo(f"  {k:<18} {b:9.3f} -> {a:9.3f}  ({a - b:+.3f})")
    if out:
        typer.echo(f"saved {out}")
