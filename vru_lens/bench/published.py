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
    disagreements: list[dict] = field(default_factory=list)  # {"index", "id", "file_answer", "solver_answer"}
    unreadable: list[dict] = field(default_factory=list)  # {"index", "id", "error"}

    def summary(self) -> str:
        text = f"{self.kept} of {self.n_records} records kept"
        if self.disagreements:
            d = self.disagreements[0]
            text += (f"; the solver disagrees with {len(self.disagreements)} answer(s) (first: record {d['index']}, "
                     f"file says {d['file_answer']!r}, solver {d['solver_answer']!r})")
        if self.unreadable:
            u = self.unreadable[0]
            text += f"; {len(self.unreadable)} unreadable (first: record {u['index']}: {u['error']})"
        return text


def _records(path: Path) -> list[dict]:
    text = path.read_text()
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    data = json.loads(text)
    if isinstance(data, dict):
        data = next((data[k] for k in ("data", "items", "examples", "test") if isinstance(data.get(k), list)), None)
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of records (or {{'data': [...]}}) or a .jsonl file")
    return data


def _field(record: dict, keys: tuple[str, ...], what: str):
    for k in keys:
        if k in record:
            return record[k]
    raise ValueError(f"no {what} field: expected one of {', '.join(keys)}")


def item_from_text(prompt: str, answer: str, item_id: str, split: str = "test") -> tuple[dict, str]:
    """One item in the generator's schema from a published prompt; returns (item, the solver's answer)."""
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
        steps.append({"angle": abs(s["degrees"]), "direction": "left" if s["degrees"] < 0 or "left" in s["text"].lower()
                      else "right", "heading_after": heading, "slot_after": heading // 90, "observed": s["observed"],
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
    records = _records(p)
    report, rows = LoadReport(n_records=len(records)), []
    for i, rec in enumerate(records):
        rid = str(rec.get("id", f"{p.stem}-{i}")) if isinstance(rec, dict) else f"{p.stem}-{i}"
        try:
            item, solver_answer = item_from_text(_field(rec, PROMPT_KEYS, "prompt"), _field(rec, ANSWER_KEYS, "answer"),
                                                 rid, split)
        except (ValueError, TypeError, AttributeError) as err:
            report.unreadable.append({"index": i, "id": rid, "error": str(err)})
            continue
        if not item["solver_agrees"]:
            report.disagreements.append({"index": i, "id": rid, "file_answer": item["answer"],
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


def load_vrubench(path: str | Path, split: str = "test", on_disagree: str = "drop"):
    """A ``datasets.DatasetDict`` ({split: Dataset}) in the generator's schema from a published-format file.

    Records the solver disagrees with or cannot read are reported with a warning (``read_published``
    returns the full report).
    """
    from .export import to_dataset_dict

    rows, report = read_published(path, split, on_disagree)
    if report.disagreements or report.unreadable:
        warnings.warn(f"load_vrubench {path}: {report.summary()}", stacklevel=2)
    return to_dataset_dict({split: rows})


def looks_published(path: Path) -> bool:
    """A .json file, or a .jsonl file whose first record lacks the generator's 'steps'."""
    if path.suffix == ".json":
        return True
    if path.suffix != ".jsonl":
        return False
    with open(path) as f:
        first = next((line for line in f if line.strip()), "{}")
    return "steps" not in json.loads(first)
