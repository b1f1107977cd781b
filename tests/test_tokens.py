import pytest
import torch

from vru_lens.bench import BenchConfig, make_items
from vru_lens.bench.generate import PAIRABLE
from vru_lens.models import tiny_tokenizer
from vru_lens.tokens import answer_ids, encode, is_chat_model, render, step_positions, tokenize_pairs


@pytest.mark.parametrize("chat", [False, True])
@pytest.mark.parametrize("style", ["paper", "story"])
def test_step_positions_point_at_step_ends(chat, style):
    tok = tiny_tokenizer()
    for it in make_items(30, seed=4, cfg=BenchConfig(style=style)):
        text = render(it["prompt"], tok, chat)
        ids = encode(tok, text, chat)
        positions = step_positions(tok, it, chat)
        assert len(positions) == it["n_steps"] + 1
        assert positions == sorted(positions)
        last_chars = [tok.decode(ids[p]).strip()[-1] for p in positions]
        if style == "story":
            assert last_chars == ["."] * it["n_steps"] + ["?"]
        else:  # a step ends with its observation (the last step: with "degrees"); the question with ":"
            want = [(s["observed"] or "degrees")[-1] for s in it["steps"]] + [":"]
            assert last_chars == want


def test_paper_prompts_are_their_own_cue_and_chat_gets_the_system_message():
    tok = tiny_tokenizer()
    it = make_items(1, seed=0)[0]
    assert render(it["prompt"], tok) == it["prompt"]  # plain: ends in "Observation:", answer " lamp"
    chat = render(it["prompt"], tok, chat=True)
    assert chat == f"<|system|>You are a helpful assistant\n<|user|>{it['prompt']}\n<|assistant|>"
    story = make_items(1, seed=0, cfg=BenchConfig(style="story"))[0]
    assert render(story["prompt"], tok).endswith("\nAnswer:")


def test_chat_models_are_told_apart_from_base_models():
    tok = tiny_tokenizer()
    assert is_chat_model(tok, "smollm2-135m-instruct") and is_chat_model(tok, "google/gemma-3-270m-it")
    assert not is_chat_model(tok, "gemma-3-270m") and not is_chat_model(tok, "tiny-llama")


def test_chat_rendering_uses_the_template_and_answers_start_the_turn():
    tok = tiny_tokenizer()
    text = render("Where?", tok, chat=True)
    assert text.startswith("<|user|>Where?") and text.endswith("<|assistant|>")
    assert tok.decode(answer_ids(tok, "lamp", chat=True)) == "lamp"
    assert tok.decode(answer_ids(tok, "lamp")) == " lamp"


def test_pairs_have_equal_length_and_distinct_answer_tokens():
    tok = tiny_tokenizer()
    pt = tokenize_pairs(tok, make_items(80, seed=6, cfg=PAIRABLE))
    assert len(pt) > 70
    for i in range(len(pt)):
        n = int(pt.lengths[i])
        assert len(encode(tok, render(pt.pairs.clean_prompts[i], tok))) == n
        assert len(encode(tok, render(pt.pairs.corrupt_prompts[i], tok))) == n
        assert not torch.equal(pt.clean[i, :n], pt.corrupt[i, :n])
    assert (pt.clean_answer != pt.corrupt_answer).all()
    assert len(pt) + sum(pt.pairs.dropped.values()) == 80


def test_object_vs_unknown_pairs_are_a_labelled_second_set():
    tok = tiny_tokenizer()
    pt = tokenize_pairs(tok, make_items(200, seed=6), kind="unknown")
    assert pt.pairs.kind == "unknown" and len(pt) > 10
    assert all((a == "unknown") != (b == "unknown") for a, b in zip(pt.pairs.clean_answers, pt.pairs.corrupt_answers))
