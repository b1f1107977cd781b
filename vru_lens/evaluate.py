"""Accuracy on VRUBench (or any data with prompt/candidates/answer): candidate scoring and generation.

Candidate scoring compares the log-probability of each candidate's full token
sequence after the rendered prompt. Each prompt runs once (in right-padded
batches sorted by length): every candidate's first token is read at its end
(most objects are one token) and the later tokens of the multi-token
candidates run against the prompts' KV cache; only the scored positions are
unembedded. With hooks or adapters on the model, the reference schedule runs
instead (a row of prompt + candidate[:-1] per multi-token candidate; see
``score_candidates``).

Generation scoring is the study's: greedy decoding, then exact match after
normalisation (``normalise``: first line, case, punctuation, articles,
whitespace; the phrases in ``UNKNOWN_PHRASES`` read as "unknown"). Every
result carries the rotation-blind rules' accuracies on the same items
(``audit``: the rules themselves live in ``bench.shortcuts``) so that no
accuracy is shown without its floor. Pair accuracy (``pair_accuracy``) asks
whether the choice between a counterfactual pair's two answers follows the
rotation phrase. ``accuracy`` and ``vru_breakdown`` are the accuracy functions
the stages below this one take as arguments (fine-tuning's validation and
before/after, knockout); every accuracy is a fraction (0-1).
"""

from __future__ import annotations

import re
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from .bench.answers import UNKNOWN, UNKNOWN_PHRASES, normalise  # noqa: F401  (re-exported)
from .bench.shortcuts import RULES, picks
from .models.kv_cache import kv_cache_ok
from .readout import baseline_logit_diffs, prefix_cache_ok, score_prefixed, score_rows
from .results import Result, model_name
from .tokens import answer_ids, chat_for, encode, pad_id, render, tokenize_pairs

REQUIRED = ("prompt", "candidates", "answer")
BREAKDOWNS = ("n_steps", "answerable", "final_direction", "final_angle", "final_template", "uses_heldout_template",
              "n_slots", "style")
METHODS = ("logprob", "generate", "both")


# ------------------------------------------------------------------ the rotation-blind rules' accuracies
def chance(items) -> float:
    """Expected accuracy of a uniform guess among each item's candidates."""
    return chance_of(len(it["candidates"]) for it in items)


def chance_of(n_candidates) -> float:
    """Expected accuracy of a uniform guess, from each item's number of candidates."""
    counts = list(n_candidates)
    return sum(1 / c for c in counts) / max(len(counts), 1)


def audit(items, rules: dict = RULES) -> dict:
    """Every rotation-blind rule's accuracy beside chance on items with VRUBench fields:
    {"n", "chance", "rules": {name: accuracy}, "best": [name, accuracy]}."""
    items = [it for it in items if it.get("steps")]
    if not items:
        raise ValueError("no VRUBench items to audit: rules need the 'steps' field (generate or load_vrubench them)")
    hits = Counter()
    for it in items:
        for name, pick in picks(it, rules).items():
            hits[name] += pick == it["answer"]
    acc = {name: hits[name] / len(items) for name in rules}
    best = max(acc.items(), key=lambda kv: kv[1])
    return {"n": len(items), "chance": chance(items), "rules": acc, "best": list(best)}


def pair_audit(pairs, rules: dict = RULES) -> dict:
    """Each rule's share of counterfactual pairs (``bench.PairSet``) it answers right under both rotations.

    A rule that ignores the final action picks the same object twice and gets no pair right; the
    "same action" rules read it and may. {"rules": {name: both_right}, "best": [name, both_right]}.
    """
    both = Counter()
    for clean, corrupt in zip(pairs.items, pairs.corrupt_items):
        a, b = picks(clean, rules), picks(corrupt, rules)
        for name in rules:
            both[name] += a[name] == clean["answer"] and b[name] == corrupt["answer"]
    acc = {name: both[name] / max(len(pairs.items), 1) for name in rules}
    return {"rules": acc, "best": list(max(acc.items(), key=lambda kv: kv[1]))}


