"""An independent solver: re-derives the answer from the story text alone.

It knows nothing of the templates table, the paper-style constants or the
generator's fields; it reads degrees and rotation words the way a person
would. Any disagreement with a generated answer is a bug in one of the two.
Both styles are read: the study's line format ("Initial Observation: ... /
Action: ... / Observation: ...") and our sentences.
"""

from __future__ import annotations

import re

_SENTENCE = re.compile(r"[^.?]+[.?]")
_DEGREES = re.compile(r"(\d+) degrees")
_OBJECT = re.compile(r"\bthe ([a-z][a-z-]*)\b")
_ROTATION_WORDS = ("turn", "rotate", "spin")
_LINE = re.compile(r"^[ \t]*(initial observation|observation|action)[ \t]*:[ \t]*(.*?)[ \t]*$", re.I | re.M)

# Fractions of a full turn, longest phrase first so "three-quarter" wins over "quarter".
_FRACTIONS = (("three-quarter", 270), ("quarter", 90), ("eighth", 45), ("half", 180), ("around", 180),
              ("opposite", 180), ("full", 360))


def _degrees(words: str) -> int:
    """Signed degrees of a rotation phrase (right/clockwise positive)."""
    match = _DEGREES.search(words)
    if match:
        magnitude = int(match.group(1))
    else:
        magnitude = next((deg for word, deg in _FRACTIONS if word in words), 90)
    leftward = "left" in words or "counterclockwise" in words or "anticlockwise" in words
    return -magnitude if leftward else magnitude


def _rotation(sentence: str) -> int | None:
    """Signed degrees of a rotation sentence, or None if it is not one."""
    words = sentence.lower()
    if not any(w in words for w in _ROTATION_WORDS) or "what" in words:
        return None
    return _degrees(words)


def parse_lines(text: str) -> dict:
    """The study's line format -> start object, steps and character offsets.

    Returns {"start", "steps": [{"degrees", "observed", "span", "end"}], "question_end"}; a step's
    ``observed`` is the object on the observation line after it (None for the last), ``span`` the
    characters of the action text and ``end`` the end of its last line. Raises ValueError naming what
    is missing when the text is not in that format.
    """
    lines = list(_LINE.finditer(text))
    if not lines or lines[0].group(1).lower() != "initial observation":
        raise ValueError("not in the published format: expected a line 'Initial Observation: <object>' first")
    if lines[-1].group(1).lower() != "observation" or lines[-1].group(2):
        raise ValueError("not in the published format: the prompt must end with an empty 'Observation:' line")
    start, steps = lines[0].group(2).lower(), []
    for m in lines[1:-1]:
        kind, value = m.group(1).lower(), m.group(2)
        if kind == "action":
            steps.append({"degrees": _degrees(value.lower()), "observed": None, "span": [m.start(2), m.end(2)],
                          "end": m.end(2), "text": value})
        elif kind == "observation" and steps and steps[-1]["observed"] is None:
            steps[-1]["observed"], steps[-1]["end"] = value.lower(), m.end(2)
        else:
            raise ValueError(f"not in the published format: unexpected line {m.group(0).strip()!r}")
    if not steps or steps[-1]["observed"] is not None:
        raise ValueError("not in the published format: the last action must be followed by the empty 'Observation:'")
    return {"start": start, "steps": steps, "question_end": lines[-1].end()}


def _solve_lines(text: str) -> tuple[str, int]:
    parsed = parse_lines(text)
    heading, seen = 0, {0: parsed["start"]}
    for step in parsed["steps"]:
        heading = (heading + step["degrees"]) % 360
        if step["observed"]:
            seen.setdefault(heading, step["observed"])
    return seen.get(heading, "unknown"), heading


def solve(story: str) -> tuple[str, int]:
    """Return (answer, final heading in degrees); answer is 'unknown' if never seen."""
    if re.search(r"^\s*initial observation\s*:", story, re.I | re.M):
        return _solve_lines(story)
    heading = 0
    seen: dict[int, str] = {}
    for sentence in _SENTENCE.findall(story):
        if "what" in sentence.lower():
            break
        degrees = _rotation(sentence)
        if degrees is not None:
            heading = (heading + degrees) % 360
            continue
        for obj in _OBJECT.findall(sentence):
            seen.setdefault(heading, obj)
    return seen.get(heading, "unknown"), heading
