"""Issue 21: files from a results folder never run code, wrong inputs never give quiet numbers, and every
bad input gets one clear line (exit code 2) before any work. One section per case of the issue."""

import json
import math
import os
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from vru_lens.bench import make_items
from vru_lens.cli import app

runner = CliRunner()


def one_line_error(args) -> str:
    """The command fails with exit code 2 and exactly one line, 'error: ...' (no traceback)."""
    res = runner.invoke(app, [str(a) for a in args])
    lines = [line for line in res.output.strip().splitlines() if line.strip()]
    assert res.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error:"), (res.exit_code, res.output,
                                                                                      res.exception)
    return lines[0]


def strict_loads(text: str):
    """JSON as a parser outside Python reads it: NaN / Infinity are not JSON."""
    def refuse(name):
        raise ValueError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)


# ------------------------------------------------------------------ 1. no file is unpickled
class Payload:
    """Unpickling this writes a marker file: what a planted results file could do."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def plant(path: Path, marker: Path, wrap=lambda p: {"payload": p}) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(wrap(Payload(marker)), path)
    return path


def test_a_planted_resid_cache_does_not_run_and_probe_says_so(tmp_path):
    from vru_lens.probe import ResidCache

    marker = tmp_path / "ran"
    cache = plant(tmp_path / "out" / "resid.pt", marker)
    with pytest.raises(ValueError, match="never unpickled"):
        ResidCache.load(cache)
    line = one_line_error(["probe", "--model", "tiny-llama", "--n", "12", "--out", tmp_path / "out"])
    assert "resid.pt" in line and "never unpickled" in line
    assert not marker.exists()


def test_resid_cache_still_round_trips(tmp_path, tiny_llama):
    from vru_lens.probe import ResidCache

    items = make_items(4, seed=0)
    acts = ResidCache.cached(tmp_path / "resid.pt", tiny_llama, items, layers=[0, 2], final=True, progress=False)
    back = ResidCache.load(tmp_path / "resid.pt")
    assert torch.equal(back.resid, acts.resid) and torch.equal(back.final, acts.final)
    for k in ("item", "step", "token"):
        assert isinstance(getattr(back, k), np.ndarray) and np.array_equal(getattr(back, k), getattr(acts, k))
    assert back.layers == acts.layers and back.meta == acts.meta


def test_a_planted_general_reference_cache_does_not_run(tmp_path):
    from vru_lens.general_eval import GeneralResult

    marker = tmp_path / "ran"
    ref = plant(tmp_path / "cache" / "general_base_x.pt", marker, wrap=lambda p: [(p, p)])
    with pytest.raises(ValueError, match="never unpickled"):
        GeneralResult("m", {}, {}, {}).load_reference(ref)
    assert not marker.exists()
    good = GeneralResult("m", {}, {}, {})
    good.reference = [(torch.arange(3, dtype=torch.int32), torch.zeros(3))]
    good.save_reference(tmp_path / "ok.pt")
    back = GeneralResult("m", {}, {}, {}).load_reference(tmp_path / "ok.pt").reference
    assert torch.equal(back[0][0], good.reference[0][0])


def test_a_planted_checkpoint_does_not_run_on_resume(tmp_path, tiny_llama):
    from vru_lens.finetune import HeadDeltas, TrainConfig
    from vru_lens.finetune.train import train

    marker = tmp_path / "ran"
    ckpt = plant(tmp_path / "ft" / "checkpoint.pt", marker, wrap=lambda p: {"config": p, "trainable": {}})
    deltas = HeadDeltas(tiny_llama, [(0, 1)])
    items = make_items(4, seed=0, split="train")
    with pytest.raises(ValueError, match="never unpickled"):
        train(tiny_llama, deltas, items, cfg=TrainConfig(steps=2, batch_size=2), checkpoint=ckpt, resume=True,
              progress=False)
    assert not marker.exists()
    # a checkpoint the loop wrote still resumes (tensors and plain data only)
    good = tmp_path / "good.pt"
    cfg = TrainConfig(steps=2, batch_size=2, checkpoint_every=1)
    train(tiny_llama, deltas, items, cfg=cfg, checkpoint=good, progress=False, stop_after=1)
    resumed = train(tiny_llama, deltas, items, cfg=cfg, checkpoint=good, resume=True, progress=False)
    assert [h["step"] for h in resumed.history] == [1, 2]


def test_no_torch_load_reads_pickles_anywhere():
    import vru_lens

    root = Path(vru_lens.__file__).parent
    offenders = [str(p) for p in root.rglob("*.py") if "weights_only=False" in p.read_text()]
    assert offenders == []


# ------------------------------------------------------------------ 2 and 9. every item re-derived by the solver
def _bench_folder(tmp_path, n=30, wrong=10):
    from vru_lens.bench import save

    items = make_items(n, seed=5)
    folder = save({"test": items}, tmp_path / "vb")
    lines = (folder / "test.jsonl").read_text().splitlines()
    edited = []
    for i, line in enumerate(lines):
        row = json.loads(line)
        if len(edited) < wrong:
            row["answer"] = next(c for c in row["candidates"] if c != row["answer"])
            edited.append(i + 1)  # the file's line number
        lines[i] = json.dumps(row)
    (folder / "test.jsonl").write_text("\n".join(lines) + "\n")
    return folder, items, edited


def test_edited_bench_answers_are_reported_by_line_and_dropped(tmp_path):
    from vru_lens.bench import load_vrubench
    from vru_lens.bench.export import read_checked

    folder, items, edited = _bench_folder(tmp_path)
    splits, reports = read_checked(folder / "test.jsonl")
    assert [d["line"] for d in reports["test"].disagreements] == edited
    assert len(splits["test"]) == 20 and all(r["answer"] == it["answer"] for r, it in zip(splits["test"], items[10:]))
    assert "line 1" in reports["test"].summary()
    with pytest.warns(UserWarning, match="disagrees with 10"):
        assert load_vrubench(folder / "test.jsonl")["test"].num_rows == 20
    with pytest.warns(UserWarning, match="disagrees with 10"):
        assert load_vrubench(folder)["test"].num_rows == 20
    with pytest.raises(ValueError, match="disagrees"):
        load_vrubench(folder, on_disagree="raise")


def test_the_cli_reads_what_the_solver_agrees_with_and_says_so(tmp_path):
    folder, _, _ = _bench_folder(tmp_path)
    res = runner.invoke(app, ["eval", "--model", "tiny-llama", "--data", str(folder), "--n", "0",
                              "--method", "logprob", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout.strip().splitlines()[-1])["n"] == 20
    assert "disagrees with 10" in res.output and "line 1" in res.output


def test_an_edited_test_jsonl_wins_over_the_dataset_copy(tmp_path):
    from vru_lens.bench import load

    folder, _, _ = _bench_folder(tmp_path, n=6, wrong=0)
    assert (folder / "dataset" / "dataset_dict.json").exists()
    rows = [json.loads(line) for line in (folder / "test.jsonl").read_text().splitlines()]
    rows[0]["id"] = "edited-by-hand"
    (folder / "test.jsonl").write_text("\n".join(json.dumps(r) for r in rows[:4]))
    got = load(folder)["test"]
    assert len(got) == 4 and got[0]["id"] == "edited-by-hand"


# ------------------------------------------------------------------ 3. a ranking is tied to its model
def _ranking(model_name: str, shape=(3, 4), seed=0):
    from vru_lens.patching import HeadScores

    rng = np.random.default_rng(seed)
    return HeadScores(method="path", model=model_name, kind="noising", per_pair=rng.normal(size=(4, *shape)),
                      clean_ld=np.full(4, 2.0), corrupt_ld=np.zeros(4))


def test_resolve_heads_refuses_another_models_ranking_unless_allowed(tmp_path, tiny_llama):
    from vru_lens.finetune import FinetuneConfig
    from vru_lens.finetune.adapters import resolve_heads
    from vru_lens.finetune.run import make_trainable

    other = _ranking("tiny-gpt2")
    path = other.save(tmp_path / "ranking.json")
    with pytest.raises(ValueError, match="made on tiny-gpt2, not on tiny-llama.*--allow-other-model"):
        resolve_heads(path, 3, tiny_llama)
    assert resolve_heads(path, 3, tiny_llama, allow_other_model=True) == resolve_heads(path, 3)
    assert resolve_heads(_ranking("tiny-llama"), 3, tiny_llama) == resolve_heads(_ranking("tiny-llama"), 3)
    with pytest.raises(ValueError, match="scores 5 layers x 4 heads, and this model has 3 x 4"):
        resolve_heads(_ranking("tiny-llama", shape=(5, 4)), 3, tiny_llama)
    with pytest.raises(ValueError, match="made on tiny-gpt2"):  # what the study and finetune build on
        make_trainable(tiny_llama, FinetuneConfig("heads", top_k=2), other)


def test_knockout_and_finetune_refuse_another_models_ranking(tmp_path):
    _ranking("tiny-gpt2").save(tmp_path / "rank" / "ranking.json")
    for cmd in (["knockout", "--n", "4", "--n-pairs", "4", "--n-random", "1"],
                ["finetune", "--steps", "1", "--general-n", "0", "--n", "4", "--n-train", "4", "--n-val", "0"]):
        line = one_line_error([*cmd, "--model", "tiny-llama", "--heads", tmp_path / "rank", "--top-k", "2"])
        assert "tiny-gpt2" in line and "tiny-llama" in line and "--allow-other-model" in line
    res = runner.invoke(app, ["knockout", "--model", "tiny-llama", "--heads", str(tmp_path / "rank"), "--top-k", "2",
                              "--n", "4", "--n-pairs", "4", "--n-random", "1", "--allow-other-model", "--json"])
    assert res.exit_code == 0, res.output


# ------------------------------------------------------------------ 4. the parser reads every common phrasing
NUMBER_WORDS = {0: ["zero"], 45: ["forty-five", "forty five"], 90: ["ninety"],
                180: ["one hundred and eighty", "one hundred eighty"],
                270: ["two hundred and seventy", "two hundred seventy"], 360: ["three hundred and sixty"]}
LEFTWARD = ["counterclockwise", "counter-clockwise", "anticlockwise", "anti-clockwise", "counter clockwise"]


def test_read_turn_known_phrasings():
    from vru_lens.bench.solver import read_turn

    cases = {"Turn to the left by 270°": -270, "turn right 180 deg": 180, "turn 90 ° clockwise": 90,
             "rotate two hundred and seventy degrees to the right": 270, "turn one hundred and eighty degrees": 180,
             "Turn 90 degrees counter-clockwise": -90, "spin 90 degrees anticlockwise": -90,
             "make a three-quarter turn to the left": -270, "three quarters of a turn to the right": 270,
             "make a half turn to the left": -180, "turn around": 180, "make a quarter turn to the right": 90,
             "Turn left": -90, "TURN   TO  THE   RIGHT   BY 90   DEGREES": 90, "turn left by 0 degrees": 0}
    for phrase, want in cases.items():
        assert read_turn(phrase)[0] == want, phrase
    for phrase, why in {"turn to the left a little": "no angle", "turn 90 degrees": "no direction",
                        "turn left by 90 degrees then 180": "more than one amount",
                        "turn left and then right by 90": "both left and right"}.items():
        with pytest.raises(ValueError, match=why):
            read_turn(phrase)


def test_published_items_with_unreadable_turns_are_refused_not_labelled(tmp_path):
    from vru_lens.bench import read_published

    good = "Initial Observation: lamp\nAction: Turn to the left by 270°\nObservation: door\nAction: Turn left\nObservation:"
    vague = good.replace("Turn left", "Turn a bit")
    path = tmp_path / "vru.jsonl"
    path.write_text("\r\n".join(json.dumps(r) for r in ({"prompt": good.replace("\n", "\r\n"), "answer": "lamp"},
                                                        {"prompt": vague, "answer": "lamp"})) + "\r\n")
    rows, report = read_published(path)
    assert len(rows) == 1 and rows[0]["label_cum_angle"] == [-270, -360] and rows[0]["answer"] == "lamp"
    assert rows[0]["steps"][0]["observed"] == "door" and "\r" not in rows[0]["prompt"]
    assert [u["line"] for u in report.unreadable] == [2] and "no angle" in report.unreadable[0]["error"]


def _phrase(draw, angle: int, direction: str):
    """A way people write the turn (the test's own renderer) and the signed degrees it means."""
    from hypothesis import strategies as st

    sign = -1 if direction == "left" else 1
    clock = draw(st.sampled_from(LEFTWARD)) if direction == "left" else "clockwise"
    unit = draw(st.sampled_from(["degrees", "degree", "deg", "°", " °", ""]))
    number = draw(st.sampled_from([str(angle), *NUMBER_WORDS[angle]]))
    forms = [f"Turn to the {direction} by {number} {unit}", f"turn {direction} {number}{unit}",
             f"rotate {number} {unit} {clock}", f"spin {number} {unit} to your {direction}"]
    fractions = {90: ["a quarter turn"], 180: ["a half turn"], 270: ["a three-quarter turn", "three quarters of a turn"],
                 360: ["a full turn"]}
    forms += [f"make {f} to the {direction}" for f in fractions.get(angle, [])]
    if angle == 90:
        forms.append(f"turn {direction}")
    free = ["turn around", "make a half turn", "turn to face the opposite direction"] if angle == 180 else []
    text = draw(st.sampled_from(forms + free))
    return text, None if text in free else sign * angle


def _case(draw, text: str) -> str:
    from hypothesis import strategies as st

    text = draw(st.sampled_from([text, text.lower(), text.upper(), text.title()]))
    return re.sub(" +", lambda m: draw(st.sampled_from([" ", "  ", "\t", " \t "])), text)


def test_parsing_gives_back_the_steps_of_random_stories_in_random_phrasings():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from vru_lens.bench.published import item_from_text
    from vru_lens.bench.solver import parse_lines

    objects = ["lamp", "door", "window", "sofa", "clock"]

    @st.composite
    def stories(draw):
        n = draw(st.integers(2, 5))
        steps = [(draw(st.sampled_from([0, 90, 180, 270, 360])), draw(st.sampled_from(["left", "right"])))
                 for _ in range(n)]
        lines = ["You are standing inside a room.", f"Initial Observation: {draw(st.sampled_from(objects))}"]
        signed, seen_objects = [], []
        for i, (angle, direction) in enumerate(steps):
            text, deg = _phrase(draw, angle, direction)
            signed.append(deg)
            lines.append("Action:" + draw(st.sampled_from([" ", "  ", "\t"])) + _case(draw, text)
                         + draw(st.sampled_from(["", " ", "  "])))
            if i < n - 1:
                obj = draw(st.sampled_from(objects))
                seen_objects.append(obj)
                lines.append(f"Observation: {obj}")
        lines.append("Observation:")
        newline = draw(st.sampled_from(["\n", "\r\n"]))
        return newline.join(lines), lines[1].split(": ")[1], signed, seen_objects

    @settings(max_examples=150, deadline=None, derandomize=True)
    @given(stories())
    def check(story):
        prompt, start, signed, seen_objects = story
        parsed = parse_lines(prompt)
        got = [s["degrees"] for s in parsed["steps"]]
        assert [g if s is None else g - s for g, s in zip(got, signed)] == \
            [180 if s is None else 0 for s in signed]  # a direction-free half turn reads as +180
        assert [s["observed"] for s in parsed["steps"]][:-1] == seen_objects
        heading, seen = 0, {0: start}  # the answer, walked here from the steps drawn
        for deg, obj in zip([180 if s is None else s for s in signed], seen_objects + [None]):
            heading = (heading + deg) % 360
            if obj:
                seen.setdefault(heading, obj)
        want = seen.get(heading, "unknown")
        item, solver_answer = item_from_text(prompt, want, "x")
        assert solver_answer == want and item["solver_agrees"]
        assert item["answer_slot"] == (heading // 90 if want != "unknown" else -1)

    check()


# ------------------------------------------------------------------ 5. splits are checked
def test_split_that_the_data_lacks_or_that_does_not_exist(tmp_path):
    from vru_lens.bench import save

    save({"test": make_items(4, seed=0)}, tmp_path / "vb")
    line = one_line_error(["eval", "--model", "tiny-llama", "--data", tmp_path / "vb", "--split", "validation"])
    assert "no validation split" in line and "test" in line
    line = one_line_error(["eval", "--model", "tiny-llama", "--data", tmp_path / "vb", "--split", "trian"])
    assert "--split must be one of train, validation, test" in line
    line = one_line_error(["eval", "--model", "tiny-llama", "--data", tmp_path / "vb" / "test.jsonl", "--split", "train"])
    assert "no train split" in line


# ------------------------------------------------------------------ 6. finetune never overwrites an interrupted run
def test_finetune_out_over_a_checkpoint_needs_resume(tmp_path):
    (tmp_path / "ft").mkdir()
    torch.save({"step": 3}, tmp_path / "ft" / "checkpoint.pt")
    line = one_line_error(["finetune", "--model", "tiny-llama", "--heads", "x", "--out", tmp_path / "ft"])
    assert "--resume" in line and "checkpoint.pt" in line
    assert torch.load(tmp_path / "ft" / "checkpoint.pt", weights_only=True) == {"step": 3}


# ------------------------------------------------------------------ 7. --out is checked before any work
@pytest.mark.parametrize("cmd", [["eval", "--n", "2"], ["probe", "--n", "12"], ["rank-heads", "--n", "4"],
                                 ["knockout", "--heads", "[[0, 1]]", "--top-k", "1"], ["finetune", "--steps", "1"],
                                 ["run", "--quick"], ["bench", "--n", "3"]])
def test_an_unwritable_out_is_found_before_any_work(cmd, tmp_path):
    """/sys refuses new files even to root; the model name does not exist, so reaching it would say so."""
    args = [*cmd] + ([] if cmd[0] == "bench" else ["--model", "no-such-model"])
    if cmd[0] == "knockout":
        (tmp_path / "h.json").write_text(cmd[2])
        args[2] = tmp_path / "h.json"
    assert "cannot write there" in one_line_error([*args, "--out", "/sys"])
    (tmp_path / "file").write_text("")
    assert "is a file" in one_line_error([*args, "--out", tmp_path / "file"])


# ------------------------------------------------------------------ 8. strict JSON, no NaN
def test_result_files_and_json_output_are_strict_and_read_back(tmp_path, capsys):
    from dataclasses import dataclass

    from vru_lens.cli.common import print_json
    from vru_lens.results import Saveable, write_json_atomic

    payload = {"acc": float("nan"), "big": float("inf"), "ok": 0.5, "per": [[1.0, float("nan")], [float("-inf"), 2.0]],
               "nested": {"a/b": [float("nan")]}}
    path = write_json_atomic(tmp_path / "r.json", payload)
    data = strict_loads(path.read_text())
    assert data["acc"] is None and data["non_finite"]["/acc"] == "nan" and data["non_finite"]["/big"] == "inf"
    assert data["non_finite"]["/per"] == "array" and data["non_finite"]["/per/1/0"] == "-inf"
    assert data["non_finite"]["/nested/a~1b"] == "array"

    @dataclass
    class R(Saveable):
        acc: float
        scores: np.ndarray

    R(float("nan"), np.array([[1.0, np.nan], [np.inf, 0.0]])).save(tmp_path / "s.json")
    back = R.load(tmp_path / "s.json")
    strict_loads((tmp_path / "s.json").read_text())
    assert math.isnan(back.acc) and np.array_equal(back.scores, [[1.0, np.nan], [np.inf, 0.0]], equal_nan=True)  # exact
    print_json({"x": float("nan"), "y": 1})
    out = strict_loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out == {"x": None, "y": 1, "non_finite": {"/x": "nan"}}


def test_a_ranking_checkpoint_with_nan_resumes(tmp_path):
    from vru_lens.patching.checkpoint import Checkpoint

    ck = Checkpoint(tmp_path / "r.partial", {"k": 1})
    ck.put("0", per_pair=np.array([[np.nan, 1.0]]))
    strict_loads((tmp_path / "r.partial").read_text())
    again = Checkpoint(tmp_path / "r.partial", {"k": 1}).get("0")["per_pair"]
    assert again.dtype == np.float64 and np.array_equal(again, [[np.nan, 1.0]], equal_nan=True)


# ------------------------------------------------------------------ 10. one line, never a traceback
def test_bad_inputs_get_one_line_naming_the_file(tmp_path):
    from safetensors.torch import save_file

    (tmp_path / "obj.json").write_text('{"heads": [[0, 1]]}')
    assert "is not a ranking" in one_line_error(["knockout", "--model", "tiny-llama", "--heads", tmp_path / "obj.json",
                                                  "--top-k", "1"])
    (tmp_path / "empty.json").write_text("")
    line = one_line_error(["knockout", "--model", "tiny-llama", "--heads", tmp_path / "empty.json", "--top-k", "1"])
    assert "empty.json is empty" in line
    save_file({"x": torch.zeros(64)}, str(tmp_path / "d.safetensors"), metadata={"format": "vru-lens-head-deltas/1"})
    blob = (tmp_path / "d.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(blob[: len(blob) // 2])
    line = one_line_error(["eval", "--model", "tiny-llama", "--n", "2", "--deltas", tmp_path / "cut.safetensors"])
    assert "cut.safetensors is not a readable safetensors file" in line
    assert "not a torch device" in one_line_error(["eval", "--model", "tiny-llama", "--n", "2", "--device", "gpu"])
    rows = [json.dumps(r) for r in make_items(3, seed=0)]
    (tmp_path / "cut.jsonl").write_text("\n".join(rows[:2] + ["", rows[2][:40]]))
    line = one_line_error(["eval", "--model", "tiny-llama", "--data", tmp_path / "cut.jsonl"])
    assert "cut.jsonl line 4: not valid JSON" in line


# ------------------------------------------------------------------ 11. no silent coercion, checks come first
def test_heads_and_k_are_taken_as_given_or_refused(tiny_llama):
    from vru_lens.finetune import HeadDeltas
    from vru_lens.finetune.adapters import resolve_heads

    with pytest.raises(ValueError, match="whole numbers"):
        resolve_heads([[0, 1.5]], 1)
    with pytest.raises(ValueError, match="more than once"):
        resolve_heads([[0, 1], [0, 1], [1, 2]], 2)
    with pytest.raises(ValueError, match="from 1 to the 2 heads"):
        resolve_heads([[0, 1], [1, 2]], 3)
    with pytest.raises(ValueError, match="outside this model"):
        resolve_heads([[0, 1], [7, 0]], 2, tiny_llama)
    assert resolve_heads([[1, 2, 0.9], [0, 1, 0.5]], 2, tiny_llama) == [(1, 2), (0, 1)]
    with pytest.raises(ValueError, match="whole numbers"):
        HeadDeltas(tiny_llama, [(0.7, 1)])
    with pytest.raises(ValueError, match="0 or more"):
        _ranking("tiny-llama").top(-1)
    assert len(_ranking("tiny-llama").top(100)) == 12  # more than there are: all of them, as displayed


def test_items_batch_size_and_model_names_are_checked_first(tiny_llama):
    from vru_lens.evaluate import as_rows, evaluate
    from vru_lens.models import load_model

    item = {"prompt": "x", "candidates": "ab", "answer": "a"}
    with pytest.raises(ValueError, match="list of strings"):
        as_rows([item])
    with pytest.raises(ValueError, match="batch_size must be"):
        evaluate(tiny_llama, make_items(2, seed=0), batch_size=0)
    with pytest.raises(ValueError, match="no model folder at ./nonexistent"):
        load_model("./nonexistent")
    with pytest.raises(ValueError, match="the model name is empty"):
        load_model("")


def test_cli_numbers_are_checked_before_work(tmp_path):
    assert "--n-boot must be 0" in one_line_error(["rank-heads", "--model", "no-such-model", "--n-boot", "-1"])
    (tmp_path / "h.json").write_text(json.dumps([[l, h] for l in range(3) for h in range(4)]))
    line = one_line_error(["knockout", "--model", "tiny-llama", "--heads", tmp_path / "h.json", "--top-k", "12"])
    assert "at most 6" in line and "of this model's 12" in line


# ------------------------------------------------------------------ 12. files get the user's permissions
@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_result_files_follow_the_umask(tmp_path, umask):
    from vru_lens.results import write_json_atomic

    before = os.umask(umask)
    try:
        path = write_json_atomic(tmp_path / "r.json", {"a": 1})
    finally:
        os.umask(before)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_warnings_are_not_raised_by_clean_data(tmp_path):
    """A folder the solver fully agrees with loads without a warning (the check is not noise)."""
    from vru_lens.bench import load, save

    save({"test": make_items(8, seed=1), "train": make_items(8, seed=2, split="train")}, tmp_path / "vb")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = load(tmp_path / "vb")
    assert {k: len(v) for k, v in got.items()} == {"test": 8, "train": 8}
