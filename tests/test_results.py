"""The result contract (vru_lens.results.Result): every stage's result, built by running the stage on tiny-llama,
has summary() (JSON), to_frame() (rows), plot() (a plotly Figure) and save/load that round-trips; the report
reads studies made of such results."""

import json
from functools import partial

import pytest

from vru_lens.bench import PAIRABLE, make_items
from vru_lens.report import build_report, study_of
from vru_lens.results import RESULT_MODULES, Result, load_result
from vru_lens.tokens import tokenize_pairs



def _import_every_module():
    import importlib
    import pkgutil

    import vru_lens

    for mod in pkgutil.walk_packages(vru_lens.__path__, "vru_lens."):
        importlib.import_module(mod.name)


def test_every_result_type_is_listed_where_load_result_finds_it():
    """RESULT_MODULES names each Result subclass's module: a new result missing from it fails here."""
    _import_every_module()
    defined = {name: cls.__module__ for name, cls in Result.registry.items() if not cls.__module__.startswith("tests")}
    assert defined == RESULT_MODULES


def test_load_result_needs_no_prior_import(tmp_path):
    """A saved result reads back in a process that imported only vru_lens.results."""
    import subprocess
    import sys

    from vru_lens.patching.knockout import KnockoutResult

    path = KnockoutResult(model="m", k=1, top=[[0, 1]]).save(tmp_path / "ko.json")
    code = ("import sys; from vru_lens.results import load_result; r = load_result(sys.argv[1]); "
            "print(type(r).__name__, 'vru_lens.patching.knockout' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["KnockoutResult", "True"]


@pytest.fixture(scope="module")
def items():
    return make_items(12, seed=0, split="test")


@pytest.fixture(scope="module")
def pairs(tiny_llama):
    return tokenize_pairs(tiny_llama.tokenizer, make_items(40, seed=1, cfg=PAIRABLE, split="validation"), max_pairs=4)


@pytest.fixture(scope="module")
def scores(tiny_llama, pairs):
    from vru_lens.patching import rank_heads

    return rank_heads(tiny_llama, pairs, method="activation", n_boot=20, progress=False)


def _eval(m, items, pairs, scores):
    from vru_lens.evaluate import evaluate

    return evaluate(m, items, method="logprob", progress=False)


def _probe(m, items, pairs, scores):
    from vru_lens.probe import probe

    return probe(m, make_items(30, seed=2, split="train"), target="heading", progress=False, steps=20)


def _lens(m, items, pairs, scores):
    from vru_lens.logit_lens import logit_lens

    return logit_lens(m, [it for it in items if it["answerable"]], progress=False)


def _scores(m, items, pairs, scores):
    return scores


def _knockout(m, items, pairs, scores):
    from vru_lens.evaluate import accuracy
    from vru_lens.patching import knockout

    return knockout(m, pairs, items[:6], [(0, 1), (1, 2)], n_random=2, seed=0, batch_size=8,
                    accuracy=partial(accuracy, batch_size=8))


def _curve(m, items, pairs, scores):
    from vru_lens.evaluate import accuracy
    from vru_lens.patching import head_means, knockout_curve

    return knockout_curve(m, items[:6], {"activation": [(l, h) for l, h, _ in scores.top(2)]},
                          head_means(m, pairs), max_k=2, n_random=2, accuracy=partial(accuracy, batch_size=8))


def _train(m, items, pairs, scores):
    from vru_lens.finetune import HeadDeltas, TrainConfig, train

    from vru_lens.evaluate import accuracy

    d = HeadDeltas(m, [(0, 0), (1, 2)], "qo")
    return train(m, d, items, items[:4], TrainConfig(steps=2, batch_size=4, warmup_steps=1, lr=1e-2, eval_every=1),
                 progress=False, accuracy=partial(accuracy, batch_size=8))


def _finetune(m, items, pairs, scores, tmp_path):
    from vru_lens.evaluate import accuracy, vru_breakdown
    from vru_lens.finetune import TrainConfig
    from vru_lens.finetune.run import FinetuneConfig, run_experiment

    cfg = FinetuneConfig("heads", top_k=2, n_train=8, n_val=4, n_test=6,
                         train=TrainConfig(steps=2, batch_size=2, warmup_steps=1, lr=1e-2, eval_every=1))
    return run_experiment(m, cfg, scores, measure=partial(vru_breakdown, batch_size=8),
                          accuracy=partial(accuracy, batch_size=8), cache_dir=tmp_path / "cache", progress=False,
                          log=lambda *a: None)


def _general(m, items, pairs, scores):
    from vru_lens.general_eval import GeneralSuite

    return GeneralSuite(n_per_task=2, mmlu_n=2, wiki_n=1, wiki_tokens=16, kl_top_k=8, tasks=("arc_easy",)).run(
        m, progress=False)


def _attention(m, items, pairs, scores):
    from vru_lens.viz import attention_patterns

    return attention_patterns(m, items[0], [(0, 1), (2, 3)])


def _faithfulness(m, items, pairs, scores):
    from vru_lens.patching.faithfulness import faithfulness_curve

    return faithfulness_curve(m, pairs, {"given": scores}, ks=[1, 2], n_random=2, batch_size=4, progress=False)


def _path(m, items, pairs, scores):
    from vru_lens.patching.path import path_patch_receivers

    return path_patch_receivers(m, pairs, [(2, 1)], "k", batch_size=4, progress=False)


BUILD = {"EvalResult": _eval, "ProbeResult": _probe, "LogitLensResult": _lens, "HeadScores": _scores,
         "KnockoutResult": _knockout, "KnockoutCurve": _curve, "TrainResult": _train, "FinetuneResult": _finetune,
         "GeneralResult": _general, "AttentionPatterns": _attention, "PathPatchResult": _path,
         "FaithfulnessResult": _faithfulness}


def test_every_result_class_is_checked():
    ours = {name for name, cls in Result.registry.items() if cls.__module__.startswith("vru_lens.")}
    assert ours == set(BUILD), "a result class without a contract test: add a builder to BUILD"


@pytest.mark.parametrize("name", sorted(BUILD))
def test_result_contract(name, tiny_llama, items, pairs, scores, tmp_path, one_thread):
    import pandas as pd
    import plotly.graph_objects as go

    build = BUILD[name]
    args = (tiny_llama, items, pairs, scores) + ((tmp_path,) if name == "FinetuneResult" else ())
    res = build(*args)
    assert type(res).__name__ == name and isinstance(res, Result)
    summary = json.dumps(res.summary())  # JSON-able as it is, no default=
    assert len(json.loads(summary)) >= 2
    frame = res.to_frame()
    assert isinstance(frame, pd.DataFrame) and len(frame) > 0
    fig = res.plot()
    assert isinstance(fig, go.Figure) and len(fig.data) > 0
    path = res.save(tmp_path / f"{name}.json")
    back = type(res).load(path)
    assert json.dumps(back.summary()) == summary
    assert json.dumps(load_result(path).summary()) == summary  # the file says what it holds
    pd.testing.assert_frame_equal(back.to_frame(), frame, check_dtype=False)


def test_a_missing_method_is_named():
    from dataclasses import dataclass

    @dataclass
    class Half(Result):
        x: int = 1

        def summary(self):
            return {"x": self.x}

    with pytest.raises(NotImplementedError, match="Half does not implement plot"):
        Half().plot()
    with pytest.raises(NotImplementedError, match="to_frame"):
        Half().to_frame()
    Result.registry.pop("Half")


def test_load_result_refuses_an_unknown_type(tmp_path):
    path = tmp_path / "x.json"
    path.write_text(json.dumps({"type": "Nope"}))
    with pytest.raises(ValueError, match="not a known result"):
        load_result(path)


def test_report_from_results_has_every_section(tiny_llama, items, pairs, scores, tmp_path, one_thread):
    """A study made of results in memory: each section of the report appears, with the results' numbers."""
    built = [f(tiny_llama, items, pairs, scores) for f in (_eval, _probe, _lens, _curve, _attention, _path)]
    ft = _finetune(tiny_llama, items, pairs, scores, tmp_path)
    page = build_report(built + [scores, ft], tmp_path / "report.html").read_text()
    for section in ("<h2>Summary</h2>", "VRUBench accuracy against chance", "Top heads", "Knockout: the top-k",
                    "Selective fine-tuning", "Probe for the heading", "Head rankings on tiny-llama",
                    "Knockout curves on tiny-llama", "Attention of the top heads", "Other results", "Fine-tuning curves"):
        assert section in page, section
    ev = built[0].summary()
    assert f"{ev['candidate_accuracy']:.1%}" in page
    top = scores.summary(k=5)["top"][0]
    assert f"L{top['layer']}H{top['head']} {top['score']:.2f}" in page
    with pytest.raises(ValueError, match="path="):
        build_report(built)
    with pytest.raises(ValueError, match="two results for stage 'eval'"):
        study_of(built[:1] * 2)
