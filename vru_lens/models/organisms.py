"""The VRU model organisms shipped with the package: small Llamas trained with planted heads.

Each lives in ``vru_lens/models/organism/<name>/`` as an ordinary transformers folder
(config, safetensors, word-level tokenizer) plus ``organism.json``: the planted heads G,
their roles, and how the checkpoint was trained and measured.
"""

from __future__ import annotations

import json
from pathlib import Path

ORGANISMS = ("vru-organism", "vru-organism-deficit", "vru-organism-noisy", "vru-organism-deep", "vru-organism-redundant")
TUNE_FROM = {"vru-organism": "vru-organism-deficit"}  # where the study's fine-tuning starts: the deficit
ORGANISM_ROOT = Path(__file__).parent / "organism"


def organism_dir(name: str) -> Path:
    if name not in ORGANISMS:
        raise ValueError(f"unknown organism {name!r}; known: {', '.join(ORGANISMS)}")
    path = ORGANISM_ROOT / name
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path} has no trained weights; train them with "
                                f"`vru-lens organism train --out {path}`")
    return path


def organism_card(name_or_dir) -> dict:
    """``organism.json`` of a shipped organism or of a trained folder."""
    path = organism_dir(name_or_dir) if name_or_dir in ORGANISMS else Path(name_or_dir)
    card = path / "organism.json"
    if not card.exists():
        raise FileNotFoundError(f"{path} has no organism.json: not an organism folder")
    return json.loads(card.read_text())


def circuit_heads(card: dict) -> list[tuple[int, int]]:
    """The organism's complete circuit C, as (layer, head) pairs, from its card's ``circuit`` key."""
    if "circuit" not in card:
        raise ValueError("this organism card names no circuit (key 'circuit'); measure it with "
                         "`vru-lens organism measure FOLDER`")
    return sorted(tuple(int(x) for x in key.split(".")) for key in card["circuit"])


def known_circuit(name: str) -> list[tuple[int, int]] | None:
    """The complete circuit C of a shipped organism (the known answer rankings are graded against), else None."""
    return circuit_heads(organism_card(name)) if name in ORGANISMS else None
