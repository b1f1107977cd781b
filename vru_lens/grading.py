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


# ------------------------------------------------------------------ every ranking method against a known answer
# The variants a grading table compares (InterpBench / issue 24): name -> ``rank_heads`` options.
VARIANTS = {
    "activation": {"method": "activation"},
    "activation_denoising": {"method": "activation", "direction": "denoising"},
    "path": {"method": "path"},
    "attribution": {"method": "attribution"},
    "attribution_ig16": {"method": "attribution", "ig_steps": 16},
    "ablation": {"method": "ablation"},
    "gradient": {"method": "gradient"},
}


def rank_every(model, pt: PairTokens, variants=VARIANTS, batch_size: int = 32, log=None) -> dict:
    """{name: HeadScores} of every ranking variant on the same pairs (``variants``: names of ``VARIANTS``, or a
    dict name -> ``rank_heads`` options)."""
    import time

    from .patching.rank import rank_heads

    chosen = variants if isinstance(variants, dict) else {v: VARIANTS[v] for v in variants}
    out = {}
    for name, opts in chosen.items():
        t0 = time.perf_counter()
        out[name] = rank_heads(model, pt, **opts, n_boot=0, progress=False, batch_size=batch_size)
        if log:
            log(f"{name}: {time.perf_counter() - t0:.1f}s")
    return out


def _score_map(hs, idx):
    from .patching.scores import score_from

    return score_from(hs.per_pair[idx], hs.clean_ld[idx], hs.corrupt_ld[idx], hs.kind)


def grade_rankings(rankings: dict, known, n_boot: int = 500, seed: int = 0, level: float = 0.95) -> dict:
    """AUROC against ``known`` heads and precision at |known| of each ranking, each with a bootstrap CI over
    pairs, and a paired bootstrap of every two rankings' AUROC difference (the same resampled pairs for all,
    so the test sees how the methods differ on the same data). p: two-sided, the share of resamples on the
    far side of zero, doubled."""
    from .heads import top_heads
    from .organism.verify import auroc

    known = [tuple(int(x) for x in h) for h in known]
    ns = {hs.per_pair.shape[0] for hs in rankings.values()}
    if len(ns) != 1:
        raise ValueError(f"the rankings were measured on different numbers of pairs ({sorted(ns)}): grade them "
                         "on the same pairs")
    n, k = ns.pop(), len(known)

    def both(s):
        top = top_heads(s, k)
        return auroc(s, known), sum(t in known for t in top) / k

    full = {name: both(hs.scores) for name, hs in rankings.items()}
    rng = np.random.default_rng(seed)
    boots = {name: [] for name in rankings}
    for _ in range(n_boot):
        idx = rng.integers(0, n, n)
        try:
            row = {name: both(_score_map(hs, idx)) for name, hs in rankings.items()}
        except ValueError:  # a resample whose clean and corrupt logit differences coincide: no score map
            continue
        for name, v in row.items():
            boots[name].append(v)
    q = [(1 - level) / 2, (1 + level) / 2]
    ci = lambda col: [float(x) for x in np.quantile(col, q)] if len(col) else None  # noqa: E731
    table = {name: {"auroc": full[name][0], "auroc_ci": ci(np.array(boots[name])[:, 0] if boots[name] else []),
                    "precision": full[name][1],
                    "precision_ci": ci(np.array(boots[name])[:, 1] if boots[name] else []),
                    "top": [list(h) for h in top_heads(rankings[name].scores, k)]} for name in rankings}
    names, paired = list(rankings), {}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            d = np.array(boots[a])[:, 0] - np.array(boots[b])[:, 0] if boots[a] else np.array([])
            p = float(min(1.0, 2 * min((d <= 0).mean(), (d >= 0).mean()))) if len(d) else None
            paired[f"{a} - {b}"] = {"diff": full[a][0] - full[b][0], "diff_ci": ci(d), "p": p}
    return {"known": [list(h) for h in known], "n_pairs": n, "n_boot": len(next(iter(boots.values()))),
            "level": level, "methods": table, "paired": paired}


def known_answer(card: dict, against: str = "auto") -> tuple[str, list]:
    """Which heads a ranking of this organism is graded against: its deficient heads D (a deficit organism)
    or its complete circuit C; ``against`` "auto" picks D where the card names it."""
    from .models.organisms import circuit_heads
    from .organism.deficit import deficient_heads

    if against not in ("auto", "circuit", "deficient"):
        raise ValueError(f"--against must be auto, circuit or deficient, got {against!r}")
    if against == "deficient" or (against == "auto" and "deficient_heads" in card):
        return "D (deficient heads)", deficient_heads(card)
    return "C (complete circuit)", circuit_heads(card)


