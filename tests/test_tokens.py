import pytest
import torch

from vru_lens.bench import make_items
from vru_lens.models import tiny_tokenizer
from vru_lens.tokens import answer_ids, encode, render, step_positions, tokenize_pairs


@pytest.mark.parametrize("chat", [False, True])
def test_step_positions_point_at_step_ends(chat):
    tok = tiny_tokenizer()
    for it in make_items(30, seed=4):
        text = render(it["prompt"], tok, chat)
        ids = encode(tok, text, chat)
        positions = step_positions(tok, it, chat)
        assert len(positions) == it["n_steps"] + 1
        assert positions == sorted(positions)
        assert [tok.decode(ids[p]).strip()[-1] for p in positions] == ["."] * it["n_steps"] + ["?"]


def test_chat_rendering_uses_the_template_and_answers_start_the_turn():
    tok = tiny_tokenizer()
    text = render("Where?", tok, chat=True)
    assert text.startswith("<|user|>Where?") and text.endswith("<|assistant|>")
    assert tok.decode(answer_ids(tok, "lamp", chat=True)) == "lamp"
    assert tok.decode(answer_ids(tok, "lamp")) == " lamp"


def test_pairs_have_equal_length_and_distinct_answer_tokens():
    tok = tiny_tokenizer()
    pt = tokenize_pairs(tok, make_items(80, seed=6))
    assert len(pt) > 20
    for i in range(len(pt)):
        n = int(pt.lengths[i])
        assert len(encode(tok, render(pt.pairs.clean_prompts[i], tok))) == n
        assert len(encode(tok, render(pt.pairs.corrupt_prompts[i], tok))) == n
        assert not torch.equal(pt.clean[i, :n], pt.corrupt[i, :n])
    assert (pt.clean_answer != pt.corrupt_answer).all()
    assert len(pt) + sum(pt.pairs.dropped.values()) == 80
