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
    (tmp_path / "heads.json").write_text("[[1, 0], [0, 1]]")
    res = runner.invoke(app, ["knockout", "--model", "tiny-gpt2", "--heads", str(tmp_path / "heads.json"), "--top-k", "1",
                              "--data", str(out), "--n", "5", "--n-pairs", "8", "--n-random", "1", "--json"])
    assert res.exit_code == 0, res.output
    payload = json.loads(res.stdout.strip().splitlines()[-1])
    assert payload["n_items"] == 5 and payload["top"] == [[1, 0]]  # --data: the bench folder's test split


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
    deficit = ["organism", "deficit", "--out", str(tmp_path / "d")]
    assert "0 (off) or more" in one_line_error([*deficit, "--confine-steps", "-1"])
    assert "scramble" in one_line_error([*deficit, "--kind", "values"])


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


def _commands(group, prefix=""):
    for name, cmd in group.commands.items():
        if hasattr(cmd, "commands"):
            yield from _commands(cmd, f"{prefix}{name} ")
        else:
            yield f"{prefix}{name}", cmd


def test_shared_options_are_spelled_and_explained_once():
    """Every command's --model, --n, --seed, --json, --out, ... is the one in cli/common.py: same flags, same help."""
    import typer

    from vru_lens.cli.common import SHARED

    want = {}
    for param, alias in SHARED.items():
        opt = alias.__metadata__[0]  # in Annotated, typer keeps the first flag in .default
        want[param] = ((opt.default, *opt.param_decls), opt.help)
    seen = {param: [] for param in SHARED}
    commands = dict(_commands(typer.main.get_command(app)))
    assert {"bench", "eval", "probe", "rank-heads", "knockout", "finetune", "run", "sweep", "organism train",
            "organism study", "organism info"} <= set(commands)
    flags = {flag for decls, _ in want.values() for decl in decls for flag in decl.split("/")}
    for name, cmd in commands.items():
        for p in cmd.params:
            spelled = set(p.opts) | set(p.secondary_opts)
            if p.name in want:
                decls, help_text = want[p.name]
                assert [("/".join(p.opts + p.secondary_opts))] == list(decls), (name, p.name, p.opts)
                assert p.help == help_text, (name, p.name)
                seen[p.name].append(name)
            else:  # no other parameter borrows a shared flag
                assert not spelled & flags, (name, p.name, spelled)
    for param in ("model", "n", "seed", "json_out", "out", "chat", "device", "threads", "progress", "deltas"):
        assert len(seen[param]) >= 2, (param, seen[param])
    assert set(seen["deltas"]) >= {"eval", "probe", "rank-heads", "knockout"}
    assert set(seen["chat"]) >= {"eval", "probe", "rank-heads", "knockout", "finetune", "run"}
    assert "quiet" not in {p.name for cmd in commands.values() for p in cmd.params}


def test_out_is_a_folder_of_named_files(tmp_path):
    out = tmp_path / "ev"
    res = runner.invoke(app, ["eval", "--model", "tiny-llama", "--n", "4", "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    from vru_lens.evaluate import EvalResult

    assert [f.name for f in out.iterdir()] == ["eval.json"]
    assert EvalResult.load(out / "eval.json").summary()["accuracy"] == json.loads(res.stdout.strip().splitlines()[-1])["accuracy"]
    (tmp_path / "file").write_text("x")
    assert "is a file" in one_line_error(["eval", "--model", "tiny-llama", "--n", "4", "--out", str(tmp_path / "file")])


def test_json_turns_progress_off_unless_asked():
    from vru_lens.cli.common import show_progress

    assert show_progress(None, False) and not show_progress(None, True)
    assert show_progress(True, True) and not show_progress(False, False)


def test_help_texts_survive_rich_markup():
    """typer renders help through rich, which swallows anything that looks like a [tag]: '[[layer, head], ...]'
    printed as '[, ...]'. Every command's help must keep its brackets' contents."""
    import re

    from typer.main import get_command

    group = get_command(app)
    names = list(group.commands.items())
    names += [(f"{n} {s}", sc) for n, c in group.commands.items() for s, sc in getattr(c, "commands", {}).items()]
    for name, _ in names:
        res = CliRunner().invoke(app, [*name.split(), "--help"], terminal_width=200)
        assert res.exit_code == 0, name
        assert not re.search(r"\[\s*(,|\])", res.output), f"`{name} --help` lost a bracketed text: {res.output}"
