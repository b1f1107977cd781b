import re
from collections import Counter

import pytest

from vru_lens.bench import (
    ROTATION_TEMPLATES, TEMPLATE_IDS, BenchConfig, build_pairs, counterfactual_variants, load, make_items,
    make_splits, save, solve,
)
from vru_lens.bench.styles import INSTRUCTION
from vru_lens.evaluate import audit
from vru_lens.bench.world import signed_angle, template_turns

STORY = BenchConfig(style="story")
STUDY_EXAMPLE = INSTRUCTION + """
Initial Observation: avocado
Action: Turn to the right by 270 degrees
Observation: router
Action: Turn to the left by 90 degrees
Observation:"""


@pytest.mark.parametrize("style", ["paper", "story"])
def test_twenty_thousand_items_deterministic_and_solver_agrees(style):
    cfg = BenchConfig(style=style)
    items = make_items(20_000, seed=7, cfg=cfg)  # its speed is a benchmark's business, not a test's (no wall clock here)
    disagree = [it["id"] for it in items if solve(it["prompt"])[0] != it["answer"]]
    assert disagree == []
    heading = [it["id"] for it in items if solve(it["prompt"])[1] != it["steps"][-1]["heading_after"]]
    assert heading == []
    again = make_items(200, seed=7, cfg=cfg)
    assert again == items[:200]
    assert make_items(50, seed=8, cfg=cfg) != items[:50]


