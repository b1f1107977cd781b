"""Rotation-blind rules: how far VRUBench accuracy can go without following any turn.

Each rule reads an item the way a model that ignores rotation arithmetic
could (which objects were named, in what order, how often, and the surface of
the actions) and names exactly one candidate; a pick that is not a candidate
falls back to the first candidate. The rules' accuracies (``audit``, ``pair_audit``:
every rule beside chance) are computed in ``vru_lens.evaluate``, which owns every
accuracy; here live the rules and the ``Balancer`` with which the generator keeps
every rule within a point or two of chance. An accuracy means viewpoint tracking
only above the best rule.
"""

from __future__ import annotations

import random
from collections import Counter

from .answers import UNKNOWN


def view(item: dict) -> dict:
    """What a rule may read: the start object, per step (angle, direction, object seen after it), candidates."""
    return {"start": item["slot_objects"][0] if item.get("slot_objects") else item["candidates"][0],
            "steps": [(s["angle"], s["direction"], s.get("observed")) for s in item["steps"]],
            "candidates": item["candidates"], "id": str(item.get("id", ""))}


def _seen(v) -> list[str]:
    return [v["start"]] + [o for _, _, o in v["steps"] if o]


def _objects(v) -> list[str]:
    return [c for c in v["candidates"] if c != UNKNOWN]


def _seen_after(v, same) -> str:
    """The object seen after the latest earlier action that ``same`` matches with the final one, else unknown."""
    final = v["steps"][-1]
    for angle, direction, obj in reversed(v["steps"][:-1]):
        if obj and same((angle, direction), final[:2]):
            return obj
    return UNKNOWN


def _count_pick(v, pick) -> str:
    counts = Counter(_seen(v))
    objects = _objects(v)
    return pick(objects, key=lambda o: counts[o])  # ties: the first named


def _random(v, pool: list[str], name: str) -> str:
    return random.Random(f"{name}:{v['id']}").choice(pool)  # seeded by the item id: the same pick every run


RULES = {
    "first object": lambda v: v["start"],
    "second object named": lambda v: _objects(v)[1] if len(_objects(v)) > 1 else v["start"],
    "last object named": lambda v: _objects(v)[-1],
    "last object seen": lambda v: _seen(v)[-1],
    "second-to-last object seen": lambda v: _seen(v)[-2] if len(_seen(v)) > 1 else v["start"],
    "most frequent": lambda v: _count_pick(v, max),
    "least frequent": lambda v: _count_pick(v, min),
    "first object unless seen last": lambda v: next((o for o in _objects(v) if o != _seen(v)[-1]), v["start"]),
    "always unknown": lambda v: UNKNOWN,
    "never unknown (a random object)": lambda v: _random(v, _objects(v), "never unknown"),
    "a random candidate": lambda v: _random(v, v["candidates"], "random"),
    "seen after the same action": lambda v: _seen_after(v, lambda a, b: a == b),
    "seen after the same angle": lambda v: _seen_after(v, lambda a, b: a[0] % 360 == b[0] % 360),
}
RANDOM_RULES = ("never unknown (a random object)", "a random candidate")  # at chance by construction, never steered


def picks(item: dict, rules: dict = RULES) -> dict[str, str]:
    """Each rule's one candidate for this item."""
    v = view(item)
    out = {}
    for name, rule in rules.items():
        pick = rule(v)
        out[name] = pick if pick in v["candidates"] else v["candidates"][0]
    return out


class Balancer:
    """Chooses, among draws of one item, the one that keeps every steered rule's hit count nearest chance."""

    def __init__(self, rules: dict = RULES):
        self.rules = {k: v for k, v in rules.items() if k not in RANDOM_RULES}
        self.excess = dict.fromkeys(self.rules, 0.0)  # hits minus chance, summed over the items so far

    def choose(self, drawn: list[dict]) -> dict:
        def cost(it, p):
            c = 1 / len(it["candidates"])
            return sum((self.excess[name] + (p[name] == it["answer"]) - c) ** 2 for name in self.rules)

        scored = [(it, picks(it, self.rules)) for it in drawn]
        item, chosen = min(scored, key=lambda ip: cost(*ip))
        c = 1 / len(item["candidates"])
        for name in self.rules:
            self.excess[name] += (chosen[name] == item["answer"]) - c
        return item
