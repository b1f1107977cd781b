"""Grading ranking methods on weights nobody here trained: induction heads, found by an independent test.

Ground truth (Olsson et al. 2022; the standard check): on sequences ``[BOS] x x`` of random tokens ``x``
repeated once, a head's induction score is its mean attention from each token of the second copy to the
token after that token's first occurrence (diagonal ``-(len(x) - 1)`` of the pattern). Heads scoring above
``THRESHOLD`` are the induction heads; the score itself is the target of a rank correlation. This reads
``hook_pattern`` with its own plain hook and shares no code with the ranking methods.

The contrastive task on the same kind of sequences (``induction_pairs``): clean ``[BOS] x x[:m]`` (the
second copy continues the first, so the induced next token is ``x[m]``), corrupt ``[BOS] x' x[:m]`` with
the first copy's ``x[m]`` replaced by another random token ``y`` (the induced next token is then ``y``);
answers ``x[m]`` / ``y``. Pair i is built from the same ``x`` as ground-truth sequence i, so a bootstrap
over sequences resamples both.
"""

from __future__ import annotations

import numpy as np
import torch

from .heads import hook_name
from .tokens import PairTokens

THRESHOLD = 0.3  # mean attention to the induced position; a uniform head over ~2T tokens gives ~1/(2T)


def random_tokens(tokenizer, n_seqs: int, seq_len: int, seed: int = 0) -> torch.Tensor:
    """[n_seqs, seq_len] distinct random ordinary tokens per row (special tokens and the first few ids avoided)."""
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    vocab = len(tokenizer)
    lo = min(1000, vocab // 8)  # skip byte/special ids at the start of most vocabularies
    pool = torch.tensor([t for t in range(lo, min(vocab, 20000)) if t not in special])
    if len(pool) < seq_len + 1:
        raise ValueError(f"the tokenizer has too few ordinary tokens ({len(pool)}) for seq_len {seq_len}")
    g = torch.Generator().manual_seed(seed)
    return torch.stack([pool[torch.randperm(len(pool), generator=g)[:seq_len]] for _ in range(n_seqs)])


def bos_ids(tokenizer) -> list[int]:
    bos = getattr(tokenizer, "bos_token_id", None)
    return [bos] if bos is not None else []


@torch.inference_mode()
def induction_scores(model, tokens: torch.Tensor) -> np.ndarray:
    """[seq, layer, head] induction score of every head on ``[BOS] x x`` for each row ``x`` of ``tokens``."""
    L, T = model.cfg.n_layers, tokens.shape[1]
    bos = bos_ids(model.tokenizer)
    ids = torch.cat([torch.tensor(bos, dtype=torch.long).expand(len(tokens), len(bos)), tokens, tokens], 1)
    off = len(bos)
    got = {}

    def grab(pattern, hook, layer):  # [batch, head, query, key]
        q = torch.arange(off + T + 1, off + 2 * T)  # second-copy tokens with a first occurrence followed by a token
        k = q - T + 1  # the token after the first occurrence
        got[layer] = pattern[:, :, q, k].mean(-1).float().cpu()

    model.run_with_hooks(ids.to(model.cfg.device),
                         fwd_hooks=[(hook_name(l, "pattern"), lambda p, hook, l=l: grab(p, hook, l)) for l in range(L)])
    return torch.stack([got[l] for l in range(L)], 1).numpy()


def induction_pairs(tokenizer, tokens: torch.Tensor, seed: int = 0) -> PairTokens:
    """The contrastive induction task built with ``PairTokens.from_prompts`` (token ids, plain)."""
    g = torch.Generator().manual_seed(seed + 1)
    n, T = tokens.shape
    bos = bos_ids(tokenizer)
    used = set(tokens.flatten().tolist())
    spare = [t for t in random_tokens(tokenizer, 1, min(4 * T, 2000), seed + 7)[0].tolist() if t not in used]
    clean, corrupt, a, b = [], [], [], []
    for i in range(n):
        x = tokens[i].tolist()
        m = int(torch.randint(1, T, (1,), generator=g))  # predict x[m] from x[m-1] in the second copy
        y = spare[i % len(spare)]
        x2 = x.copy()
        x2[m] = y
        clean.append(bos + x + x[:m])
        corrupt.append(bos + x2 + x[:m])
        a.append(x[m])
        b.append(y)
    return PairTokens.from_prompts(tokenizer, clean, corrupt, a, b, chat=False)


def spearman(a, b) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(np.ravel(a), np.ravel(b)).statistic)


def grade(truth: np.ndarray, ranking, threshold: float = THRESHOLD, n_boot: int = 1000, seed: int = 0) -> dict:
    """AUROC (induction heads = truth above ``threshold``) and Spearman against the mean induction score, each
    with a 95% bootstrap CI over sequences (truth [seq, layer, head] and the ranking's per-pair numbers are
    resampled together: pair i comes from sequence i)."""
    from .organism.verify import auroc
    from .patching.scores import score_from

    def both(idx):
        t = truth[idx].mean(0)
        heads = [tuple(int(v) for v in h) for h in np.argwhere(t > threshold)]
        s = score_from(ranking.per_pair[idx], ranking.clean_ld[idx], ranking.corrupt_ld[idx], ranking.kind)
        return (auroc(s, heads) if 0 < len(heads) < t.size else np.nan), spearman(s, t)

    def ci(col):
        col = col[~np.isnan(col)]
        return [float(np.quantile(col, 0.025)), float(np.quantile(col, 0.975))] if len(col) else None

    n = truth.shape[0]
    if ranking.per_pair.shape[0] != n:
        raise ValueError(f"the ranking has {ranking.per_pair.shape[0]} pairs but there are {n} sequences")
    au, rho = both(np.arange(n))
    rng = np.random.default_rng(seed)
    boot = np.array([both(rng.integers(0, n, n)) for _ in range(n_boot)])
    if np.isnan(au):  # no head above the threshold (or every head): AUROC undefined, recorded as None
        return {"auroc": None, "auroc_ci": None, "spearman": rho, "spearman_ci": ci(boot[:, 1])}
    return {"auroc": float(au), "auroc_ci": ci(boot[:, 0]), "spearman": rho, "spearman_ci": ci(boot[:, 1])}
