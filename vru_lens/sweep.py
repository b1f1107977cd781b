"""Sweeps: head rankings over a grid of models, methods, metrics, pair counts, styles and seeds.

A sweep is a TOML (or YAML) file::

    [grid]                       # every combination is one cell
    model = ["vru-organism", "smollm2-135m-instruct"]
    method = ["path", "attribution"]   # patching.METHODS
    metric = ["score"]                 # "score" (normalised) or "ld_effect" (logits), see HeadScores
    pairs = [32]                       # counterfactual pairs ranked on
    style = ["paper"]                  # VRUBench style of the pairs
    seed = [0, 1]                      # which items are drawn
    [options]                          # the same for every cell
    top_k = 10
    batch_size = 8

Each cell is stored as ``cells/<key>.json`` under the output folder, ``key`` a hash
of everything that shapes its result, written to a temporary file and renamed,
so a killed sweep loses no finished cell and a restart runs only the missing ones.
``gather`` joins the cells into one table, rank stability across seeds and across
methods (Kendall tau over all heads, top-k overlap) and, for models with a known circuit
heads (``models.organisms``), each cell's AUROC. Cells run in this process or as
Ray tasks (``run_sweep(..., ray_address=...)``), with the same results.

A sweep may rank on a task of the user's own instead of VRUBench items: a top-level ``task`` entry names a
JSONL file of prompt pairs, one ``{"clean", "corrupt", "clean_answer", "corrupt_answer"}`` object a line
(prompts: text or token ids; answers: text or a token id; ``PairTokens.from_prompts``)::

    task = "pairs.jsonl"           # relative to the sweep file; or [task] file = "...", answer_token = "first"
    [grid]
    model = ["tiny-llama"]
    method = ["path", "attribution"]
    pairs = [16]                   # optional: default, every pair of the file
    seed = [0, 1]                  # which pairs are drawn when pairs < the file's count

The file is read and checked when the config is made, and tokenized for every model of the grid before the
first cell runs; a bad line is refused with one error line naming it. The ``style`` axis is then ``task``
and ``items_per_pair`` is unused; no AUROC is computed (a known circuit is the organism's on VRUBench, not on
a task of the user's own). The file's sha256 is part of every cell's key.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from .results import cache_key, write_json_atomic

AXES = ("model", "method", "metric", "pairs", "style", "seed")
METRICS = ("score", "ld_effect")
DEFAULT_GRID = {"model": ["tiny-llama"], "method": ["path"], "metric": ["score"], "pairs": [16], "style": ["paper"],
                "seed": [0]}
DEFAULT_OPTIONS = {"top_k": 10, "batch_size": 8, "items_per_pair": 4, "chat": None, "threads": 1}  # chat None: the model's kind
RESULT_OPTIONS = ("batch_size", "items_per_pair", "chat")  # options that can change a cell's numbers
FORMAT = 1  # bump when a cell's content changes meaning
TASK_KEYS = ("clean", "corrupt", "clean_answer", "corrupt_answer")  # one JSONL line of a task
TASK_OPTIONS = ("file", "answer_token")

# The built-in example: tiny models, one of them an organism with a known circuit, seconds per cell.
EXAMPLE = {"grid": {"model": ["tiny-llama", "vru-organism"], "method": ["path", "attribution"], "metric": ["score"],
                    "pairs": [8], "style": ["paper"], "seed": [0, 1]},
           "options": {"top_k": 5}}


def _is_ids(value) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(t, int) and not isinstance(t, bool) and t >= 0
                                                          for t in value)


def read_task(path, answer_token: str = "single") -> dict:
    """A task's JSONL of prompt pairs, checked line by line: {"file", "sha256", "answer_token", "pairs": [...],
    "lines": [line number of each pair]}. The first bad line is refused with one error line naming it."""
    from .tokens import ANSWER_TOKENS

    path = Path(path)
    if answer_token not in ANSWER_TOKENS:
        raise ValueError(f"task.answer_token must be one of {', '.join(ANSWER_TOKENS)}, got {answer_token!r}")
    if not path.exists():
        raise FileNotFoundError(f"no task file {path} (a JSONL of prompt pairs, one object a line)")
    raw = path.read_bytes()
    pairs, lines = [], []
    for number, line in enumerate(raw.decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"task {path.name} line {number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{where}: not JSON ({err.msg} at column {err.colno})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{where}: a line is one JSON object with keys {', '.join(TASK_KEYS)}, got "
                             f"{type(row).__name__}")
        missing, extra = [k for k in TASK_KEYS if k not in row], sorted(set(row) - set(TASK_KEYS))
        if missing or extra:
            raise ValueError(f"{where}: " + "; ".join(
                ([f"missing {', '.join(missing)}"] if missing else []) + ([f"unknown keys {', '.join(extra)}"] if extra else []))
                + f" (a line has exactly {', '.join(TASK_KEYS)})")
        for k in ("clean", "corrupt"):
            if not ((isinstance(row[k], str) and row[k].strip()) or _is_ids(row[k])):
                raise ValueError(f"{where}: {k} must be non-empty text or a list of token ids, got {str(row[k])[:60]!r}")
        for k in ("clean_answer", "corrupt_answer"):
            v = row[k]
            if not ((isinstance(v, str) and v) or (isinstance(v, int) and not isinstance(v, bool) and v >= 0)):
                raise ValueError(f"{where}: {k} must be non-empty text or a token id, got {v!r}")
        if isinstance(row["clean"], str) != isinstance(row["corrupt"], str):
            raise ValueError(f"{where}: clean and corrupt must both be text or both token ids")
        if row["clean_answer"] == row["corrupt_answer"]:
            raise ValueError(f"{where}: clean_answer and corrupt_answer are the same ({row['clean_answer']!r})")
        pairs.append({k: row[k] for k in TASK_KEYS})
        lines.append(number)
    if len(pairs) < 2:
        raise ValueError(f"task {path.name}: {len(pairs)} prompt pair(s); a sweep ranks on at least 2")
    return {"file": str(path), "sha256": hashlib.sha256(raw).hexdigest(), "answer_token": answer_token,
            "pairs": pairs, "lines": lines}


def task_pairs(tokenizer, task: dict, n: int, seed: int, chat: bool):
    """(PairTokens of ``n`` of the task's pairs, their line numbers): every pair in file order when ``n`` is the
    file's count, else ``n`` drawn by ``seed`` (kept in file order). A pair the tokenizer refuses (unequal token
    lengths, a multi-token answer) is named by its line."""
    import random

    from .tokens import PairTokens

    total = len(task["pairs"])
    if n > total:
        raise ValueError(f"task {Path(task['file']).name}: pairs {n} asked for, the file has {total}")
    idx = list(range(total)) if n == total else sorted(random.Random(seed).sample(range(total), n))
    rows, lines = [task["pairs"][i] for i in idx], [task["lines"][i] for i in idx]
    text = isinstance(rows[0]["clean"], str)
    if any(isinstance(r["clean"], str) != text for r in rows):
        first = next(line for r, line in zip(rows, lines) if isinstance(r["clean"], str) != text)
        raise ValueError(f"task {Path(task['file']).name} line {first}: prompts are token ids on some lines and text "
                         "on others; use one kind in a file")
    try:
        pt = PairTokens.from_prompts(tokenizer, *([r[k] for r in rows] for k in TASK_KEYS),
                                     chat=bool(chat) and text, answer_token=task["answer_token"])
    except ValueError as err:
        m = re.match(r"pair (\d+)(:?) ?(.*)", str(err), re.S)
        if not m:
            raise
        name = Path(task["file"]).name
        rest = m.group(3) if m.group(2) else f"the pair {m.group(3)}"
        raise ValueError(f"task {name} line {lines[int(m.group(1))]}: {rest}".replace("\n", " ")) from None
    return pt, lines


@dataclass
class SweepConfig:
    grid: dict = field(default_factory=lambda: dict(DEFAULT_GRID))
    options: dict = field(default_factory=lambda: dict(DEFAULT_OPTIONS))
    task: dict | None = None  # read_task's record, or {"file": path, "answer_token": ...} to be read

    def __post_init__(self):
        if self.task is not None:
            if isinstance(self.task, (str, Path)):
                self.task = {"file": str(self.task)}
            if not isinstance(self.task, dict) or "file" not in self.task:
                raise ValueError('task names a JSONL file of prompt pairs: task = "pairs.jsonl" or [task] file = "..."')
            unknown = set(self.task) - set(TASK_OPTIONS) - {"sha256", "pairs", "lines"}
            if unknown:
                raise ValueError(f"unknown task entries {sorted(unknown)}; a task has {', '.join(TASK_OPTIONS)}")
            if "pairs" not in self.task:
                self.task = read_task(self.task["file"], self.task.get("answer_token", "single"))
            if self.grid.get("style", ["task"]) not in (["task"], "task"):
                raise ValueError("grid.style is VRUBench's; with a task the pairs are the file's (drop grid.style)")
            self.grid = {**self.grid, "style": ["task"]}
            self.grid.setdefault("pairs", [len(self.task["pairs"])])
        unknown = set(self.grid) - set(AXES)
        if unknown:
            raise ValueError(f"unknown grid axes {sorted(unknown)}; the axes are {', '.join(AXES)}")
        unknown = set(self.options) - set(DEFAULT_OPTIONS)
        if unknown:
            raise ValueError(f"unknown options {sorted(unknown)}; the options are {', '.join(DEFAULT_OPTIONS)}")
        self.grid = {**DEFAULT_GRID, **{k: v if isinstance(v, list) else [v] for k, v in self.grid.items()}}
        self.options = {**DEFAULT_OPTIONS, **self.options}
        from .patching.rank import METHODS

        styles = ("task",) if self.task else ("paper", "story")
        for axis, allowed in (("method", METHODS), ("metric", METRICS), ("style", styles)):
            bad = [v for v in self.grid[axis] if v not in allowed]
            if bad:
                raise ValueError(f"grid.{axis}: {bad} not among {', '.join(allowed)}")
        for axis in ("pairs", "seed"):
            if not all(isinstance(v, int) and v >= (2 if axis == "pairs" else 0) for v in self.grid[axis]):
                raise ValueError(f"grid.{axis} must be whole numbers (pairs at least 2), got {self.grid[axis]}")
        if any(not v for v in self.grid.values()):
            raise ValueError("every grid axis needs at least one value")
        if self.task and max(self.grid["pairs"]) > len(self.task["pairs"]):
            raise ValueError(f"grid.pairs {max(self.grid['pairs'])} is more than the task's "
                             f"{len(self.task['pairs'])} prompt pairs ({Path(self.task['file']).name})")

    @classmethod
    def from_dict(cls, data: dict, base: Path | None = None) -> "SweepConfig":
        """``base``: the folder a relative task file is read from (the sweep file's; default the working one)."""
        extra = set(data) - {"grid", "options", "task"}
        if extra:
            raise ValueError(f"a sweep file has [grid] and [options] tables and a task entry only, not {sorted(extra)}")
        task = data.get("task")
        if task is not None:
            task = {"file": task} if isinstance(task, (str, Path)) else dict(task) if isinstance(task, dict) else task
            if isinstance(task, dict) and "file" in task and base is not None and not Path(task["file"]).is_absolute():
                task["file"] = str(Path(base) / task["file"])
        return cls(dict(data.get("grid", {})), dict(data.get("options", {})), task)

    @classmethod
    def from_file(cls, path) -> "SweepConfig":
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"no sweep file {path}")
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(path.read_text()) or {}
        elif path.suffix == ".toml":
            import tomllib

            data = tomllib.loads(path.read_text())
        else:
            raise ValueError(f"{path}: a sweep file ends in .toml (or .yaml/.yml)")
        return cls.from_dict(data, base=path.parent)

    def cells(self) -> list[dict]:
        """Every combination of the grid, in a fixed order."""
        return [dict(zip(AXES, values)) for values in itertools.product(*(self.grid[a] for a in AXES))]

    def key(self, settings: dict) -> str:
        """Hash of everything that shapes a cell's result."""
        shaping = {"settings": settings, "options": {k: self.options[k] for k in RESULT_OPTIONS}, "format": FORMAT}
        if self.task:
            shaping["task"] = {"sha256": self.task["sha256"], "answer_token": self.task["answer_token"]}
        return cache_key(shaping)


