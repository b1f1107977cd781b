"""The organism's ground truth, measured by exact experiments on a loaded bridge (the tests repeat them).

- completeness (InterpBench / SIIT): every head outside the circuit C resampled from another story of
  equal token length (several draws) -> accuracy within 2 points and <= 2% of top answers changed;
  C resampled -> accuracy near the best rotation-blind rule;

- patch C: every circuit head's ``hook_z`` (all positions) from the flipped prompt -> share of pairs
  whose top candidate becomes the flipped answer (should be >= 0.95);
- patch outside C: every other head from the flipped prompt -> share of pairs whose top candidate
  changes (should be <= 0.02);
- mean-ablate C -> accuracy near the best rotation-blind rule; mean-ablate as many random heads
  outside C -> accuracy within 2 points of the unablated model.
"""

from __future__ import annotations

import random
from functools import partial

import torch

from ..heads import all_heads, heads_view, hook_name, random_heads, set_heads_hooks
from ..patching.knockout import ablate_heads
from ..patching.metrics import batches


def _patch_hooks(model, heads, cache):
    """Hooks giving ``heads`` their ``z`` from ``cache`` (a run of the other prompt)."""
    H = model.cfg.n_heads

    def from_cache(layer, h, view):
        return heads_view(cache[hook_name(layer, "z")], H)[:, : view.shape[1], h].to(view.dtype)

    return set_heads_hooks(model, heads, from_cache)


@torch.inference_mode()
def patched_choices(model, pt, heads, batch_size: int = 64, corrupt_run: bool = False):
    """Top candidate on the clean prompts with ``heads`` from the corrupt ones (``corrupt_run``: plain corrupt prompts)."""
    tok = model.tokenizer
    names = {hook_name(layer, "z") for layer in range(model.cfg.n_layers)}
    out = []
    for sl, sub in pt.chunks(batch_size):
        clean, corrupt = sub.clean.to(model.cfg.device), sub.corrupt.to(model.cfg.device)
        cache = {}
        if heads:
            _, cache = model.run_with_cache(corrupt, names_filter=lambda n: n in names)
        with model.hooks(fwd_hooks=_patch_hooks(model, heads, cache)):
            logits = model(corrupt if corrupt_run else clean)
        final = logits[torch.arange(len(clean)), pt.final_pos[sl].to(logits.device)]
        for row, item in zip(final, pt.pairs.items[sl]):
            ids = [tok(" " + c, add_special_tokens=False)["input_ids"][0] for c in item["candidates"]]
            out.append(item["candidates"][int(row[ids].argmax())])
    return out


def _length_groups(seqs) -> list[list[int]]:
    groups: dict[int, list[int]] = {}
    for i, s in enumerate(seqs):
        groups.setdefault(len(s), []).append(i)
    return list(groups.values())


@torch.inference_mode()
def resampled_choices(model, items, heads, draw: int = 0, batch_size: int = 64) -> list[str]:
    """Top candidate per item with ``heads`` taking their ``z`` (all positions) from another item of the
    same token length: a derangement within each length group, seeded by ``draw``."""
    from ..tokens import answer_ids, encode, render

    tok = model.tokenizer
    seqs = [encode(tok, render(it["prompt"], tok)) for it in items]
    names = {hook_name(layer, "z") for layer in range(model.cfg.n_layers)}
    gen = torch.Generator().manual_seed(draw)
    out = [None] * len(items)
    for group in _length_groups(seqs):
        perm = torch.randperm(len(group), generator=gen)
        src = torch.empty_like(perm)
        src[perm] = perm.roll(-1)
        for sl in batches(len(group), batch_size):
            rows = group[sl]
            ids = torch.tensor([seqs[i] for i in rows], device=model.cfg.device)
            cache = {}
            if heads:
                source = torch.tensor([seqs[group[int(j)]] for j in src[sl]], device=model.cfg.device)
                _, cache = model.run_with_cache(source, names_filter=lambda n: n in names)
            with model.hooks(fwd_hooks=_patch_hooks(model, heads, cache)):
                final = model(ids)[:, -1]
            for row, i in zip(final, rows):
                cands = items[i]["candidates"]
                ids_c = [answer_ids(tok, c)[0] for c in cands]
                out[i] = cands[int(row[ids_c].argmax())]
    return out


