"""Ablation KL (fast == plain reference) and the knockout check (hooks really reach evaluation)."""

import pytest
import torch

from vru_lens.bench import PAIRABLE, make_items
from functools import partial

from vru_lens.evaluate import accuracy, evaluate
from vru_lens.patching.ablation import ablation_kl, ablation_reference, head_means
from vru_lens.patching.knockout import ablate_heads, knockout
from vru_lens.patching.metrics import baseline_logit_diffs
from vru_lens.tokens import tokenize_pairs


@pytest.fixture(scope="module")
def setup(tiny_llama):
    model = tiny_llama
    items = make_items(24, 0, cfg=PAIRABLE)
    return model, items, tokenize_pairs(model.tokenizer, items, max_pairs=4)


@pytest.mark.parametrize("how", ["mean", "scaled_query"])
def test_fast_equals_reference(setup, how):
    model, _, pt = setup
    kl, ld = ablation_kl(model, pt, how, batch_size=3, max_rows=5, progress=False)
    kr, lr = ablation_reference(model, pt, how, progress=False)
    assert kl.shape == (len(pt), model.cfg.n_layers, model.cfg.n_heads)
    assert (kl - kr).abs().max() <= 1e-4 and (ld - lr).abs().max() <= 1e-4
    assert (kl >= -1e-6).all() and kl.max() > 0


def test_head_means_shape_and_padding(setup):
    model, _, pt = setup
    m = head_means(model, pt)
    assert m.shape == (model.cfg.n_layers, model.cfg.n_heads, model.cfg.d_head)
    # padding is excluded: the mean of one pair alone equals the mean over its real tokens
    one = pt[slice(0, 1)]
    n = int(one.lengths[0])
    _, cache = model.run_with_cache(one.clean[:, :n], names_filter="blocks.1.attn.hook_z")
    assert torch.allclose(head_means(model, one)[1], cache["blocks.1.attn.hook_z"][0].mean(0), atol=1e-5)


def test_ablate_heads_reaches_evaluation_and_undoes_itself(setup):
    model, items, pt = setup
    means = head_means(model, pt)
    every = [(l, h) for l in range(model.cfg.n_layers) for h in range(model.cfg.n_heads)]
    before = evaluate(model, items[:6], progress=False).per_item
    with ablate_heads(model, every, means):
        during = evaluate(model, items[:6], progress=False).per_item
        ld_during, _ = baseline_logit_diffs(model, pt)
    after = evaluate(model, items[:6], progress=False).per_item
    ld_after, _ = baseline_logit_diffs(model, pt)
    assert [r["scores"] for r in before] == [r["scores"] for r in after]
    assert [r["scores"] for r in before] != [r["scores"] for r in during]
    assert not torch.allclose(ld_during, ld_after)


def test_knockout_result(setup):
    model, items, pt = setup
    acc = partial(accuracy, batch_size=8)
    res = knockout(model, pt, items[:6], [(0, 1), (2, 3)], n_random=2, seed=0, batch_size=8, accuracy=acc)
    names = [c["name"] for c in res.conditions]
    assert names == ["none", "top", "random0", "random1"]
    assert res.conditions[0]["normalised_ld"] == pytest.approx(1.0)
    for c in res.conditions[2:]:
        assert len(c["heads"]) == 2 and not {tuple(h) for h in c["heads"]} & {(0, 1), (2, 3)}
    s = res.summary()
    assert s["random_k"]["n_draws"] == 2 and "accuracy_drop" in s["top_k"]
    again = knockout(model, pt, items[:6], [(0, 1), (2, 3)], n_random=2, seed=0, batch_size=8, accuracy=acc)
    assert again.conditions == res.conditions  # seeded


def test_knockout_refuses_more_top_heads_than_random_ones_can_match(setup):
    model, items, pt = setup
    top = [(l, h) for l in range(3) for h in range(4)][:7]  # 7 of tiny-llama's 12 heads leave only 5 others
    with pytest.raises(ValueError, match="random heads can be drawn"):
        knockout(model, pt, items[:2], top, n_random=1, accuracy=accuracy)
