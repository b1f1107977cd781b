"""Counterfactual pairs for patching: change only the final step's rotation words.

``counterfactual_variants`` lists, in order of preference, every rewrite of the
final rotation phrase that changes the answer. In the study's format (style
"paper") that is the one rewrite the study used: flip the final action's
direction (left <-> right), which changes the answer for 90 and 270 degrees.
In style "story": same template first (left <-> right, 90 <-> 270), then other
phrasings. Two kinds of pair: "observed" (both answers observed and different,
the main set for patching) and "unknown" (one answer an object, the other
"unknown": does the model know what it has not seen?).
``build_pairs`` picks, per item, the first variant whose prompt has exactly the
clean prompt's token count under a given tokenizer and whose answer starts
with a different token; items with none are dropped and counted, never padded.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from . import styles as P
from .answers import UNKNOWN
from .world import heading_to_slot, render_rotation, template_turns, templates_by_id, turn

KINDS = ("observed", "unknown")


def _rewrites(item: dict) -> list[tuple[str, int, str, str]]:
    """(template id, angle, direction, phrase) for the final step, preferred first."""
    last = item["steps"][-1]
    if item.get("style", "story") == "paper":
        flipped = {"left": "right", "right": "left"}[last["direction"]]
        return [("paper", last["angle"], flipped, P.TURN.format(dir=flipped, angle=last["angle"]))]
    templates = templates_by_id()
    order = [last["template_id"]] + [t for t in templates if t != last["template_id"]]
    return [(tid, a, d, render_rotation(templates[tid], a, d))
            for tid in order for a, d in template_turns(templates[tid], item["n_slots"])]


def counterfactual_variants(item: dict, kind: str = "observed") -> list[dict]:
    """Corrupted twins of an item whose answer differs from the clean one.

    kind "observed": the clean and corrupted answers are both observed objects;
    kind "unknown": exactly one of them is "unknown".
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    steps = item["steps"]
    before = steps[-2]["heading_after"] if len(steps) > 1 else 0
    seen = {0: item["slot_objects"][0]}
    for s in steps[:-1]:
        if s["observed"]:
            seen.setdefault(s["heading_after"], s["observed"])
    start, end = steps[-1]["span"]
    variants = []
    for tid, angle, direction, phrase in _rewrites(item):
        heading = turn(before, angle, direction)
        obj = seen.get(heading, UNKNOWN)
        if obj == item["answer"]:
            continue
        if (UNKNOWN in (obj, item["answer"])) != (kind == "unknown"):
            continue
        variants.append({
            "prompt": item["prompt"][:start] + phrase + item["prompt"][end:],
            "answer": obj,
            "answer_slot": heading_to_slot(heading, item["n_slots"]) if obj != UNKNOWN else -1,
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
    kind: str = "observed"
    corrupt_items: list[dict] = field(default_factory=list)  # the twins as items (final step rewritten), for the rules

    def __len__(self) -> int:
        return len(self.items)

    @property
    def yield_(self) -> float:
        """Share of the items offered that became pairs."""
        return len(self) / max(len(self) + sum(self.dropped.values()), 1)

    def summary(self) -> str:
        lost = ", ".join(f"{k}: {v}" for k, v in sorted(self.dropped.items())) or "none"
        return f"{len(self)} {self.kind} pairs kept of {len(self) + sum(self.dropped.values())} items ({self.yield_:.0%}); dropped {sum(self.dropped.values())} ({lost})"


def build_pairs(items, count_tokens, first_token, max_pairs: int | None = None, kind: str = "observed") -> PairSet:
    """Match pairs of one kind (``KINDS``) for one tokenizer.

    count_tokens(prompt) -> int and first_token(answer) -> int come from
    ``vru_lens.tokens`` so the same rendering (plain or chat) is used here
    as in the model run.
    """
    out = PairSet([], [], [], [], [], kind=kind)
    for item in items:
        if max_pairs is not None and len(out) >= max_pairs:
            break
        if kind == "observed" and not item["answerable"]:
            out.dropped["unanswerable"] += 1
            continue
        variants = counterfactual_variants(item, kind)
        if not variants:
            out.dropped["no other observed object reachable" if kind == "observed" else
                        "the rewrite does not swap an object for unknown"] += 1
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
        last = {**item["steps"][-1], "angle": match["angle"], "direction": match["direction"],
                "template_id": match["template_id"]}
        out.corrupt_items.append({**item, "prompt": match["prompt"], "answer": match["answer"],
                                  "answerable": match["answer"] != UNKNOWN, "steps": [*item["steps"][:-1], last]})
    if not len(out):
        raise ValueError(f"no {kind} counterfactual pair could be built: {out.summary()}; pass more items")
    return out