def vru_pairs(tokenizer, n_pairs: int, seed: int = 78) -> PairTokens:
    """The first ``n_pairs`` counterfactual pairs of paper-style VRUBench items (seed 78: the organism cards')."""
    from .bench import BenchConfig, make_items
    from .bench.pairs import counterfactual_variants
    from .tokens import tokenize_pairs

    items = [it for it in make_items(max(4000, 40 * n_pairs), seed=seed, cfg=BenchConfig(style="paper"))
             if counterfactual_variants(it)][:n_pairs]
    return tokenize_pairs(tokenizer, items, chat=False)


def knockout_curves(model, rankings: dict, known, pt: PairTokens, n_items: int = 200, n_random: int = 5,
                    seed: int = 0):
    """Each ranking's top-k heads mean-ablated together, k = 1..min(2|known|, half the heads), against random
    k-sets outside its top k (``patching.knockout_curve``), on paper-style test items (seed 77, the cards')."""
    from functools import partial

    from .bench import BenchConfig, make_items
    from .evaluate import accuracy
    from .heads import top_heads
    from .patching.ablation import head_means
    from .patching.knockout import knockout_curve

    L, H = model.cfg.n_layers, model.cfg.n_heads
    items = make_items(n_items, seed=77, cfg=BenchConfig(style="paper"))
    tops = {name: top_heads(hs.scores, L * H) for name, hs in rankings.items()}
    return knockout_curve(model, items, tops, head_means(model, pt, 32), min(2 * len(known), L * H // 2), n_random,
                          seed, accuracy=partial(accuracy, chat=False, batch_size=64))


def grading_markdown(results: dict) -> str:
    """{model: grade_rankings(...) + "against"} as markdown: one AUROC/precision table per model, then the
    method pairs whose AUROC differs at p < 0.05."""
    lines = []
    for model, g in results.items():
        k = len(g["known"])
        lines += [f"### {model}: against {g['against']}, |known| = {k}, {g['n_pairs']} pairs, {g['n_boot']} resamples",
                  "", f"| method | AUROC [95% CI] | precision at {k} [95% CI] | top {k} |", "|---|---|---|---|"]
        fmt = lambda v, c: f"{v:.2f} [{c[0]:.2f}, {c[1]:.2f}]" if c else f"{v:.2f}"  # noqa: E731
        for name, r in g["methods"].items():
            lines.append(f"| {name} | {fmt(r['auroc'], r['auroc_ci'])} | {fmt(r['precision'], r['precision_ci'])} | "
                         + " ".join(f"({l},{h})" for l, h in r["top"]) + " |")
        ko = g.get("knockout")
        if ko:
            ks = ko["ks"]
            n_known = len(g["known"])
            kk = sorted({k for k in (n_known // 2, n_known, ks[-1]) if k in ks})
            lines += ["", f"Knockout (mean ablation, {ko['n_items']} items, no heads ablated "
                          f"{100 * ko['base_accuracy']:.1f}%): accuracy with the top k ablated, random k outside it "
                          "mean [5-95%]", "", "| method | " + " | ".join(f"k = {k}" for k in kk) + " |",
                      "|---" * (len(kk) + 1) + "|"]
            for name, accs in ko["curves"].items():
                cells = [f"{100 * accs[ks.index(k)]:.1f} ({100 * ko['random'][name][str(k)]['mean']:.1f} "
                         f"[{100 * ko['random'][name][str(k)]['low']:.1f}, {100 * ko['random'][name][str(k)]['high']:.1f}])"
                         for k in kk]
                lines.append(f"| {name} | " + " | ".join(cells) + " |")
        sig = [(pair, r) for pair, r in g["paired"].items() if r["p"] is not None and r["p"] < 0.05]
        lines += ["", "Paired bootstrap of the AUROC difference, p < 0.05: "
                  + ("; ".join(f"{pair} = {r['diff']:+.2f} [{r['diff_ci'][0]:+.2f}, {r['diff_ci'][1]:+.2f}], "
                               f"p = {r['p']:.3f}" for pair, r in sig) if sig else "none") + ".", ""]
    return "\n".join(lines)


def grading_figure(results: dict):
    """AUROC of every method on every model, with its bootstrap CI as error bars."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for model, g in results.items():
        names = list(g["methods"])
        y = [g["methods"][m]["auroc"] for m in names]
        ci = [g["methods"][m]["auroc_ci"] or [v, v] for m, v in zip(names, y)]
        fig.add_bar(x=names, y=y, name=f"{model} (vs {g['against']})",
                    error_y={"type": "data", "symmetric": False, "array": [c[1] - v for c, v in zip(ci, y)],
                             "arrayminus": [v - c[0] for c, v in zip(ci, y)]})
    fig.add_hline(y=0.5, line_dash="dot", annotation_text="random ranking")
    fig.update_layout(barmode="group", title="Ranking methods against the known answer (AUROC, 95% bootstrap CI)",
                      yaxis_title="AUROC", yaxis_range=[0, 1.05])
    return fig