# ---------------------------------------------------------------- one cell
_MODELS: dict = {}  # loaded models, reused by the cells a process runs


def _model(name: str, device):
    if (name, device) not in _MODELS:
        from .models import load_model

        _MODELS[(name, device)] = load_model(name, device=device)
    return _MODELS[(name, device)]


def run_cell(settings: dict, options: dict, device=None, task: dict | None = None) -> dict:
    """Rank every head for one cell (on ``task``'s prompt pairs if given, ``read_task``); returns the cell record
    (JSON-ready)."""
    import numpy as np
    import torch

    from .bench import PAIRABLE, PAIRABLE_STORY, make_items
    from .heads import top_heads
    from .models.organisms import known_circuit
    from .organism.verify import auroc
    from .patching.rank import rank_heads
    from .tokens import chat_for, tokenize_pairs

    torch.set_num_threads(int(options["threads"]))
    t0 = time.perf_counter()
    model = _model(settings["model"], device)
    chat = chat_for(model, options["chat"])
    if task is not None:
        pt, lines = task_pairs(model.tokenizer, task, settings["pairs"], settings["seed"], chat)
        chat = pt.pairs.chat
    else:
        cfg = PAIRABLE_STORY if settings["style"] == "story" else PAIRABLE
        items = make_items(settings["pairs"] * options["items_per_pair"], settings["seed"], cfg=cfg)
        pt = tokenize_pairs(model.tokenizer, items, chat=chat, max_pairs=settings["pairs"])
    hs = rank_heads(model, pt, settings["method"], batch_size=options["batch_size"], n_boot=0, progress=False)
    values = np.asarray(hs.scores if settings["metric"] == "score" else hs.ld_effect, dtype=float)
    top = [[l, h, float(values[l, h])] for l, h in top_heads(values, options["top_k"])]
    circuit = None if task is not None else known_circuit(settings["model"])
    record = {"settings": settings, "chat": chat, "top": top, "values": values.tolist(), "n_pairs": len(pt),
              "circuit": [list(h) for h in circuit] if circuit else None,
              "auroc": auroc(values, circuit) if circuit else None,
              "seconds": round(time.perf_counter() - t0, 3), "device": str(model.cfg.device)}
    if task is not None:
        record["task"] = {"file": Path(task["file"]).name, "sha256": task["sha256"], "lines": lines}
    return record