def best_rule(items) -> tuple[str, float] | None:
    """The strongest rule and its accuracy; None for items without VRUBench fields."""
    try:
        return tuple(audit(items)["best"])
    except ValueError:
        return None


def blind_accuracy(items) -> float | None:
    """The best rotation-blind rule's accuracy (the floor a VRU gain must clear); None off VRUBench."""
    best = best_rule(items)
    return best[1] if best else None


def match_generation(text: str, candidates: list[str]) -> str:
    """The candidate the generated text names exactly (after ``normalise``), else the normalised text."""
    said = normalise(text)
    return next((c for c in candidates if normalise(c) == said), said)


def as_rows(data) -> list[dict]:
    """A list of item dicts from a list, a datasets.Dataset, or a DatasetDict split."""
    rows = data.to_list() if hasattr(data, "to_list") else list(data)
    if not rows:
        raise ValueError("no items to evaluate: the dataset is empty")
    missing = [c for c in REQUIRED if c not in rows[0]]
    if missing:
        raise ValueError(f"items need the columns {REQUIRED}; missing {missing}")
    for row in rows:
        cands = row["candidates"]
        if isinstance(cands, str) or not all(isinstance(c, str) for c in cands):
            raise ValueError(f"item {row.get('id', '?')}: candidates must be a list of strings, got {cands!r}")
        if row["answer"] not in row["candidates"]:
            raise ValueError(f"item {row.get('id', '?')}: answer {row['answer']!r} is not among its candidates")
    return rows


