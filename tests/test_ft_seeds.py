"""The plain fine-tuning stage over fine-tuning seeds (`vru-lens run --ft-seeds`): the items, pairs and ranking
fixed by --seed, each (arm, seed) its own saved stage, the seed changing what training randomises, the same seed
reproducing bit for bit, and the per-arm mean with a 95% Student-t interval."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from vru_lens.cli import app
from vru_lens.finetune.run import FinetuneResult, seed_summary
from vru_lens.study import StudyConfig, run_study

# tiny-llama, a few items, 3 steps: seconds; k the default (a quarter of its 12 heads: 3)
TINY = dict(n_eval=8, n_pairs=4, n_boot=0, stages=("rank", "finetune"), compare=(), baselines=("random",),
            method_lr=True, batch_size=4, n_train=12, ft_steps=3, warmup=1, n_val=4, general_n=0)


def _run(out, **kw):
    study = run_study("tiny-llama", out, StudyConfig(**{**TINY, **kw}), device="cpu", progress=False, log=lambda *a: None)
    return study, {stage: FinetuneResult.load(study.folder / name) for stage, name in study.files.items()
                   if stage.startswith("finetune_")}


def _same(a, b) -> bool:
    """Equal, NaN (no held-out items) equal to NaN."""
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def _trace(r) -> list:
    """A run's training trace without its wall times: loss and lr by step, validation accuracy by step."""
    return [(h["step"], h["loss"], h["lr"]) for h in r.train["history"]] + [
        (v["step"], v["accuracy"]) for v in r.train["validation"]]


def _deltas(folder):
    """The head deltas a heads run saved (the file whose best step and settings match it)."""
    from safetensors.torch import load_file

    files = sorted(folder.glob("deltas-*.safetensors"))
    return [load_file(str(f)) for f in files]


@pytest.fixture(scope="module")
def grid(tmp_path_factory, one_thread):
    out = tmp_path_factory.mktemp("ftseeds")
    return out, *_run(out / "two", ft_seeds=(0, 2))


def test_each_arm_runs_once_per_seed_as_its_own_stage(grid):
    out, study, runs = grid
    assert set(runs) == {"finetune_heads", "finetune_random", "finetune_heads_seed2", "finetune_random_seed2"}
    assert [runs[s].train["config"]["seed"] for s in ("finetune_heads", "finetune_heads_seed2")] == [0, 2]
    # the same items, pairs and ranking for both seeds: the data and the base measurement are equal
    assert runs["finetune_heads"].data == runs["finetune_heads_seed2"].data
    assert _same(runs["finetune_heads"].vru_before, runs["finetune_heads_seed2"].vru_before)
    assert runs["finetune_heads"].heads == runs["finetune_heads_seed2"].heads  # the top-k of one ranking
    manifest = json.loads((study.folder / "study.json").read_text())
    assert set(manifest["files"]) >= set(runs)
    summary = json.loads((study.folder / "finetune_seeds.json").read_text())
    assert summary["seeds"] == [0, 2] and {a: v["n"] for a, v in summary["arms"].items()} == {"heads": 2, "random": 2}


def test_the_seed_changes_the_random_heads_and_the_training(grid):
    out, study, runs = grid
    assert runs["finetune_random"].heads != runs["finetune_random_seed2"].heads  # the random-k draw
    a, b = _deltas(study.folder)  # one deltas file per seed of the heads arm
    assert a.keys() == b.keys()
    assert any(not np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)  # batch order changes the deltas
    la = [h["loss"] for h in runs["finetune_heads"].train["history"]]
    lb = [h["loss"] for h in runs["finetune_heads_seed2"].train["history"]]
    assert la != lb


def test_a_seed_reproduces_bit_for_bit_and_seed_of_one_run_keeps_its_files(grid):
    out, study, runs = grid
    # the one-seed run of --seed (no --ft-seeds) is the grid's seed 0: the same file names (keys), the same numbers
    _, one = _run(out / "one")
    assert set(one) == {"finetune_heads", "finetune_random"}
    for stage in one:
        assert (out / "one" / "tiny-llama" / study.files[stage]).exists()  # the same key as the grid's seed 0
        assert _same(one[stage].to_dict() | {"train": None}, runs[stage].to_dict() | {"train": None})
        assert _trace(one[stage]) == _trace(runs[stage])
    # seed 2 alone, in a fresh folder: the grid's seed-2 runs again, bit for bit
    again_study, again = _run(out / "again", ft_seeds=(2,))
    assert set(again) == {"finetune_heads_seed2", "finetune_random_seed2"}
    for stage in again:
        assert again_study.files[stage] == study.files[stage]
        assert again[stage].heads == runs[stage].heads
        assert _same(again[stage].vru_after, runs[stage].vru_after)
        assert _trace(again[stage]) == _trace(runs[stage])
    (d2,) = _deltas(again_study.folder)
    first = _deltas(study.folder)
    assert any(d2.keys() == d.keys() and all(np.array_equal(d2[k].numpy(), d[k].numpy()) for k in d) for d in first)


