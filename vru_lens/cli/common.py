"""Small helpers shared by the CLI commands: argument parsing and one-line errors."""

from __future__ import annotations

import json
import sys

import typer


def fail(message: str) -> None:
    """Exit non-zero with a one-line reason."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


def parse_steps(text: str) -> tuple[int, int]:
    """'2-5' or '3' -> (min, max), checked against VRUBench's 2..5."""
    try:
        lo, _, hi = text.partition("-")
        lo, hi = int(lo), int(hi or lo)
    except ValueError:
        fail(f"--steps must look like 2-5 or 3, got {text!r}")
    if not 2 <= lo <= hi <= 5:
        fail(f"--steps must lie within 2-5 (min <= max), got {text!r}")
    return lo, hi


def print_json(payload: dict) -> None:
    json.dump(payload, sys.stdout, default=str)
    sys.stdout.write("\n")