def test_paper_style_is_the_default_and_the_studys_format():
    items = make_items(500, seed=1)
    action = re.compile(r"^Action: Turn to the (left|right) by (0|90|180|270|360) degrees$")
    for it in items:
        lines = it["prompt"].split("\n")
        assert it["style"] == "paper" and lines[0] == INSTRUCTION and lines[-1] == "Observation:"
        assert lines[1] == f"Initial Observation: {it['slot_objects'][0]}"
        body = lines[2:-1]
        assert len(body) == 2 * it["n_steps"] - 1 and 2 <= it["n_steps"] <= 5
        for i, line in enumerate(body):
            if i % 2 == 0:
                m = action.match(line)
                assert m, line
                step = it["steps"][i // 2]
                assert (m.group(1), int(m.group(2))) == (step["direction"], step["angle"])
            else:
                assert line == f"Observation: {it['steps'][i // 2]['observed']}"
        assert "unknown" == it["candidates"][-1] and it["answer"] in it["candidates"]
    assert {it["final_angle"] for it in items} == {0, 90, 180, 270, 360}
    assert {s["angle"] for it in items for s in it["steps"]} == {0, 90, 180, 270, 360}


def test_solver_reads_the_study_example():
    assert solve(STUDY_EXAMPLE) == ("unknown", 180)
    assert solve(STUDY_EXAMPLE.replace("left by 90", "right by 90")) == ("avocado", 0)
    assert solve(STUDY_EXAMPLE.replace("left by 90", "left by 270")) == ("avocado", 0)
    assert solve(STUDY_EXAMPLE.replace("left by 90", "right by 360")) == ("router", 270)
    assert solve(STUDY_EXAMPLE.replace("left by 90", "left by 0")) == ("router", 270)
    assert solve(STUDY_EXAMPLE.replace("left by 90", "left by 180")) == ("unknown", 90)


def test_solver_heading_matches_generator_steps_for_eight_slots():
    for it in make_items(2000, seed=3, cfg=BenchConfig(style="story", n_slots=8, unanswerable_frac=0.3)):
        answer, heading = solve(it["prompt"])
        assert answer == it["answer"]
        assert heading == it["steps"][-1]["heading_after"]


def test_solver_reads_phrasings_independently():
    story = ("You are in a kitchen, facing the sink. Then you turn left. You now see the oven. "
             "After that, you make a three-quarter turn to the right. What is in front of you now?")
    assert solve(story) == ("unknown", 180)
    story2 = story.replace("three-quarter turn to the right", "spin 450 degrees to your right")
    assert solve(story2) == ("sink", 0)
    assert solve("You are in a den, facing the lamp. Then you rotate 270 degrees counterclockwise. "
                 "In front of you is the door. Now you turn around. What is in front of you now?")[1] == 270


@pytest.mark.parametrize("style", ["paper", "story"])
def test_item_fields_and_probe_labels(style):
    items = make_items(40, seed=11, cfg=BenchConfig(style=style))
    for it in items:
        for key in ("id", "seed", "room", "n_slots", "slot_objects", "steps", "prompt", "answer", "answer_slot",
                    "candidates", "answerable", "n_steps", "step_ends", "question_end", "style", "final_angle",
                    "final_direction"):
            assert key in it
        assert len(it["steps"]) == it["n_steps"] == len(it["step_ends"]) == len(it["label_heading_slot"])
        prompt = it["prompt"]
        if style == "story":
            assert prompt[it["question_end"] - 1] == "?"
            assert all(prompt[end - 1] == "." for end in it["step_ends"])
        else:
            assert it["question_end"] == len(prompt) and prompt.endswith("\nObservation:")
            for step, end in zip(it["steps"], it["step_ends"]):  # a step ends with its observation line
                line = prompt[: end].rsplit("\n", 1)[1]
                assert line == (f"Observation: {step['observed']}" if step["observed"] else "Action: " + prompt[slice(*step["span"])])
        cum, seen = 0, {0: it["slot_objects"][0]}
        for step, slot, angle, observed, obj in zip(it["steps"], it["label_heading_slot"], it["label_cum_angle"],
                                                    it["label_observed"], it["label_object_at_heading"]):
            cum += signed_angle(step["angle"], step["direction"])
            assert angle == cum and slot == (cum % 360) // 90 == step["slot_after"]
            if step["observed"]:
                seen.setdefault(cum % 360, step["observed"])
            assert observed == (cum % 360 in seen) and obj == seen.get(cum % 360, "unknown")
            start, end = step["span"]
            assert prompt[start:end].split()[0].lower() in ("turn", "rotate", "spin", "make")
        if it["answerable"]:
            assert it["answer"] == it["slot_objects"][it["answer_slot"]]
        assert it["answer"] in it["candidates"] and "unknown" in it["candidates"]  # balanced default: both styles


@pytest.mark.parametrize("style", ["paper", "story"])
def test_unanswerable_fraction_and_unknown_candidate(style):
    items = make_items(2000, seed=1, cfg=BenchConfig(style=style, unanswerable_frac=0.25))
    frac = sum(not it["answerable"] for it in items) / len(items)
    assert 0.2 < frac < 0.3
    for it in items:
        assert "unknown" in it["candidates"]
        assert (it["answer"] == "unknown") == (not it["answerable"])
    answerable = make_items(500, seed=1, cfg=BenchConfig(style=style, unanswerable_frac=0))
    assert all(it["answerable"] for it in answerable)
    assert all(("unknown" in it["candidates"]) == (style == "paper") for it in answerable)


def test_default_unknown_rate_is_one_candidate_share():
    items = make_items(4000, seed=2)
    rate = sum(not it["answerable"] for it in items) / len(items)
    share = sum(1 / len(it["candidates"]) for it in items) / len(items)  # unknown as likely as each object
    assert abs(rate - share) < 0.01 and 0.27 < rate < 0.33


def test_templates_are_data_and_all_used():
    assert len(ROTATION_TEMPLATES) >= 8
    used4 = Counter(s["template_id"] for it in make_items(3000, seed=2, cfg=STORY) for s in it["steps"])
    assert set(used4) == {t["id"] for t in ROTATION_TEMPLATES if template_turns(t, 4)}
    cfg8 = BenchConfig(style="story", n_slots=8)
    used8 = Counter(s["template_id"] for it in make_items(3000, seed=2, cfg=cfg8) for s in it["steps"])
    assert "eighth_turn" in used8


def test_adding_a_template_needs_no_code(monkeypatch):
    new = {"id": "pivot", "text": "turn yourself {angle} degrees {clock}", "angles": None, "dirs": ["left", "right"]}
    monkeypatch.setattr("vru_lens.bench.templates.ROTATION_TEMPLATES", [*ROTATION_TEMPLATES, new])
    monkeypatch.setattr("vru_lens.bench.world.ROTATION_TEMPLATES", [*ROTATION_TEMPLATES, new])
    monkeypatch.setattr("vru_lens.bench.generate.T.TEMPLATE_IDS", [*TEMPLATE_IDS, "pivot"])
    items = make_items(300, seed=4, cfg=BenchConfig(style="story", templates=("pivot",)))
    assert all(s["template_id"] == "pivot" for it in items for s in it["steps"])
    assert all(solve(it["prompt"])[0] == it["answer"] for it in items)


@pytest.mark.parametrize("kwargs, message", [
    (dict(n_slots=6), "4 or 8"),
    (dict(min_steps=1), "steps"),
    (dict(max_steps=9), "steps"),
    (dict(templates=("nope",)), "unknown template id"),
    (dict(unanswerable_frac=1.5), "unanswerable_frac"),
    (dict(style="story", n_slots=4, templates=("eighth_turn",)), "no rotation template"),
    (dict(n_slots=8), "style='story'"),
    (dict(style="poem"), "style must be"),
])
def test_bad_config_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BenchConfig(**kwargs)


def test_splits_disjoint_seeds_and_holdouts(tmp_path):
    splits = make_splits(300, 50, 300, seed=5, cfg=STORY, heldout_templates=("turn_around", "rotate_deg_clock"),
                         heldout_objects=("lamp", "window"))
    seeds = {k: {it["seed"] for it in v} for k, v in splits.items()}
    assert not (seeds["train"] & seeds["test"]) and not (seeds["train"] & seeds["validation"])
    fit = splits["train"] + splits["validation"]
    assert not any(s["template_id"] in ("turn_around", "rotate_deg_clock") for it in fit for s in it["steps"])
    assert not any(o in ("lamp", "window") for it in fit for o in it["slot_objects"])
    assert any(it["uses_heldout_template"] for it in splits["test"])
    assert any(o in ("lamp", "window") for it in splits["test"] for o in it["slot_objects"])
    save(splits, tmp_path / "vb")
    back = load(tmp_path / "vb")
    assert back["test"][0]["prompt"] == splits["test"][0]["prompt"] and len(back["train"]) == 300
    assert load(tmp_path / "vb" / "validation.jsonl")["validation"] == splits["validation"]
    with pytest.raises(FileNotFoundError, match="vru-lens bench"):
        load(tmp_path / "missing")


@pytest.mark.parametrize("style", ["paper", "story"])
@pytest.mark.parametrize("kind", ["observed", "unknown"])
def test_counterfactual_variants_change_only_the_final_rotation(style, kind):
    found = 0
    for it in make_items(300, seed=9, cfg=BenchConfig(style=style)):
        start, end = it["steps"][-1]["span"]
        for v in counterfactual_variants(it, kind):
            found += 1
            assert v["prompt"][:start] == it["prompt"][:start]
            tail = len(it["prompt"]) - end
            assert v["prompt"][len(v["prompt"]) - tail:] == it["prompt"][end:]
            assert v["answer"] != it["answer"] and solve(v["prompt"])[0] == v["answer"]
            assert ("unknown" in (v["answer"], it["answer"])) == (kind == "unknown")
            if style == "paper":  # the study's rewrite: the final direction flips, nothing else
                assert v["prompt"][start:].replace("right", "X").replace("left", "right").replace("X", "left") \
                    == it["prompt"][start:]
    assert found > 15


def test_build_pairs_drops_and_counts_unmatched():
    items = make_items(200, seed=9, cfg=BenchConfig(style="story", unanswerable_frac=0.2))
    words = lambda text: len(text.split())  # a toy tokenizer: one token per word  # noqa: E731
    pairs = build_pairs(items, words, lambda a: a)
    assert len(pairs) + sum(pairs.dropped.values()) == len(items)
    assert pairs.dropped["unanswerable"] == sum(not it["answerable"] for it in items)
    for clean, corrupt in zip(pairs.clean_prompts, pairs.corrupt_prompts):
        assert words(clean) == words(corrupt)
    with pytest.raises(ValueError, match="no observed counterfactual pair"):
        build_pairs(items[:3], lambda p: len(p), lambda a: 0)
    paper = make_items(400, seed=9)
    unknown = build_pairs(paper, words, lambda a: a, kind="unknown")
    assert unknown.kind == "unknown" and "unknown" in unknown.summary() and 0 < unknown.yield_ < 1
    for clean, corrupt in zip(unknown.clean_answers, unknown.corrupt_answers):
        assert (clean == "unknown") != (corrupt == "unknown")


@pytest.mark.parametrize("style", ["paper", "story"])
def test_no_rotation_blind_rule_beats_chance_on_5000_test_items(style):
    report = audit(make_items(5000, seed=0, cfg=BenchConfig(style=style), split="test"))
    assert len(report["rules"]) >= 10
    over = {k: round(v - report["chance"], 4) for k, v in report["rules"].items() if v > report["chance"] + 0.02}
    assert over == {}


def test_audit_catches_a_shortcut_and_rules_pick_one_candidate():
    from vru_lens.bench.shortcuts import picks

    items = make_items(300, seed=4, cfg=BenchConfig(balance=False))
    for it in items:
        assert all(p in it["candidates"] for p in picks(it).values())
    # keep only items whose answer is the first object: the audit must flag "first object"
    biased = [it for it in items if it["answer"] == it["candidates"][0]]
    report = audit(biased)
    assert report["rules"]["first object"] == 1.0 and report["best"] == ["first object", 1.0]
    assert report["chance"] == pytest.approx(sum(1 / len(it["candidates"]) for it in biased) / len(biased))
    with pytest.raises(ValueError, match="steps"):
        audit([{"prompt": "p", "candidates": ["a"], "answer": "a"}])


@pytest.mark.parametrize("style", ["paper", "story"])
def test_pairable_items_all_have_an_observed_twin(style):
    from vru_lens.bench.generate import PAIRABLE

    cfg = BenchConfig(**{**PAIRABLE.__dict__, "style": style})
    items = make_items(100, seed=3, cfg=cfg)
    assert all(it["answerable"] and counterfactual_variants(it) for it in items)
    words = lambda text: len(text.split())  # noqa: E731
    assert len(build_pairs(items, words, lambda a: a)) >= (100 if style == "paper" else 50)  # left/right: same length


def _published(items):
    """Records in the study's release shape: the prompt text and a free-text answer, under varying keys."""
    out = []
    for i, it in enumerate(items):
        answer = "It cannot be determined." if it["answer"] == "unknown" else f"The {it['answer'].title()}."
        out.append({"question": it["prompt"], "label": answer} if i % 2 else {"input": it["prompt"], "output": answer})
    return out


def test_load_published_format_round_trips_the_generator(tmp_path):
    import json

    from vru_lens.bench import load_vrubench, read_published

    items = make_items(60, seed=12)
    path = tmp_path / "vru.json"
    path.write_text(json.dumps(_published(items)))
    rows, report = read_published(path)
    assert report.kept == 60 and not report.disagreements and not report.unreadable
    for got, want in zip(rows, items):
        for key in ("prompt", "answer", "candidates", "answerable", "n_steps", "step_ends", "question_end",
                    "final_angle", "final_direction", "answer_slot", "label_heading_slot", "label_cum_angle",
                    "label_observed", "label_object_at_heading"):
            assert got[key] == want[key], key
        assert [(s["angle"], s["direction"], s["heading_after"], s["observed"], s["span"]) for s in got["steps"]] == \
            [(s["angle"], s["direction"], s["heading_after"], s["observed"], s["span"]) for s in want["steps"]]
    dd = load_vrubench(path)
    assert list(dd) == ["test"] and dd["test"].num_rows == 60 and set(items[0]) <= set(dd["test"].column_names)
    from vru_lens.bench.shortcuts import RANDOM_RULES

    fixed = lambda r: {k: v for k, v in r["rules"].items() if k not in RANDOM_RULES}  # noqa: E731 (random: by id)
    assert fixed(audit(rows)) == fixed(audit(items))  # the rules read loaded items as generated ones
    assert load(path)["test"][0]["answer"] == items[0]["answer"]  # --data FILE goes through the same loader


def test_load_published_reports_disagreements_and_unreadable_records(tmp_path):
    import json

    from vru_lens.bench import load_vrubench, read_published

    items = make_items(10, seed=13)
    records = _published(items)
    wrong = next(i for i, it in enumerate(items) if it["answer"] != "unknown")
    records[wrong] = {"prompt": items[wrong]["prompt"], "answer": "unknown"}  # a label the solver refutes
    records.append({"prompt": "You turn left. What now?", "answer": "lamp"})  # not the published format
    path = tmp_path / "vru.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records))
    rows, report = read_published(path)
    assert len(rows) == report.kept == 9
    assert [d["index"] for d in report.disagreements] == [wrong]
    assert report.disagreements[0]["solver_answer"] == items[wrong]["answer"]
    assert len(report.unreadable) == 1 and "Initial Observation" in report.unreadable[0]["error"]
    assert "solver disagrees with 1" in report.summary()
    kept, _ = read_published(path, on_disagree="keep")
    assert len(kept) == 10 and not kept[wrong]["solver_agrees"]
    with pytest.raises(ValueError, match="disagrees"):
        read_published(path, on_disagree="raise")
    with pytest.warns(UserWarning, match="disagrees"):
        assert load_vrubench(path)["test"].num_rows == 9