def test_an_interrupted_grid_resumes_without_recomputing(grid):
    out, study, runs = grid
    stamps = {p.name: p.stat().st_mtime_ns for p in study.folder.glob("finetune_*-*.json")}  # the runs' files
    _, more = _run(out / "two", ft_seeds=(0, 2, 3), baselines=("random",))
    assert set(more) == set(runs) | {"finetune_heads_seed3", "finetune_random_seed3"}
    assert len(stamps) == 4 and all((study.folder / name).stat().st_mtime_ns == t for name, t in stamps.items())
    summary = json.loads((study.folder / "finetune_seeds.json").read_text())
    assert {a: v["n"] for a, v in summary["arms"].items()} == {"heads": 3, "random": 3}


def test_a_second_k_has_its_own_stages_and_summary_and_shares_full_fine_tuning(tmp_path, one_thread):
    """Grids at two k in one folder: the default k keeps its names, another k adds ``_k<k>`` (its own manifest
    entries and summary), and full fine-tuning, which trains no heads, runs once per seed for both."""
    study, default = _run(tmp_path, ft_seeds=(0, 1), baselines=("full",))
    assert set(default) == {"finetune_heads", "finetune_full", "finetune_heads_seed1", "finetune_full_seed1"}
    stamps = {p.name: p.stat().st_mtime_ns for p in study.folder.glob("finetune_*-*.json")}
    summary = (study.folder / "finetune_seeds.json").read_text()
    study2, other = _run(tmp_path, ft_seeds=(0, 1), baselines=("full",), top_k=2)
    # the folder's manifest names both grids (the default k's entries read back, not run again)
    assert set(other) == set(default) | {"finetune_heads_k2", "finetune_heads_k2_seed1"}
    assert [len(other[s].heads) for s in ("finetune_heads", "finetune_heads_k2", "finetune_heads_k2_seed1")] == [3, 2, 2]
    for stage in ("finetune_full", "finetune_full_seed1"):  # the same file, not trained again
        assert study2.files[stage] == study.files[stage]
    assert all((study.folder / name).stat().st_mtime_ns == t for name, t in stamps.items())
    manifest = json.loads((study.folder / "study.json").read_text())["files"]
    assert {"finetune_heads", "finetune_heads_seed1", "finetune_heads_k2", "finetune_heads_k2_seed1"} <= set(manifest)
    assert manifest["finetune_heads"] == study.files["finetune_heads"] != manifest["finetune_heads_k2"]
    assert (study.folder / "finetune_seeds.json").read_text() == summary  # the default k's summary untouched
    k2 = json.loads((study.folder / "finetune_seeds_k2.json").read_text())
    assert {a: v["n"] for a, v in k2["arms"].items()} == {"heads": 2, "full": 2}


def test_runs_saved_before_stage_names_carried_k_are_adopted_not_recomputed(tmp_path, one_thread, monkeypatch):
    """A folder written when every k shared the names ``finetune_<method>`` (and the full arm's key held k): its
    files move to the new names with their numbers, and nothing is trained again."""
    from vru_lens import study as study_module

    saved = []  # (stage name, settings) of every fine-tuning stage, recorded around the code under test
    stage = study_module.Study.stage
    monkeypatch.setattr(study_module.Study, "stage", lambda self, name, cls, settings, compute: (
        saved.append((name, dict(settings))) if name.startswith("finetune_") else None,
        stage(self, name, cls, settings, compute))[1])
    study, runs = _run(tmp_path, ft_seeds=(0, 1), baselines=("full",), top_k=2)
    assert set(runs) == {"finetune_heads_k2", "finetune_full", "finetune_heads_k2_seed1", "finetune_full_seed1"}
    # rewrite the folder as the earlier naming left it: no k in the names, k in the full arm's key
    files = json.loads((study.folder / "study.json").read_text())
    for name, settings in saved:
        legacy = name.replace("_k2", "")
        old = study.path(legacy, {**settings, "top_k": 2} if "top_k" not in settings else settings)
        (study.folder / study.files[name]).rename(old)
        files["files"].pop(name)
        files["files"][legacy] = old.name
    (study.folder / "study.json").write_text(json.dumps(files))
    before = {n: FinetuneResult.load(study.folder / f).to_dict() for n, f in files["files"].items() if n.startswith("finetune_")}

    def never(*a, **k):
        raise AssertionError("a saved run was trained again")

    monkeypatch.setattr(study_module, "_experiment", never)
    study2, again = _run(tmp_path, ft_seeds=(0, 1), baselines=("full",), top_k=2)
    assert set(again) == set(runs) and all(study2.files[s] == study.files[s] for s in runs)
    for name in runs:
        assert _same(again[name].to_dict(), before[name.replace("_k2", "")])
    manifest = json.loads((study.folder / "study.json").read_text())["files"]
    assert "finetune_heads" not in manifest and "finetune_heads_seed1" not in manifest  # old names dropped
    assert sorted(p.name for p in study.folder.glob("finetune_*-*.json")) == sorted(study.files[s] for s in runs)