def check_task(config: SweepConfig) -> None:
    """Tokenize every pair of the task for every model of the grid (the first bad line refused by name) before
    any cell runs. The models are loaded here (in-process cells reuse them)."""
    from .tokens import chat_for

    for name in config.grid["model"]:
        tokenizer = _model(name, None).tokenizer
        chat = chat_for(_model(name, None), config.options["chat"])
        task_pairs(tokenizer, config.task, len(config.task["pairs"]), 0, chat)  # a cell's pairs are a subset


# ---------------------------------------------------------------- storage
def cell_path(out: Path, key: str) -> Path:
    return Path(out) / "cells" / f"{key}.json"


def read_cell(path: Path) -> dict | None:
    from .jsonio import load_json

    try:
        return load_json(path)
    except (FileNotFoundError, ValueError):
        return None


# ---------------------------------------------------------------- running
def run_sweep(config: SweepConfig, out, ray_address: str | None = None, use_ray: bool = False,
              progress: bool = True) -> dict:
    """Run the missing cells of ``config`` into ``out``; returns {"cells": [...], "ran": n, "cached": n}.

    ``use_ray``: every missing cell is a Ray task (``ray_address`` an existing cluster; None starts a
    local one with one CPU and no dashboard); one GPU per cell where the cluster has GPUs.
    """
    out = Path(out)
    todo, done = [], {}
    for settings in config.cells():
        key = config.key(settings)
        cell = read_cell(cell_path(out, key))
        if cell is not None and cell.get("settings") == settings:
            done[key] = cell
        else:
            todo.append((key, settings))
    say = print if progress else (lambda *a, **k: None)
    if todo and config.task:
        check_task(config)
    say(f"sweep: {len(done) + len(todo)} cells, {len(done)} already done, {len(todo)} to run"
        f"{' on Ray' if use_ray and todo else ''}", flush=True)

    def finish(key, record):
        record = {**record, "key": key}
        write_json_atomic(cell_path(out, key), record)
        done[key] = record
        say(f"  done {key}: {record['settings']} ({record['seconds']} s)", flush=True)

    if todo and use_ray:
        _run_on_ray(config, todo, ray_address, finish)
    else:
        for key, settings in todo:
            finish(key, run_cell(settings, config.options, task=config.task))
    cells = [done[config.key(s)] for s in config.cells()]
    return {"cells": cells, "ran": len(todo), "cached": len(cells) - len(todo)}


