"""Load VRUBench items in the published format (the study's prompt text + a free-text answer).

Each record holds the prompt under ``prompt``, ``question`` or ``input`` and the
answer under ``answer``, ``label`` or ``output``. The steps are parsed back
from the text by the independent solver, so every stage (rules, pairs, probes,
step positions) works on the study's own items. An answer the solver does not
re-derive is reported, never silently kept: dropped by default, kept and
flagged with ``on_disagree="keep"``, or an error with ``"raise"``.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from ..jsonio import load_json, load_jsonl
from .answers import UNKNOWN, normalise
from .solver import parse_lines, solve

PROMPT_KEYS = ("prompt", "question", "input")
ANSWER_KEYS = ("answer", "label", "output")
N_SLOTS = 4


@dataclass
class LoadReport:
    """What loading kept, and every record it could not take as it stands."""

    n_records: int = 0
    kept: int = 0
    # {"index", "line", "id", "file_answer", "solver_answer"}; "line": the JSONL line (None in a JSON list or a dataset)
    disagreements: list[dict] = field(default_factory=list)
    unreadable: list[dict] = field(default_factory=list)  # {"index", "line", "id", "error"}

    def summary(self) -> str:
        text = f"{self.kept} of {self.n_records} records kept"
        if self.disagreements:
            d = self.disagreements[0]
            text += (f"; the solver disagrees with {len(self.disagreements)} answer(s), dropped unless kept "
                     f"(first: {where(d)}, file says {d['file_answer']!r}, solver {d['solver_answer']!r})")
        if self.unreadable:
            u = self.unreadable[0]
            text += f"; {len(self.unreadable)} unreadable (first: {where(u)}: {u['error']})"
        return text


def where(entry: dict) -> str:
    """A report entry's place in its file: 'line N' (JSONL) or 'record N' (0-based, a JSON list or a dataset)."""
    return f"line {entry['line']}" if entry.get("line") is not None else f"record {entry['index']}"


def records(path: Path) -> list[tuple[int | None, object]]:
    """(JSONL line number or None, record) of a JSON list / {'data': [...]} or a JSONL file."""
    if path.suffix == ".jsonl":
        return load_jsonl(path)
    data = load_json(path)
    if isinstance(data, dict):
        data = next((data[k] for k in ("data", "items", "examples", "test") if isinstance(data.get(k), list)), None)
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of records (or {{'data': [...]}}) or a .jsonl file")
    return [(None, rec) for rec in data]


def _field(record: dict, keys: tuple[str, ...], what: str):
    for k in keys:
        if k in record:
            return record[k]
    raise ValueError(f"no {what} field: expected one of {', '.join(keys)}")


