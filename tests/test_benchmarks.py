"""Every script in benchmarks/ runs, at its smallest, on the models the tests use.

The scripts are not imported by the package, so a rename in the library breaks them silently;
here each runs as a user runs it (a subprocess) and its own correctness column is checked:
the fast paths it times must agree with the references it times them against.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(script: str, *args: str, stderr: bool = False) -> str:
    """The script's stdout (with ``stderr``: stdout and stderr, where warnings go)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{script} failed:\n{done.stderr[-3000:]}"
    return done.stdout + done.stderr if stderr else done.stdout


def test_bench_7b_memory_tiny_shape(tmp_path):
    out = tmp_path / "b.json"
    run("bench_7b_memory.py", "--tiny", "--pairs", "2", "--chunk", "2", "--batch", "2", "--threads", "1",
        "--check-reference", "--steps", "2", "--full", "--out", str(out))
    rec = json.loads(out.read_text())["stages"]
    assert rec["path_patching"]["fast_path"] and rec["fast_vs_reference"]["fast_path"]
    assert rec["fast_vs_reference"]["max_abs_diff"] <= 0.05 * max(rec["fast_vs_reference"]["effect_max_abs"], 0.1)
    for name in ("finetune_step", "finetune_step_checkpointed", "full_finetune_step", "full_finetune_step_checkpointed"):
        assert rec[name]["steps"] == 2 and rec[name]["trainable_params"] > 0, name
    # checkpointing changes memory, never the numbers
    assert rec["finetune_step"]["loss"] == rec["finetune_step_checkpointed"]["loss"]
    assert rec["finetune_step_checkpointed"]["saved_for_backward_gb"] < rec["finetune_step"]["saved_for_backward_gb"]


def test_bench_study_7b_small_shape_runs_the_study_in_bf16(tmp_path):
    """The whole-study timer at its CPU shape (the 7B head layout at width 448, bf16): each stage asked for is
    timed, and none falls back from its fast path (the GPU run is the same script with --device cuda)."""
    out = tmp_path / "s.json"
    done = run("bench_study_7b.py", "--shape", "small", "--stages", "eval,rank", "--threads", "1",
               "--folder", str(tmp_path / "model"), "--out", str(out), stderr=True)
    rec = json.loads(out.read_text())
    assert [r["stage"] for r in rec["stages"]] == ["load", "eval", "rank_path", "rank_activation", "rank_attribution"]
    assert rec["config"]["stages"] == ["eval", "rank"] and rec["total_s"] > 0
    assert "fast path unavailable" not in done


def test_bench_patching_and_attribution_agreement_on_the_organism(tmp_path):
    run("bench_patching.py", "--model", "vru-organism", "--pairs", "4", "--ref-layers", "0", "--out", str(tmp_path / "p.json"))
    rep = json.loads((tmp_path / "p.json").read_text())
    assert rep["activation"]["max_abs_diff_vs_tl"] < 1e-4 and rep["path"]["max_abs_diff_vs_ref"] < 1e-4
    run("attribution_agreement.py", "--model", "vru-organism", "--pairs", "4", "--ig-steps", "1,2",
        "--out", str(tmp_path / "a.json"))
    rows = json.loads((tmp_path / "a.json").read_text())["rows"]
    assert len(rows) == 4  # two directions x two step counts


def test_bench_path_patching_receivers_and_eval(tmp_path):
    text = run("bench_path_patching.py", "--model", "vru-organism", "--pairs", "4", "--senders", "2")
    diff = float(text.split("max abs diff fast vs reference over")[1].split(":")[1].split()[0])
    assert diff < 1e-4
    report = json.loads(run("bench_eval.py", "--model", "tiny-llama", "--n", "8", "--batch-size", "4"))
    assert report["same_predictions"] and report["max_abs_score_diff"] < 1e-4  # batched scorer vs plain loops


