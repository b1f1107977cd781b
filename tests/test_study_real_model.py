"""The study's settings for a real model on a CPU: knockout at chosen k, both probes from one capture,
transfer sets measured beside the test split, runs of different stages into one folder, longer stories."""

import contextlib
import importlib
import json
from types import SimpleNamespace

import pytest

from vru_lens.study import StudyConfig, run_study


def _curve(monkeypatch, ks):
    K = importlib.import_module("vru_lens.patching.knockout")

    @contextlib.contextmanager
    def remember(model, heads, means):
        remember.heads = sorted(tuple(h) for h in heads)
        yield

    monkeypatch.setattr(K, "ablate_heads", remember)
    model = SimpleNamespace(cfg=SimpleNamespace(n_layers=4, n_heads=4))
    rankings = {"a": [(l, h) for l in range(4) for h in range(4)][::-1]}
    # a deterministic accuracy of the ablated set, so two curves can be compared value by value
    score = lambda m, items: sum(10 * l + h for l, h in remember.heads) / 1000  # noqa: E731
    return K.knockout_curve(model, [], rankings, None, max_k=8, n_random=3, seed=2, accuracy=score, ks=ks)


def test_knockout_at_chosen_k_equals_the_full_curve_there(monkeypatch):
    full, some = _curve(monkeypatch, None), _curve(monkeypatch, [1, 3, 8])
    assert some.ks == [1, 3, 8] and full.ks == list(range(1, 9))
    assert some.curves["a"] == [full.curves["a"][k - 1] for k in (1, 3, 8)]
    assert some.random["a"] == {str(k): full.random["a"][str(k)] for k in (1, 3, 8)}  # the same draws
    for bad in ([3, 1], [0, 2], [2, 9], []):
        with pytest.raises(ValueError, match="increasing"):
            _curve(monkeypatch, bad)


def test_study_refuses_bad_knockout_ks_before_any_stage(tmp_path):
    with pytest.raises(ValueError, match="knockout_ks must be increasing"):
        run_study("tiny-llama", tmp_path, StudyConfig.quick(knockout_ks=(1, 999), stages=("eval", "knockout")),
                  progress=False, log=lambda m: None)
    assert not list(tmp_path.rglob("eval-*.json"))


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Two runs of different stages into one folder, as the real-model study is run in pieces."""
    import torch

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("pieces")
    small = dict(n_eval=30, n_probe=60, n_pairs=6, n_boot=20)
    run_study("tiny-llama", out, StudyConfig.quick(**small, stages=("probe",)), progress=False, log=lambda m: None)
    run_study("tiny-llama", out, StudyConfig.quick(**small, stages=("eval",)), progress=False, log=lambda m: None)
    return out / "tiny-llama", small


def test_runs_of_other_stages_add_up_in_the_manifest(two_runs):
    folder, _ = two_runs
    files = json.loads((folder / "study.json").read_text())["files"]
    assert set(files) == {"probe", "probe_object", "eval"}
    assert all((folder / f).exists() for f in files.values())


def test_object_probe_is_the_probe_of_that_target(two_runs, tiny_llama):
    from vru_lens.bench import make_items
    from vru_lens.probe import probe
    from vru_lens.report import load_study

    folder, small = two_runs
    res = load_study(folder)["results"]
    items = make_items(small["n_probe"], 0 + 2, split="train")  # the study's probe items (seed + 2)
    for stage, target in (("probe", "heading"), ("probe_object", "object")):
        direct = probe(tiny_llama, items, target=target, progress=False)
        got = res[stage].summary()
        assert got["target"] == target and got["control_by"] == direct.summary()["control_by"]
        assert got["accuracy"] == pytest.approx(direct.summary()["accuracy"], abs=1e-6)


def test_transfer_sets_are_scored_beside_the_test_split(tiny_llama):
    from vru_lens.bench import BenchConfig, make_items
    from vru_lens.evaluate import evaluate, vru_breakdown
    from vru_lens.study import transfer_sets

    sets = transfer_sets(StudyConfig(n_transfer=12))
    assert [len(v) for v in sets.values()] == [12, 12]
    assert {it["style"] for it in sets["story"]} == {"story"}
    assert {len(it["steps"]) for it in sets["six_actions"]} == {6}
    items = make_items(10, 5, BenchConfig(), split="test")
    got = vru_breakdown(tiny_llama, items, transfer=sets)
    for name, extra in sets.items():
        assert got[f"transfer_{name}"] == evaluate(tiny_llama, extra, progress=False).accuracy
    assert transfer_sets(StudyConfig()) == {}


def test_longer_stories_are_solved_by_the_independent_solver():
    from vru_lens.bench import BenchConfig, make_items
    from vru_lens.bench.solver import solve

    for style in ("paper", "story"):
        items = make_items(60, 3, BenchConfig(style=style, min_steps=6, max_steps=8), split="test")
        assert {len(it["steps"]) for it in items} <= {6, 7, 8} and len({len(it["steps"]) for it in items}) > 1
        assert all(solve(it["prompt"])[0] == it["answer"] for it in items)


def test_method_lr_leaves_each_method_its_own_rate():
    from vru_lens.finetune.run import DEFAULT_LR

    tuned = StudyConfig(method_lr=True).for_tuning(None)
    assert tuned.lr is None and tuned.batch_size == 32
    assert {m: tuned.lr_for(m) for m in DEFAULT_LR} == DEFAULT_LR
    assert StudyConfig().for_tuning(None).lr_for("full") == 2e-5  # the study's one rate otherwise


def test_fine_tuning_pairs_are_the_rankings_pairs(tiny_llama):
    """Before/after pair accuracy reads the ranking's counterfactual pairs (up to n_pairs), not the few the test
    items happen to yield; the numbers equal pair_accuracy on those pairs tokenized independently."""
    from vru_lens.bench import BenchConfig, make_items
    from vru_lens.evaluate import pair_accuracy, vru_breakdown
    from vru_lens.study import ranking_pair_items
    from vru_lens.tokens import tokenize_pairs

    cfg = StudyConfig(n_pairs=6)
    pair_items = ranking_pair_items(cfg)
    items = make_items(10, 5, BenchConfig(), split="test")
    got = vru_breakdown(tiny_llama, items, pair_items=pair_items, max_pairs=cfg.n_pairs)["pairs"]
    pt = tokenize_pairs(tiny_llama.tokenizer, pair_items, chat=False, max_pairs=6)
    assert got["n_pairs"] == len(pt) == 6
    want = pair_accuracy(tiny_llama, pt)
    assert {k: got[k] for k in want} == pytest.approx(want)
