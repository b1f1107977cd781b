"""Strict JSON in and out: files any JSON parser reads, and one-line errors that name the file and line.

JSON has no NaN or infinity (Python writes ``NaN``, which other parsers reject). ``strict`` writes a
non-finite number as ``null`` and lists where in ``"non_finite"``, a map from JSON Pointer (RFC 6901)
to ``"nan"``, ``"inf"`` or ``"-inf"``; ``"array"`` marks a list of numbers whose nulls are NaN (one
entry for the whole list, not one per element). ``restore`` puts the numbers back, so a file reads
back to what was written.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

FLAG = "non_finite"


def _pointer(path: str, key) -> str:
    return f"{path}/{str(key).replace('~', '~0').replace('/', '~1')}"


def _clean(value, path: str, flags: dict) -> tuple[object, bool]:
    """(value with non-finite floats as None, whether it is a number or a list of numbers)."""
    if isinstance(value, bool) or value is None:
        return value, value is None
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            flags[path] = "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
            return None, True
        return value, True
    if isinstance(value, dict):
        return {str(k): _clean(v, _pointer(path, k), flags)[0] for k, v in value.items()}, False
    if isinstance(value, (list, tuple)):
        inner: dict = {}
        items = [_clean(v, _pointer(path, i), inner) for i, v in enumerate(value)]
        numeric = bool(items) and all(is_num for _, is_num in items)
        if numeric and any(kind in ("nan", "array") for kind in inner.values()):
            inner = {p: k for p, k in inner.items() if k not in ("nan", "array")}  # the infinities stay listed
            inner[path] = "array"
        flags.update(inner)
        return [v for v, _ in items], numeric
    return value, False


def strict(payload: dict) -> dict:
    """``payload`` with every NaN/infinity as null and their places under ``"non_finite"`` (when any)."""
    flags: dict = {}
    clean = _clean(payload, "", flags)[0]
    if flags:
        if not isinstance(clean, dict):
            raise ValueError("a JSON payload with NaN or infinity must be an object (the flag goes in it)")
        clean[FLAG] = dict(sorted(flags.items(), key=lambda kv: len(kv[0])))
    return clean


def dumps(payload: dict) -> str:
    return json.dumps(strict(payload), allow_nan=False, default=str)


def _nan_for_null(value):
    if isinstance(value, list):
        return [_nan_for_null(v) for v in value]
    return float("nan") if value is None else value


def restore(data):
    """The numbers ``strict`` wrote as null, back in place (``"non_finite"`` removed)."""
    if not isinstance(data, dict) or not isinstance(data.get(FLAG), dict):
        return data
    flags = data.pop(FLAG)
    for pointer, kind in sorted(flags.items(), key=lambda kv: len(kv[0])):  # a whole array before its infinities
        keys = [k.replace("~1", "/").replace("~0", "~") for k in pointer.split("/")[1:]]
        parent = data
        try:
            for k in keys[:-1]:
                parent = parent[int(k) if isinstance(parent, list) else k]
            last = int(keys[-1]) if isinstance(parent, list) else keys[-1]
            parent[last] = _nan_for_null(parent[last]) if kind == "array" else float(kind)
        except (KeyError, IndexError, ValueError, TypeError):
            raise ValueError(f"the {FLAG} entry {pointer!r} points at nothing in the file") from None
    return data


def _decode_error(path, err: json.JSONDecodeError, line: int | None = None) -> ValueError:
    where = f"line {line if line is not None else err.lineno} column {err.colno}"
    if not err.doc.strip():
        return ValueError(f"{path}{f' line {line}' if line is not None else ''} is empty: expected JSON; "
                          "was it written completely?")
    return ValueError(f"{path}: not valid JSON at {where} ({err.msg}); was it cut short or edited by hand?")


def _text(path) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not a UTF-8 text file ({err.reason} at byte {err.start})") from None
    except IsADirectoryError:
        raise ValueError(f"{path} is a folder, not a JSON file") from None


def load_json(path):
    """A JSON file's value, non-finite numbers restored; ValueError naming the file and line if it is not JSON."""
    try:
        return restore(json.loads(_text(path)))
    except json.JSONDecodeError as err:
        raise _decode_error(path, err) from None


def load_jsonl(path) -> list[tuple[int, object]]:
    """(line number, value) of every non-blank line of a JSONL file; ValueError naming the file and line."""
    out = []
    for number, line in enumerate(_text(path).splitlines(), start=1):
        if line.strip():
            try:
                out.append((number, restore(json.loads(line))))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path} line {number}: not valid JSON at column {err.colno} ({err.msg}); "
                                 "was it cut short or edited by hand?") from None
    return out


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path, text: str) -> Path:
    """Write ``text`` beside ``path`` and rename (a reader never sees half a file), with the permissions
    any new file of the user gets (0666 less the umask; a bare temporary file would be 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
