import pytest
import torch
from candidate_loop import candidate_loop

from vru_lens.bench import BenchConfig, make_items
from vru_lens.evaluate import audit
from vru_lens.evaluate import EvalResult, evaluate, match_answer, match_generation, normalise, score_candidates
from vru_lens.tokens import answer_ids


def loop_scores(model, items, chat=False):
    """The obvious reference, through the bridge: one unpadded forward per (item, candidate)."""
    return candidate_loop(lambda ids: model(ids)[0], model.tokenizer, items, chat)


@pytest.mark.parametrize("chat", [False, True])
def test_batched_scores_equal_one_item_loop(tiny_llama, chat):
    items = make_items(6, seed=3, cfg=BenchConfig(style="story", unanswerable_frac=0.3)) + make_items(6, seed=3)
    batched = score_candidates(tiny_llama, items, chat=chat, batch_size=5, progress=False)
    reference = loop_scores(tiny_llama, items, chat)
    multi_token = 0
    for got, want, it in zip(batched, reference, items):
        assert got.keys() == want.keys()
        for c in got:
            assert abs(got[c] - want[c]) < 1e-4
            multi_token += len(answer_ids(tiny_llama.tokenizer, c, chat)) > 1
    assert multi_token > 0  # the multi-token path is exercised


def test_result_breakdowns_and_round_trip(tiny_gpt2, tmp_path):
    items = make_items(20, seed=1)
    res = evaluate(tiny_gpt2, items, batch_size=8, progress=False)
    assert res.n == 20 and 0 <= res.accuracy <= 1
    counts = res.counts("n_steps")
    assert sum(counts.values()) == 20
    assert abs(sum(res.by_steps[k] * counts[k] for k in counts) / 20 - res.accuracy) < 1e-9
    back = EvalResult.load(res.save(tmp_path / "r.json"))
    assert back.accuracy == res.accuracy and back.per_item[0]["pred"] == res.per_item[0]["pred"]
    assert list(res.to_frame().columns)[:4] == ["id", "answer", "pred", "correct"]
    assert "steps" in res.table()
    assert res.chance == pytest.approx(sum(1 / len(it["candidates"]) for it in items) / 20)
    assert res.best_rule == tuple(audit(items)["best"]) and "best rotation-blind rule" in res.table()
    assert back.best_rule == res.best_rule
    for key in ("answerable", "final_direction", "final_angle"):
        counts = res.counts(key)
        assert abs(sum(res.breakdown(key)[k] * counts[k] for k in counts) / 20 - res.accuracy) < 1e-9


def test_any_dataset_with_prompt_candidates_answer(tiny_llama):
    import datasets

    ds = datasets.Dataset.from_list([
        {"prompt": "The sky is", "candidates": ["blue", "green"], "answer": "blue"},
        {"prompt": "Two plus two is", "candidates": ["four", "five"], "answer": "four"},
    ])
    res = evaluate(tiny_llama, ds, progress=False)
    assert res.n == 2 and res.summary()["accuracy"] == res.accuracy
    with pytest.raises(ValueError, match="missing"):
        evaluate(tiny_llama, [{"prompt": "x", "answer": "y"}], progress=False)
    with pytest.raises(ValueError, match="empty"):
        evaluate(tiny_llama, [], progress=False)
    with pytest.raises(ValueError, match="not among"):
        evaluate(tiny_llama, [{"prompt": "x", "candidates": ["a"], "answer": "b"}], progress=False)


def test_generation_and_candidates_side_by_side(tiny_llama):
    items = make_items(4, seed=2)
    both = evaluate(tiny_llama, items, method="both", progress=False)
    assert both.n == 4 and all({"generated", "gen_pred", "gen_correct", "pred", "scores"} <= r.keys() for r in both.per_item)
    assert both.accuracy == evaluate(tiny_llama, items, progress=False).accuracy
    gen = evaluate(tiny_llama, items, method="generate", progress=False)
    assert gen.generation_accuracy == both.generation_accuracy == gen.accuracy and gen.candidate_accuracy is None
    assert [r["gen_pred"] for r in gen.per_item] == [match_generation(r["generated"], it["candidates"])
                                                     for r, it in zip(gen.per_item, items)]
    assert "generation accuracy" in both.table() and "candidate log-prob accuracy" in both.table()
    assert "generation_by_answerable" in both.summary() and "answers 'unknown'" in both.table()
    assert both.says_unknown("gen_pred") == sum(r["gen_pred"] == "unknown" for r in both.per_item) / 4
    assert match_answer("I think it is the Lamp, not the door.", ["door", "lamp"]) == "lamp"
    assert match_answer("nothing here", ["door"]) == ""
    with pytest.raises(ValueError, match="method"):
        evaluate(tiny_llama, make_items(1, seed=2), method="beam", progress=False)


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2", "tiny-llava"])
def test_rows_logits_equal_bridge_logits_and_see_hooks(name):
    from vru_lens.models import load_model
    from vru_lens.readout import rows_logits

    model = load_model(name, device="cpu")
    ids = torch.randint(3, 400, (2, 9))
    pos = torch.tensor([[8, 3], [5, 5]])
    rows = torch.arange(2)[:, None]
    with torch.inference_mode():
        assert (rows_logits(model, ids, pos) - model(ids)[rows, pos]).abs().max() < 1e-4
        zero = [("blocks.0.attn.hook_z", lambda z, hook: z * 0)]
        with model.hooks(fwd_hooks=zero):
            assert (rows_logits(model, ids, pos) - model(ids)[rows, pos]).abs().max() < 1e-4
            ablated = rows_logits(model, ids, pos)
        assert (ablated - rows_logits(model, ids, pos)).abs().max() > 1e-4


@pytest.mark.parametrize("text, want", [
    (" lamp\nAction: Turn to the left by 90 degrees", "lamp"),
    ("The Lamp.", "lamp"),
    ("Observation: a lamp", "lamp"),
    ("  \n  Unknown.", "unknown"),
    ("It cannot be determined based on previous observations.", "unknown"),
    ("Cannot be determined", "unknown"),
    ("I don't know", "unknown"),
    ("lamp and door", "lamp and door"),
    ("", ""),
])
def test_normalise_like_the_study(text, want):
    assert normalise(text) == want


def test_generation_is_exact_match_after_normalising():
    cands = ["door", "lamp", "unknown"]
    assert match_generation("The door.", cands) == "door"
    assert match_generation("cannot be determined", cands) == "unknown"
    assert match_generation("the lamp or the door", cands) == "lamp or door"  # not a candidate: wrong