def _run_on_ray(config: SweepConfig, todo, address, finish) -> None:
    import ray

    started = not ray.is_initialized()
    if started:
        env = {k: os.environ[k] for k in ("PYTHONPATH", "VRU_LENS_CACHE") if k in os.environ}
        kwargs = {"include_dashboard": False, "log_to_driver": False, "runtime_env": {"env_vars": env}}
        if address:
            ray.init(address=address, **kwargs)
        else:
            ray.init(num_cpus=1, num_gpus=0 if not _has_cuda() else None, **kwargs)
    try:
        gpus = 1 if ray.cluster_resources().get("GPU", 0) > 0 else 0
        task = ray.remote(num_cpus=1, num_gpus=gpus)(_ray_cell)
        pending = {task.remote(settings, config.options, config.task): key for key, settings in todo}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                finish(pending.pop(ref), ray.get(ref))
    finally:
        if started:
            ray.shutdown()


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _ray_cell(settings: dict, options: dict, task: dict | None = None) -> dict:
    """A cell inside a Ray worker: on the GPU Ray assigned, if any."""
    import torch

    return run_cell(settings, options, device="cuda" if torch.cuda.is_available() else "cpu", task=task)


# ---------------------------------------------------------------- gathering
def _pairs_of(cells, vary: str):
    """Pairs of cells that differ only in ``vary`` (and not in the model)."""
    groups: dict = {}
    for c in cells:
        rest = tuple((a, c["settings"][a]) for a in AXES if a != vary)
        groups.setdefault(rest, []).append(c)
    for rest, members in groups.items():
        for a, b in itertools.combinations(members, 2):
            yield dict(rest), a, b