def item_from_text(prompt: str, answer: str, item_id: str, split: str = "test") -> tuple[dict, str]:
    """One item in the generator's schema from a published prompt; returns (item, the solver's answer).

    Line endings are made "\\n" first (a CRLF file), so the offsets refer to the stored prompt."""
    if not isinstance(prompt, str) or not isinstance(answer, str):
        raise ValueError(f"the prompt and the answer must be text, got {type(prompt).__name__} and "
                         f"{type(answer).__name__}")
    prompt = prompt.replace("\r\n", "\n").replace("\r", "\n")
    parsed = parse_lines(prompt)
    heading, seen, mentioned = 0, {0: parsed["start"]}, [parsed["start"]]
    steps, labels = [], {"heading_slot": [], "cum_angle": [], "observed": [], "object_at_heading": []}
    cum = 0
    for s in parsed["steps"]:
        if s["degrees"] % (360 // N_SLOTS):
            raise ValueError(f"turn of {abs(s['degrees'])} degrees: the published format has 4 directions")
        cum += s["degrees"]
        heading = cum % 360
        if s["observed"]:
            seen.setdefault(heading, s["observed"])
            if s["observed"] not in mentioned:
                mentioned.append(s["observed"])
        labels["heading_slot"].append(heading // 90)
        labels["cum_angle"].append(cum)
        labels["observed"].append(heading in seen)
        labels["object_at_heading"].append(seen.get(heading, UNKNOWN))
        steps.append({"angle": abs(s["degrees"]), "direction": s["direction"], "heading_after": heading, "slot_after": heading // 90, "observed": s["observed"],
                      "template_id": "paper", "span": s["span"]})
    solver_answer = solve(prompt)[0]
    gold = normalise(answer)
    candidates = mentioned + [UNKNOWN]
    if gold not in candidates:
        candidates.insert(-1, gold)
    item = {
        "id": item_id, "seed": -1, "split": split, "style": "paper", "room": "", "n_slots": N_SLOTS,
        "slot_objects": [seen.get(h, UNKNOWN) for h in range(0, 360, 90)], "steps": steps, "prompt": prompt,
        "answer": gold, "answer_slot": heading // 90 if gold != UNKNOWN else -1, "candidates": candidates,
        "answerable": gold != UNKNOWN, "n_steps": len(steps), "final_template": "paper",
        "final_direction": steps[-1]["direction"], "final_angle": steps[-1]["angle"], "uses_heldout_template": False,
        "step_ends": [s["end"] for s in parsed["steps"]], "question_end": parsed["question_end"],
        "solver_agrees": gold == solver_answer, **{f"label_{k}": v for k, v in labels.items()},
    }
    return item, solver_answer


def read_published(path: str | Path, split: str = "test", on_disagree: str = "drop") -> tuple[list[dict], LoadReport]:
    """Rows in the generator's schema and a report of what was dropped (or flagged) and why."""
    if on_disagree not in ("drop", "keep", "raise"):
        raise ValueError(f"on_disagree must be 'drop', 'keep' or 'raise', got {on_disagree!r}")
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no file at {p}: pass a .json or .jsonl file of published VRUBench records")
    found = records(p)
    report, rows = LoadReport(n_records=len(found)), []
    for i, (line, rec) in enumerate(found):
        rid = str(rec.get("id", f"{p.stem}-{i}")) if isinstance(rec, dict) else f"{p.stem}-{i}"
        try:
            if not isinstance(rec, dict):
                raise ValueError(f"a record must be a JSON object, got {type(rec).__name__}")
            item, solver_answer = item_from_text(_field(rec, PROMPT_KEYS, "prompt"), _field(rec, ANSWER_KEYS, "answer"),
                                                 rid, split)
        except (ValueError, TypeError, AttributeError) as err:
            report.unreadable.append({"index": i, "line": line, "id": rid, "error": str(err)})
            continue
        if not item["solver_agrees"]:
            report.disagreements.append({"index": i, "line": line, "id": rid, "file_answer": item["answer"],
                                         "solver_answer": solver_answer})
            if on_disagree == "drop":
                continue
        rows.append(item)
    report.kept = len(rows)
    if on_disagree == "raise" and (report.disagreements or report.unreadable):
        raise ValueError(f"{p}: {report.summary()}")
    if not rows:
        raise ValueError(f"{p}: no usable record ({report.summary()})")
    return rows, report


def check_rows(rows: list[tuple[int | None, object]], on_disagree: str = "drop") -> tuple[list[dict], LoadReport]:
    """Rows in the generator's schema (``vru-lens bench`` output), each answer re-derived by the solver from its
    prompt: one it disagrees with, or cannot read, is reported and dropped (``on_disagree`` as ``read_published``;
    "keep" marks every row's ``solver_agrees``)."""
    if on_disagree not in ("drop", "keep", "raise"):
        raise ValueError(f"on_disagree must be 'drop', 'keep' or 'raise', got {on_disagree!r}")
    report, kept = LoadReport(n_records=len(rows)), []
    for i, (line, row) in enumerate(rows):
        rid = str(row.get("id", i)) if isinstance(row, dict) else str(i)
        try:
            if not isinstance(row, dict) or not isinstance(row.get("prompt"), str) or "answer" not in row:
                raise ValueError("not an item: expected a JSON object with 'prompt' and 'answer'")
            solver_answer = solve(row["prompt"])[0]
        except ValueError as err:
            report.unreadable.append({"index": i, "line": line, "id": rid, "error": str(err)})
            continue
        agrees = row["answer"] == solver_answer
        if not agrees:
            report.disagreements.append({"index": i, "line": line, "id": rid, "file_answer": row["answer"],
                                         "solver_answer": solver_answer})
            if on_disagree == "drop":
                continue
        kept.append({**row, "solver_agrees": agrees} if on_disagree == "keep" else row)
    report.kept = len(kept)
    if on_disagree == "raise" and (report.disagreements or report.unreadable):
        raise ValueError(report.summary())
    if rows and not kept:
        raise ValueError(f"no usable record ({report.summary()})")
    return kept, report


def load_vrubench(path: str | Path, split: str = "test", on_disagree: str = "drop"):
    """A ``datasets.DatasetDict`` ({split: Dataset}) in the generator's schema from a published-format file,
    or from what ``vru-lens bench --out`` wrote (its folder or one JSONL file; the folder's ``split``).

    Every answer is re-derived by the solver; records it disagrees with or cannot read are reported
    with a warning (``read_published`` / ``export.read_checked`` return the full report) and dropped.
    """
    from .export import read_checked, to_dataset_dict

    p = Path(path)
    if p.is_file() and looks_published(p):
        rows, report = read_published(p, split, on_disagree)
        reports = {split: report}
    else:
        splits, reports = read_checked(p, on_disagree)
        if split not in splits and not (p.is_file() and len(splits) == 1):
            raise ValueError(f"{p} has no split {split!r}; it has {', '.join(splits)}")
        rows = splits.get(split) or next(iter(splits.values()))
        reports = {split: reports.get(split) or next(iter(reports.values()))}
    for report in reports.values():
        if report.disagreements or report.unreadable:
            warnings.warn(f"load_vrubench {path}: {report.summary()}", stacklevel=2)
    return to_dataset_dict({split: rows})


def looks_published(path: Path) -> bool:
    """A .json file, or a .jsonl file whose first record lacks the generator's 'steps'."""
    if path.suffix == ".json":
        return True
    if path.suffix != ".jsonl":
        return False
    with open(path, encoding="utf-8", errors="replace") as f:
        number, first = next(((n, line) for n, line in enumerate(f, 1) if line.strip()), (0, "{}"))
    try:
        record = json.loads(first)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} line {number}: not valid JSON at column {err.colno} ({err.msg}); "
                         "was it cut short or edited by hand?") from None
    return not (isinstance(record, dict) and "steps" in record)
