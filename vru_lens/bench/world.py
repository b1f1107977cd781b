"""Rotation arithmetic of the VRU world: K slots around a viewer who starts at slot 0."""

from __future__ import annotations

from .templates import ANY, ROTATION_TEMPLATES

VALID_SLOTS = (4, 8)
VALID_DIRECTIONS = ("left", "right", "none")


def check_slots(n_slots: int) -> int:
    if n_slots not in VALID_SLOTS:
        raise ValueError(f"n_slots must be 4 or 8 (every 90 or 45 degrees), got {n_slots}")
    return n_slots


def slot_angle(n_slots: int) -> int:
    return 360 // check_slots(n_slots)


def signed_angle(angle: int, direction: str) -> int:
    """Right = clockwise = +angle; left = -angle; a direction-free turn (180) counts as +."""
    if direction not in VALID_DIRECTIONS:
        raise ValueError(f"direction must be one of {VALID_DIRECTIONS}, got {direction!r}")
    return -angle if direction == "left" else angle


def turn(heading: int, angle: int, direction: str) -> int:
    return (heading + signed_angle(angle, direction)) % 360


def heading_to_slot(heading: int, n_slots: int) -> int:
    step = slot_angle(n_slots)
    if heading % step:
        raise ValueError(f"heading {heading} is not on a slot of a {n_slots}-slot room")
    return (heading % 360) // step


def template_turns(template: dict, n_slots: int) -> list[tuple[int, str]]:
    """Every (angle, direction) the template can express in a room with n_slots."""
    step = slot_angle(n_slots)
    multiples = list(range(step, 360, step))
    angles = multiples if template["angles"] is ANY else [a for a in template["angles"] if a in (*multiples, 360)]
    dirs = template["dirs"] or ["none"]
    return [(a, d) for a in angles for d in dirs]


def templates_by_id(exclude: tuple[str, ...] = ()) -> dict[str, dict]:
    return {t["id"]: t for t in ROTATION_TEMPLATES if t["id"] not in exclude}


def render_rotation(template: dict, angle: int, direction: str) -> str:
    return template["text"].format(
        angle=angle,
        angle_full=angle + 360,
        dir=direction,
        clock={"right": "clockwise", "left": "counterclockwise"}.get(direction, ""),
    )
