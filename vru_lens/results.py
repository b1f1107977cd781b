"""The result contract, and JSON save/load of dataclasses holding arrays.

Every stage returns a small dataclass that inherits ``Result``: ``summary()``
(a small JSON-able dict), ``to_frame()`` (a pandas DataFrame), ``plot()`` (a
plotly figure) and ``save(path)``/``load(path)``; the CLI's ``--json`` and the
report read results only through these. Numpy arrays and tensors are stored as
nested lists with their dtype, so a saved result reads back to equal arrays.
Writes go to a temporary file and are renamed, so an interrupted save never
leaves a truncated file; the JSON is strict (NaN as null, flagged: ``vru_lens.jsonio``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
from pathlib import Path
from typing import Any, Callable, ClassVar, TypeVar

import numpy as np

from .heads import Head  # noqa: F401  (re-exported; it lives in heads)
from .jsonio import dumps, load_json, write_atomic
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


def model_name(model) -> str:
    """The name a result records for ``model``: the loader's (``load_model`` sets ``vru_name``), else its class."""
    return getattr(model, "vru_name", None) or type(model).__name__


def load_tensors(path: str | Path, what: str):
    """A torch file of tensors and plain data (dicts, lists, numbers, strings), read with ``weights_only=True``.

    A results folder is handed between people, so its files must never run code when read: anything
    else in the file (a pickled object, which could run code) is refused with one line, never unpickled."""
    import pickle

    import torch

    try:
        return torch.load(path, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, TypeError, AttributeError) as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ValueError(f"{path} is not a {what} that vru-lens wrote: it cannot be read as tensors and plain data "
                         f"only ({reason[:160]}), and is never unpickled; delete it (it is rewritten) or point to "
                         "another folder") from None


KEY_LENGTH = 16  # hex digits of a cache key


def cache_key(value) -> str:
    """The package's one cache key (result files, checkpoints, sweep cells, base measurements): the first
    ``KEY_LENGTH`` hex digits of the SHA-256 of ``value``, bytes as they are (token ids), anything else as
    canonical JSON (keys sorted; what JSON cannot hold, as its ``str``)."""
    data = value if isinstance(value, bytes) else json.dumps(value, sort_keys=True, default=str).encode()
    return hashlib.sha256(data).hexdigest()[:KEY_LENGTH]


def t_interval(values, level: float = 0.95) -> dict:
    """Mean and Student-t confidence interval over seeds (n = 1: the interval is the point)."""
    from scipy import stats

    v = np.asarray(values, dtype=float)
    m = float(v.mean())
    if len(v) < 2:
        return {"mean": m, "ci": [m, m], "n": 1}
    half = float(stats.t.ppf(0.5 + level / 2, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))
    return {"mean": m, "ci": [m - half, m + half], "n": int(len(v))}


def wilson_interval(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson interval of a proportion ``p`` over ``n`` items (one run's accuracy; ``t_interval`` is over seeds)."""
    if not n:
        return (float("nan"), float("nan"))
    mid, half = (p + z * z / (2 * n)) / (1 + z * z / n), z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5) / (1 + z * z / n)
    return (mid - half, mid + half)


def welch_interval(a, b, level: float = 0.95) -> dict:
    """Mean of ``a`` minus mean of ``b`` with its Welch t-interval (two arms over their own seeds; NaN below 2 each)."""
    from scipy import stats

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    d = float(a.mean() - b.mean())
    if len(a) < 2 or len(b) < 2:
        return {"diff": d, "ci": [float("nan"), float("nan")]}
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    if va + vb == 0:
        return {"diff": d, "ci": [d, d]}
    dof = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    half = float(stats.t.ppf(0.5 + level / 2, dof) * np.sqrt(va + vb))
    return {"diff": d, "ci": [d - half, d + half]}


def write_json_atomic(path: str | Path, payload: dict) -> Path:
    """``payload`` as strict JSON at ``path``, written whole or not at all, with the user's umask."""
    return write_atomic(path, dumps(payload))


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
        data = load_json(path)
        kind = data.get("type") if isinstance(data, dict) else None
        if not isinstance(data, dict):
            raise ValueError(f"{path} holds a JSON {type(data).__name__}, not a saved {cls.__name__}")
        if kind not in (None, cls.__name__):
            raise ValueError(f"{path} holds a {kind}, not a {cls.__name__}")
        return cls.from_dict(data)


class Result(Saveable):
    """What every stage's result offers; a subclass that lacks a method says so when it is called.

    Subclasses register themselves by class name, so ``load_result`` reads any saved result back."""

    registry: ClassVar[dict] = {}

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        Result.registry[cls.__name__] = cls

    def _missing(self, method: str):
        raise NotImplementedError(f"{type(self).__name__} does not implement {method}() of the result contract "
                                  "(vru_lens.results.Result): add it to the class")

    def summary(self) -> dict:
        """A small JSON-able dict: the numbers a reader wants first."""
        self._missing("summary")

    def to_frame(self):
        """A pandas DataFrame of the result's rows."""
        self._missing("to_frame")

    def plot(self, title: str | None = None):
        """A plotly figure."""
        self._missing("plot")


# where each result type is defined: load_result imports the module on demand, so reading a file back never
# depends on what the caller happened to import (tests/test_results.py checks this list against the subclasses)
RESULT_MODULES = {
    "EvalResult": "vru_lens.evaluate", "ProbeResult": "vru_lens.probe", "LogitLensResult": "vru_lens.logit_lens",
    "GeneralResult": "vru_lens.general_eval", "AttentionPatterns": "vru_lens.viz",
    "HeadScores": "vru_lens.patching.scores", "PathPatchResult": "vru_lens.patching.path",
    "KnockoutResult": "vru_lens.patching.knockout", "KnockoutCurve": "vru_lens.patching.knockout",
    "FaithfulnessResult": "vru_lens.patching.faithfulness",
    "FinetuneResult": "vru_lens.finetune.run", "TrainResult": "vru_lens.finetune.train",
}


def result_type(kind: str) -> type[Result]:
    """The Result subclass saved under ``kind``, its module imported if it was not yet."""
    if kind not in Result.registry and kind in RESULT_MODULES:
        importlib.import_module(RESULT_MODULES[kind])
    return Result.registry[kind]


def load_result(path: str | Path) -> Result:
    """Any saved result, by the type its file names."""
    data = load_json(path)
    kind = data.get("type") if isinstance(data, dict) else None
    if kind not in Result.registry and kind not in RESULT_MODULES:
        raise ValueError(f"{path} holds a {kind!r}, not a known result "
                         f"({', '.join(sorted(set(RESULT_MODULES) | set(Result.registry)))})")
    return result_type(kind).from_dict(data)
