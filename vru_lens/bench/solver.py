"""An independent solver: re-derives the answer from the story text alone.

It knows nothing of the templates table, the paper-style constants or the
generator's fields; it reads degrees and rotation words the way a person
would. Any disagreement with a generated answer is a bug in one of the two.
Both styles are read: the study's line format ("Initial Observation: ... /
Action: ... / Observation: ...") and our sentences.

A rotation phrase is read into an amount and a direction, or refused with the
reason (``ValueError``); nothing is assumed. Amounts: digits or number words
("90", "ninety", "one hundred and eighty"), with or without "degrees", "deg",
"°"; fractions of a turn ("a quarter turn", "three quarters of a turn", "a
half turn", "turn around", "face the opposite direction", "a full turn"); a
bare "turn left" is a quarter turn, as people say it. Directions: left/right,
clockwise, counter-clockwise / counterclockwise / anticlockwise. A turn of 0,
180 or 360 degrees needs no direction (its direction is "none"). Line endings
(CRLF) and extra whitespace do not matter.
"""

from __future__ import annotations

import re
from functools import lru_cache

from .answers import normalise

_SENTENCE = re.compile(r"[^.?]+[.?]")
_OBJECT = re.compile(r"\bthe ([a-z][a-z-]*)\b")
_ROTATION_WORDS = ("turn", "rotate", "spin")
_LINE = re.compile(r"^[^\S\n]*(initial observation|observation|action)[^\S\n]*:[^\S\n]*(.*?)[^\S\n]*$", re.I | re.M)

_UNITS = {"degree", "degrees", "deg", "degs"}
_ONES = {w: i for i, w in enumerate("zero one two three four five six seven eight nine ten eleven twelve thirteen "
                                     "fourteen fifteen sixteen seventeen eighteen nineteen".split())}
_TENS = {w: 10 * i for i, w in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split(), start=2)}
_FRACTIONS = {"quarter": 90, "quarters": 90, "half": 180, "halves": 180, "eighth": 45, "eighths": 45,
              "full": 360, "complete": 360}
_HALF_TURN_PHRASES = ("around", "opposite", "about face", "u turn")
_LEFT, _RIGHT = {"left", "counterclockwise", "anticlockwise"}, {"right", "clockwise"}
_BARE_TURN_WORDS = {"turn", "turns", "rotate", "rotates", "spin", "spins", "to", "the", "your", "you", "then", "now",
                    "next", "after", "that", "and", "action", "by"}
_NO_DIRECTION_NEEDED = (0, 180)  # degrees mod 360
_GLUED_UNIT = re.compile(rf"\b({'|'.join([*_ONES, *_TENS, 'hundred'])})(degrees|degree|degs|deg)\b")
_name = lru_cache(maxsize=4096)(normalise)  # an object's name as answers are compared


def _words(phrase: str) -> list[str]:
    text = phrase.lower().replace("°", " degrees ")
    text = re.sub(r"\b(counter|anti)[\s-]+clockwise\b", r"\1clockwise", text)
    text = re.sub(r"(\d)(?=[a-z])", r"\1 ", text)  # "90deg" -> "90 deg"
    text = _GLUED_UNIT.sub(r"\1 \2", text)  # "ninetydegrees" -> "ninety degrees"
    return re.findall(r"\d+(?:\.\d+)?|[a-z]+", text)


def _number_at(words: list[str], i: int) -> tuple[float | None, int]:
    """The number spelled by words[i:] (digits or number words) and how many words it takes."""
    if re.fullmatch(r"\d+(?:\.\d+)?", words[i]):
        return float(words[i]), 1
    total, current, j = 0, None, i
    while j < len(words):
        w = words[j]
        if w in _ONES or w in _TENS:
            current = (current or 0) + _ONES.get(w, _TENS.get(w, 0))
        elif w == "hundred" and current is not None:
            total, current = total + current * 100, 0
        elif w == "and" and j > i and j + 1 < len(words) and (words[j + 1] in _ONES or words[j + 1] in _TENS):
            pass
        else:
            break
        j += 1
    if j == i:
        return None, 0
    return float(total + (current or 0)), j - i


