"""Sweeps: config files, in-process vs Ray give equal cells, a killed sweep resumes without losing a cell."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from typer.testing import CliRunner

from vru_lens.cli import app
from vru_lens.organism.verify import auroc
from vru_lens.sweep import EXAMPLE, SweepConfig, cell_path, stability


def run_cli(*args):
    r = CliRunner().invoke(app, ["sweep", *args])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout.strip().splitlines()[-1])


def tops(summary):
    return [(c["settings"], c["top"]) for c in summary["cells"]]


@pytest.fixture(scope="module")
def in_process(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep-inproc")
    return out, run_cli("--example", "--out", str(out), "--json")


def test_example_cells_cover_the_grid_and_grade_planted_heads(in_process):
    out, summary = in_process
    config = SweepConfig.from_dict(EXAMPLE)
    assert [c["settings"] for c in summary["cells"]] == config.cells() and len(summary["cells"]) == 8
    for cell in summary["cells"]:
        stored = json.loads(cell_path(out, config.key(cell["settings"])).read_text())
        values = np.array(stored["values"])
        assert len(cell["top"]) == 5 and [l for l, h, s in cell["top"]] and cell["top"][0][2] == values.max()
        if cell["settings"]["model"] == "vru-organism":  # AUROC recomputed from the stored map and G
            assert cell["auroc"] == auroc(values, [tuple(h) for h in stored["circuit"]])
        else:
            assert cell["auroc"] is None
    # stability rows: pairs of cells differing only in seed, or only in method (2 models x 2 each)
    assert sorted(r["across"] for r in summary["stability"]) == ["method"] * 4 + ["seed"] * 4
    for name in ("cells.csv", "stability.csv", "figures.html", "sweep.json"):
        assert (out / name).exists()


def test_stability_against_scipy_and_a_hand_count():
    from scipy.stats import kendalltau

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(3, 4)), rng.normal(size=(3, 4))
    base = {"model": "m", "method": "path", "metric": "score", "pairs": 8, "style": "paper"}
    cells = [{"settings": {**base, "seed": 0}, "values": a.tolist()}, {"settings": {**base, "seed": 1}, "values": b.tolist()}]
    (row,) = stability(cells, k=3)
    assert row["across"] == "seed" and abs(row["kendall_tau"] - kendalltau(a.ravel(), b.ravel()).statistic) < 1e-12
    top = lambda x: set(np.argsort(-x.ravel())[:3])  # noqa: E731
    assert row["top3_overlap"] == len(top(a) & top(b))


def test_ray_gives_the_in_process_results(in_process, tmp_path):
    pytest.importorskip("ray")
    _, want = in_process
    got = run_cli("--example", "--out", str(tmp_path), "--ray", "--json")
    assert got["ran"] == 8
    assert [c["settings"] for c in got["cells"]] == [c["settings"] for c in want["cells"]]
    for g, w in zip(got["cells"], want["cells"]):
        assert [t[:2] for t in g["top"]] == [t[:2] for t in w["top"]]
        assert np.allclose([t[2] for t in g["top"]], [t[2] for t in w["top"]], atol=1e-6)


def test_a_killed_sweep_resumes_without_losing_a_finished_cell(in_process, tmp_path):
    _, want = in_process
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", "from vru_lens.cli import app; app()", "sweep", "--example",
                             "--out", str(tmp_path)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cells = tmp_path / "cells"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and len(list(cells.glob("*.json"))) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = {p.name: p.read_bytes() for p in cells.glob("*.json")}
    assert 2 <= len(finished) < 8, "the sweep should have been killed midway"
    got = run_cli("--example", "--out", str(tmp_path), "--json")
    assert got["cached"] == len(finished) and got["ran"] == 8 - len(finished)
    assert all((cells / name).read_bytes() == data for name, data in finished.items())  # untouched
    assert not [p for p in cells.iterdir() if not p.name.endswith(".json") or p.name.startswith(".")]
    assert [(s, [t[:2] for t in top]) for s, top in tops(got)] == [(s, [t[:2] for t in top]) for s, top in tops(want)]


def test_config_files_and_their_errors(tmp_path):
    toml = tmp_path / "grid.toml"
    toml.write_text('[grid]\nmodel = ["tiny-llama"]\nmethod = ["path", "ablation"]\nseed = [0, 1, 2]\n'
                    '[options]\ntop_k = 3\n')
    config = SweepConfig.from_file(toml)
    assert len(config.cells()) == 6 and config.options["top_k"] == 3
    assert len({config.key(s) for s in config.cells()}) == 6
    yaml = tmp_path / "grid.yaml"
    yaml.write_text("grid:\n  model: [tiny-llama]\n  method: [path, ablation]\n  seed: [0, 1, 2]\noptions:\n  top_k: 3\n")
    assert SweepConfig.from_file(yaml).cells() == config.cells()
    for text, message in (('[grid]\nlayer = [1]\n', "unknown grid axes"), ('[grid]\nmethod = ["magic"]\n', "not among"),
                          ('[grid]\npairs = [1]\n', "at least 2"), ('[opts]\n', "only")):
        toml.write_text(text)
        with pytest.raises(ValueError, match=message):
            SweepConfig.from_file(toml)
    r = CliRunner().invoke(app, ["sweep", str(tmp_path / "missing.toml")])
    assert r.exit_code == 2 and "no sweep file" in r.output
