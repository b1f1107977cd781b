import json

from typer.testing import CliRunner

from vru_lens.cli import app


def test_run_writes_every_stage_and_a_report_then_resumes(tmp_path):
    out = tmp_path / "run"
    args = ["run", "--model", "tiny-llama", "--out", str(out), "--n", "12", "--n-probe", "40", "--n-pairs", "6",
            "--top-k", "2", "--json"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    payload = json.loads(res.stdout.strip().splitlines()[-1])
    assert {"eval", "probe", "lens", "scores", "knockout"} <= set(payload)
    for name in ("eval", "probe", "lens", "scores", "knockout"):
        assert (out / f"{name}.json").exists()
    page = (out / "report.html").read_text()
    assert "Head ranking" in page and "plotly" in page.lower()
    stamp = (out / "scores.json").stat().st_mtime_ns
    again = CliRunner().invoke(app, args)  # every stage is on disk: nothing is recomputed
    assert again.exit_code == 0 and (out / "scores.json").stat().st_mtime_ns == stamp
    bad = CliRunner().invoke(app, ["run", "--model", "tiny-llama", "--stages", "eval,dance", "--out", str(out)])
    assert bad.exit_code != 0 and "unknown stage" in bad.output