@dataclass
class EvalResult(Result):
    """Per-item predictions (candidate scoring and/or generation), every breakdown, and the rules' floor.

    ``rules``: the rotation-blind audit of the same items ({"chance", "rules", "best"}); empty off VRUBench.
    """

    model: str
    method: str
    chat: bool
    per_item: list[dict] = field(default_factory=list)
    rules: dict = field(default_factory=dict)
    seconds: float = 0.0  # wall time of scoring and generation together

    @property
    def n(self) -> int:
        return len(self.per_item)

    def _mean(self, key: str) -> float | None:
        vals = [r[key] for r in self.per_item if key in r]
        return sum(vals) / len(vals) if vals else None

    @property
    def accuracy(self) -> float:
        """Candidate-scoring accuracy (generation accuracy when only generation ran)."""
        return self._mean("correct") or 0.0

    @property
    def candidate_accuracy(self) -> float | None:
        return self.accuracy if self.method in ("logprob", "both") else None

    @property
    def generation_accuracy(self) -> float | None:
        """Exact match of the normalised greedy answer (the study's metric); None if generation did not run."""
        return self._mean("gen_correct")

    def says_unknown(self, pred: str = "pred") -> float | None:
        """Share of items answered "unknown" (``pred`` or ``gen_pred``): set it beside the true unknown rate."""
        preds = [r[pred] for r in self.per_item if pred in r]
        return sum(p == UNKNOWN for p in preds) / len(preds) if preds else None

    def breakdown(self, key: str, metric: str = "correct") -> dict:
        groups = defaultdict(list)
        for r in self.per_item:
            if key in r and metric in r:
                groups[r[key]].append(r[metric])
        return {k: sum(v) / len(v) for k, v in sorted(groups.items(), key=lambda kv: str(kv[0]))}

    def counts(self, key: str) -> dict:
        groups = defaultdict(int)
        for r in self.per_item:
            if key in r:
                groups[r[key]] += 1
        return dict(groups)

    @property
    def chance(self) -> float:
        """Expected accuracy of a uniform guess among each item's candidates."""
        return chance_of(r["n_candidates"] for r in self.per_item)

    @property
    def by_steps(self) -> dict:
        return self.breakdown("n_steps")

    @property
    def by_template(self) -> dict:
        return self.breakdown("final_template")

    @property
    def best_rule(self) -> tuple[str, float] | None:
        """The strongest rotation-blind rule on these items and its accuracy."""
        return tuple(self.rules["best"]) if self.rules.get("best") else None

    @property
    def blind_baseline(self) -> float | None:
        """Accuracy of the best rotation-blind rule on these items (``bench.shortcuts``); None off VRUBench."""
        return self.best_rule[1] if self.best_rule else None

    def summary(self) -> dict:
        out = {"model": self.model, "method": self.method, "chat": self.chat, "n": self.n,
               "accuracy": self.accuracy, "candidate_accuracy": self.candidate_accuracy,
               "generation_accuracy": self.generation_accuracy, "chance": self.chance,
               "best_rule": list(self.best_rule) if self.best_rule else None, "blind_baseline": self.blind_baseline,
               "rules": self.rules.get("rules"), "unknown_rate": self._mean_unknown(),
               "says_unknown": self.says_unknown() if self.candidate_accuracy is not None else None,
               "generation_says_unknown": self.says_unknown("gen_pred"),
               "seconds_per_item": self.seconds / max(self.n, 1)}
        for k in BREAKDOWNS:
            if any(k in r for r in self.per_item):
                name = "steps" if k == "n_steps" else k
                if self.candidate_accuracy is not None:
                    out[f"by_{name}"] = self.breakdown(k)
                if self.generation_accuracy is not None:
                    out[f"generation_by_{name}"] = self.breakdown(k, "gen_correct")
        return out

    def _mean_unknown(self) -> float:
        return sum(r["answer"] == UNKNOWN for r in self.per_item) / max(self.n, 1)

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame(self.per_item)

    def plot(self, title: str | None = None, key: str = "n_steps"):
        """Accuracy by ``key`` (bars; ``viz.accuracy_figure`` overlays several results)."""
        from .viz import accuracy_figure

        fig = accuracy_figure({self.model: self}, key)
        return fig.update_layout(title=title) if title else fig

    def table(self) -> str:
        floor = f"chance {self.chance:.1%}"
        if self.best_rule:
            floor += f", best rotation-blind rule {self.best_rule[1]:.1%} ({self.best_rule[0]})"
        scores = []
        if self.candidate_accuracy is not None:
            scores.append(f"candidate log-prob accuracy {self.candidate_accuracy:.1%}")
        if self.generation_accuracy is not None:
            scores.append(f"generation accuracy {self.generation_accuracy:.1%}")
        lines = [f"{self.model} ({'chat' if self.chat else 'plain'}) on {self.n} items: {'; '.join(scores)}  [{floor}]"]
        said = [f"{label} {v:.1%}" for label, v in (("candidates", self.says_unknown() if self.candidate_accuracy
                                                     is not None else None), ("generation", self.says_unknown("gen_pred")))
                if v is not None]
        lines.append(f"  answers 'unknown': {', '.join(said)} of items (true rate {self._mean_unknown():.1%})")
        cols = [m for m, on in (("correct", self.candidate_accuracy is not None),
                                ("gen_correct", self.generation_accuracy is not None)) if on]
        head = "  ".join({"correct": "candidate", "gen_correct": "generation"}[c] for c in cols)
        for key, label in (("n_steps", "steps"), ("answerable", "answerable"), ("final_direction", "final direction"),
                           ("final_angle", "final angle")):
            counts = self.counts(key)
            if not counts:
                continue
            lines.append(f"  by {label:<15} {head}")
            groups = {c: self.breakdown(key, c) for c in cols}
            for value in groups[cols[0]]:
                name = ({True: "answerable", False: "unknown"}[value] if key == "answerable" else
                        f"{value} steps" if key == "n_steps" else value)
                accs = "  ".join(f"{groups[c][value]:>{9 if c == 'correct' else 10}.1%}" for c in cols)
                lines.append(f"    {str(name):<16} {accs}  (n={counts[value]})")
        return "\n".join(lines)


def _score_requests(model, rows, batch_size, progress):
    """rows: (ids, positions, reads, key) with reads = [(index into positions, token)]; returns {key: [logprobs]}."""
    out = {}
    for i, logp in score_rows(model, [r[:2] for r in rows], batch_size, progress):
        _, _, reads, key = rows[i]
        out[key] = [logp[p, tok].item() for p, tok in reads]
    return out


def _plan(model, items, chat):
    """Per item: (prompt ids, {candidate: token ids})."""
    tok = model.tokenizer
    return [(encode(tok, render(item["prompt"], tok, chat), chat),
             {c: answer_ids(tok, c, chat) for c in item["candidates"]}) for item in items]


