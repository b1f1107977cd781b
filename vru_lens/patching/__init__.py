"""Patching: metrics, activation/path/attribution patching, ablation, gradient x activation, HeadScores, knockout.

Every method returns per-pair numbers ``Float[Tensor, "pair layer head"]`` (the
patched logit difference, or a KL for ablation; path patching wraps them in a
``PathPatchResult``, as ``.effects``); ``HeadScores`` turns them into
a score where higher = more important, with bootstrap CIs over pairs.
``rank_heads`` is the one entry point. See docs/patching.md.
"""

from .ablation import ablation_kl, ablation_reference, head_means
from .activation import (activation_patch_heads, activation_patch_heads_by_pos, activation_patch_heads_reference,
                         gqa_groups, tl_head_out_all_pos)
from .attribution import agreement, attribution_patch_heads
from .checkpoint import Checkpoint
from .knockout import KnockoutCurve, KnockoutResult, ablate_heads, knockout, knockout_curve
from .metrics import baseline_logit_diffs, logit_diff_from_logits, logit_diff_from_resid, normalise
from .rank import METHODS, rank_heads
from .scores import HeadScores

from .path import PathPatchResult, path_patch_logits, path_patch_logits_reference, path_patch_receivers

__all__ = [
    "HeadScores", "rank_heads", "METHODS",
    "activation_patch_heads", "activation_patch_heads_by_pos", "activation_patch_heads_reference",
    "tl_head_out_all_pos", "gqa_groups",
    "attribution_patch_heads", "agreement",
    "ablation_kl", "ablation_reference", "head_means",
    "knockout", "ablate_heads", "KnockoutResult", "knockout_curve", "KnockoutCurve",
    "Checkpoint",
    "PathPatchResult", "path_patch_logits", "path_patch_logits_reference", "path_patch_receivers",
    "baseline_logit_diffs", "logit_diff_from_logits", "logit_diff_from_resid", "normalise",
]
