import json

from typer.testing import CliRunner

from vru_lens.cli import app

runner = CliRunner()


def test_bench_then_eval_json(tmp_path):
    out = tmp_path / "vb"
    res = runner.invoke(app, ["bench", "--n", "12", "--train", "8", "--seed", "3", "--steps", "2-3", "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["splits"] == {"train": 8, "test": 12}
    res = runner.invoke(app, ["eval", "--model", "tiny-gpt2", "--data", str(out), "--n", "0", "--json"])
    assert res.exit_code == 0, res.output
    payload = json.loads(res.stdout.strip().splitlines()[-1])
    assert payload["n"] == 12 and 0 <= payload["accuracy"] <= 1
    assert set(payload["by_steps"]) <= {"2", "3"} and sum(1 for _ in payload["by_steps"]) >= 1


def test_eval_generated_items_prints_table():
    res = runner.invoke(app, ["eval", "--model", "tiny-llama", "--n", "6", "--steps", "4"])
    assert res.exit_code == 0, res.output
    assert "4 steps" in res.stdout and "accuracy" in res.stdout


def one_line_error(args):
    res = runner.invoke(app, args)
    assert res.exit_code != 0
    lines = [line for line in res.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), res.output
    return lines[0]


def test_bad_arguments_exit_nonzero_with_one_line(tmp_path):
    assert "2-5" in one_line_error(["bench", "--n", "5", "--steps", "1-7", "--out", str(tmp_path / "a")])
    assert "4 or 8" in one_line_error(["bench", "--n", "5", "--slots", "6", "--out", str(tmp_path / "a")])
    assert "unknown template id" in one_line_error(["bench", "--n", "5", "--holdout-templates", "spin_me", "--out", str(tmp_path / "a")])
    assert "at least 1" in one_line_error(["bench", "--n", "0", "--out", str(tmp_path / "a")])
    (tmp_path / "empty").mkdir()
    assert "no VRUBench data" in one_line_error(["eval", "--model", "tiny-llama", "--data", str(tmp_path / "empty")])
    assert "Known names" in one_line_error(["eval", "--model", "no-such-model", "--n", "2", "--json"])