def _accuracy(pred, items) -> float:
    """Share of ``items`` whose predicted answer (one per item) is the right one."""
    return sum(p == it["answer"] for p, it in zip(pred, items)) / len(items)


def completeness(model, items, circuit, draws: int = 3) -> dict:
    """Resample-ablation of everything outside C and of C itself, ``draws`` times each, beside the best rule."""
    from ..evaluate import best_rule

    circuit = [tuple(h) for h in circuit]
    outside = all_heads(model.cfg.n_layers, model.cfg.n_heads, exclude=circuit)
    base = resampled_choices(model, items, [])
    acc = partial(_accuracy, items=items)
    out_c = [resampled_choices(model, items, outside, d) for d in range(draws)]
    in_c = [resampled_choices(model, items, circuit, d) for d in range(draws)]
    rule = best_rule(items)
    return {"n_items": len(items), "draws": draws, "accuracy": acc(base),
            "resample_outside_C_accuracy": [acc(p) for p in out_c],
            "resample_outside_C_changed": [sum(a != b for a, b in zip(p, base)) / len(items) for p in out_c],
            "resample_C_accuracy": [acc(p) for p in in_c],
            "best_blind_rule": list(rule) if rule else None}


def grow_to_complete(model, items, start, bar: float = 0.02, draws: int = 2, max_added: int = 8,
                     log=print) -> tuple[list, list]:
    """Greedy completion of a head set: while resampling everything outside it changes more than ``bar``
    of the top answers (mean over ``draws``), add the outside head whose inclusion changes fewest.

    Returns the grown set and the path (head added, changed share after): the search docs/organism.md
    reports (on the shipped organism no single head outside C reduces the changed share)."""
    L, H = model.cfg.n_layers, model.cfg.n_heads
    base = resampled_choices(model, items, [])
    circuit = [tuple(h) for h in start]

    def changed(heads):
        outside = all_heads(L, H, exclude=heads)
        return sum(sum(a != b for a, b in zip(resampled_choices(model, items, outside, d), base))
                   for d in range(draws)) / (draws * len(items))

    path, now = [], changed(circuit)
    while now > bar and len(path) < max_added:
        trials = {h: changed(circuit + [h]) for h in all_heads(L, H, exclude=circuit)}
        best = min(trials, key=lambda h: (trials[h], h))
        circuit.append(best)
        now = trials[best]
        path.append((best, now))
        log(f"added {best}: resampling outside changes {now:.1%}")
    return sorted(circuit), path


def flip_rate(model, pt, heads) -> float:
    """Share of the pairs whose answer turns into the flipped prompt's with ``heads`` patched from it."""
    return sum(a == c for a, c in zip(patched_choices(model, pt, heads), pt.pairs.corrupt_answers)) / len(pt)


def backup_flips(model, pt, backup) -> dict:
    """Each side of the (primary, backup) pairs, and both, patched from the flipped prompt: the share of pairs
    whose answer turns (a side alone turns few where each side backs the other up)."""
    prim, back = [tuple(p) for p, _ in backup], [tuple(b) for _, b in backup]
    return {"primaries": flip_rate(model, pt, prim), "backups": flip_rate(model, pt, back),
            "both": flip_rate(model, pt, prim + back)}


