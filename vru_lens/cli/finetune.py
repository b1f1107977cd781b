"""``vru-lens finetune``: train head deltas (or a baseline) and measure VRU and general ability before/after."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import (N, AllowOtherModel, Chat, Device, Json, Model, Out, Progress, Seed, Threads, chat_for, error_line, fail,
                     find_input, log_to_stderr, out_file, print_json, set_threads, show_progress)


def finetune(
    model: Model = "smollm2-135m-instruct",
    heads: Optional[Path] = typer.Option(None, "--heads", help="The ranking: the --out folder of `vru-lens rank-heads` "
                                         "(or its ranking.json), a gradient ranking, or a JSON list of (layer, head) pairs, "
                                         "best first (default: a gradient x activation ranking, saved as OUT/ranking.json)"),
    top_k: int = typer.Option(16, "--top-k", help="number of heads"),
    components: str = typer.Option("qo", "--components", help="qo: W_Q and W_O slices; qkvo: also the W_K/W_V slices of each head's KV group"),
    method: str = typer.Option("heads", "--method", help="heads | random | bottom | full | lora"),
    steps: int = typer.Option(200, "--steps"),
    batch_size: int = typer.Option(8, "--batch-size"),
    grad_accum: int = typer.Option(1, "--grad-accum"),
    lr: Optional[float] = typer.Option(None, "--lr", help="default: 1e-3 for head deltas and LoRA, 1e-4 for full"),
    warmup: int = typer.Option(20, "--warmup"),
    eval_every: int = typer.Option(50, "--eval-every", help="validation (and, with --out, checkpoint) every this many steps"),
    n_train: int = typer.Option(2000, "--n-train", help="training items"),
    n_val: int = typer.Option(64, "--n-val", help="validation items (the best step's state is kept)"),
    n: N = 300,
    general_n: int = typer.Option(100, "--general-n", help="items per general task (0: skip the general suite)"),
    mmlu_n: Optional[int] = typer.Option(None, "--mmlu-n", help="MMLU questions (default: --general-n)"),
    wiki_n: int = typer.Option(50, "--wiki-n", help="Wikipedia articles for perplexity and KL"),
    tasks: str = typer.Option("hellaswag,arc_easy,piqa,winogrande,boolq,lambada", "--tasks", help="zero-shot tasks"),
    lora_rank: Optional[int] = typer.Option(None, "--lora-rank", help="default: matched to the head-delta budget"),
    seed: Seed = 0,
    chat: Chat = None,
    out: Out = None,
    resume: bool = typer.Option(False, "--resume", help="continue the interrupted run in --out (from OUT/checkpoint.pt)"),
    allow_other_model: AllowOtherModel = False,
    cache_dir: Optional[Path] = typer.Option(Path("results/finetune/cache"), "--cache-dir", help="base-model measurements"),
    device: Device = None,
    activation_checkpointing: bool = typer.Option(False, "--activation-checkpointing", help="recompute each block's "
                                                  "activations in backward: memory of one layer's activations "
                                                  "instead of all (large models), ~1/3 more compute"),
    threads: Threads = 0,
    json_out: Json = False,
    progress: Progress = None,
):
    """Fine-tune only the top heads' W_Q/W_O (and W_K/W_V) slices; report VRU and general ability before/after.

    --n test items (the VRU accuracy before and after). --out DIR writes DIR/deltas.safetensors (head
    methods: what --deltas of the other commands reads; LoRA: DIR/lora.safetensors), DIR/result.json,
    DIR/checkpoint.pt (every --eval-every steps; --resume continues from it) and, without --heads,
    DIR/ranking.json (the stand-in ranking).
    """
    from dataclasses import replace

    from ..finetune import TrainConfig
    from ..finetune.run import DEFAULT_LR, FinetuneConfig

    try:  # the library validates the settings, before the model is loaded
        experiment = FinetuneConfig(method=method, top_k=top_k, components=components, lora_rank=lora_rank,
                                    head_seed=seed, n_train=n_train, n_val=n_val, n_test=n, data_seed=seed,
                                    train=TrainConfig(steps=steps, batch_size=batch_size, grad_accum=grad_accum,
                                                      lr=lr or DEFAULT_LR.get(method, 0.0), warmup_steps=min(warmup, steps),
                                                      eval_every=eval_every, seed=seed,
                                                      checkpoint_every=eval_every if out else 0,
                                                      activation_checkpointing=activation_checkpointing))
    except ValueError as err:
        fail(error_line(err))
    if resume and out is None:
        fail("--resume needs --out: the folder of the run to continue")
    if out is not None and not resume and (out / "checkpoint.pt").exists():
        fail(f"{out} holds the checkpoint of an earlier run ({out / 'checkpoint.pt'}); continue it with --resume, "
             "or give another --out (or delete the checkpoint) to start afresh")
    heads = find_input(heads, "ranking.json", "--heads", "vru-lens rank-heads")
    if method == "bottom" and heads is None:
        fail("--method bottom needs --heads (a ranking: the --out folder of `vru-lens rank-heads`)")
    set_threads(threads)
    checkpoint = out_file(out, "checkpoint.pt")
    log = log_to_stderr(show_progress(progress, json_out))

    from functools import partial

    import torch

    from ..evaluate import accuracy, vru_breakdown
    from ..finetune.adapters import DELTAS_FILE
    from ..finetune.run import gradient_ranking, run_experiment
    from ..general_eval import GeneralSuite
    from ..models import load_model

    try:
        m = load_model(model, device=device)
    except (ValueError, OSError, ModuleNotFoundError) as err:
        fail(error_line(err))
    chat = chat_for(m, chat)
    torch.manual_seed(seed)
    ranking = heads
    if ranking is not None and method in ("heads", "random", "bottom"):
        from ..finetune.adapters import resolve_heads

        try:  # a wrong ranking is refused before the base is measured
            resolve_heads(ranking, top_k, m, allow_other_model)
        except ValueError as err:
            fail(error_line(err))
    if ranking is None and method in ("heads", "random"):  # bottom without --heads was refused above
        ranking = gradient_ranking(m, out / "ranking.json" if out else None, chat=chat, seed=seed, log=log)
    experiment = replace(experiment, train=replace(experiment.train, chat=chat))  # chat: known once the model is loaded
    cfg = experiment.train
    try:
        suite = GeneralSuite(n_per_task=general_n, mmlu_n=general_n if mmlu_n is None else mmlu_n, wiki_n=wiki_n,
                             seed=seed, tasks=tuple(t for t in tasks.split(",") if t)) if general_n > 0 else None
    except ValueError as err:
        fail(error_line(err))
    weights = (out / ("lora.safetensors" if method == "lora" else DELTAS_FILE)) if out else None
    try:
        shown = show_progress(progress, json_out)
        res = run_experiment(m, experiment, ranking, measure=partial(vru_breakdown, chat=chat, batch_size=cfg.eval_batch_size,
                                                                     progress=shown),
                             accuracy=partial(accuracy, chat=chat, batch_size=cfg.eval_batch_size), suite=suite,
                             out=weights, checkpoint=checkpoint, resume=resume, cache_dir=cache_dir,
                             progress=shown, log=log, allow_other_model=allow_other_model)
    except (ValueError, FileNotFoundError, NotImplementedError, KeyError) as err:
        fail(error_line(err))
    if out:
        res.save(out / "result.json")
    summary = res.summary()
    if json_out:
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
        typer.echo(f"saved in {out}: " + ", ".join(sorted(p.name for p in out.iterdir())))
