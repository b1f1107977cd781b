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


def test_eval_dtype_is_used_and_checked():
    res = runner.invoke(app, ["eval", "--model", "tiny-llama", "--n", "4", "--dtype", "bfloat16", "--json"])
    assert res.exit_code == 0, res.output
    payload = json.loads(res.stdout.strip().splitlines()[-1])
    assert payload["dtype"] == "bfloat16" and payload["n"] == 4
    assert "unknown dtype" in one_line_error(["eval", "--model", "tiny-llama", "--n", "2", "--dtype", "int3", "--json"])


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


def test_bench_audit_json_both_styles():
    for style in ("paper", "story"):
        res = runner.invoke(app, ["bench", "--audit", "--style", style, "--n", "600", "--json"])
        assert res.exit_code == 0, res.output
        payload = json.loads(res.stdout)
        assert isinstance(payload["chance"], float) and len(payload["rules"]) >= 10
        assert max(payload["rules"].values()) < payload["chance"] + 0.05  # 600 items: loose; the 5,000 test is in test_bench
    res = runner.invoke(app, ["bench", "--audit"])
    assert res.exit_code == 0 and "5000 items" in res.stdout and "chance" in res.stdout


def test_published_file_converts_and_evaluates(tmp_path):
    from vru_lens.bench import make_items

    items = make_items(8, seed=21)
    path = tmp_path / "published.jsonl"
    path.write_text("\n".join(json.dumps({"prompt": it["prompt"], "answer": it["answer"].upper()}) for it in items))
    res = runner.invoke(app, ["bench", "--from", str(path), "--out", str(tmp_path / "conv"), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["kept"] == 8
    res = runner.invoke(app, ["eval", "--model", "tiny-llama", "--data", str(path), "--n", "0", "--json",
                              "--method", "both"])
    assert res.exit_code == 0, res.output
    payload = json.loads(res.stdout.strip().splitlines()[-1])
    assert payload["n"] == 8 and payload["generation_accuracy"] is not None and payload["best_rule"]
    assert "--out" in one_line_error(["bench", "--from", str(path)])
