"""The grading table: AUROC and precision with bootstrap CIs, the paired test, against known answers."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner


def _scores(method, signal, rng, noise=0.3, n=40):
    """Raw per-pair numbers of an unnormalised ranking: ``signal`` [layer, head] plus noise per pair."""
    from vru_lens.patching.scores import HeadScores

    per = signal[None] + noise * rng.standard_normal((n, *signal.shape))
    return HeadScores(method, "m", "kl", per, np.zeros(n), np.zeros(n))


def test_auroc_precision_and_the_paired_test_on_known_answers():
    from vru_lens.grading import grade_rankings

    rng = np.random.default_rng(0)
    known = [(0, 1), (1, 0), (2, 3)]
    truth = np.zeros((3, 4))
    for l, h in known:
        truth[l, h] = 1.0
    good, bad, weak = truth.copy(), -truth, truth * 0.05 + rng.standard_normal((3, 4)) * 0.05
    r = grade_rankings({"good": _scores("a", good, rng), "bad": _scores("b", bad, rng),
                        "weak": _scores("c", weak, rng)}, known, n_boot=300, seed=1)
    m = r["methods"]
    assert m["good"]["auroc"] == 1.0 and m["good"]["precision"] == 1.0 and m["good"]["auroc_ci"] == [1.0, 1.0]
    assert m["bad"]["auroc"] == 0.0 and m["bad"]["precision"] == 0.0
    assert m["weak"]["auroc_ci"][0] < m["weak"]["auroc_ci"][1]  # noisy: the interval has width
    assert r["paired"]["good - bad"]["p"] < 0.01 and r["paired"]["good - bad"]["diff"] == 1.0
    assert r["n_pairs"] == 40 and r["n_boot"] == 300 and {tuple(h) for h in m["good"]["top"]} == set(known)


def test_auroc_agrees_with_sklearn():
    from sklearn.metrics import roc_auc_score

    from vru_lens.grading import grade_rankings

    rng = np.random.default_rng(3)
    known = [(0, 0), (1, 2), (2, 1), (2, 2)]
    hs = _scores("a", rng.standard_normal((3, 4)), rng)
    label = np.zeros((3, 4))
    for l, h in known:
        label[l, h] = 1
    got = grade_rankings({"a": hs}, known, n_boot=0)["methods"]["a"]["auroc"]
    assert got == pytest.approx(roc_auc_score(label.ravel(), hs.scores.ravel()))


def test_rankings_on_different_pairs_are_refused():
    from vru_lens.grading import grade_rankings

    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="same pairs"):
        grade_rankings({"a": _scores("a", np.zeros((2, 2)), rng, n=5), "b": _scores("b", np.zeros((2, 2)), rng, n=6)},
                       [(0, 0)])


def test_grade_cli_on_the_shipped_organism_finds_C(tmp_path):
    """On the shipped organism, mean ablation finds C (its card: AUROC 0.99); the files are written."""
    from vru_lens.cli import app

    res = CliRunner().invoke(app, ["grade", "vru-organism", "--n-pairs", "24", "--n-boot", "50",
                                   "--methods", "ablation,activation", "--knockout-items", "60", "--knockout-random",
                                   "2", "--out", str(tmp_path), "--json"])
    assert res.exit_code == 0, res.output
    g = json.loads((tmp_path / "grading.json").read_text())["vru-organism"]
    assert g["against"].startswith("C") and len(g["known"]) == 8 and g["methods"]["ablation"]["auroc"] > 0.9
    assert "ablation - activation" in g["paired"] and (tmp_path / "grading.md").read_text().count("| ablation |") == 2
    assert (tmp_path / "grading.html").exists() and (tmp_path / "knockout_vru-organism.html").exists()
    ko = g["knockout"]  # ablating mean ablation's top 8 (about C) costs far more than 8 random heads outside it
    k8 = ko["ks"].index(8)
    assert ko["ks"][-1] == 16 and ko["curves"]["ablation"][k8] < ko["random"]["ablation"]["8"]["mean"] - 0.2, ko


def test_grade_cli_refuses_a_model_without_a_known_answer():
    from vru_lens.cli import app

    res = CliRunner().invoke(app, ["grade", "smollm2-135m-instruct"])
    assert res.exit_code != 0 and "organism" in res.output
    res = CliRunner().invoke(app, ["grade", "vru-organism", "--methods", "nope"])
    assert res.exit_code != 0 and "known:" in res.output
