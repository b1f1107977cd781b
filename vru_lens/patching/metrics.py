"""Patching metrics: the normalised logit difference (1 = clean behaviour, 0 = corrupted).

The logit difference itself is read by ``vru_lens.readout`` (two unembedding
columns at the final position, bias and soft-cap included) and re-exported here;
pair accuracy lives in ``vru_lens.evaluate`` (a stage above patching).
"""

from __future__ import annotations

from torch import Tensor

# re-exported under their earlier names; they live in readout and tokens
from ..readout import baseline_logit_diffs, gather_final, logit_diff_from_logits, logit_diff_from_resid  # noqa: F401
from ..tokens import batches  # noqa: F401


def normalise(patched: Tensor, clean: Tensor, corrupt: Tensor) -> Tensor:
    """1 = clean behaviour, 0 = corrupted behaviour (means over pairs in the denominator)."""
    denom = clean.mean() - corrupt.mean()
    if denom.abs() < 1e-8:
        raise ValueError("clean and corrupted logit differences are equal on average; the pairs carry no signal")
    return (patched - corrupt.mean()) / denom
