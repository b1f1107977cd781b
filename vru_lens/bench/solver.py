"""An independent solver: re-derives the answer from the story text alone.

It knows nothing of the templates table or the generator's fields; it reads
degrees and rotation words the way a person would. Any disagreement with a
generated answer is a bug in one of the two.
"""

from __future__ import annotations

import re

_SENTENCE = re.compile(r"[^.?]+[.?]")
_DEGREES = re.compile(r"(\d+) degrees")
_OBJECT = re.compile(r"\bthe ([a-z][a-z-]*)\b")
_ROTATION_WORDS = ("turn", "rotate", "spin")

# Fractions of a full turn, longest phrase first so "three-quarter" wins over "quarter".
_FRACTIONS = (("three-quarter", 270), ("quarter", 90), ("eighth", 45), ("half", 180), ("around", 180), ("opposite", 180))


def _rotation(sentence: str) -> int | None:
    """Signed degrees of a rotation sentence, or None if it is not one."""
    words = sentence.lower()
    if not any(w in words for w in _ROTATION_WORDS) or "what" in words:
        return None
    match = _DEGREES.search(words)
    if match:
        magnitude = int(match.group(1))
    else:
        magnitude = next((deg for word, deg in _FRACTIONS if word in words), 90)
    leftward = "left" in words or "counterclockwise" in words or "anticlockwise" in words
    return -magnitude if leftward else magnitude


def solve(story: str) -> tuple[str, int]:
    """Return (answer, final heading in degrees); answer is 'unknown' if never seen."""
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