@lru_cache(maxsize=4096)  # the same few phrasings recur in every item
def read_turn(phrase: str) -> tuple[int, str]:
    """(signed degrees, direction) of a rotation phrase; right/clockwise positive, direction "left", "right"
    or "none" (a 0/180/360-degree turn that names none). Raises ValueError saying what is missing."""
    words = _words(phrase)
    amounts, i = [], 0
    while i < len(words):
        value, used = _number_at(words, i)
        if value is None:
            if words[i] in _FRACTIONS:
                amounts.append(("fraction", _FRACTIONS[words[i]]))
            i += 1
            continue
        nxt = words[i + used] if i + used < len(words) else ""
        if nxt in _FRACTIONS:  # "three quarters", "two half turns"
            amounts.append(("fraction", value * _FRACTIONS[nxt]))
            i += used + 1
        else:
            amounts.append(("number", value))
            i += used
    joined = f" {' '.join(words)} "
    if not amounts and any(f" {p} " in joined for p in _HALF_TURN_PHRASES):
        amounts.append(("phrase", 180))
    left, right = bool(_LEFT & set(words)), bool(_RIGHT & set(words))
    if left and right:
        raise ValueError(f"cannot read the turn {phrase.strip()!r}: it names both left and right")
    if len(amounts) > 1:
        raise ValueError(f"cannot read the turn {phrase.strip()!r}: it gives more than one amount")
    if not amounts:
        if (left or right) and set(words) <= _BARE_TURN_WORDS | _LEFT | _RIGHT:
            amounts.append(("bare", 90))  # "turn left": a quarter turn
        else:
            raise ValueError(f"cannot read the turn {phrase.strip()!r}: no angle (digits or words, with or without "
                             "'degrees'), fraction of a turn or 'turn around' in it")
    magnitude = amounts[0][1]
    if magnitude != int(magnitude):
        raise ValueError(f"cannot read the turn {phrase.strip()!r}: {magnitude:g} is not a whole number of degrees")
    magnitude = int(magnitude)
    if not (left or right):
        if magnitude % 360 not in _NO_DIRECTION_NEEDED:
            raise ValueError(f"cannot read the turn {phrase.strip()!r}: no direction (left/right, clockwise/"
                             f"counter-clockwise) for a turn of {magnitude} degrees")
        return magnitude, "none"
    return (-magnitude, "left") if left else (magnitude, "right")


def _rotation(sentence: str) -> int | None:
    """Signed degrees of a rotation sentence, or None if it is not one (ValueError if it cannot be read)."""
    words = sentence.lower()
    if not any(w in words for w in _ROTATION_WORDS) or "what" in words:
        return None
    return read_turn(sentence)[0]


def parse_lines(text: str) -> dict:
    """The study's line format -> start object, steps and character offsets.

    Returns {"start", "steps": [{"degrees", "direction", "observed", "span", "end", "text"}], "question_end"};
    a step's ``observed`` is the object on the observation line after it (None for the last), ``span`` the
    characters of the action text and ``end`` the end of its last line. Raises ValueError naming what
    is missing when the text is not in that format or an action cannot be read.
    """
    lines = list(_LINE.finditer(text))
    if not lines or lines[0].group(1).lower() != "initial observation":
        raise ValueError("not in the published format: expected a line 'Initial Observation: <object>' first")
    if lines[-1].group(1).lower() != "observation" or lines[-1].group(2):
        raise ValueError("not in the published format: the prompt must end with an empty 'Observation:' line")
    start, steps = _name(lines[0].group(2)), []
    for m in lines[1:-1]:
        kind, value = m.group(1).lower(), m.group(2)
        if kind == "action":
            degrees, direction = read_turn(value)
            steps.append({"degrees": degrees, "direction": direction, "observed": None,
                          "span": [m.start(2), m.end(2)], "end": m.end(2), "text": value})
        elif kind == "observation" and steps and steps[-1]["observed"] is None and _name(value):
            steps[-1]["observed"], steps[-1]["end"] = _name(value), m.end(2)
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
    """Return (answer, final heading in degrees); answer is 'unknown' if never seen.

    Raises ValueError (with the reason) when a rotation cannot be read."""
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
