"""A rotation-blind guess: how far VRUBench accuracy can go without following any turn.

The viewer starts facing an object that is always named, and in a four-slot
room the final heading comes back to it often; the object seen last is the
answer only when the final turn is a full circle. So "the starting object,
unless it is the one seen last" beats the uniform chance rate by 15 points
without reading a single rotation. An accuracy gain is evidence of viewpoint
tracking only above this line (and counterfactual pairs, which flip only the
final rotation, test it directly: ``patching.metrics.pair_accuracy``).
"""

from __future__ import annotations

from .generate import UNKNOWN


def last_observed(item: dict) -> str | None:
    seen = [s.get("observed") for s in item.get("steps") or [] if s.get("observed")]
    return seen[-1] if seen else None


def blind_guess(item: dict) -> str | None:
    """The first named object that is not the one seen last; None for items without VRUBench fields."""
    if "steps" not in item or not item.get("candidates"):
        return None
    last = last_observed(item)
    objects = [c for c in item["candidates"] if c != UNKNOWN]
    return next((c for c in objects if c != last), objects[0] if objects else None)


def blind_accuracy(items) -> float | None:
    """Share of items the rotation-blind guess gets right (None when no item has VRUBench fields)."""
    guesses = [(blind_guess(it), it["answer"]) for it in items]
    hits = [guess == answer for guess, answer in guesses if guess is not None]
    return sum(hits) / len(hits) if hits else None