def test_bench_probe_matches_sklearn(tmp_path):
    run("bench_probe.py", "--model", "tiny-llama", "--n", "40", "--json", str(tmp_path / "r.json"))
    rep = json.loads((tmp_path / "r.json").read_text())
    assert len(rep["vru_lens_accuracy"]) == len(rep["sklearn_accuracy"]) == 3  # one probe per layer
    assert rep["max_abs_gap_points"] <= 6.0  # the fused trainer lands where sklearn's lbfgs does (34 test rows: 1 row = 2.9)


def test_bench_finetune_budgets(tmp_path):
    run("bench_finetune.py", "--model", "tiny-llama", "--top-k", "2", "--steps", "2", "--batch-size", "2",
        "--out", str(tmp_path / "r.json"))
    methods = json.loads((tmp_path / "r.json").read_text())["methods"]
    assert set(methods) == {"heads", "full", "lora"}
    assert methods["heads"]["trainable_params"] < methods["full"]["trainable_params"]
    assert methods["heads"]["optimizer_state_bytes"] < methods["full"]["optimizer_state_bytes"]


def test_cuda_check_runs_on_two_cpu_devices(tmp_path):
    """The GPU script's own logic, with the CPU twice: every ranking equal, the fast sweep near its reference."""
    run("cuda_check.py", "--devices", "cpu", "cpu", "--pairs", "8", "--out", str(tmp_path / "r.json"))
    rep = json.loads((tmp_path / "r.json").read_text())
    assert all(m["top_equal"] and m["max_abs_diff"] == 0 for m in rep["methods"].values())
    assert rep["activation_fast_vs_reference_cuda"]["max_abs_diff"] < 1e-4


def _peers_missing() -> str | None:
    import importlib.util

    missing = [m for m in ("nnsight", "pyvene") if importlib.util.find_spec(m) is None]
    return f"{' and '.join(missing)} not installed (not in the lock; `make bench-peers` builds a venv with them)" \
        if missing else None


@pytest.mark.skipif(_peers_missing() is not None, reason=_peers_missing() or "")
def test_bench_peers_every_implementation_agrees_with_plain_hooks(tmp_path):
    """The race at its smallest (the organism, 2 pairs, 32 heads): every peer runs and matches plain o_proj hooks."""
    out = tmp_path / "peers.json"
    run("bench_peers.py", "--model", "vru-organism", "--pairs", "2", "--threads", "1", "--out", str(out))
    rep = json.loads(out.read_text())
    rows = rep["rows"]
    assert set(rows) == {"plain", "vru-lens", "transformerlens", "nnsight-skip", "nnsight", "pyvene-batched", "pyvene"}
    assert rep["effect_span"] > 1.0  # the patches move the logits, so agreement means something
    for name, row in rows.items():
        assert "skipped" not in row, name
        assert row["agrees"] and row["max_abs_diff_vs_plain"] <= rep["tolerance"], (name, row)


def test_grade_faithfulness_on_the_organism(tmp_path):
    out = tmp_path / "f.json"
    run("grade_faithfulness.py", "--model", "vru-organism", "--pairs", "4", "--n-random", "2",
        "--methods", "activation,gradient", "--out", str(out))
    rep = json.loads(out.read_text())
    assert set(rep["methods"]) == {"activation", "gradient", "circuit C (known answer)"}
    for name, row in rep["methods"].items():
        assert row["f"][-1] == 1.0 or abs(row["f"][-1] - 1) < 1e-5, name  # every head clean: all recovered
        assert row["cpr_ci"][0] <= row["cpr"] <= row["cpr_ci"][1] or len(set(row["cpr_ci"])) == 1
    assert 0 <= rep["methods"]["activation"]["auroc"] <= 1 and rep["random"]["n_draws"] == 2
    from vru_lens.patching import faithfulness  # noqa: F401  (registers the result type)
    from vru_lens.results import load_result

    assert load_result(tmp_path / "f_curves.json").summary()["n_pairs"] == 4
