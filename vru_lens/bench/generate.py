"""Generate VRUBench items: deterministic from a seed, pure Python, fast.

One item is a plain dict (a row of a ``datasets.Dataset``); see docs/vrubench.md
for the fields. ``make_items`` builds one split; ``make_splits`` builds
train/validation/test from disjoint seeds, with optional held-out templates
and objects that appear only in the test split.

Why the answer is drawn first: a rotation-blind rule ("the first object",
"the last object seen", "unknown") must score chance. So each item first
picks how many objects it names (k) and which candidate is the answer,
uniformly among the k objects (in order of mention) and "unknown"; only then
is a walk drawn whose first steps name exactly k objects, and the final turn
is chosen to land on the answer. Any rule that reads only the story before the
final action is then at chance by construction. Rules that also read the final
action are balanced by ``make_items``: of a few walks drawn for an item, it
keeps the one that moves every rule's running hit count towards chance
(``bench.shortcuts``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from functools import lru_cache

from . import styles as P
from . import templates as T
from .answers import UNKNOWN
from .pairs import counterfactual_variants
from .render import render_paper, render_story
from .world import check_slots, heading_to_slot, signed_angle, slot_angle, template_turns, templates_by_id, turn

SPLITS = ("train", "validation", "test")
DRAWS = 4  # walks drawn per item when balancing


# VRUBench's items have 2-5 actions (the study's); longer ones, up to this, are a length-transfer test.
MAX_STEPS = 8

@dataclass(frozen=True)
class BenchConfig:
    """Everything that shapes a set of items; the seed makes it reproducible.

    ``unanswerable_frac``: None (default) makes "unknown" one more candidate,
    exactly as likely to be the answer as each object (about 30% of items with
    2-3 named objects); 0 gives answerable items only (causal analyses);
    another fraction fixes the unknown rate (then "always unknown"-style rules
    are no longer at chance).
    """

    style: str = "paper"
    n_slots: int = 4
    min_steps: int = 2
    max_steps: int = 5
    unanswerable_frac: float | None = None
    observe_prob: float = 0.6  # story only; paper observes after every action but the last
    templates: tuple[str, ...] | None = None  # story only; None = every template
    exclude_templates: tuple[str, ...] = ()
    exclude_objects: tuple[str, ...] = ()
    rooms: tuple[str, ...] | None = None
    balance: bool = True
    counterfactual: str | None = None  # "observed"/"unknown": every item has such a twin (causal analyses, unbalanced)
    heldout_templates: tuple[str, ...] = field(default=())  # recorded per item, set by make_splits

    def __post_init__(self):
        if self.style not in P.STYLES:
            raise ValueError(f"style must be one of {P.STYLES}, got {self.style!r}")
        check_slots(self.n_slots)
        if self.style == "paper" and self.n_slots != 4:
            raise ValueError("style 'paper' has 4 directions (n_slots=4); use style='story' for 8 slots")
        if not (2 <= self.min_steps <= self.max_steps <= MAX_STEPS):
            raise ValueError(f"steps must satisfy 2 <= min <= max <= {MAX_STEPS}, got {self.min_steps}-{self.max_steps}")
        if self.unanswerable_frac is not None and not 0.0 <= self.unanswerable_frac <= 1.0:
            raise ValueError(f"unanswerable_frac must be None (balanced) or in [0, 1], got {self.unanswerable_frac}")
        known = set(T.TEMPLATE_IDS)
        for tid in (*(self.templates or ()), *self.exclude_templates, *self.heldout_templates):
            if tid not in known:
                raise ValueError(f"unknown template id {tid!r}; known: {', '.join(T.TEMPLATE_IDS)}")
        for room in self.rooms or ():
            if room not in T.ROOMS:
                raise ValueError(f"unknown room {room!r}; known: {', '.join(T.ROOMS)}")
        if self.counterfactual not in (None, "observed", "unknown"):
            raise ValueError(f"counterfactual must be None, 'observed' or 'unknown', got {self.counterfactual!r}")
        if self.style == "story" and not self._usable_templates():
            raise ValueError(f"no rotation template is left for {self.n_slots} slots; include more templates")

    @property
    def with_unknown(self) -> bool:
        """Whether "unknown" is a candidate: always in paper style, else when unknown answers may occur."""
        return self.style == "paper" or self.unanswerable_frac != 0

    def _usable_templates(self) -> list[dict]:
        chosen = templates_by_id(exclude=self.exclude_templates)
        if self.templates is not None:
            chosen = {k: v for k, v in chosen.items() if k in self.templates}
        return [t for t in chosen.values() if template_turns(t, self.n_slots)]


@lru_cache(maxsize=64)
def _turns(cfg: BenchConfig) -> list[tuple[str, int, str]]:
    """Every (template id, angle, direction) a step may take."""
    if cfg.style == "paper":
        return [("paper", a, d) for a, d in P.TURNS]
    return [(t["id"], a, d) for t in cfg._usable_templates() for a, d in template_turns(t, cfg.n_slots)]


@lru_cache(maxsize=64)
def _turns_by_delta(cfg: BenchConfig) -> dict[int, list[tuple[str, int, str]]]:
    out: dict[int, list] = {}
    for tid, a, d in _turns(cfg):
        out.setdefault(signed_angle(a, d) % 360, []).append((tid, a, d))
    return out


def item_seed(seed: int, split: str, index: int) -> int:
    """Seeds of different splits never collide (index < 10**8)."""
    return seed * 10**9 + SPLITS.index(split) * 10**8 + index


@lru_cache(maxsize=64)
def _turns_by_template(cfg: BenchConfig) -> list[tuple[str, list[tuple[int, str]]]]:
    return [(t["id"], template_turns(t, cfg.n_slots)) for t in cfg._usable_templates()]


def _random_turn(rng: random.Random, cfg: BenchConfig) -> tuple[str, int, str]:
    if cfg.style == "paper":
        return ("paper", *rng.choice(P.TURNS))
    tid, turns = rng.choice(_turns_by_template(cfg))  # template first, so every phrasing is equally common
    return (tid, *rng.choice(turns))


def _draw_walk(rng: random.Random, cfg: BenchConfig, n_steps: int, k: int, target: int) -> list[dict]:
    """Steps whose first n-1 name exactly k objects and whose final turn lands on candidate ``target``.

    ``target`` indexes the k objects in order of first mention; ``target == k`` means a heading never observed.
    """
    by_delta = _turns_by_delta(cfg)
    headings = range(0, 360, slot_angle(cfg.n_slots))
    for attempt in range(1000):
        steps, heading, order = [], 0, [0]
        for _ in range(n_steps - 1):
            tid, angle, direction = _random_turn(rng, cfg)
            heading = turn(heading, angle, direction)
            observe = cfg.style == "paper" or rng.random() < cfg.observe_prob
            if observe and heading not in order:
                order.append(heading)
            steps.append({"template_id": tid, "angle": angle, "direction": direction, "heading": heading,
                          "observe": observe})
        if len(order) != k:
            continue
        goal = order[target] if target < k else rng.choice([h for h in headings if h not in order])
        options = by_delta.get((goal - heading) % 360)
        if not options and attempt >= 200:  # the chosen phrasings cannot land there (no full turn): any answer
            goal = rng.choice([h for h in headings if by_delta.get((h - heading) % 360)])
            options = by_delta[(goal - heading) % 360]
        if not options:
            continue
        tid, angle, direction = rng.choice(options)
        steps.append({"template_id": tid, "angle": angle, "direction": direction, "heading": goal, "observe": False})
        return steps
    raise RuntimeError(f"could not draw a walk with {n_steps} steps naming {k} objects; this is a bug")


def _max_objects(cfg: BenchConfig, n_steps: int) -> int:
    """Objects named before the final turn: at most one per observation, and one slot always left unseen."""
    return min(cfg.n_slots - 1, n_steps)


def _build(cfg: BenchConfig, room: str, slot_objects: list[str], steps: list[dict], item_id: str, seed: int,
           split: str) -> dict:
    """An item without its text (``_render`` adds prompt, spans and step ends): the balancer needs no text."""
    for s in steps:
        s["object"] = slot_objects[heading_to_slot(s["heading"], cfg.n_slots)] if s["observe"] else None
    seen, mentioned = {0: slot_objects[0]}, [slot_objects[0]]
    labels = {"heading_slot": [], "cum_angle": [], "observed": [], "object_at_heading": []}
    out_steps, cum = [], 0
    for s in steps:
        slot = heading_to_slot(s["heading"], cfg.n_slots)
        if s["object"]:
            seen.setdefault(s["heading"], s["object"])
            if s["object"] not in mentioned:
                mentioned.append(s["object"])
        cum += signed_angle(s["angle"], s["direction"])
        labels["heading_slot"].append(slot)
        labels["cum_angle"].append(cum)
        labels["observed"].append(s["heading"] in seen)
        labels["object_at_heading"].append(seen.get(s["heading"], UNKNOWN))
        out_steps.append({"angle": s["angle"], "direction": s["direction"], "heading_after": s["heading"],
                          "slot_after": slot, "observed": s["object"], "template_id": s["template_id"], "span": None})
    final = steps[-1]
    answer = seen.get(final["heading"], UNKNOWN)
    used = {s["template_id"] for s in steps}
    return {
        "id": item_id,
        "seed": seed,
        "split": split,
        "style": cfg.style,
        "room": room,
        "n_slots": cfg.n_slots,
        "slot_objects": slot_objects,
        "steps": out_steps,
        "prompt": "",
        "answer": answer,
        "answer_slot": heading_to_slot(final["heading"], cfg.n_slots) if answer != UNKNOWN else -1,
        "candidates": mentioned + ([UNKNOWN] if cfg.with_unknown else []),
        "answerable": answer != UNKNOWN,
        "n_steps": len(steps),
        "final_template": final["template_id"],
        "final_direction": final["direction"],
        "final_angle": final["angle"],
        "uses_heldout_template": bool(used & set(cfg.heldout_templates)),
        "step_ends": [],
        "question_end": 0,
        **{f"label_{k}": v for k, v in labels.items()},
    }


def _render(item: dict) -> dict:
    """Fill in the item's prompt and character offsets (story phrasings drawn from the item's own seed)."""
    if item["prompt"]:
        return item
    walk = [{"template_id": s["template_id"], "angle": s["angle"], "direction": s["direction"],
             "observe": s["observed"] is not None, "object": s["observed"]} for s in item["steps"]]
    if item["style"] == "paper":
        text, spans, step_ends, question_end = render_paper(item["slot_objects"], walk)
    else:
        rng = random.Random(f"text-{item['seed']}")
        text, spans, step_ends, question_end = render_story(rng, item["room"], item["slot_objects"], walk)
    for step, span in zip(item["steps"], spans):
        step["span"] = span
    item.update(prompt=text, step_ends=step_ends, question_end=question_end)
    return item


def _draw_items(seed: int, cfg: BenchConfig, item_id: str, split: str, draws: int) -> list[dict]:
    """``draws`` versions of one item: same room, objects, length and answer position; different walks."""
    rng = random.Random(seed)
    rooms = list(cfg.rooms or T.ROOMS)
    room = rng.choice(rooms)
    pool = [o for o in T.ROOMS[room] if o not in cfg.exclude_objects]
    if len(pool) < cfg.n_slots:
        raise ValueError(f"room {room!r} has {len(pool)} objects left, fewer than {cfg.n_slots} slots; hold out fewer objects")
    slot_objects = rng.sample(pool, cfg.n_slots)

    def shape():
        n_steps = rng.randint(cfg.min_steps, cfg.max_steps)
        k = rng.randint(2, _max_objects(cfg, n_steps))
        p = 0.0 if cfg.counterfactual == "observed" else cfg.unanswerable_frac
        target = rng.randrange(k + 1) if p is None else (k if rng.random() < p else rng.randrange(k))
        return n_steps, k, target

    n_steps, k, target = shape()
    out = []
    for _ in range(draws):
        for attempt in range(1, 1001):
            item = _build(cfg, room, slot_objects, _draw_walk(rng, cfg, n_steps, k, target), item_id, seed, split)
            if cfg.counterfactual is None or counterfactual_variants(_render(item), cfg.counterfactual):
                break
            if attempt % 20 == 0:  # this length / object count may admit no such twin: reshape
                n_steps, k, target = shape()
        out.append(item)
    return out


PAIRABLE = BenchConfig(unanswerable_frac=0.0, counterfactual="observed")  # answerable items that all make pairs
# Story pairs rewrite a whole phrase, so they move even a random tiny model: the patching tests use them.
PAIRABLE_STORY = replace(PAIRABLE, style="story")


def make_item(seed: int, cfg: BenchConfig = BenchConfig(), item_id: str | None = None, split: str = "") -> dict:
    """One item from its own seed, unbalanced: same seed and config, same item."""
    return _render(_draw_items(seed, cfg, item_id or f"vru-{seed}", split, 1)[0])


def make_items(n: int, seed: int = 0, cfg: BenchConfig = BenchConfig(), split: str = "test") -> list[dict]:
    """n items; with ``cfg.balance`` each item is the draw that keeps every shortcut rule nearest chance.

    Deterministic, and a prefix of a longer run: ``make_items(100) == make_items(1000)[:100]``.
    """
    from .shortcuts import Balancer

    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    balancer = Balancer() if cfg.balance else None
    out = []
    for i in range(n):
        drawn = _draw_items(item_seed(seed, split, i), cfg, f"{split}-{seed}-{i}", split, DRAWS if balancer else 1)
        out.append(_render(balancer.choose(drawn) if balancer else drawn[0]))
    return out


def make_splits(
    n_train: int,
    n_validation: int,
    n_test: int,
    seed: int = 0,
    cfg: BenchConfig = BenchConfig(),
    heldout_templates: tuple[str, ...] = (),
    heldout_objects: tuple[str, ...] = (),
) -> dict[str, list[dict]]:
    """Train/validation/test from disjoint seeds; held-out templates and objects appear in test only."""
    fit_cfg = replace(cfg, exclude_templates=(*cfg.exclude_templates, *heldout_templates),
                      exclude_objects=(*cfg.exclude_objects, *heldout_objects))
    test_cfg = replace(cfg, heldout_templates=tuple(heldout_templates))
    sizes = {"train": n_train, "validation": n_validation, "test": n_test}
    return {
        split: make_items(n, seed, test_cfg if split == "test" else fit_cfg, split)
        for split, n in sizes.items() if n > 0
    }
