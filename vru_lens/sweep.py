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
"""

from __future__ import annotations

import itertools
import os
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

# The built-in example: tiny models, one of them an organism with a known circuit, seconds per cell.
EXAMPLE = {"grid": {"model": ["tiny-llama", "vru-organism"], "method": ["path", "attribution"], "metric": ["score"],
                    "pairs": [8], "style": ["paper"], "seed": [0, 1]},
           "options": {"top_k": 5}}


@dataclass
class SweepConfig:
    grid: dict = field(default_factory=lambda: dict(DEFAULT_GRID))
    options: dict = field(default_factory=lambda: dict(DEFAULT_OPTIONS))

    def __post_init__(self):
        unknown = set(self.grid) - set(AXES)
        if unknown:
            raise ValueError(f"unknown grid axes {sorted(unknown)}; the axes are {', '.join(AXES)}")
        unknown = set(self.options) - set(DEFAULT_OPTIONS)
        if unknown:
            raise ValueError(f"unknown options {sorted(unknown)}; the options are {', '.join(DEFAULT_OPTIONS)}")
        self.grid = {**DEFAULT_GRID, **{k: v if isinstance(v, list) else [v] for k, v in self.grid.items()}}
        self.options = {**DEFAULT_OPTIONS, **self.options}
        from .patching.rank import METHODS

        for axis, allowed in (("method", METHODS), ("metric", METRICS), ("style", ("paper", "story"))):
            bad = [v for v in self.grid[axis] if v not in allowed]
            if bad:
                raise ValueError(f"grid.{axis}: {bad} not among {', '.join(allowed)}")
        for axis in ("pairs", "seed"):
            if not all(isinstance(v, int) and v >= (2 if axis == "pairs" else 0) for v in self.grid[axis]):
                raise ValueError(f"grid.{axis} must be whole numbers (pairs at least 2), got {self.grid[axis]}")
        if any(not v for v in self.grid.values()):
            raise ValueError("every grid axis needs at least one value")

    @classmethod
    def from_dict(cls, data: dict) -> "SweepConfig":
        extra = set(data) - {"grid", "options"}
        if extra:
            raise ValueError(f"a sweep file has [grid] and [options] tables only, not {sorted(extra)}")
        return cls(dict(data.get("grid", {})), dict(data.get("options", {})))

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
        return cls.from_dict(data)

    def cells(self) -> list[dict]:
        """Every combination of the grid, in a fixed order."""
        return [dict(zip(AXES, values)) for values in itertools.product(*(self.grid[a] for a in AXES))]

    def key(self, settings: dict) -> str:
        """Hash of everything that shapes a cell's result."""
        shaping = {"settings": settings, "options": {k: self.options[k] for k in RESULT_OPTIONS}, "format": FORMAT}
        return cache_key(shaping)


# ---------------------------------------------------------------- one cell
_MODELS: dict = {}  # loaded models, reused by the cells a process runs


def _model(name: str, device):
    if (name, device) not in _MODELS:
        from .models import load_model

        _MODELS[(name, device)] = load_model(name, device=device)
    return _MODELS[(name, device)]


def run_cell(settings: dict, options: dict, device=None) -> dict:
    """Rank every head for one cell; returns the cell record (JSON-ready)."""
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
    cfg = PAIRABLE_STORY if settings["style"] == "story" else PAIRABLE
    items = make_items(settings["pairs"] * options["items_per_pair"], settings["seed"], cfg=cfg)
    chat = chat_for(model, options["chat"])
    pt = tokenize_pairs(model.tokenizer, items, chat=chat, max_pairs=settings["pairs"])
    hs = rank_heads(model, pt, settings["method"], batch_size=options["batch_size"], n_boot=0, progress=False)
    values = np.asarray(hs.scores if settings["metric"] == "score" else hs.ld_effect, dtype=float)
    top = [[l, h, float(values[l, h])] for l, h in top_heads(values, options["top_k"])]
    circuit = known_circuit(settings["model"])
    return {"settings": settings, "chat": chat, "top": top, "values": values.tolist(), "n_pairs": len(pt),
            "circuit": [list(h) for h in circuit] if circuit else None,
            "auroc": auroc(values, circuit) if circuit else None,
            "seconds": round(time.perf_counter() - t0, 3), "device": str(model.cfg.device)}


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
            finish(key, run_cell(settings, config.options))
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
        pending = {task.remote(settings, config.options): key for key, settings in todo}
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


def _ray_cell(settings: dict, options: dict) -> dict:
    """A cell inside a Ray worker: on the GPU Ray assigned, if any."""
    import torch

    return run_cell(settings, options, device="cuda" if torch.cuda.is_available() else "cpu")


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
    from .patching.scores import _kendall_tau

    rows = []
    for vary in ("seed", "method"):
        for rest, a, b in _pairs_of(cells, vary):
            x, y = np.asarray(a["values"], dtype=float), np.asarray(b["values"], dtype=float)
            ok = ~(np.isnan(x) | np.isnan(y))
            rows.append({"across": vary, **rest, "a": a["settings"][vary], "b": b["settings"][vary],
                         "kendall_tau": _kendall_tau(x[ok], y[ok]),
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
