import json

from typer.testing import CliRunner

from vru_lens.cli import app


def _files(folder):
    return {p.name: p.stat().st_mtime_ns for p in folder.glob("*.json") if p.name != "study.json"}


def test_run_writes_every_stage_and_a_report_then_resumes_by_settings(tmp_path):
    out = tmp_path / "run"
    args = ["run", "--model", "tiny-llama", "--quick", "--out", str(out), "--n", "12", "--n-probe", "40",
            "--n-pairs", "6", "--top-k", "2",  # not the default k (3): stages named _k2
            "--n-random", "2", "--n-train", "64", "--baselines", "random",
            "--general-n", "2", "--compare", "activation", "--json"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    payload = json.loads(res.stdout.strip().splitlines()[-1])
    for stage in ("eval", "probe", "lens", "rank_path", "rank_activation", "knockout", "attention", "finetune_heads_k2",
                  "finetune_random_k2", "after_eval", "after_probe", "after_rank_path"):
        assert stage in payload, stage
    assert payload["finetune_random_k2"]["method"] == "random"
    assert all(isinstance(v, (dict, str)) for v in payload.values())  # every stage summarised, none null
    assert set(payload["knockout"]["curves"]) == {"path", "activation"} and payload["knockout"]["ks"][0] == 1
    assert "general_delta" in payload["finetune_heads_k2"]
    folder = out / "tiny-llama"
    manifest = json.loads((folder / "study.json").read_text())
    assert set(manifest["files"]) >= {"eval", "knockout", "finetune_heads_k2"}
    from vru_lens.patching import KnockoutCurve

    curve = KnockoutCurve.load(folder / manifest["files"]["knockout"])
    assert set(curve.curves) == {"path", "activation"} and curve.ks[0] == 1 and len(curve.ks) >= 2
    page = (out / "report.html").read_text()
    assert "Summary" in page and "Knockout" in page and "Selective fine-tuning" in page
    before = _files(folder)
    again = CliRunner().invoke(app, args)  # every stage is on disk: nothing is recomputed
    assert again.exit_code == 0 and _files(folder) == before
    changed = CliRunner().invoke(app, [a if a != "2" or i != args.index("--n-random") + 1 else "3"
                                       for i, a in enumerate(args)])
    assert changed.exit_code == 0, changed.output
    after = _files(folder)
    new = set(after) - set(before)
    assert len(new) == 1 and next(iter(new)).startswith("knockout-")  # only the stage that reads the setting
    assert all(after[name] == stamp for name, stamp in before.items())
    bad = CliRunner().invoke(app, ["run", "--model", "tiny-llama", "--stages", "eval,dance", "--out", str(out)])
    assert bad.exit_code != 0 and "unknown stage" in bad.output