def backup_takeover(model, items, backup, pt, draws: int = 3, batch_size: int = 64) -> dict:
    """Accuracy on ``items`` with the primaries, the backups, or both resampled (``draws`` derangements, as
    ``completeness``) and mean-ablated (means over the pairs ``pt``, as the knockout curves): a backup takes
    over when one side costs little and both together cost much."""
    from ..evaluate import evaluate
    from ..patching.ablation import head_means

    prim, back = [tuple(p) for p, _ in backup], [tuple(b) for _, b in backup]
    acc = partial(_accuracy, items=items)
    means = head_means(model, pt, batch_size)
    out = {"n_items": len(items), "draws": draws, "resampled": {}, "mean_ablated": {}}
    for name, heads in (("primaries", prim), ("backups", back), ("both", prim + back)):
        out["resampled"][name] = [acc(resampled_choices(model, items, heads, d, batch_size)) for d in range(draws)]
        with ablate_heads(model, heads, means):
            out["mean_ablated"][name] = evaluate(model, items, batch_size=batch_size, progress=False).accuracy
    return out


def final_turn_subset(model, pt, circuit, bar: float = 0.9) -> tuple[list, dict]:
    """The heads of C that carry the final turn: C's heads added in order of their single-head flip rate
    (patched alone from the flipped twin) until patching them together flips ``bar`` of the pairs."""
    flips = lambda heads: flip_rate(model, pt, heads)  # noqa: E731
    single = {tuple(h): flips([tuple(h)]) for h in circuit}
    chosen, rate = [], 0.0
    for h in sorted(single, key=lambda h: (-single[h], h)):
        chosen.append(h)
        rate = flips(chosen)
        if rate >= bar:
            break
    return sorted(chosen), {"single": {f"{l}.{h}": r for (l, h), r in single.items()}, "together": rate}


def ground_truth(model, items, circuit, pair_items=None, n_random: int = 5, seed: int = 0,
                 batch_size: int = 64) -> dict:
    """Every check of the organism's card: accuracy and ablations on ``items`` (paper-style VRUBench,
    unknowns included), pairs and patching on the counterfactual pairs of ``pair_items`` (default: items)."""
    from ..evaluate import best_rule, evaluate, pair_accuracy
    from ..patching.ablation import head_means
    from ..tokens import tokenize_pairs

    circuit = [tuple(h) for h in circuit]
    L, H = model.cfg.n_layers, model.cfg.n_heads
    others = all_heads(L, H, exclude=circuit)
    pt = tokenize_pairs(model.tokenizer, pair_items or items)
    clean_ans, corrupt_ans = pt.pairs.clean_answers, pt.pairs.corrupt_answers
    base = patched_choices(model, pt, [], batch_size)
    flipped = patched_choices(model, pt, [], batch_size, corrupt_run=True)
    g = patched_choices(model, pt, circuit, batch_size)
    ng = patched_choices(model, pt, others, batch_size)
    n = len(pt)
    res = evaluate(model, items, batch_size=batch_size, progress=False)
    means = head_means(model, pt, batch_size)

    def acc_with(heads):
        with ablate_heads(model, heads, means):
            return evaluate(model, items, batch_size=batch_size, progress=False).accuracy

    rng = random.Random(seed)  # one stream: successive draws are independent sets
    rand = [acc_with(random_heads(L, H, len(circuit), exclude=circuit, rng=rng)) for _ in range(n_random)]
    rule = best_rule(items)
    return {
        "n_items": len(items), "n_pairs": n, "accuracy": res.accuracy, "by_answerable": res.breakdown("answerable"),
        "by_steps": res.by_steps, "chance": res.chance,
        "pairs": pair_accuracy(model, pt, batch_size),
        "pairs_both_right_top1": sum(b == c and f == d for b, c, f, d in zip(base, clean_ans, flipped, corrupt_ans)) / n,
        "patch_C_flipped": sum(x == c for x, c in zip(g, corrupt_ans)) / n,
        "patch_outside_C_changed": sum(x != b for x, b in zip(ng, base)) / n,
        "ablate_C_accuracy": acc_with(circuit), "ablate_random_accuracy": rand,
        "best_blind_rule": list(rule) if rule else None,
    }


