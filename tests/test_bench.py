import time
from collections import Counter

import pytest

from vru_lens.bench import (
    ROTATION_TEMPLATES, TEMPLATE_IDS, BenchConfig, build_pairs, counterfactual_variants, load, make_items, make_splits,
    save, solve,
)
from vru_lens.bench.world import signed_angle, template_turns


def test_twenty_thousand_items_fast_deterministic_and_solver_agrees():
    cfg = BenchConfig(unanswerable_frac=0.2)
    start = time.perf_counter()
    items = make_items(20_000, seed=7, cfg=cfg)
    elapsed = time.perf_counter() - start
    assert elapsed < 60  # generous guard against accidental quadratic work; the goal (<10 s) is in the note
    disagree = [it["id"] for it in items if solve(it["prompt"])[0] != it["answer"]]
    assert disagree == []
    again = make_items(200, seed=7, cfg=cfg)
    assert again == items[:200]
    assert make_items(50, seed=8, cfg=cfg) != items[:50]


def test_solver_heading_matches_generator_steps_for_eight_slots():
    for it in make_items(2000, seed=3, cfg=BenchConfig(n_slots=8, unanswerable_frac=0.3)):
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


def test_item_fields_and_probe_labels():
    it = make_items(1, seed=11)[0]
    for key in ("id", "seed", "room", "n_slots", "slot_objects", "steps", "prompt", "answer", "answer_slot",
                "candidates", "answerable", "n_steps", "step_ends", "question_end"):
        assert key in it
    assert len(it["steps"]) == it["n_steps"] == len(it["step_ends"]) == len(it["label_heading_slot"])
    assert it["prompt"][it["question_end"] - 1] == "?"
    for end in it["step_ends"]:
        assert it["prompt"][end - 1] == "."
    cum = 0
    for step, slot, angle in zip(it["steps"], it["label_heading_slot"], it["label_cum_angle"]):
        cum += signed_angle(step["angle"], step["direction"])
        assert angle == cum and slot == (cum % 360) // 90 == step["slot_after"]
        start, end = step["span"]
        assert it["prompt"][start:end].split()[0] in ("turn", "rotate", "spin", "make")
    assert it["answer"] == it["slot_objects"][it["answer_slot"]]
    assert it["answer"] in it["candidates"] and "unknown" not in it["candidates"]


def test_unanswerable_fraction_and_unknown_candidate():
    items = make_items(2000, seed=1, cfg=BenchConfig(unanswerable_frac=0.25))
    frac = sum(not it["answerable"] for it in items) / len(items)
    assert 0.2 < frac < 0.3
    for it in items:
        assert "unknown" in it["candidates"]
        assert (it["answer"] == "unknown") == (not it["answerable"])


def test_templates_are_data_and_all_used():
    assert len(ROTATION_TEMPLATES) >= 8
    used4 = Counter(s["template_id"] for it in make_items(3000, seed=2) for s in it["steps"])
    assert set(used4) == {t["id"] for t in ROTATION_TEMPLATES if template_turns(t, 4)}
    used8 = Counter(s["template_id"] for it in make_items(3000, seed=2, cfg=BenchConfig(n_slots=8)) for s in it["steps"])
    assert "eighth_turn" in used8


def test_adding_a_template_needs_no_code(monkeypatch):
    new = {"id": "pivot", "text": "turn yourself {angle} degrees {clock}", "angles": None, "dirs": ["left", "right"]}
    monkeypatch.setattr("vru_lens.bench.templates.ROTATION_TEMPLATES", [*ROTATION_TEMPLATES, new])
    monkeypatch.setattr("vru_lens.bench.world.ROTATION_TEMPLATES", [*ROTATION_TEMPLATES, new])
    monkeypatch.setattr("vru_lens.bench.generate.T.TEMPLATE_IDS", [*TEMPLATE_IDS, "pivot"])
    items = make_items(300, seed=4, cfg=BenchConfig(templates=("pivot",)))
    assert all(s["template_id"] == "pivot" for it in items for s in it["steps"])
    assert all(solve(it["prompt"])[0] == it["answer"] for it in items)


@pytest.mark.parametrize("kwargs, message", [
    (dict(n_slots=6), "4 or 8"),
    (dict(min_steps=1), "steps"),
    (dict(max_steps=6), "steps"),
    (dict(templates=("nope",)), "unknown template id"),
    (dict(unanswerable_frac=1.5), "unanswerable_frac"),
    (dict(n_slots=4, templates=("eighth_turn",)), "no rotation template"),
])
def test_bad_config_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BenchConfig(**kwargs)


def test_splits_disjoint_seeds_and_holdouts(tmp_path):
    splits = make_splits(300, 50, 300, seed=5, heldout_templates=("turn_around", "rotate_deg_clock"),
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


def test_counterfactual_variants_change_only_the_final_rotation():
    for it in make_items(300, seed=9):
        start, end = it["steps"][-1]["span"]
        for v in counterfactual_variants(it):
            assert v["prompt"][:start] == it["prompt"][:start]
            tail = len(it["prompt"]) - end
            assert v["prompt"][len(v["prompt"]) - tail:] == it["prompt"][end:]
            assert v["answer"] != it["answer"] and solve(v["prompt"])[0] == v["answer"]


def test_build_pairs_drops_and_counts_unmatched():
    items = make_items(200, seed=9, cfg=BenchConfig(unanswerable_frac=0.2))
    words = lambda text: len(text.split())  # a toy tokenizer: one token per word  # noqa: E731
    pairs = build_pairs(items, words, lambda a: a)
    assert len(pairs) + sum(pairs.dropped.values()) == len(items)
    assert pairs.dropped["unanswerable"] == sum(not it["answerable"] for it in items)
    for clean, corrupt in zip(pairs.clean_prompts, pairs.corrupt_prompts):
        assert words(clean) == words(corrupt)
    with pytest.raises(ValueError, match="no counterfactual pair"):
        build_pairs(items[:3], lambda p: len(p), lambda a: 0)


def test_rotation_blind_guess_beats_chance():
    from vru_lens.bench.shortcuts import blind_accuracy, blind_guess

    item = make_items(1, 0, split="test")[0]  # the docs' example: start at the computer, see counter, plant
    item = {**item, "candidates": ["computer", "counter", "plant"], "steps": [
        {"observed": "counter"}, {"observed": "plant"}, {"observed": None}]}
    assert blind_guess(item) == "computer"
    assert blind_guess({**item, "steps": [{"observed": "computer"}, {"observed": None}]}) == "counter"
    assert blind_guess({"prompt": "p", "candidates": ["a"], "answer": "a"}) is None  # not a VRUBench item
    items = make_items(600, 4)
    chance = sum(1 / len(it["candidates"]) for it in items) / len(items)
    assert blind_accuracy(items) > chance + 0.08  # the bias the docs warn about, on the default config