def _recomputed_logprobs(model, plan, batch_size, progress) -> list[dict[str, list[float]]]:
    """The reference schedule: per item, one row for the prompt (every candidate's first token read at its
    end) and, per multi-token candidate, one row of prompt + candidate[:-1] (the prompt computed again)."""
    rows, firsts_of = [], []
    for i, (prompt, cands) in enumerate(plan):
        firsts = sorted({ids[0] for ids in cands.values()})
        rows.append((prompt, [len(prompt) - 1], [(0, t) for t in firsts], (i, None)))
        for c, ids in cands.items():
            if len(ids) > 1:
                positions = list(range(len(prompt) - 1, len(prompt) + len(ids) - 1))
                rows.append((prompt + ids[:-1], positions, list(enumerate(ids)), (i, c)))
        firsts_of.append(firsts)
    got = _score_requests(model, rows, batch_size, progress)
    out = []
    for i, ((_, cands), firsts) in enumerate(zip(plan, firsts_of)):
        first = dict(zip(firsts, got[(i, None)]))
        out.append({c: got[(i, c)] if len(ids) > 1 else [first[ids[0]]] for c, ids in cands.items()})
    return out


def _cached_logprobs(model, plan, batch_size, progress) -> list[dict[str, list[float]]]:
    """The same log-probabilities with each prompt run once: the tails (candidate[:-1]) of the multi-token
    candidates read the prompts' KV cache (``readout.score_prefixed``)."""
    tails, keys = [], []
    for i, (_, cands) in enumerate(plan):
        for c, ids in cands.items():
            if len(ids) > 1:
                tails.append((i, ids[:-1]))
                keys.append(c)
    out = [None] * len(plan)
    for i, first, along in score_prefixed(model, [p for p, _ in plan], tails, batch_size, progress):
        _, cands = plan[i]
        lp = {c: [first[ids[0]].item()] for c, ids in cands.items()}
        for t, logp in along.items():
            ids = cands[keys[t]]
            lp[keys[t]] += [logp[k, tok].item() for k, tok in enumerate(ids[1:])]
        out[i] = lp
    return out


@torch.inference_mode()
def score_candidates(model, items, chat: bool | None = None, batch_size: int = 16, progress: bool = True,
                     length_normalise: bool = False, reuse_prompt: bool = True) -> list[dict[str, float]]:
    """Per item: candidate -> log-probability of its tokens after the prompt (sum, or mean per token).

    Each prompt runs once: every candidate's first token is read at its end, and the later tokens of the
    multi-token candidates are run against its KV cache (``readout.score_prefixed``), about 3x fewer
    token-forwards than one forward per candidate. The reference schedule (``reuse_prompt=False``)
    computes the prompt again for every multi-token candidate (``readout.score_rows``); it also runs,
    giving the same numbers (it is what the cached pass is checked against), whenever the cached pass
    cannot be trusted to read the same thing: hooks or adapters registered on the model (a hook would see
    the prompt and the tails in two passes instead of one: ``readout.has_hooks``), a bridge without the
    wrapped transformers body, a KV cache the bridge's attention ignores, a sliding window shorter than
    the rows, or a model that fails the one-time comparison of the two (``readout.prefix_cache_ok``;
    that case warns, as it means the installed libraries do not meet as expected).
    """
    plan = _plan(model, items, chat_for(model, chat))
    longest = max((len(p) + len(ids) for p, cands in plan for ids in cands.values()), default=0)
    if reuse_prompt and prefix_cache_ok(model, longest):
        logprobs = _cached_logprobs(model, plan, batch_size, progress)
    else:
        logprobs = _recomputed_logprobs(model, plan, batch_size, progress)
    return [{c: sum(lp) / len(lp) if length_normalise else sum(lp) for c, lp in item.items()} for item in logprobs]


