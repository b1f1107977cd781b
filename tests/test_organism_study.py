"""The study on the shipped organism: rankings against G, knockout (function and CLI), the study's quick run."""

import json

import pytest
from typer.testing import CliRunner


def test_grade_against_a_known_answer(circuit):
    import numpy as np

    from vru_lens.organism.graded import grade

    s = np.zeros((4, 8))
    for l, h in circuit:
        s[l, h] = 1.0
    g = grade(s, circuit)
    assert g["auroc"] == 1.0 and g["precision_at_G"] == 1.0 and {tuple(t) for t in g["top"][:len(circuit)]} == set(circuit)
    g = grade(-s, circuit)
    assert g["auroc"] == 0.0 and g["precision_at_G"] == 0.0


def test_knockout_curve_random_band_and_G(organism, circuit):
    """Ablating G's top-k (k = |G|) costs far more than random k-sets; the curve's k=0 is the plain accuracy."""
    from vru_lens.bench import PAIRABLE, BenchConfig, make_items
    from functools import partial

    from vru_lens.evaluate import accuracy, evaluate
    from vru_lens.patching import head_means, knockout_curve
    from vru_lens.tokens import tokenize_pairs

    items = make_items(200, 77, BenchConfig(style="paper"))
    pt = tokenize_pairs(organism.tokenizer, make_items(32, 5, PAIRABLE, split="validation"))
    means = head_means(organism, pt, 32)
    curve = knockout_curve(organism, items, {"G": circuit}, means, max_k=len(circuit), n_random=5, seed=0,
                           accuracy=partial(accuracy, batch_size=64))
    assert curve.base_accuracy == pytest.approx(evaluate(organism, items, progress=False).accuracy)
    assert len(curve.curves["G"]) == len(circuit) and all(len(v) == 5 for v in curve.random["G"].values())
    drop_g = curve.base_accuracy - curve.curves["G"][-1]
    drop_r = curve.base_accuracy - curve.random_summary()["G"][str(len(circuit))]["mean"]
    assert drop_g >= 3 * max(drop_r, 0.005), (drop_g, drop_r)


def test_knockout_cli_json_keys(tmp_path, circuit):
    from vru_lens.cli import app

    ranking = tmp_path / "g.json"
    ranking.write_text(json.dumps([list(h) for h in circuit]))
    res = CliRunner().invoke(app, ["knockout", "--model", "vru-organism", "--heads", str(ranking), "--top-k",
                                   str(len(circuit)), "--n", "100", "--n-pairs", "16", "--n-random", "3", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert {"base_accuracy", "top_k_accuracy", "random_k_accuracy", "random_k_band"} <= set(out)
    assert out["top"] == [list(h) for h in circuit] and len(out["random_k_each"]) == 3
    assert out["top_k_accuracy"] < out["random_k_accuracy"] <= out["base_accuracy"] + 0.05
    bad = CliRunner().invoke(app, ["knockout", "--model", "vru-organism", "--heads", str(tmp_path / "no.json"),
                                   "--top-k", "2"])
    assert bad.exit_code != 0 and "rank-heads" in bad.output


def test_study_quick(tmp_path, circuit):
    """The whole graded study on tiny settings (through the one pipeline): every part writes its results,
    figures and tables."""
    from vru_lens.cli import app

    res = CliRunner().invoke(app, ["organism", "study", "--quick", "--ft-steps", "2", "--out", str(tmp_path / "s"), "--json"])
    assert res.exit_code == 0, res.output
    s = json.loads(res.stdout.strip().splitlines()[-1])
    assert s["config"]["ft_steps"] == 2
    assert set(s["probes"]) == {"heading", "cum_angle", "object"}
    assert {"activation", "path", "attribution", "ablation", "gradient"} <= set(s["rankings"])
    assert all(0 <= g["auroc"] <= 1 for g in s["rankings"].values())
    assert len(s["knockout"]["ks"]) == 2 * len(circuit)
    methods = {r["method"] for r in s["finetune"]["runs"]}
    assert methods == {"heads", "random", "bottom", "lora", "full"}
    budget = {r["method"]: r["params"] for r in s["finetune"]["runs"]}
    # same Q/O slices per head; K/V slices count once per key-value group the chosen heads touch
    assert 0.5 * budget["heads"] <= budget["lora"] <= 2 * budget["heads"] < budget["full"]
    assert set(s["closed_loop"]["heads"]) and "tuned_ranking_vs_G" in s["closed_loop"]
    for f in ("study.json", "graded.json", "tables.md", "knockout_curves.html", "probe_heading.html",
              "ranking_activation.json", "deltas_top.safetensors"):
        assert (tmp_path / "s" / "vru-organism" / f).exists(), f  # OUT/<model>/, as every study


def test_study_rejects_zero_ft_steps(tmp_path):
    from vru_lens.cli import app

    res = CliRunner().invoke(app, ["organism", "study", "--ft-steps", "0", "--out", str(tmp_path / "s")])
    assert res.exit_code != 0 and "--ft-steps" in res.output
