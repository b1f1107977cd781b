"""What every CLI command shares: the common options (one spelling, one meaning), one-line errors,
and finding a previous command's file in its --out folder.

A command declares a shared option by its alias here (``model: Model = "smollm2-135m-instruct"``):
the flag and its help come from here, only the default is the command's. tests/test_cli.py checks
that no command spells or explains a shared option its own way.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, NoReturn, Optional

import typer


def check_device(device: str | None) -> str | None:
    """--device: a torch device this machine has, or one line saying what it accepts."""
    if device is None:
        return None
    import torch

    try:
        kind = torch.device(device).type
    except (RuntimeError, ValueError):
        fail(f"--device {device!r} is not a torch device; use cpu, cuda, cuda:1, mps, ...")
    if kind == "cuda" and not torch.cuda.is_available():
        fail(f"--device {device}: this machine has no CUDA device; use --device cpu (or leave --device out)")
    return device


Model = Annotated[str, typer.Option("--model", help="Embedded name, organism, hub id or local folder.")]
Device = Annotated[Optional[str], typer.Option("--device", help="cpu, cuda, ... (default: cuda when available).",
                                               callback=check_device)]
Deltas = Annotated[Optional[Path], typer.Option(
    "--deltas", help="Study the fine-tuned model: the --out folder of `vru-lens finetune` (or its deltas.safetensors).")]
Data = Annotated[Optional[str], typer.Option(
    "--data", help="Items to read: a folder or JSONL from `vru-lens bench --out`, or a JSON/JSONL file in the "
                   "published format (default: generate them).")]
N = Annotated[Optional[int], typer.Option("--n", help="How many VRUBench test items to use (generated with --seed "
                                                      "unless --data gives them).")]
Seed = Annotated[int, typer.Option("--seed", help="Seed for every generated item, split and random draw.")]
Chat = Annotated[Optional[bool], typer.Option(
    "--chat/--plain", help="Prompts through the tokenizer's chat template, or plain text (default: chat for "
                           "instruction-tuned models, as the study did).")]
Json = Annotated[bool, typer.Option("--json", help="Print one JSON object (the last line of stdout) instead of text; "
                                                   "progress bars default to off.")]
Progress = Annotated[Optional[bool], typer.Option(
    "--progress/--no-progress", help="Progress bars and log lines on stderr (default: on, off with --json).")]
Threads = Annotated[int, typer.Option("--threads", help="torch CPU threads (0: torch's default; 1 avoids OpenMP "
                                                        "spinning on a busy shared CPU, often much faster there).")]
Out = Annotated[Optional[Path], typer.Option(
    "--out", help="Folder to write into (created if missing); the command's files are named inside it, "
                  "see the command's description.")]

AllowOtherModel = Annotated[bool, typer.Option(
    "--allow-other-model", help="Use a --heads ranking made on another model or geometry (refused otherwise).")]

SHARED = {"model": Model, "device": Device, "deltas": Deltas, "data": Data, "n": N, "seed": Seed, "chat": Chat,
          "json_out": Json, "progress": Progress, "threads": Threads, "out": Out,
          "allow_other_model": AllowOtherModel}  # parameter name -> its alias


def fail(message: str) -> NoReturn:
    """Exit non-zero with a one-line reason."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


def error_line(err: Exception) -> str:
    """A library error as the one line `fail` prints (its first line: a transformers traceback is long)."""
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def show_progress(progress: bool | None, json_out: bool) -> bool:
    """--progress/--no-progress if given, else on unless --json."""
    return (not json_out) if progress is None else progress


def log_to_stderr(on: bool):
    """A log function for the library: lines to stderr, or nothing."""
    return (lambda msg: typer.echo(msg, err=True)) if on else (lambda msg: None)


def set_threads(threads: int) -> None:
    if threads < 0:
        fail(f"--threads must be 0 (torch's default) or more, got {threads}")
    if threads:
        import torch

        torch.set_num_threads(threads)