def auroc(scores, planted) -> float:
    """Probability that a head of the known set outranks a head outside it (ties count half): InterpBench's AUROC."""
    import numpy as np

    s = np.asarray(scores, dtype=float)
    pos = np.array([s[l, h] for l, h in planted])
    mask = np.ones_like(s, dtype=bool)
    for l, h in planted:
        mask[l, h] = False
    neg = s[mask]
    pos, neg = np.nan_to_num(pos, nan=-np.inf), np.nan_to_num(neg, nan=-np.inf)
    wins = (pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()
    return float(wins / (len(pos) * len(neg)))


def auroc_ci(hs, heads, n_boot: int = 500, level: float = 0.95, seed: int = 0) -> dict:
    """AUROC of a ranking (``HeadScores``) against ``heads``, with a bootstrap CI over its pairs: each
    resample recomputes the score map from the per-pair numbers (normalisation included) and its AUROC."""
    import numpy as np

    from ..patching.scores import score_from

    heads = [tuple(h) for h in heads]
    n = hs.per_pair.shape[0]
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        idx = rng.integers(0, n, n)
        try:
            boots.append(auroc(score_from(hs.per_pair[idx], hs.clean_ld[idx], hs.corrupt_ld[idx], hs.kind), heads))
        except ValueError:  # a resample whose clean and corrupt logit differences coincide: no score map
            continue
    lo, hi = (np.quantile(boots, [(1 - level) / 2, (1 + level) / 2]) if boots else (float("nan"),) * 2)
    return {"auroc": auroc(hs.scores, heads), "low": float(lo), "high": float(hi), "n_boot": len(boots),
            "level": level}


def grade_methods(model, pair_items, planted, methods=("activation", "attribution", "path", "ablation"),
                  batch_size: int = 32) -> dict:
    """Each ranking method's AUROC against G and precision at |G| (how many of its top |G| are planted)."""
    from ..patching.rank import rank_heads
    from ..tokens import tokenize_pairs

    planted = [tuple(h) for h in planted]
    pt = tokenize_pairs(model.tokenizer, pair_items)
    out = {}
    for method in methods:
        hs = rank_heads(model, pt, method=method, n_boot=0, progress=False, batch_size=batch_size)
        top = [(int(l), int(h)) for l, h, _ in hs.top(len(planted))]
        out[method] = {"auroc": auroc(hs.scores, planted),
                       "precision_at_G": sum(t in planted for t in top) / len(planted), "top": top}
    return out


@torch.inference_mode()
def attention_roles(model, items, planted, batch_size: int = 64) -> dict:
    """Where each planted head looks from the final query: mean attention to the final turn, earlier
    turns, observed objects, and the rest (BOS, instruction, fixed phrases). A head's role is read off this."""
    from ..organism.data import TURNS, objects
    from ..tokens import encode, pad_id, pad_right, render

    tok = model.tokenizer
    turn_ids = set(tok.convert_tokens_to_ids(TURNS))
    obj_ids = set(tok.convert_tokens_to_ids(objects()))
    seqs = [encode(tok, render(it["prompt"], tok)) for it in items]
    totals = {tuple(h): torch.zeros(4) for h in planted}
    layers = sorted({l for l, _ in planted})
    names = {hook_name(l, "pattern") for l in layers}
    for sl in batches(len(seqs), batch_size):
        ids, lengths = pad_right(seqs[sl], pad_id(tok))
        _, cache = model.run_with_cache(ids, names_filter=lambda n: n in names)
        for r, n in enumerate(lengths.tolist()):
            row = ids[r, :n].tolist()
            turns = [p for p, t in enumerate(row) if t in turn_ids]
            cat = torch.full((n,), 3)
            cat[turns[:-1]] = 1
            cat[turns[-1]] = 0
            cat[[p for p, t in enumerate(row) if t in obj_ids]] = 2
            for l, h in planted:
                att = cache[hook_name(l, "pattern")][r, h, n - 1, :n].float()
                totals[(l, h)] += torch.zeros(4).index_add_(0, cat, att)
    names4 = ("final_turn", "earlier_turns", "objects", "other")
    return {f"{l}.{h}": {k: round(float(v) / len(items), 3) for k, v in zip(names4, totals[(l, h)])}
            for l, h in planted}
