"""Generate VRUBench items: deterministic from a seed, pure Python, fast.

One item is a plain dict (a row of a ``datasets.Dataset``); see VRUBENCH.md
for the fields. ``make_items`` builds one split; ``make_splits`` builds
train/validation/test from disjoint seeds, with optional held-out templates
and objects that appear only in the test split.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from . import templates as T
from .world import check_slots, heading_to_slot, render_rotation, signed_angle, template_turns, templates_by_id, turn

SPLITS = ("train", "validation", "test")
UNKNOWN = "unknown"


@dataclass(frozen=True)
class BenchConfig:
    """Everything that shapes a set of items; the seed makes it reproducible."""

    n_slots: int = 4
    min_steps: int = 2
    max_steps: int = 5
    unanswerable_frac: float = 0.0
    observe_prob: float = 0.6
    templates: tuple[str, ...] | None = None  # None = every template
    exclude_templates: tuple[str, ...] = ()
    exclude_objects: tuple[str, ...] = ()
    rooms: tuple[str, ...] | None = None
    heldout_templates: tuple[str, ...] = field(default=())  # recorded per item, set by make_splits

    def __post_init__(self):
        check_slots(self.n_slots)
        if not (2 <= self.min_steps <= self.max_steps <= 5):
            raise ValueError(f"steps must satisfy 2 <= min <= max <= 5, got {self.min_steps}-{self.max_steps}")
        if not 0.0 <= self.unanswerable_frac <= 1.0:
            raise ValueError(f"unanswerable_frac must be in [0, 1], got {self.unanswerable_frac}")
        known = set(T.TEMPLATE_IDS)
        for tid in (*(self.templates or ()), *self.exclude_templates, *self.heldout_templates):
            if tid not in known:
                raise ValueError(f"unknown template id {tid!r}; known: {', '.join(T.TEMPLATE_IDS)}")
        for room in self.rooms or ():
            if room not in T.ROOMS:
                raise ValueError(f"unknown room {room!r}; known: {', '.join(T.ROOMS)}")
        if not self._usable_templates():
            raise ValueError(f"no rotation template is left for {self.n_slots} slots; include more templates")

    def _usable_templates(self) -> list[dict]:
        chosen = templates_by_id(exclude=self.exclude_templates)
        if self.templates is not None:
            chosen = {k: v for k, v in chosen.items() if k in self.templates}
        return [t for t in chosen.values() if template_turns(t, self.n_slots)]


def item_seed(seed: int, split: str, index: int) -> int:
    """Seeds of different splits never collide (index < 10**8)."""
    return seed * 10**9 + SPLITS.index(split) * 10**8 + index


def _sample_steps(rng: random.Random, cfg: BenchConfig, templates: list[dict], n_steps: int):
    steps, heading = [], 0
    for i in range(n_steps):
        template = rng.choice(templates)
        angle, direction = rng.choice(template_turns(template, cfg.n_slots))
        heading = turn(heading, angle, direction)
        observe = i < n_steps - 1 and rng.random() < cfg.observe_prob
        steps.append({"template_id": template["id"], "angle": angle, "direction": direction, "heading": heading, "observe": observe})
    return steps


def _render(rng, room, slot_objects, steps, cfg):
    """Story text plus the character spans the analyses need."""
    n = cfg.n_slots
    text = rng.choice(T.OPENINGS).format(room=("an " if room[0] in "aeiou" else "a ") + room, obj=slot_objects[0])
    seen = {0: slot_objects[0]}
    mentioned = [slot_objects[0]]
    out_steps, step_ends = [], []
    labels = {"heading_slot": [], "cum_angle": [], "observed": [], "object_at_heading": []}
    cum = 0
    templates = templates_by_id()
    for s in steps:
        text += " " + rng.choice(T.STEP_LEADS) + " "
        start = len(text)
        text += render_rotation(templates[s["template_id"]], s["angle"], s["direction"])
        span = [start, len(text)]
        text += "."
        slot = heading_to_slot(s["heading"], n)
        observed_object = None
        if s["observe"]:
            observed_object = slot_objects[slot]
            text += rng.choice(T.OBSERVATIONS).format(obj=observed_object)
            seen.setdefault(s["heading"], observed_object)
            if observed_object not in mentioned:
                mentioned.append(observed_object)
        step_ends.append(len(text))
        cum += signed_angle(s["angle"], s["direction"])
        labels["heading_slot"].append(slot)
        labels["cum_angle"].append(cum)
        labels["observed"].append(s["heading"] in seen)
        labels["object_at_heading"].append(seen.get(s["heading"], UNKNOWN))
        out_steps.append(
            {"angle": s["angle"], "direction": s["direction"], "heading_after": s["heading"], "slot_after": slot,
             "observed": observed_object, "template_id": s["template_id"], "span": span}
        )
    text += T.QUESTION
    return text, out_steps, step_ends, len(text), labels, seen, mentioned


def make_item(seed: int, cfg: BenchConfig = BenchConfig(), item_id: str | None = None, split: str = "") -> dict:
    """One item from its own seed: same seed and config, same item."""
    rng = random.Random(seed)
    templates = cfg._usable_templates()
    rooms = list(cfg.rooms or T.ROOMS)
    want_answerable = rng.random() >= cfg.unanswerable_frac
    while True:
        room = rng.choice(rooms)
        pool = [o for o in T.ROOMS[room] if o not in cfg.exclude_objects]
        if len(pool) < cfg.n_slots:
            raise ValueError(f"room {room!r} has {len(pool)} objects left, fewer than {cfg.n_slots} slots; hold out fewer objects")
        slot_objects = rng.sample(pool, cfg.n_slots)
        n_steps = rng.randint(cfg.min_steps, cfg.max_steps)
        steps = _sample_steps(rng, cfg, templates, n_steps)
        observed = {0} | {s["heading"] for s in steps if s["observe"]}
        final = steps[-1]["heading"]
        if len(observed) >= 2 and (final in observed) == want_answerable:
            break
    text, out_steps, step_ends, question_end, labels, seen, mentioned = _render(rng, room, slot_objects, steps, cfg)
    answer = seen.get(final, UNKNOWN)
    candidates = list(mentioned) + ([UNKNOWN] if cfg.unanswerable_frac > 0 else [])
    used = {s["template_id"] for s in steps}
    return {
        "id": item_id or f"vru-{seed}",
        "seed": seed,
        "split": split,
        "room": room,
        "n_slots": cfg.n_slots,
        "slot_objects": slot_objects,
        "steps": out_steps,
        "prompt": text,
        "answer": answer,
        "answer_slot": heading_to_slot(final, cfg.n_slots) if want_answerable else -1,
        "candidates": candidates,
        "answerable": want_answerable,
        "n_steps": n_steps,
        "final_template": steps[-1]["template_id"],
        "uses_heldout_template": bool(used & set(cfg.heldout_templates)),
        "step_ends": step_ends,
        "question_end": question_end,
        **{f"label_{k}": v for k, v in labels.items()},
    }


def make_items(n: int, seed: int = 0, cfg: BenchConfig = BenchConfig(), split: str = "test") -> list[dict]:
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    return [make_item(item_seed(seed, split, i), cfg, f"{split}-{seed}-{i}", split) for i in range(n)]


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
    fields = {k: getattr(cfg, k) for k in cfg.__dataclass_fields__}
    fit_cfg = BenchConfig(**{**fields, "exclude_templates": (*cfg.exclude_templates, *heldout_templates),
                             "exclude_objects": (*cfg.exclude_objects, *heldout_objects)})
    test_cfg = BenchConfig(**{**fields, "heldout_templates": tuple(heldout_templates)})
    sizes = {"train": n_train, "validation": n_validation, "test": n_test}
    return {
        split: make_items(n, seed, test_cfg if split == "test" else fit_cfg, split)
        for split, n in sizes.items() if n > 0
    }
