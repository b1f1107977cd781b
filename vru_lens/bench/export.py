"""VRUBench items <-> ``datasets.DatasetDict`` on disk and JSONL."""

from __future__ import annotations

import json
from pathlib import Path


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


def load(path: str | Path) -> dict[str, list[dict]]:
    """Load what ``save`` wrote (the folder, its ``dataset`` subfolder, or one JSONL file), or a file in the
    published format (``published.read_published``; records the solver disagrees with are dropped, with a warning)."""
    from .published import looks_published, read_published

    p = Path(path)
    if p.is_file() and looks_published(p):
        rows, report = read_published(p)
        if report.disagreements or report.unreadable:
            import warnings

            warnings.warn(f"{p}: {report.summary()}", stacklevel=2)
        return {"test": rows}
    if p.is_file() and p.suffix == ".jsonl":
        rows = [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
        return {p.stem: rows}
    for candidate in (p / "dataset", p):
        if (candidate / "dataset_dict.json").exists():
            import datasets

            dd = datasets.load_from_disk(str(candidate))
            return {name: ds.to_list() for name, ds in dd.items()}
    jsonls = sorted(p.glob("*.jsonl")) if p.is_dir() else []
    if jsonls:
        return {f.stem: [json.loads(line) for line in f.read_text().splitlines() if line.strip()] for f in jsonls}
    raise FileNotFoundError(f"no VRUBench data at {p}: expected a folder written by `vru-lens bench --out`, "
                            "a .jsonl file, or a .json/.jsonl file in the published format")
