"""One fast-path fallback for every patching engine.

Each fast path (the tail runner's reused prefix, the path-patching recurrence) checks itself on the run
it is about to serve; when the check fails it raises ``FastPathUnsupported``, and its caller runs the
exact reference instead with the one warning ``warn_fallback`` writes. ``tolerance`` is the one bound
those self-checks allow: tight in float32, the half-precision rounding of the model's own run otherwise.
"""

from __future__ import annotations

import warnings

import torch


class FastPathUnsupported(RuntimeError):
    """A fast path does not reproduce this model's own run; the exact reference is used instead."""


def tolerance(dtype) -> tuple[float, float]:
    """(atol, rtol) of a self-check on activations or logits of ``dtype``."""
    return (1e-3, 1e-3) if dtype in (torch.float32, torch.float64) else (5e-2, 2e-2)


def warn_fallback(what: str, reason, instead: str) -> None:
    """The one warning of a fallback: what falls back, why, and what runs instead."""
    warnings.warn(f"{what}: fast path unavailable ({reason}); {instead} (exact, slower)", RuntimeWarning,
                  stacklevel=3)
