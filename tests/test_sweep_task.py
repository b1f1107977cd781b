"""A sweep on a task of the user's own: a JSONL of prompt pairs named by the config's ``task`` entry."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from vru_lens.bench import PAIRABLE, make_items
from vru_lens.cli import app
from vru_lens.models import tiny_tokenizer
from vru_lens.sweep import SweepConfig, cell_path, run_sweep
from vru_lens.tokens import render, tokenize_pairs

torch.set_num_threads(1)


def vru_lines(n=8, seed=0):
    """The VRUBench pairs a sweep cell (pairs n, seed, paper, plain) ranks on, as JSONL lines of their prompts."""
    tok = tiny_tokenizer()
    p = tokenize_pairs(tok, make_items(n * 4, seed, PAIRABLE), chat=False, max_pairs=n).pairs
    return [json.dumps({"clean": render(c, tok), "corrupt": render(x, tok), "clean_answer": " " + a,
                        "corrupt_answer": " " + b})
            for c, x, a, b in zip(p.clean_prompts, p.corrupt_prompts, p.clean_answers, p.corrupt_answers)]


def write(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_task_of_vru_prompts_ranks_as_the_vrubench_cell(tmp_path):
    """The same pairs reached two ways (VRUBench items; their rendered prompts in a JSONL) give the same map."""
    write(tmp_path / "pairs.jsonl", vru_lines())
    (tmp_path / "task.toml").write_text('task = {file = "pairs.jsonl", answer_token = "first"}\n'
                                        '[grid]\nmodel = ["tiny-llama"]\nmethod = ["path", "attribution"]\n'
                                        '[options]\ntop_k = 3\nchat = false\n')
    config = SweepConfig.from_file(tmp_path / "task.toml")  # the file is found beside the sweep file
    assert config.grid["style"] == ["task"] and config.grid["pairs"] == [8] and len(config.cells()) == 2
    got = run_sweep(config, tmp_path / "task", progress=False)
    ref = run_sweep(SweepConfig({"model": ["tiny-llama"], "method": ["path", "attribution"], "pairs": [8]},
                                {"top_k": 3, "chat": False}), tmp_path / "vru", progress=False)
    for g, r in zip(got["cells"], ref["cells"]):
        assert g["settings"]["method"] == r["settings"]["method"] and g["n_pairs"] == r["n_pairs"] == 8
        assert np.allclose(g["values"], r["values"], atol=1e-6, equal_nan=True)
        assert g["task"]["lines"] == list(range(1, 9)) and g["auroc"] is None and not g["chat"]
    again = run_sweep(config, tmp_path / "task", progress=False)
    assert again["cached"] == 2 and again["ran"] == 0


def test_pairs_and_seeds_draw_from_the_file_and_the_file_shapes_the_key(tmp_path):
    path = write(tmp_path / "pairs.jsonl", vru_lines())
    data = {"task": {"file": str(path), "answer_token": "first"},
            "grid": {"model": ["tiny-llama"], "method": ["attribution"], "pairs": [4], "seed": [0, 1]},
            "options": {"chat": False}}
    config = SweepConfig.from_dict(data)
    cells = run_sweep(config, tmp_path / "out", progress=False)["cells"]
    lines = [c["task"]["lines"] for c in cells]
    assert all(len(x) == 4 and x == sorted(x) and set(x) <= set(range(1, 9)) for x in lines) and lines[0] != lines[1]
    keys = [config.key(s) for s in config.cells()]
    write(path, vru_lines()[::-1])  # the same pairs in another order: another file, other keys
    assert [SweepConfig.from_dict(data).key(s) for s in config.cells()] != keys
    with pytest.raises(ValueError, match="more than the task's 8 prompt pairs"):
        SweepConfig.from_dict({**data, "grid": {**data["grid"], "pairs": [9]}})
    with pytest.raises(ValueError, match="grid.style is VRUBench's"):
        SweepConfig.from_dict({**data, "grid": {**data["grid"], "style": ["paper"]}})


@pytest.mark.parametrize("bad, message", [
    ("{not json", r"task pairs.jsonl line 3: not JSON"),
    ('{"clean": "a", "corrupt": "b", "clean_answer": " x"}', r"line 3: missing corrupt_answer \(a line has exactly"),
    ('{"clean": "a", "corrupt": "b", "clean_answer": " x", "corrupt_answer": " y", "note": 1}', r"line 3: unknown keys note"),
    ('{"clean": "", "corrupt": "b", "clean_answer": " x", "corrupt_answer": " y"}', r"line 3: clean must be non-empty"),
    ('{"clean": "a", "corrupt": "b", "clean_answer": " x", "corrupt_answer": " x"}', r"line 3: clean_answer and corrupt_answer are the same"),
])
def test_a_malformed_line_is_refused_by_number_when_the_config_is_read(tmp_path, bad, message):
    good = vru_lines(2)
    write(tmp_path / "pairs.jsonl", [good[0], "", bad, good[1]])  # a blank line still counts
    (tmp_path / "task.toml").write_text('task = "pairs.jsonl"\n[grid]\nmodel = ["tiny-llama"]\n')
    with pytest.raises(ValueError, match=message):
        SweepConfig.from_file(tmp_path / "task.toml")
    r = CliRunner().invoke(app, ["sweep", str(tmp_path / "task.toml"), "--out", str(tmp_path / "out")])
    assert r.exit_code == 2 and "line 3" in r.output and not (tmp_path / "out").exists()


def test_a_pair_the_tokenizer_refuses_is_named_by_its_line_before_any_cell_runs(tmp_path):
    """Unequal token lengths only show once tokenized: every model's tokenizer checks every pair first."""
    good = vru_lines(3)
    uneven = json.dumps({"clean": "You see a lamp. A", "corrupt": "You see a lamp and then a door. A",
                         "clean_answer": " lamp", "corrupt_answer": " door"})
    write(tmp_path / "pairs.jsonl", [good[0], good[1], uneven, good[2]])
    (tmp_path / "task.toml").write_text('task = {file = "pairs.jsonl", answer_token = "first"}\n'
                                        '[grid]\nmodel = ["tiny-llama"]\nmethod = ["attribution"]\npairs = [2]\n'
                                        'seed = [0, 1, 2]\n[options]\nchat = false\n')
    config = SweepConfig.from_file(tmp_path / "task.toml")
    with pytest.raises(ValueError, match=r"^task pairs.jsonl line 3: the pair has unequal token lengths"):
        run_sweep(config, tmp_path / "out", progress=False)
    assert not any(cell_path(tmp_path / "out", config.key(s)).exists() for s in config.cells())
    r = CliRunner().invoke(app, ["sweep", str(tmp_path / "task.toml")])
    assert r.exit_code == 2 and "line 3: the pair has unequal token lengths" in r.output
    assert len(r.output.strip().splitlines()) == 1, r.output
