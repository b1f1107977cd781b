"""Logit lens of the answer: the last layer reproduces the model's output; ranks and log-probs are as defined."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vru_lens.bench import BenchConfig, make_items
from vru_lens.logit_lens import LogitLensResult, lens_from_resid, logit_lens
from vru_lens.tokens import answer_ids, encode, render


@pytest.fixture(scope="module")
def model(tiny_llama):
    return tiny_llama


@pytest.fixture(scope="module")
def items():
    return make_items(12, seed=7, cfg=BenchConfig(unanswerable_frac=0))  # the lens reads the answer token


@pytest.fixture(scope="module")
def lens(model, items):
    return logit_lens(model, items, batch_size=5, progress=False)


def _brute(model, item, layer):
    """Full logits at the final position read from run_with_cache at one layer."""
    ids = torch.tensor([encode(model.tokenizer, render(item["prompt"], model.tokenizer))])
    with torch.inference_mode():
        logits, cache = model.run_with_cache(ids, names_filter=lambda n: n.endswith("hook_resid_post"))
        lens_logits = model.ln_final(cache[f"blocks.{layer}.hook_resid_post"][:, -1]) @ model.W_U
        if getattr(model, "b_U", None) is not None:
            lens_logits = lens_logits + model.b_U
    return logits[0, -1], lens_logits[0]


def test_last_layer_is_the_models_output(model, items, lens):
    last = model.cfg.n_layers - 1
    for i in (0, 5, 11):
        logits, lens_logits = _brute(model, items[i], last)
        torch.testing.assert_close(lens_logits, logits, atol=1e-4, rtol=1e-4)
        logp = logits.log_softmax(-1)
        gold = answer_ids(model.tokenizer, items[i]["answer"])[0]
        assert lens.gold_logprob[i, last] == pytest.approx(logp[gold].item(), abs=1e-4)
        assert lens.gold_vocab_rank[i, last] == int((logits > logits[gold]).sum())


def test_ranks_and_best_wrong_match_brute_force(model, items, lens):
    for i in (2, 8):
        item = items[i]
        gold = answer_ids(model.tokenizer, item["answer"])[0]
        wrong = {answer_ids(model.tokenizer, c)[0] for c in item["candidates"] if c != item["answer"]} - {gold}
        assert lens.n_candidates[i] == len(wrong) + 1
        for layer in range(model.cfg.n_layers):
            _, lg = _brute(model, item, layer)
            logp = lg.log_softmax(-1)
            best = max(wrong, key=lambda t: lg[t].item())
            assert lens.gold_rank[i, layer] == sum(lg[t] > lg[gold] for t in wrong)
            assert lens.wrong_logprob[i, layer] == pytest.approx(logp[best].item(), abs=1e-4)
            assert lens.wrong_vocab_rank[i, layer] == int((lg > lg[best]).sum())
            assert lens.gold_logprob[i, layer] == pytest.approx(logp[gold].item(), abs=1e-4)


def test_summary_frame_plot_roundtrip(lens, tmp_path):
    frame = lens.to_frame()
    assert list(frame["layer"]) == [0, 1, 2]
    np.testing.assert_allclose(frame["gold_top"], (lens.gold_rank == 0).mean(0))
    s = lens.summary()
    assert s["peak_layer"] in s["layers"] and 0 <= s["overtaken_after_peak"] <= 1
    assert len(lens.plot().data) == 4
    back = LogitLensResult.load(lens.save(tmp_path / "lens.json"))
    np.testing.assert_array_equal(back.gold_rank, lens.gold_rank)
    np.testing.assert_array_equal(back.wrong_logprob, lens.wrong_logprob)


def test_needs_answerable_items(model):
    mixed = make_items(10, seed=1, cfg=BenchConfig(unanswerable_frac=0.5))
    assert not all(it["answerable"] for it in mixed)
    with pytest.raises(ValueError, match="needs answerable items"):
        lens_from_resid(model, mixed, torch.zeros(3, len(mixed), model.cfg.d_model))
    with pytest.raises(ValueError, match="residual rows"):
        lens_from_resid(model, mixed[:3], torch.zeros(3, 5, model.cfg.d_model))
