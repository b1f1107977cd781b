"""`vru-lens run`: the whole study on one model (``vru_lens.study``), then OUT/report.html.

Every stage's result is saved as soon as it finishes, keyed by model, data and settings;
a re-run skips what is on disk. Several models can share OUT: the report shows them all.
"""

from __future__ import annotations

from pathlib import Path

import typer

from .common import (N, Chat, Device, Json, Model, Out, Progress, Seed, Threads, error_line, fail, log_to_stderr, out_file,
                     parse_ints, print_json, set_threads, show_progress)


def run(
    model: Model = "vru-organism",
    out: Out = Path("results/run"),
    quick: bool = typer.Option(False, "--quick", help="Fewer items, resamples and draws (minutes on a CPU)."),
    n: N = None,
    n_probe: int = typer.Option(None, help="Items for the probes."),
    n_pairs: int = typer.Option(None, help="Counterfactual pairs for head ranking."),
    method: str = typer.Option("path", help="Ranking that picks heads: path, activation, attribution, ablation, gradient."),
    compare: str = typer.Option("activation,attribution", help="More rankings shown beside it (comma-separated)."),
    top_k: int = typer.Option(None, help="Heads to fine-tune (default 32, at most a quarter of the heads; a deficit organism: its |D|)."),
    n_random: int = typer.Option(None, help="Random head sets per k in the knockout curve."),
    knockout_ks: str = typer.Option(None, help="Knockout curve only at these k (comma-separated, e.g. 1,2,4,8,16,32; "
                                    "default: every k up to twice --top-k)."),
    lr: float = typer.Option(None, help="Adam learning rate (default 2e-5 as the study; a deficit organism: its repair experiment's 3e-3)."),
    n_train: int = typer.Option(None, help="Training items, one epoch (default 2000 at batch 32; a deficit organism: its repair experiment's)."),
    batch_size: int = typer.Option(None, help="Fine-tuning batch (default 32 as the study; a deficit organism: its repair experiment's)."),
    ft_steps: int = typer.Option(None, help="Fine-tuning steps (default: one epoch of --n-train)."),
    method_lr: bool = typer.Option(False, "--method-lr", help="Each method's own learning rate (1e-3 head deltas and "
                                   "LoRA, 1e-4 full) instead of the study's one lr; not with --lr."),
    n_val: int = typer.Option(None, help="Fine-tuning's validation items (default 64)."),
    warmup: int = typer.Option(None, help="Fine-tuning's warmup steps (default 20)."),
    n_transfer: int = typer.Option(None, help="Transfer items per set measured before and after fine-tuning "
                                   "(story-style phrasing, 6-action stories; default 0: none)."),
    baselines: str = typer.Option(None, help="Fine-tuning baselines: random,lora (default: both)."),
    general_n: int = typer.Option(None, help="Items per general task for forgetting (0: skip; organisms use list recall)."),
    ft_seeds: str = typer.Option(None, help="Fine-tuning seeds, comma-separated (e.g. 0,1,2): every arm is trained once "
                                 "per seed (batch order, random-k draw, LoRA init), the items, pairs and ranking staying "
                                 "those of --seed; mean and 95% t-interval per arm. Default: one run with --seed "
                                 "(graded arms on an organism: 0,1,2)."),
    seed: Seed = 0,
    chat: Chat = None,
    stages: str = typer.Option(None, help="Comma-separated subset of the stages (default: all of vru_lens.study.STAGES; "
                               "on an organism the graded ones too: probes, rankings, circuit_knockout, arms, closed_loop)."),
    device: Device = None,
    dtype: str = typer.Option(None, help="float32, bfloat16, float16 (default: the loader's; bfloat16 for 7B on a GPU)."),
    threads: Threads = 0,
    json_out: Json = False,
    progress: Progress = None,
):
    """The whole study: evaluate, probe, rank heads, knockout, fine-tune from the base; write OUT/report.html.

    --n test items (evaluation, logit lens, knockout, fine-tuning test split). --out DIR holds every
    stage's result under DIR/MODEL/ and DIR/report.html (several models can share DIR).
    """
    from ..report import build_report
    from ..study import STAGES, StudyConfig, check_stages, run_study

    set_threads(threads)
    seeds = tuple(parse_ints(ft_seeds, "--ft-seeds")) if ft_seeds is not None else None
    if seeds is not None and (not seeds or len(set(seeds)) < len(seeds) or min(seeds) < 0):
        fail(f"--ft-seeds must be distinct non-negative integers, comma-separated (e.g. 0,1,2), got {ft_seeds!r}")
    out_file(out, "report.html")  # a folder that can be written, before any work

    if method_lr and lr is not None:
        fail("--method-lr gives each fine-tuning method its own learning rate: drop --lr, or drop --method-lr")
    wanted = tuple(s for s in (stages or ",".join(STAGES)).split(",") if s)
    try:
        check_stages(wanted)
    except ValueError as err:
        fail(str(err))
    given = {"n_eval": n, "n_probe": n_probe, "n_pairs": n_pairs, "top_k": top_k, "n_random": n_random, "lr": lr,
             "n_train": n_train, "chat": chat, "general_n": general_n, "batch_size": batch_size, "ft_steps": ft_steps,
             "n_transfer": n_transfer, "n_val": n_val, "ft_seeds": seeds, "warmup": warmup, "method_lr": method_lr or None,
             "knockout_ks": tuple(parse_ints(knockout_ks, "--knockout-ks")) if knockout_ks else None,
             "baselines": tuple(b for b in baselines.split(",") if b) if baselines is not None else None}
    kw = {k: v for k, v in given.items() if v is not None}
    kw.update(method=method, compare=tuple(c for c in compare.split(",") if c), seed=seed, stages=wanted)
    try:
        cfg = StudyConfig.quick(**kw) if quick else StudyConfig(**kw)
        shown = show_progress(progress, json_out)
        study = run_study(model, out, cfg, device=device, progress=shown, log=log_to_stderr(shown), dtype=dtype)
    except (ValueError, OSError, ModuleNotFoundError) as err:
        fail(error_line(err))
    report = build_report(out)
    if json_out:
        from ..report import load_study

        res = load_study(study.folder)["results"]
        print_json({"out": str(study.folder), "report": str(report),
                    **{k: v.summary() for k, v in res.items()}, **({"graded": study.graded} if study.graded else {})})
    else:
        typer.echo(f"report: {report.resolve()}")
