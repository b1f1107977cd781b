"""A task of the user's own: PairTokens.from_prompts, and the path through rank_heads, knockout and finetune."""

import numpy as np
import pytest
import torch

from vru_lens.bench import PAIRABLE, make_items
from vru_lens.models import tiny_tokenizer
from vru_lens.patching import knockout, rank_heads
from vru_lens.patching.rank import METHODS
from vru_lens.tokens import PairTokens, PromptPairs, render, tokenize_pairs

torch.set_num_threads(1)

CLEAN = ["You see a lamp. Then you see a door. What is first? A", "You see a sofa. Then you see a chair. What is last? A"]
CORRUPT = ["You see a door. Then you see a lamp. What is first? A", "You see a sofa. Then you see a plant. What is last? A"]


def user_pairs(tok, **kw):
    return PairTokens.from_prompts(tok, CLEAN, CORRUPT, [" lamp", " chair"], [" door", " plant"], **kw)


def test_plain_prompts_are_the_tokenizers_own_ids():
    """Each prompt is exactly tokenizer(prompt) (its special tokens included); each answer its one token."""
    tok = tiny_tokenizer()
    for a in (" lamp", " door", " chair", " plant"):  # the test is about single-token answers
        assert len(tok(a, add_special_tokens=False)["input_ids"]) == 1
    pt = user_pairs(tok, chat=False)
    assert isinstance(pt.pairs, PromptPairs) and pt.pairs.summary()["n_pairs"] == 2 and not pt.pairs.chat
    for i, (c, x) in enumerate(zip(CLEAN, CORRUPT)):
        want_c, want_x = tok(c)["input_ids"], tok(x)["input_ids"]
        n = int(pt.lengths[i])
        assert pt.clean[i, :n].tolist() == want_c and pt.corrupt[i, :n].tolist() == want_x
    assert pt.clean_answer.tolist() == [tok(" lamp", add_special_tokens=False)["input_ids"][0],
                                        tok(" chair", add_special_tokens=False)["input_ids"][0]]
    assert pt.clean_examples()[0] == (tok(CLEAN[0])["input_ids"] + [int(pt.clean_answer[0])], int(pt.lengths[0]))


def test_chat_prompts_go_through_the_template_and_ids_are_kept():
    tok = tiny_tokenizer()
    pt = PairTokens.from_prompts(tok, ["Say lamp"], ["Say door"], [" lamp"], [" door"], chat=True)
    want = tok.apply_chat_template([{"role": "user", "content": "Say lamp"}], tokenize=True, add_generation_prompt=True)
    want = want["input_ids"] if isinstance(want, dict) or hasattr(want, "keys") else want
    assert pt.clean[0].tolist() == list(want) and pt.pairs.chat
    assert tok.decode(pt.clean[0]).endswith("<|assistant|>")
    ids = PairTokens.from_prompts(tok, [[5, 6, 7]], [[5, 8, 7]], [9], [10])
    assert ids.clean.tolist() == [[5, 6, 7]] and ids.clean_answer.tolist() == [9] and not ids.pairs.chat


def test_vru_pairs_rebuilt_from_their_prompts_give_the_same_tokens():
    """from_prompts on the rendered VRUBench pairs == tokenize_pairs (an independent path to the same ids)."""
    tok = tiny_tokenizer()
    ref = tokenize_pairs(tok, make_items(40, 2, PAIRABLE), max_pairs=8)
    p = ref.pairs
    got = PairTokens.from_prompts(tok, [render(x, tok) for x in p.clean_prompts], [render(x, tok) for x in p.corrupt_prompts],
                                  [" " + a for a in p.clean_answers], [" " + a for a in p.corrupt_answers], chat=False,
                                  answer_token="first")
    for name in ("clean", "corrupt", "lengths", "clean_answer", "corrupt_answer"):
        assert torch.equal(getattr(got, name), getattr(ref, name)), name


