"""Free-text answers -> comparable strings: the study's normalisation, plus "unknown" synonyms.

Pure Python so that loading published data (whose answers are free text) and
scoring generations use the very same rule.
"""

from __future__ import annotations

import re

UNKNOWN = "unknown"
# Answers that mean "cannot be known" (after normalise): an exact phrase, or the start of the answer.
UNKNOWN_PHRASES = (
    "unknown", "it is unknown", "cannot be determined", "can not be determined", "cant be determined",
    "it cannot be determined", "cannot determine", "cannot be known", "cant be known", "cannot know",
    "not determinable", "undeterminable", "undetermined", "indeterminate", "not known", "unclear", "uncertain",
    "unsure", "not sure", "i dont know", "dont know", "i do not know", "impossible to determine",
    "impossible to tell", "impossible to know", "unable to determine", "not possible to determine",
    "no way to know", "not enough information", "insufficient information", "unobserved", "not observed",
)
_LABEL = re.compile(r"^\s*(observation|answer|final observation)\s*:\s*", re.I)


def normalise(text: str) -> str:
    """The study's normalisation of a free-text answer, plus "unknown" synonyms.

    First non-empty line (a base model runs on into the next "Action:"), a leading
    "Observation:"/"Answer:" label dropped, lower case, punctuation to spaces, articles
    (a, an, the) dropped, whitespace collapsed; an answer that is or starts with a phrase in
    ``UNKNOWN_PHRASES`` becomes "unknown".
    """
    line = next((ln for ln in str(text).splitlines() if ln.strip()), "")
    line = _LABEL.sub("", line).lower().replace("'", "")
    words = [w for w in re.sub(r"[^a-z0-9]+", " ", line).split() if w not in ("a", "an", "the")]
    out = " ".join(words)
    if any(out == p or out.startswith(p + " ") for p in UNKNOWN_PHRASES):
        return UNKNOWN
    return out
