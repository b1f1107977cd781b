"""Checkpoints for long sweeps: partial results saved after every chunk of pairs; the same run resumes.

A checkpoint is a JSON file holding a *key* (what is being computed: model,
method, settings and a hash of the token ids) and the finished chunks. A run
with the same key skips the chunks already there; a different key is refused
with a message that names the fix, so one run never resumes another's numbers.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..jsonio import load_json
from ..results import cache_key, write_json_atomic


def tokens_hash(pt) -> str:
    """Short hash of a PairTokens' ids and answers (which pairs, in which order): ``results.cache_key``."""
    return cache_key(b"".join(t.detach().cpu().contiguous().numpy().tobytes()
                              for t in (pt.clean, pt.corrupt, pt.lengths, pt.clean_answer, pt.corrupt_answer)))


class Checkpoint:
    """``get(tag)`` / ``put(tag, arrays)`` over named chunks, persisted atomically on every put."""

    def __init__(self, path: str | Path, key: dict):
        self.path = Path(path)
        self.key = json.loads(json.dumps(key, default=str))
        self.chunks: dict[str, dict[str, np.ndarray]] = {}
        if self.path.exists():
            data = load_json(self.path)  # NaN comes back from strict JSON's null and flag
            if data.get("key") != self.key:
                diff = sorted(k for k in set(self.key) | set(data.get("key", {}))
                              if self.key.get(k) != data.get("key", {}).get(k))
                raise ValueError(f"{self.path} is a checkpoint of a different run (differs in {', '.join(diff)}); "
                                 "delete it or write the result somewhere else")
            self.chunks = {tag: {name: np.asarray(v) for name, v in arrays.items()}
                           for tag, arrays in data.get("chunks", {}).items()}
        self.resumed = len(self.chunks)  # chunks found on disk when opened

    def get(self, tag: str) -> dict[str, np.ndarray] | None:
        return self.chunks.get(tag)

    def put(self, tag: str, **arrays) -> None:
        self.chunks[tag] = {name: np.asarray(a.detach().cpu() if hasattr(a, "detach") else a, dtype=np.float64)
                            for name, a in arrays.items()}
        enc = {t: {n: a.tolist() for n, a in arrs.items()} for t, arrs in self.chunks.items()}
        write_json_atomic(self.path, {"key": self.key, "chunks": enc})

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)
