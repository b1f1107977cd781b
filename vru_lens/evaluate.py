"""Accuracy on VRUBench (or any data with prompt/candidates/answer): candidate scoring or generation.

Candidate scoring compares the log-probability of each candidate's full token
sequence after the rendered prompt. Requests are packed so that one row scores
the first token of every candidate (most objects are one token) and a
multi-token candidate gets a row of its own; rows are sorted by length,
right-padded, and only the scored positions are unembedded.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from .bench.shortcuts import blind_guess
from .models.kv_cache import kv_cache_ok
from .readout import rows_logits
from .results import Saveable
from .tokens import answer_ids, encode, pad_id, pad_right, render

REQUIRED = ("prompt", "candidates", "answer")
BREAKDOWNS = ("n_steps", "final_template", "answerable", "uses_heldout_template", "n_slots")


def as_rows(data) -> list[dict]:
    """A list of item dicts from a list, a datasets.Dataset, or a DatasetDict split."""
    rows = data.to_list() if hasattr(data, "to_list") else list(data)
    if not rows:
        raise ValueError("no items to evaluate: the dataset is empty")
    missing = [c for c in REQUIRED if c not in rows[0]]
    if missing:
        raise ValueError(f"items need the columns {REQUIRED}; missing {missing}")
    for row in rows:
        if row["answer"] not in row["candidates"]:
            raise ValueError(f"item {row.get('id', '?')}: answer {row['answer']!r} is not among its candidates")
    return rows


@dataclass
class EvalResult(Saveable):
    """Per-item predictions and every breakdown of accuracy."""

    model: str
    method: str
    chat: bool
    per_item: list[dict] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.per_item)

    @property
    def accuracy(self) -> float:
        return sum(r["correct"] for r in self.per_item) / max(self.n, 1)

    def breakdown(self, key: str) -> dict:
        groups = defaultdict(list)
        for r in self.per_item:
            if key in r:
                groups[r[key]].append(r["correct"])
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
        return sum(1 / r["n_candidates"] for r in self.per_item) / max(self.n, 1)

    @property
    def by_steps(self) -> dict:
        return self.breakdown("n_steps")

    @property
    def by_template(self) -> dict:
        return self.breakdown("final_template")

    def summary(self) -> dict:
        return {
            "model": self.model, "method": self.method, "chat": self.chat, "n": self.n, "accuracy": self.accuracy,
            "chance": self.chance, "blind_baseline": self.blind_baseline,
            **{f"by_{'steps' if k == 'n_steps' else k}": self.breakdown(k) for k in BREAKDOWNS
               if any(k in r for r in self.per_item)},
        }

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame(self.per_item)

    @property
    def blind_baseline(self) -> float | None:
        """Accuracy of the rotation-blind guess on these items (``bench.shortcuts``); None off VRUBench."""
        hits = [r["blind_correct"] for r in self.per_item if "blind_correct" in r]
        return sum(hits) / len(hits) if hits else None

    def table(self) -> str:
        blind = f", rotation-blind guess {self.blind_baseline:.1%}" if self.blind_baseline is not None else ""
        lines = [f"{self.model} ({self.method}{', chat' if self.chat else ''}): accuracy {self.accuracy:.1%} "
                 f"on {self.n} items (chance {self.chance:.1%}{blind})"]
        counts = self.counts("n_steps")
        for steps, acc in self.by_steps.items():
            lines.append(f"  {steps} steps: {acc:6.1%}  (n={counts[steps]})")
        return "\n".join(lines)


def _score_requests(model, rows, batch_size, progress):
    """rows: (ids, positions, reads, key) with reads = [(index into positions, token)]; returns {key: [logprobs]}."""
    order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]))
    out = {}
    pid = pad_id(model.tokenizer)
    for start in tqdm(range(0, len(order), batch_size), desc="scoring", disable=not progress, leave=False):
        chunk = [rows[i] for i in order[start : start + batch_size]]
        ids, _ = pad_right([r[0] for r in chunk], pid)
        k = max(len(r[1]) for r in chunk)
        pos = torch.tensor([r[1] + [r[1][-1]] * (k - len(r[1])) for r in chunk])
        logprobs = rows_logits(model, ids, pos).float().log_softmax(-1)
        for j, (_, _, reads, key) in enumerate(chunk):
            out[key] = [logprobs[j, p, tok].item() for p, tok in reads]
    return out


@torch.inference_mode()
def score_candidates(model, items, chat: bool = False, batch_size: int = 16, progress: bool = True,
                     length_normalise: bool = False) -> list[dict[str, float]]:
    """Per item: candidate -> log-probability of its tokens after the prompt (sum, or mean per token)."""
    tok = model.tokenizer
    rows, plan = [], []
    for i, item in enumerate(items):
        prompt = encode(tok, render(item["prompt"], tok, chat), chat)
        cands = {c: answer_ids(tok, c, chat) for c in item["candidates"]}
        firsts = sorted({ids[0] for ids in cands.values()})
        rows.append((prompt, [len(prompt) - 1], [(0, t) for t in firsts], (i, None)))
        for c, ids in cands.items():
            if len(ids) > 1:
                positions = list(range(len(prompt) - 1, len(prompt) + len(ids) - 1))
                rows.append((prompt + ids[:-1], positions, list(enumerate(ids)), (i, c)))
        plan.append((cands, firsts))
    got = _score_requests(model, rows, batch_size, progress)
    scores = []
    for i, (cands, firsts) in enumerate(plan):
        first = dict(zip(firsts, got[(i, None)]))
        item_scores = {}
        for c, ids in cands.items():
            lp = got[(i, c)] if len(ids) > 1 else [first[ids[0]]]
            item_scores[c] = sum(lp) / len(lp) if length_normalise else sum(lp)
        scores.append(item_scores)
    return scores


def match_answer(text: str, candidates: list[str]) -> str:
    """The candidate named first in generated text ('' if none)."""
    text = text.lower()
    found = [(m.start(), c) for c in candidates for m in [re.search(rf"\b{re.escape(c.lower())}\b", text)] if m]
    return min(found)[1] if found else ""


@torch.inference_mode()
def generate_answers(model, items, chat: bool = False, batch_size: int = 16, max_new_tokens: int = 8,
                     progress: bool = True) -> list[str]:
    """Greedy generations, left-padded with an attention mask, run by the wrapped transformers model."""
    tok = model.tokenizer
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


def evaluate(model, items, chat: bool = False, method: str = "logprob", batch_size: int = 16,
             progress: bool = True, length_normalise: bool = False) -> EvalResult:
    """Accuracy of a model on items with prompt/candidates/answer (VRUBench or any such data)."""
    if method not in ("logprob", "generate"):
        raise ValueError(f"method must be 'logprob' or 'generate', got {method!r}")
    rows = as_rows(items)
    per_item = []
    if method == "logprob":
        scores = score_candidates(model, rows, chat, batch_size, progress, length_normalise)
        preds = [max(s, key=s.get) for s in scores]
    else:
        texts = generate_answers(model, rows, chat, batch_size, progress=progress)
        preds = [match_answer(t, r["candidates"]) for t, r in zip(texts, rows)]
        scores = [{"generated": t} for t in texts]
    for row, pred, s in zip(rows, preds, scores):
        record = {"id": row.get("id"), "answer": row["answer"], "pred": pred, "correct": pred == row["answer"],
                  "n_candidates": len(row["candidates"]), "scores": s}
        record.update({k: row[k] for k in BREAKDOWNS if k in row})
        guess = blind_guess(row)
        if guess is not None:
            record["blind_correct"] = guess == row["answer"]
        per_item.append(record)
    return EvalResult(getattr(model, "vru_name", type(model).__name__), method, chat, per_item)