def chat_for(model, chat: bool | None) -> bool:
    """--chat/--plain if given, else the study's choice: chat for instruction-tuned models."""
    from ..tokens import chat_for as resolve

    return resolve(model, chat)


def out_file(out: Path | None, name: str) -> Path | None:
    """OUT/name, creating OUT and checking that it can be written (before any work); None without --out."""
    if out is None:
        return None
    if out.exists() and not out.is_dir():
        fail(f"--out is a folder (the command writes {name} inside it), but {out} is a file; give a folder")
    import tempfile

    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as err:
        fail(f"--out {out}: cannot write there ({err.strerror or err}); give a folder you can write to")
    return out / name


def find_input(path: Path | None, name: str, option: str, made_by: str) -> Path | None:
    """A previous command's file given as its --out folder (then FOLDER/name) or as the file itself."""
    if path is None:
        return None
    path = Path(path)
    if path.is_dir():
        if not (path / name).is_file():
            fail(f"{option} {path}: the folder has no {name}; write it with `{made_by} --out {path}`")
        return path / name
    if not path.is_file():
        fail(f"{option} {path}: no such folder or file; write it with `{made_by} --out {path}`")
    return path


def load_items(data: str | None, n: int, split: str, seed: int, steps: str = "2-5", slots: int = 4,
               style: str = "paper") -> list[dict]:
    """Items from --data (a folder or JSONL from `vru-lens bench`, or a file in the published format),
    or freshly generated ones."""
    from ..bench import SPLITS, BenchConfig, make_items
    from ..bench.export import read_checked

    if split not in SPLITS:
        fail(f"--split must be one of {', '.join(SPLITS)}, got {split!r}")
    if data:
        try:
            splits, reports = read_checked(data)
        except (FileNotFoundError, ValueError, OSError) as err:
            fail(error_line(err))
        for name, report in reports.items():
            if report.disagreements or report.unreadable:
                typer.echo(f"warning: {data} ({name}): {report.summary()}", err=True)
        if split not in splits:
            only = next(iter(splits)) if len(splits) == 1 and Path(data).is_file() else None
            if only is None or only in SPLITS:
                fail(f"--split {split}: {data} has no {split} split, only {', '.join(splits)}; pass --split "
                     f"{next(iter(splits))} or write a {split} split with `vru-lens bench "
                     f"{'--n' if split == 'test' else '--' + split} N --out DIR`")
            split = only  # a single file of items under another name: its one split
        rows = splits[split][:n] if n else splits[split]
        if not rows:
            fail(f"split {split!r} of {data} is empty")
        return rows
    lo, hi = parse_steps(steps)
    try:
        return make_items(n, seed, BenchConfig(style=style, n_slots=slots, min_steps=lo, max_steps=hi), split=split)
    except ValueError as err:
        fail(str(err))


def parse_steps(text: str) -> tuple[int, int]:
    """'2-5' or '3' -> (min, max), checked against 2..MAX_STEPS (VRUBench's own items have 2-5)."""
    from ..bench.generate import MAX_STEPS

    try:
        lo, _, hi = text.partition("-")
        lo, hi = int(lo), int(hi or lo)
    except ValueError:
        fail(f"--steps must look like 2-5 or 3, got {text!r}")
    if not 2 <= lo <= hi <= MAX_STEPS:
        fail(f"--steps must lie within 2-{MAX_STEPS} (min <= max; VRUBench's own items have 2-5), got {text!r}")
    return lo, hi


def parse_ints(text: str, option: str) -> list[int]:
    """'1,2,4' -> [1, 2, 4]; anything else is refused with one line naming the option."""
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        fail(f"{option} must be comma-separated integers, got {text!r}")


def print_json(payload: dict) -> None:
    """One line of strict JSON (NaN as null, flagged: ``vru_lens.jsonio``)."""
    from ..jsonio import dumps

    sys.stdout.write(dumps(payload) + "\n")