# ------------------------------------------------------------------ counterfactual pairs
def pair_accuracy(model, pt, batch_size: int = 16) -> dict:
    """Does the model's choice between the two answers follow the rotation phrase?

    Each counterfactual pair differs only in its final rotation phrase, which flips the answer.
    ``clean_right``/``corrupt_right``: share of prompts where the right one of the two answers
    has the higher logit. ``both_right``: share of pairs right on both prompts; a model that
    ignores the phrase scores 0 here whatever its accuracy (a coin flip per prompt: 0.25).
    ``same_pick``: share of pairs where the same one of the two answers wins on both prompts
    (the phrase did not move the choice). ``ld_corr``: correlation of the two prompts' logit
    differences (near 1 = phrase ignored).
    """
    if len(pt) < 2:
        raise ValueError(f"need at least 2 counterfactual pairs, got {len(pt)}; generate more items")
    clean, corrupt = baseline_logit_diffs(model, pt, batch_size)
    clean_ok, corrupt_ok = clean > 0, corrupt < 0
    return {"n_pairs": len(pt), "clean_right": float(clean_ok.float().mean()),
            "corrupt_right": float(corrupt_ok.float().mean()),
            "both_right": float((clean_ok & corrupt_ok).float().mean()),
            "same_pick": float(((clean > 0) == (corrupt > 0)).float().mean()),
            "ld_gap": float((clean - corrupt).mean()), "ld_corr": float(torch.corrcoef(torch.stack([clean, corrupt]))[0, 1])}


def items_pair_accuracy(model, items, chat: bool | None = None, batch_size: int = 16, kind: str = "observed",
                        max_pairs: int | None = None) -> dict | None:
    """``pair_accuracy`` on the counterfactual pairs of one kind (``bench.pairs.KINDS``) these items yield
    for this model's tokenizer, with what was dropped and why (``pairs``); None when they yield fewer than 2.

    ``unknown_first``: share of the pairs' prompts (clean and flipped) on which "unknown" scores
    above every object among all candidates (``score_candidates``).
    """
    chat = chat_for(model, chat)
    try:
        pt = tokenize_pairs(model.tokenizer, items, chat=chat, kind=kind, max_pairs=max_pairs)
    except ValueError:  # not a single pair
        return None
    if len(pt) < 2:
        return None
    best = pair_audit(pt.pairs)["best"]  # the floor: the best rotation-blind rule's both_right
    prompts = [it for it in pt.pairs.items + pt.pairs.corrupt_items if UNKNOWN in it["candidates"]]
    picks = [max(s, key=s.get) for s in score_candidates(model, prompts, chat, batch_size, progress=False)]
    return {**pair_accuracy(model, pt, batch_size), "pairs": pt.pairs.summary(), "kind": kind,
            "yield": pt.pairs.yield_, "best_rule": best,
            "unknown_first": sum(p == UNKNOWN for p in picks) / len(picks) if picks else None}


# ------------------------------------------------------------------ accuracy functions for the stages
def accuracy(model, items, chat: bool | None = None, batch_size: int = 16, progress: bool = False) -> float:
    """Fraction of ``items`` whose gold answer is the best-scoring candidate (``evaluate``, method "logprob").

    The accuracy function fine-tuning (validation) and knockout take:
    ``functools.partial(accuracy, chat=..., batch_size=...)`` is a ``(model, items) -> float``.
    """
    return evaluate(model, items, chat=chat, batch_size=batch_size, progress=progress).accuracy


def vru_breakdown(model, items, chat: bool | None = None, batch_size: int = 16, progress: bool = False,
                  transfer: dict | None = None, pair_items: list | None = None, max_pairs: int | None = None) -> dict:
    """VRU accuracy (fractions) on ``items``, on those using held-out templates and on the rest, with the
    counterfactual pairs (``items_pair_accuracy``) of ``pair_items`` (default: ``items``, which yield few pairs:
    a study passes its ranking's pair items) and the best rotation-blind rule's accuracy;
    ``transfer`` ({name: items}, e.g. another phrasing or longer stories): accuracy on each, as ``transfer_<name>``.

    Fine-tuning's before/after measurement: ``functools.partial(vru_breakdown, chat=..., batch_size=...)``.
    An accuracy gain that leaves pairs' ``both_right`` at 0 did not come from following the rotation.
    """
    chat = chat_for(model, chat)
    res = evaluate(model, items, chat=chat, batch_size=batch_size, progress=progress)
    held = res.breakdown("uses_heldout_template")
    counts = res.counts("uses_heldout_template")
    return {"test": res.accuracy, "n": res.n, "heldout_templates": held.get(True, float("nan")),
            "in_distribution": held.get(False, float("nan")) if counts else res.accuracy,
            "n_heldout": counts.get(True, 0), "n_in_distribution": counts.get(False, 0) if counts else res.n,
            "pairs": items_pair_accuracy(model, items if pair_items is None else pair_items, chat, batch_size,
                                         max_pairs=max_pairs), "blind_baseline": res.blind_baseline,
            **{f"transfer_{name}": evaluate(model, extra, chat=chat, batch_size=batch_size, progress=False).accuracy
               for name, extra in (transfer or {}).items()}}