def _result(method, seed, test, steps=3, after_pairs=0.0):
    return FinetuneResult("m", method, [[0, 1]], "qkvo", 10, 80, 0.3, test, {"test": 0.3, "pairs": {"both_right": 0.0}},
                          {"test": test, "pairs": {"both_right": after_pairs}}, {"average": 0.5, "wiki/ppl": 20.0},
                          {"average": 0.5 - test / 10, "wiki/ppl": 20.0 + test, "wiki/kl": test / 100}, {},
                          {"config": {"steps": steps, "seed": seed, "lr": 1e-3}}, {"n_test": 8, "seed": 0})


def test_the_summary_is_a_student_t_interval_over_seeds():
    from scipy import stats

    values = [0.31, 0.42, 0.37]
    runs = [_result("heads", s, v) for s, v in enumerate(values)] + [_result("random", 0, 0.5)]
    arms = seed_summary(runs)
    assert set(arms) == {"heads", "random"}
    got = arms["heads"]["vru_test"]
    low, high = stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=stats.sem(values))
    assert got["n"] == 3 and got["mean"] == pytest.approx(np.mean(values))
    assert got["ci"] == pytest.approx([low, high], rel=1e-12)
    kl = [v / 100 for v in values]
    assert arms["heads"]["wiki_kl"]["ci"] == pytest.approx(list(stats.t.interval(
        0.95, 2, loc=np.mean(kl), scale=stats.sem(kl))), rel=1e-12)
    assert arms["heads"]["seeds"] == [0, 1, 2] and arms["heads"]["before"]["vru_test"] == 0.3
    assert arms["random"]["vru_test"] == {"mean": 0.5, "ci": [0.5, 0.5], "n": 1}  # one seed: the point
    assert "transfer_story" not in arms["heads"]  # not measured: left out, not invented
    # runs with other training settings are never averaged together
    split = seed_summary(runs + [_result("heads", 5, 0.9, steps=30)])
    assert sorted(a["n"] for a in split.values() if a["method"] == "heads") == [1, 3]
    # LoRA chooses no heads: its k is the parameter budget it was sized to, and two budgets are two arms
    lora = [_result("lora", s, 0.3) for s in range(3)]
    for r, budget in zip(lora, (1000, 1000, 2000)):
        r.heads, r.extra = [], {"budget": budget}
    assert sorted(a["n"] for a in seed_summary(lora).values()) == [1, 2]
    assert set(seed_summary(lora)) == {"lora budget=1000", "lora budget=2000"}
    wide = _result("heads", 0, 0.5)
    wide.heads = [[0, h] for h in range(4)]
    assert set(seed_summary(runs + [wide])) == {"heads k=1", "heads k=4", "random"}


def test_the_report_shows_the_interval(tmp_path):
    from vru_lens.report import build_report

    values = [0.31, 0.42, 0.37]
    folder = tmp_path / "m"
    folder.mkdir()
    files = {}
    for s, v in enumerate(values):
        name = f"finetune_heads_seed{s}.json"
        _result("heads", s, v).save(folder / name)
        files[f"finetune_heads_seed{s}"] = name
    (folder / "study.json").write_text(json.dumps({"model": "m", "config": {}, "files": files}))
    page = build_report(tmp_path).read_text()
    assert "Selective fine-tuning over seeds" in page
    from scipy import stats

    low, high = stats.t.interval(0.95, 2, loc=np.mean(values), scale=stats.sem(values))
    assert f"{np.mean(values):.1%} [{low:.1%}, {high:.1%}]" in page


