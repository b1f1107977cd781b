"""Turn a sampled walk (slot objects + steps) into prompt text, in either style.

Both renderers return the text and the character offsets the analyses need:
the span of every rotation phrase (what a counterfactual rewrites), the end of
every step (where probes read) and the end of the question.
"""

from __future__ import annotations

import random

from . import styles as P
from . import templates as T
from .world import render_rotation, templates_by_id


def render_story(rng: random.Random, room: str, slot_objects: list[str], steps: list[dict]):
    """Our own sentences (style "story"): opening, "lead + rotation phrase.", optional observation, question."""
    text = rng.choice(T.OPENINGS).format(room=("an " if room[0] in "aeiou" else "a ") + room, obj=slot_objects[0])
    templates = templates_by_id()
    spans, step_ends = [], []
    for s in steps:
        text += " " + rng.choice(T.STEP_LEADS) + " "
        start = len(text)
        text += render_rotation(templates[s["template_id"]], s["angle"], s["direction"])
        spans.append([start, len(text)])
        text += "."
        if s["observe"]:
            text += rng.choice(T.OBSERVATIONS).format(obj=s["object"])
        step_ends.append(len(text))
    text += T.QUESTION
    return text, spans, step_ends, len(text)


def render_paper(slot_objects: list[str], steps: list[dict]):
    """The study's format (style "paper"): instruction, then one line per observation and action.

    A step ends after its observation line (the final step: after its action line);
    the question is the closing empty ``Observation:``.
    """
    text = P.INSTRUCTION + "\n" + P.INITIAL.format(obj=slot_objects[0])
    spans, step_ends = [], []
    for s in steps:
        text += "\n" + P.ACTION
        start = len(text)
        text += P.TURN.format(dir=s["direction"], angle=s["angle"])
        spans.append([start, len(text)])
        if s["observe"]:
            text += "\n" + P.OBSERVATION.format(obj=s["object"])
        step_ends.append(len(text))
    text += "\n" + P.QUESTION
    return text, spans, step_ends, len(text)