def match_answer(text: str, candidates: list[str]) -> str:
    """The candidate named first anywhere in generated text ('' if none): a lenient reading, not the study's."""
    text = text.lower()
    found = [(m.start(), c) for c in candidates for m in [re.search(rf"\b{re.escape(c.lower())}\b", text)] if m]
    return min(found)[1] if found else ""


@torch.inference_mode()
def generate_answers(model, items, chat: bool | None = None, batch_size: int = 16, max_new_tokens: int = 8,
                     progress: bool = True) -> list[str]:
    """Greedy generations, left-padded with an attention mask, run by the wrapped transformers model."""
    tok, chat = model.tokenizer, chat_for(model, chat)
    hf = model.original_model
    pid = pad_id(tok)
    texts = []
    for start in tqdm(range(0, len(items), batch_size), desc="generating", disable=not progress, leave=False):
        seqs = [encode(tok, render(it["prompt"], tok, chat), chat) for it in items[start : start + batch_size]]
        width = max(map(len, seqs))
        ids = torch.tensor([[pid] * (width - len(s)) + s for s in seqs], device=model.cfg.device)
        mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs], device=model.cfg.device)
        out = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                          pad_token_id=pid, use_cache=kv_cache_ok(model))
        texts += tok.batch_decode(out[:, width:], skip_special_tokens=True)
    return texts


def evaluate(model, items, chat: bool | None = None, method: str = "logprob", batch_size: int = 16,
             progress: bool = True, length_normalise: bool = False, max_new_tokens: int = 10) -> EvalResult:
    """Accuracy of a model on items with prompt/candidates/answer (VRUBench or any such data).

    method: "logprob" (candidate scoring; sees hooks on the model), "generate" (greedy decoding by the
    wrapped transformers model, scored like the study) or "both". chat: None = as the study did, a chat
    for instruction-tuned models and plain text for base models (``tokens.chat_for``).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a whole number 1 or more, got {batch_size!r}")
    chat = chat_for(model, chat)
    rows = as_rows(items)
    t0 = time.perf_counter()
    per_item = [{"id": row.get("id"), "answer": row["answer"], "n_candidates": len(row["candidates"]),
                 **{k: row[k] for k in BREAKDOWNS if k in row}} for row in rows]
    if method in ("logprob", "both"):
        scores = score_candidates(model, rows, chat, batch_size, progress, length_normalise)
        for rec, s in zip(per_item, scores):
            pred = max(s, key=s.get)
            rec.update(pred=pred, correct=pred == rec["answer"], scores=s)
    if method in ("generate", "both"):
        texts = generate_answers(model, rows, chat, batch_size, max_new_tokens, progress)
        for rec, row, text in zip(per_item, rows, texts):
            pred = match_generation(text, row["candidates"])
            rec.update(generated=text, gen_pred=pred, gen_correct=pred == rec["answer"])
            if method == "generate":
                rec.update(pred=pred, correct=rec["gen_correct"])
    per_item = [{k: r[k] for k in ("id", "answer", "pred", "correct")} | r for r in per_item]  # columns first
    try:
        rules = audit(rows)
    except (ValueError, KeyError, TypeError, IndexError):
        rules = {}
    return EvalResult(model_name(model), method, chat, per_item, rules,
                      seconds=time.perf_counter() - t0)