def test_bad_pairs_are_refused_by_name():
    tok = tiny_tokenizer()
    with pytest.raises(ValueError, match=r"pair 1 has unequal token lengths"):
        PairTokens.from_prompts(tok, ["a lamp", "a lamp"], ["a door", "a door and a tree"], [" lamp", " lamp"], [" door", " door"])
    long = " lampshade-zebra"
    assert len(tok(long, add_special_tokens=False)["input_ids"]) > 1
    with pytest.raises(ValueError, match=r"pair 0: the clean answer ' lampshade-zebra' is \d+ tokens.*answer_token='first'"):
        PairTokens.from_prompts(tok, ["a lamp"], ["a door"], [long], [" door"])
    pt = PairTokens.from_prompts(tok, ["a lamp"], ["a door"], [long], [" door"], answer_token="first")
    assert pt.pairs.multi_token == [0] and pt.clean_answer[0] == tok(long, add_special_tokens=False)["input_ids"][0]
    with pytest.raises(ValueError, match="read the same token"):
        PairTokens.from_prompts(tok, ["a lamp"], ["a door"], [" lamp"], [" lamp"])
    with pytest.raises(ValueError, match="equally long"):
        PairTokens.from_prompts(tok, ["a lamp", "b"], ["a door"], [" lamp"], [" door"])
    with pytest.raises(ValueError, match="chat must be False"):
        PairTokens.from_prompts(tok, [[5, 6]], [[5, 7]], [9], [10], chat=True)
    with pytest.raises(ValueError, match="answer_token must be one of"):
        PairTokens.from_prompts(tok, ["a"], ["b"], [" lamp"], [" door"], answer_token="last")


@pytest.fixture(scope="module")
def task(tiny_llama):
    return tiny_llama, user_pairs(tiny_llama.tokenizer, chat=False)


def test_every_ranking_method_runs_on_user_pairs(task, tiny_llama):
    """Every registered method ranks the user's pairs, and gives the numbers it gives on the same tokens
    reached through tokenize_pairs' PairTokens shape (the pairs' source does not enter the computation)."""
    model, pt = task
    plain = PairTokens(pt.clean, pt.corrupt, pt.lengths, pt.clean_answer, pt.corrupt_answer, None)
    for method in METHODS:
        hs = rank_heads(model, pt, method, n_boot=10, progress=False, batch_size=1)
        assert hs.method == method and hs.n_pairs == 2 and hs.scores.shape == (3, 4)
        assert hs.meta["pairs"] == pt.pairs.summary()
        again = rank_heads(model, plain, method, n_boot=0, progress=False, batch_size=2)
        np.testing.assert_allclose(hs.scores, again.scores, rtol=1e-4, atol=1e-5)


def test_knockout_scores_the_pairs_themselves(task):
    """accuracy=None: the unablated accuracy is the share of clean prompts where the clean answer's logit beats
    the corrupt answer's, read here from the model's full logits."""
    model, pt = task
    with torch.inference_mode():
        direct = []
        for i in range(len(pt)):
            n = int(pt.lengths[i])
            logits = model(pt.clean[i : i + 1, :n])[0, -1]
            direct.append(float(logits[pt.clean_answer[i]] > logits[pt.corrupt_answer[i]]))
    res = knockout(model, pt, None, [(0, 1), (2, 3)], n_random=2, accuracy=None)
    assert res.conditions[0]["accuracy"] == pytest.approx(sum(direct) / len(direct))
    assert [c["name"] for c in res.conditions] == ["none", "top", "random0", "random1"]
    with pytest.raises(ValueError, match="items are scored by accuracy"):
        knockout(model, pt, ["item"], [(0, 1)], accuracy=None)


def test_finetune_trains_on_the_pairs_clean_answers(tiny_llama):
    """run_experiment with user splits: the chosen heads learn the clean answers (their log-prob rises on the
    train pairs) and the model is unchanged afterwards."""
    from vru_lens.finetune import FinetuneConfig, TrainConfig, run_experiment

    model = tiny_llama
    pt = user_pairs(model.tokenizer, chat=False)

    def clean_logprob(m, p):
        with torch.inference_mode():
            out = []
            for i in range(len(p)):
                n = int(p.lengths[i])
                out.append(float(m(p.clean[i : i + 1, :n])[0, -1].float().log_softmax(-1)[p.clean_answer[i]]))
        return sum(out) / len(out)

    measure = lambda m, p: {"test": clean_logprob(m, p)}  # noqa: E731
    before = clean_logprob(model, pt)
    cfg = FinetuneConfig(method="heads", top_k=2, train=TrainConfig(steps=30, batch_size=2, lr=3e-2, warmup_steps=2,
                                                                      eval_every=0))
    res = run_experiment(model, cfg, [(1, 0), (2, 1)], measure=measure, accuracy=clean_logprob, progress=False,
                         log=lambda *a: None, splits={"train": pt, "validation": None, "test": pt})
    assert res.vru_accuracy_before == pytest.approx(before)
    assert res.vru_accuracy_after > before + 0.5, (before, res.vru_accuracy_after)
    assert res.data["pairs"] == {"train": 2, "test": 2} and res.heads == [[1, 0], [2, 1]]
    assert clean_logprob(model, pt) == pytest.approx(before)
    with pytest.raises(ValueError, match="splits needs train and test"):
        run_experiment(model, cfg, [(1, 0)], measure=measure, accuracy=clean_logprob, splits={"train": pt})