def stability(cells, k: int) -> list[dict]:
    """Kendall tau (all heads) and top-k overlap between cells differing only in seed, or only in method."""
    import numpy as np

    from .patching.attribution import agreement
    from .patching.scores import kendall_tau

    rows = []
    for vary in ("seed", "method"):
        for rest, a, b in _pairs_of(cells, vary):
            x, y = np.asarray(a["values"], dtype=float), np.asarray(b["values"], dtype=float)
            ok = ~(np.isnan(x) | np.isnan(y))
            rows.append({"across": vary, **rest, "a": a["settings"][vary], "b": b["settings"][vary],
                         "kendall_tau": kendall_tau(x[ok], y[ok]),
                         f"top{k}_overlap": agreement(np.nan_to_num(x, nan=-np.inf), np.nan_to_num(y, nan=-np.inf), k)[f"top{k}_overlap"],
                         "k": k})
    return rows


def gather(result: dict, out, k: int) -> dict:
    """One table of cells, the stability rows and the figures, written under ``out``."""
    import pandas as pd

    out = Path(out)
    cells = result["cells"]
    table = pd.DataFrame([{**c["settings"], "n_pairs": c["n_pairs"], "auroc": c["auroc"], "seconds": c["seconds"],
                           "top": " ".join(f"L{l}H{h}" for l, h, _ in c["top"]), "key": c["key"]} for c in cells])
    stab = pd.DataFrame(stability(cells, k))
    table.to_csv(out / "cells.csv", index=False)
    stab.to_csv(out / "stability.csv", index=False)
    figures(table, stab, out / "figures.html")
    summary = {"cells": [{k2: c[k2] for k2 in ("settings", "top", "auroc", "n_pairs", "key")} for c in cells],
               "stability": stab.to_dict("records"), "ran": result["ran"], "cached": result["cached"], "out": str(out)}
    write_json_atomic(out / "sweep.json", summary)
    return summary


def figures(table, stab, path: Path) -> None:
    """Kendall tau across seeds and methods, and AUROC per method where the circuit is known, in one HTML page."""
    import plotly.express as px

    parts = []
    if len(stab):
        fig = px.strip(stab, x="across", y="kendall_tau", color="model", hover_data=list(stab.columns),
                       title="Rank stability: Kendall tau between cells differing only in seed or in method")
        parts.append(fig.to_html(full_html=False, include_plotlyjs="cdn"))
    graded = table.dropna(subset=["auroc"]) if "auroc" in table else table.iloc[:0]
    if len(graded):
        fig = px.strip(graded, x="method", y="auroc", color="model", hover_data=list(graded.columns),
                       title="AUROC of each method against the known circuit (0.5 = chance)")
        fig.add_hline(y=0.5, line_dash="dot")
        parts.append(fig.to_html(full_html=False, include_plotlyjs="cdn" if not parts else False))
    path.write_text("<html><body>" + "\n".join(parts or ["<p>no figures: a single cell</p>"]) + "</body></html>")
