"""Shared plumbing for result objects: JSON save/load of dataclasses holding arrays.

Every stage returns a small dataclass that inherits ``Saveable``; numpy arrays
and tensors are stored as nested lists with their dtype, so a saved result
reads back to equal arrays. Writes go to a temporary file and are renamed, so
an interrupted save never leaves a truncated file.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, TypeVar

import numpy as np

from .heads import Head  # noqa: F401  (re-exported; it lives in heads)
R = TypeVar("R", bound="Saveable")

# An accuracy function, as the stages below evaluate take it: (model, items) -> fraction of items right (0-1).
# ``functools.partial(vru_lens.evaluate.accuracy, chat=..., batch_size=...)`` is one.
Accuracy = Callable[[Any, list], float]


def _encode(value):
    if hasattr(value, "detach"):  # torch tensor
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return {"__ndarray__": value.tolist(), "dtype": str(value.dtype)}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {str(k): _encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    return value


def _decode(value):
    if isinstance(value, dict) and "__ndarray__" in value:
        return np.asarray(value["__ndarray__"], dtype=value["dtype"])
    if isinstance(value, dict):
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def write_json_atomic(path: str | Path, payload: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(payload, f)
    os.replace(tmp, path)
    return path


class Saveable:
    """Mixin for result dataclasses: ``save(path)`` / ``load(path)`` as JSON."""

    def to_dict(self) -> dict:
        return {f.name: _encode(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def save(self, path: str | Path) -> Path:
        return write_json_atomic(path, {"type": type(self).__name__, **self.to_dict()})

    @classmethod
    def from_dict(cls: type[R], data: dict) -> R:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: _decode(v) for k, v in data.items() if k in names})

    @classmethod
    def load(cls: type[R], path: str | Path) -> R:
        data = json.loads(Path(path).read_text())
        kind = data.get("type")
        if kind not in (None, cls.__name__):
            raise ValueError(f"{path} holds a {kind}, not a {cls.__name__}")
        return cls.from_dict(data)
