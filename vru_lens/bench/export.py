"""VRUBench items <-> ``datasets.DatasetDict`` on disk and JSONL."""

from __future__ import annotations

import json
from pathlib import Path

from ..jsonio import load_jsonl


def to_dataset_dict(splits: dict[str, list[dict]]):
    import datasets  # heavy; only needed here

    datasets.disable_progress_bars()
    return datasets.DatasetDict({name: datasets.Dataset.from_list(rows) for name, rows in splits.items()})


def save(splits: dict[str, list[dict]], out_dir: str | Path) -> Path:
    """Write ``out_dir`` as a DatasetDict (``save_to_disk``) plus one JSONL file per split."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    to_dataset_dict(splits).save_to_disk(str(out / "dataset"))
    for name, rows in splits.items():
        with open(out / f"{name}.jsonl", "w") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
    return out


def read_checked(path: str | Path, on_disagree: str = "drop") -> tuple[dict[str, list[dict]], dict]:
    """({split: rows}, {split: LoadReport}) from what ``save`` wrote (the folder, its ``dataset`` subfolder,
    or one JSONL file) or a file in the published format; every answer is re-derived by the solver and
    one it disagrees with is reported and dropped (``published.check_rows``). In a folder the JSONL files
    are read (what a person edits); the ``dataset`` copy only when there are none."""
    from .published import check_rows, looks_published, read_published

    p = Path(path)
    if p.is_file() and looks_published(p):
        rows, report = read_published(p, on_disagree=on_disagree)
        return {"test": rows}, {"test": report}
    if p.is_file() and p.suffix == ".jsonl":
        found = {p.stem: load_jsonl(p)}
    elif p.is_dir() and sorted(p.glob("*.jsonl")):
        found = {f.stem: load_jsonl(f) for f in sorted(p.glob("*.jsonl"))}
    else:
        folder = next((c for c in (p / "dataset", p) if (c / "dataset_dict.json").exists()), None)
        if folder is None:
            raise FileNotFoundError(f"no VRUBench data at {p}: expected a folder written by `vru-lens bench --out`, "
                                    "a .jsonl file, or a .json/.jsonl file in the published format")
        import datasets

        found = {name: [(None, row) for row in ds.to_list()] for name, ds in datasets.load_from_disk(str(folder)).items()}
    splits, reports = {}, {}
    for name, rows in found.items():
        try:
            splits[name], reports[name] = check_rows(rows, on_disagree)
        except ValueError as err:
            raise ValueError(f"{p} ({name}): {err}") from None
    return splits, reports


def load(path: str | Path) -> dict[str, list[dict]]:
    """``read_checked``'s splits; records the solver disagrees with are dropped, with a warning."""
    import warnings

    splits, reports = read_checked(path)
    for name, report in reports.items():
        if report.disagreements or report.unreadable:
            warnings.warn(f"{path} ({name}): {report.summary()}", stacklevel=2)
    return splits
