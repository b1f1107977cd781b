"""Fast activation patching equals the plain one-hook-per-head reference and TransformerLens's own."""

import pytest
import torch

from vru_lens.bench import PAIRABLE_STORY, make_items
from vru_lens.patching.activation import (activation_patch_heads, activation_patch_heads_by_pos,
                                          activation_patch_heads_reference, gqa_groups, tl_head_out_all_pos)
from vru_lens.patching.tail import first_diff
from vru_lens.tokens import tokenize_pairs

TOL = 1e-4


@pytest.fixture(scope="module")
def llama(tiny_llama):
    model = tiny_llama
    return model, tokenize_pairs(model.tokenizer, make_items(24, 0, cfg=PAIRABLE_STORY), max_pairs=4)


@pytest.fixture(scope="module")
def gpt2(tiny_gpt2):
    model = tiny_gpt2
    return model, tokenize_pairs(model.tokenizer, make_items(24, 4, cfg=PAIRABLE_STORY), max_pairs=3)


@pytest.mark.parametrize("component,direction", [("z", "noising"), ("k", "denoising"), ("v", "noising"), ("q", "noising")])
def test_fast_equals_reference_gqa(llama, component, direction):
    model, pt = llama
    fast = activation_patch_heads(model, pt, component, direction, batch_size=3, max_rows=7, progress=False)
    ref = activation_patch_heads_reference(model, pt, component, direction, batch_size=4, progress=False)
    n_expected = model.cfg.n_key_value_heads if component in ("k", "v") else model.cfg.n_heads
    assert fast.shape == (len(pt), model.cfg.n_layers, n_expected)
    assert not torch.isnan(fast).any()
    assert (fast - ref).abs().max() <= TOL
    assert fast.std() > 1e-3  # the patches do something, so the equality is not vacuous


def test_denoising_equals_transformer_lens(gpt2):
    model, pt = gpt2
    fast = activation_patch_heads(model, pt, "z", "denoising", progress=False)
    tl = tl_head_out_all_pos(model, pt)
    assert (fast.mean(0) - tl).abs().max() <= TOL
    noising = activation_patch_heads(model, pt, "z", "noising", progress=False)
    assert (noising.mean(0) - tl).abs().max() > 1e-3  # the two directions are different experiments


def test_by_position_equals_single_position_hook(gpt2):
    from vru_lens.patching.metrics import logit_diff_from_logits

    model, pt = gpt2
    layer = 1
    out = activation_patch_heads_by_pos(model, pt, "z", "noising", batch_size=2, max_rows=40, progress=False, layers=[layer])
    starts = first_diff(pt.clean, pt.corrupt, pt.lengths)
    i = int(pt.lengths.argmin())  # the shortest pair: it has padding positions to check
    n = int(pt.lengths[i])
    ids, src = pt.clean[i:i + 1, :n], pt.corrupt[i:i + 1, :n]
    _, cache = model.run_with_cache(src, names_filter=lambda name: name == f"blocks.{layer}.attn.hook_z")
    for h in (0, 3):
        for p in (0, int(starts[i]), n - 1):
            def patch(act, hook, h=h, p=p):
                act = act.clone()
                act[:, p, h] = cache[hook.name][:, p, h]
                return act
            logits = model.run_with_hooks(ids, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", patch)])
            ref = logit_diff_from_logits(logits, pt.final_pos[i:i + 1], pt.clean_answer[i:i + 1], pt.corrupt_answer[i:i + 1])
            assert abs(float(out[i, layer, h, p]) - float(ref)) <= TOL
    assert n < out.shape[-1]  # the pair chosen is shorter than the batch, so padding positions exist
    assert torch.isnan(out[i, layer, :, n:]).all()
    assert torch.isnan(out[:, 0]).all()  # layers not asked for stay NaN


def test_gqa_groups(llama, gpt2):
    assert gqa_groups(llama[0]) == {0: [0, 1], 1: [2, 3]}
    assert gqa_groups(gpt2[0]) is None


def test_bad_component(llama):
    with pytest.raises(ValueError, match="component"):
        activation_patch_heads(llama[0], llama[1], "x", progress=False)
