"""The report's comparison of a quick run with the full measurement an organism's card keeps."""

from __future__ import annotations

import json

import pytest

from vru_lens.models.organisms import organism_card
from vru_lens.report import _cmp_row, against_full_run
from vru_lens.results import wilson_interval as _wilson


def test_wilson_interval_known_values():
    lo, hi = _wilson(0.5, 100)
    assert lo == pytest.approx(0.4038, abs=1e-4) and hi == pytest.approx(0.5962, abs=1e-4)
    lo, hi = _wilson(0.0, 20)  # the interval of 0/20 is not the point 0
    assert lo == pytest.approx(0.0, abs=1e-12) and hi == pytest.approx(0.1611, abs=1e-4)


def test_rows_agree_when_intervals_overlap_and_say_why_when_not():
    assert _cmp_row("a", 0.5, (0.4, 0.6), 0.62, (0.58, 0.66), "n differs")[3] == "yes"
    row = _cmp_row("a", 0.5, (0.4, 0.55), 0.62, (0.58, 0.66), "n differs")
    assert row[3] == "<b>no</b>" and row[4] == "n differs"
    assert _cmp_row("kl", 0.155, None, 0.078, (0.071, 0.084), "steps differ", fmt=str)[3] == "<b>no</b>"
    assert _cmp_row("kl", 0.08, None, 0.078, (0.071, 0.084), "steps differ", fmt=str)[3] == "yes"


class _Eval:
    def __init__(self, acc, n):
        self.s = {"n": n, "candidate_accuracy": acc}

    def summary(self):
        return self.s


def test_quick_accuracy_is_compared_with_the_card():
    card = organism_card("vru-organism")["measured"]
    near = against_full_run([{"model": "vru-organism", "results": {"eval": _Eval(card["accuracy"], 200)},
                              "config": {}}])
    far = against_full_run([{"model": "vru-organism", "results": {"eval": _Eval(card["accuracy"] - 0.2, 200)},
                             "config": {}}])
    assert ">yes<" in near and "no</b>" not in near
    assert "no</b>" in far and f"{card['n_items']} in the full run" in far
    assert against_full_run([{"model": "tiny-llama", "results": {"eval": _Eval(0.5, 10)}, "config": {}}]) == ""


class _Probe:
    def __init__(self, accuracy, rows):
        self.s = {"layers": list(range(len(accuracy))), "accuracy": accuracy, "best_layer": len(accuracy) - 1,
                  "n_test_rows": rows, "n_train_rows": 4 * rows}

    def summary(self):
        return self.s


def test_heading_probe_is_compared_interval_to_interval():
    """The card keeps the full probe's test rows, so its accuracy carries a Wilson interval too: the demo's
    94.0% on 368 rows [91.1, 96.0] and the card's 96.1% on 1,753 rows [95.0, 96.9] overlap."""
    card = organism_card("vru-organism")["heading_probe"]
    assert card["n_test_rows"] == 1753
    quick = [0.0, 0.0, 0.0, 0.940]
    html = against_full_run([{"model": "vru-organism", "results": {"probe": _Probe(quick, 368)}, "config": {}}])
    lo, hi = _wilson(card["accuracy"][3], card["n_test_rows"])
    assert f"[{lo:.1%}, {hi:.1%}]" in html and ">yes<" in html
    far = against_full_run([{"model": "vru-organism", "results": {"probe": _Probe([0, 0, 0, 0.90], 368)},
                             "config": {}}])
    assert "no</b>" in far


def test_the_deficit_card_keeps_the_full_run_the_report_reads():
    full = organism_card("vru-organism-deficit")["full_run"]
    assert {"top", "random", "bottom", "other_task", "lora", "full"} <= set(full["repair"]["arms"])
    top = full["repair"]["arms"]["top"]
    lo, hi = top["vru_acc"]["ci"]
    assert lo <= top["vru_acc"]["mean"] <= hi and "list_kl" in top and full["rankings"]["path"]["low"] <= 1.0
    assert full["command"].startswith("vru-lens organism deficit-study") and "--into-card" in full["command"]
    acc = organism_card("vru-organism-deficit")["deficit"]["accuracy"]
    html = against_full_run([{"model": "vru-organism", "results": {}, "base": "vru-organism-deficit",
                              "base_results": {"eval": _Eval(acc, 200)}, "config": {}}])
    assert "vru-organism-deficit: VRU accuracy" in html and ">yes<" in html


def test_deficit_study_into_card_keeps_the_card_and_adds_the_run(tmp_path):
    """`deficit-study --into-card` on a trained folder: the card keeps every key it had and gains full_run."""
    import shutil

    from typer.testing import CliRunner

    from vru_lens.cli import app
    from vru_lens.models.organisms import organism_dir

    folder = tmp_path / "deficit"
    shutil.copytree(organism_dir("vru-organism-deficit"), folder)
    before = json.loads((folder / "organism.json").read_text())
    res = CliRunner().invoke(app, ["organism", "deficit-study", "--model", str(folder), "--quick", "--parts", "measure",
                                   "--into-card", "--out", str(tmp_path / "out"), "--json"])
    assert res.exit_code == 0, res.output
    after = json.loads((folder / "organism.json").read_text())
    assert {k: v for k, v in after.items() if k != "full_run"} == {k: v for k, v in before.items() if k != "full_run"}
    assert set(after["full_run"]["rankings"]) == {"activation", "path", "attribution", "ablation", "gradient"}
    assert after["full_run"]["repair"] == before["full_run"]["repair"]  # a measure-only run keeps the repair kept
