"""Counterfactual pairs for patching: change only the final step's rotation words.

``counterfactual_variants`` lists, in order of preference, every rewrite of the
final rotation phrase that lands on a different observed object (same template
first, e.g. left <-> right or 90 <-> 270, then other phrasings).
``build_pairs`` picks, per item, the first variant whose prompt has exactly the
clean prompt's token count under a given tokenizer and whose answer starts
with a different token; items with none are dropped and counted, never padded.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from .world import heading_to_slot, render_rotation, template_turns, templates_by_id, turn


def counterfactual_variants(item: dict) -> list[dict]:
    """Corrupted twins of an answerable item, same template first."""
    if not item["answerable"]:
        return []
    steps = item["steps"]
    before = steps[-2]["heading_after"] if len(steps) > 1 else 0
    seen = {0: item["slot_objects"][0]}
    for s in steps[:-1]:
        if s["observed"]:
            seen.setdefault(s["heading_after"], s["observed"])
    last = steps[-1]
    templates = templates_by_id()
    order = [last["template_id"]] + [t for t in templates if t != last["template_id"]]
    start, end = last["span"]
    variants = []
    for tid in order:
        for angle, direction in template_turns(templates[tid], item["n_slots"]):
            heading = turn(before, angle, direction)
            obj = seen.get(heading)
            if obj is None or obj == item["answer"]:
                continue
            phrase = render_rotation(templates[tid], angle, direction)
            variants.append({
                "prompt": item["prompt"][:start] + phrase + item["prompt"][end:],
                "answer": obj,
                "answer_slot": heading_to_slot(heading, item["n_slots"]),
                "template_id": tid, "angle": angle, "direction": direction,
            })
    return variants


@dataclass
class PairSet:
    """Clean/corrupted prompts of equal token length, with their answers."""

    items: list[dict]  # the clean items kept
    clean_prompts: list[str]
    corrupt_prompts: list[str]
    clean_answers: list[str]
    corrupt_answers: list[str]
    dropped: Counter = field(default_factory=Counter)  # reason -> count

    def __len__(self) -> int:
        return len(self.items)

    def summary(self) -> str:
        lost = ", ".join(f"{k}: {v}" for k, v in sorted(self.dropped.items())) or "none"
        return f"{len(self)} pairs kept; dropped {sum(self.dropped.values())} ({lost})"


def build_pairs(items, count_tokens, first_token, max_pairs: int | None = None) -> PairSet:
    """Match pairs for one tokenizer.

    count_tokens(prompt) -> int and first_token(answer) -> int come from
    ``vru_lens.tokens`` so the same rendering (plain or chat) is used here
    as in the model run.
    """
    out = PairSet([], [], [], [], [])
    for item in items:
        if max_pairs is not None and len(out) >= max_pairs:
            break
        if not item["answerable"]:
            out.dropped["unanswerable"] += 1
            continue
        variants = counterfactual_variants(item)
        if not variants:
            out.dropped["no other observed object reachable"] += 1
            continue
        n_clean = count_tokens(item["prompt"])
        clean_first = first_token(item["answer"])
        match = next(
            (v for v in variants if count_tokens(v["prompt"]) == n_clean and first_token(v["answer"]) != clean_first),
            None,
        )
        if match is None:
            out.dropped["no variant with equal token length and distinct answer token"] += 1
            continue
        out.items.append(item)
        out.clean_prompts.append(item["prompt"])
        out.corrupt_prompts.append(match["prompt"])
        out.clean_answers.append(item["answer"])
        out.corrupt_answers.append(match["answer"])
    if not len(out):
        raise ValueError(f"no counterfactual pair could be built: {out.summary()}; pass more answerable items")
    return out