@pytest.mark.parametrize("bad", ["x", "1,,x", "1,1", "-1", ""])
def test_bad_ft_seeds_get_one_line_before_any_work(tmp_path, bad):
    out = tmp_path / "never"
    res = CliRunner().invoke(app, ["run", "--model", "tiny-llama", "--out", str(out), "--ft-seeds", bad])
    assert res.exit_code == 2
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: --ft-seeds") and not out.exists()


def test_without_ft_seeds_the_plain_stage_runs_once_with_seed():
    assert StudyConfig().plain_ft_seeds() == (0,)
    assert StudyConfig(seed=3).plain_ft_seeds() == (3,)  # --seed alone: one run, as before
    assert StudyConfig(seed=3, ft_seeds=[2, 0]).plain_ft_seeds() == (2, 0)


def test_the_difference_of_two_arms_is_welchs_interval():
    from scipy import stats

    from vru_lens.results import welch_interval

    a, b = [0.40, 0.41, 0.37], [0.30, 0.25, 0.33, 0.28]
    ref = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    got = welch_interval(a, b)
    assert got["diff"] == pytest.approx(np.mean(a) - np.mean(b))
    assert got["ci"] == pytest.approx([ref.low, ref.high], rel=1e-10)
    assert np.isnan(welch_interval(a, [0.3])["ci"][0])  # one seed on a side: no interval, not a made-up one
    assert welch_interval([0.36, 0.36], [0.3, 0.3])["ci"] == [pytest.approx(0.06)] * 2  # no spread: the point


def test_the_docs_tables_script_reads_a_results_folder(tmp_path, capsys, monkeypatch):
    """studies/finetune_tables.py (docs/finetune.md's tables) on saved runs: the arm's t-interval, top-k minus
    random-k with Welch's interval and one row per run, numbers from scipy, not from the code under test."""
    import importlib.util
    import json
    import sys
    from pathlib import Path

    from scipy import stats

    spec = importlib.util.spec_from_file_location("finetune_tables", Path(__file__).parents[1] / "studies/finetune_tables.py")
    tables = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tables)
    heads, rand = [0.31, 0.42, 0.37], [0.25, 0.30]
    files = {}
    for i, (method, v) in enumerate([("heads", x) for x in heads] + [("random", x) for x in rand]):
        r = _result(method, i, v)
        r.vru_after["n"] = 100
        name = f"finetune_{method}_k16_seed{i}-0.json"  # a k other than the study's default names its stages
        r.save(tmp_path / name)
        files[f"finetune_{method}_k16_seed{i}"] = name
    # another k's run in the same folder (the default k's names: no suffix) is not one of k = 16's arms
    other_k = _result("heads", 0, 0.987)
    other_k.heads, other_k.vru_after["n"] = [[0, h] for h in range(32)], 100
    other_k.save(tmp_path / "finetune_heads-0.json")
    files["finetune_heads"] = "finetune_heads-0.json"
    (tmp_path / "study.json").write_text(json.dumps({"files": files}))
    monkeypatch.setattr(sys, "argv", ["finetune_tables.py", str(tmp_path)])
    tables.main()
    out = capsys.readouterr().out
    lo, hi = stats.t.interval(0.95, 2, loc=np.mean(heads), scale=stats.sem(heads))
    assert f"| 3 (0, 1, 2) |" in out and f"{np.mean(heads):.3f} [{lo:.3f}, {hi:.3f}]" in out
    assert "0.987" not in out and "0.99 [" not in out
    w = stats.ttest_ind(heads, rand, equal_var=False).confidence_interval(0.95)
    assert f"{np.mean(heads) - np.mean(rand):+.3f} [{w.low:+.3f}, {w.high:+.3f}]" in out
    # the arm, its general-suite row, then its 3 runs; the general suite's after is the mean over seeds
    assert sum(line.startswith("| top-16 heads") for line in out.splitlines()) == 1 + 1 + 3
    general = [line for line in out.splitlines() if line.startswith("| top-16 heads (path ranking), qkvo | 3 |")]
    assert len(general) == 1 and general[0].endswith(f"| {np.mean([0.5 - v / 10 for v in heads]):.3f} |")  # average
    monkeypatch.setattr(sys, "argv", ["finetune_tables.py", str(tmp_path), "--k", "32"])
    tables.main()
    k32 = capsys.readouterr().out
    assert "| top-32 heads (path ranking), qkvo | 1 (0) |" in k32 and "0.987" in k32 and "0.370" not in k32
    monkeypatch.setattr(sys, "argv", ["finetune_tables.py", str(tmp_path / "nothing")])
    with pytest.raises(SystemExit, match="no study.json"):
        tables.main()
