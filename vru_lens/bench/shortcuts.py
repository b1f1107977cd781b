"""Rotation-blind rules: how far VRUBench accuracy can go without following any turn.

Each rule reads an item the way a model that ignores rotation arithmetic
could (which objects were named, in what order, how often, and the surface of
the actions) and names exactly one candidate; a pick that is not a candidate
falls back to the first candidate. ``audit`` scores every rule beside chance
(the mean over items of 1 / number of candidates, i.e. a uniform guess). An
accuracy means viewpoint tracking only above the best rule; the generator
keeps every rule within a point or two of chance (``Balancer``).
"""

from __future__ import annotations

import random
from collections import Counter

UNKNOWN = "unknown"


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


def chance(items) -> float:
    """Expected accuracy of a uniform guess among each item's candidates."""
    items = list(items)
    return sum(1 / len(it["candidates"]) for it in items) / max(len(items), 1)


def audit(items, rules: dict = RULES) -> dict:
    """{"n", "chance", "rules": {name: accuracy}, "best": (name, accuracy)} on items with VRUBench fields."""
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
