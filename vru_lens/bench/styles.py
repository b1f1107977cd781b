"""The study's own prompt format (style "paper") as data.

Text copied from the published benchmark's appendix (see VRUBENCH.md): a fixed
instruction, then one line per observation and action, ending in an empty
``Observation:`` that the model completes. Chat models get ``SYSTEM`` as the
system message and the whole prompt as the user message.
"""

from __future__ import annotations

STYLES = ("paper", "story")

INSTRUCTION = (
    "You are standing inside a room and can observe objects from your current viewpoint. You will take actions "
    "to rotate your viewpoint to the left or right. After taking the final action, predict the resulting "
    "observation. If the observation after the final action cannot be determined based on previous "
    "observations, output unknown."
)
SYSTEM = "You are a helpful assistant"
INITIAL = "Initial Observation: {obj}"
ACTION = "Action: "
TURN = "Turn to the {dir} by {angle} degrees"
OBSERVATION = "Observation: {obj}"
QUESTION = "Observation:"

ANGLES = (0, 90, 180, 270, 360)
DIRECTIONS = ("left", "right")
TURNS = tuple((a, d) for a in ANGLES for d in DIRECTIONS)


def is_paper(prompt: str) -> bool:
    """A prompt in the study's format ends with the empty observation line (it is its own answer cue)."""
    return prompt.rstrip().endswith("\n" + QUESTION) and "Initial Observation:" in prompt
