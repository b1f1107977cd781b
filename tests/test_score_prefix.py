"""Candidate scoring with each prompt run once (the tails read its KV cache) equals the reference schedule
(the prompt recomputed per multi-token candidate) and a plain one-forward-per-candidate loop; with hooks or
adapters on the model the reference schedule runs."""

import pytest
import torch
from candidate_loop import candidate_loop

from vru_lens.bench import BenchConfig, make_items
from vru_lens.evaluate import score_candidates
from vru_lens.models.tiny import tiny_hf_model
from vru_lens.readout import has_hooks, prefix_cache_ok, prefix_logits
from vru_lens.tokens import answer_ids, encode, render

TOL = 1e-4


@pytest.fixture(scope="module")
def models(strong, tiny_gemma2_capped, one_thread):
    """fp32 bridges: a GQA Llama (rotary), GPT-2 (learned absolute positions), Gemma 2 (soft-capped logits)."""
    return {"llama": strong(tiny_hf_model("tiny-llama")), "gpt2": strong(tiny_hf_model("tiny-gpt2")),
            "gemma2": tiny_gemma2_capped}


@pytest.fixture(scope="module")
def items():
    """Unequal prompt lengths, a mix of one- and multi-token candidates (a few extra long ones)."""
    base = make_items(5, seed=7, cfg=BenchConfig(style="story", unanswerable_frac=0.3)) + make_items(5, seed=8)
    extra = ["refrigerator", "kitchen counter", "old brown umbrella"]
    return [{**it, "candidates": list(it["candidates"]) + extra[: k % 4]} for k, it in enumerate(base)]


def plain_loop(model, items):
    """One unpadded forward of the transformers model per (item, candidate) on prompt + candidate."""
    return candidate_loop(lambda ids: model.original_model(input_ids=ids).logits[0], model.tokenizer, items)


def worst(a, b):
    assert [x.keys() for x in a] == [y.keys() for y in b]
    return max(abs(x[c] - y[c]) for x, y in zip(a, b) for c in x)


@pytest.mark.parametrize("name", ["llama", "gpt2", "gemma2"])
def test_cached_prompt_equals_reference_and_plain_loop(models, items, name):
    model = models[name]
    tok = model.tokenizer
    lengths = {len(encode(tok, render(it["prompt"], tok, False), False)) for it in items}
    multi = sum(len(answer_ids(tok, c, False)) > 1 for it in items for c in it["candidates"])
    assert len(lengths) > 1 and multi >= 5  # unequal prompts and multi-token candidates in one batch
    assert not has_hooks(model) and prefix_cache_ok(model, 300)  # the cached schedule is the one that runs
    fast = score_candidates(model, items, chat=False, batch_size=16, progress=False)
    ref = score_candidates(model, items, chat=False, batch_size=16, progress=False, reuse_prompt=False)
    small = score_candidates(model, items, chat=False, batch_size=3, progress=False)  # several cache batches
    plain = plain_loop(model, items)
    assert worst(fast, ref) < TOL and worst(small, ref) < TOL and worst(fast, plain) < TOL
    assert max(abs(s) for x in ref for s in x.values()) > 1  # the scores are not all near zero


def _mean_z(z, hook):
    """A position-mixing hook: every position gets the sequence's mean z (what a cached pass would see
    differently, as it runs the prompt and the tails separately)."""
    return z.mean(1, keepdim=True).expand_as(z).clone()


def test_hook_active_runs_reference(models, items):
    model = models["llama"]
    name = "blocks.1.attn.hook_z"
    assert name in model.hook_dict
    clean = score_candidates(model, items, chat=False, progress=False, reuse_prompt=False)
    with model.hooks(fwd_hooks=[(name, _mean_z)]):
        assert has_hooks(model) and not prefix_cache_ok(model)
        hooked = score_candidates(model, items, chat=False, progress=False)
        ref = score_candidates(model, items, chat=False, progress=False, reuse_prompt=False)
        tok = model.tokenizer
        prompt = encode(tok, render(items[0]["prompt"], tok, False), False)
        tail = answer_ids(tok, "old brown umbrella", False)[:-1]
        _, (cached,) = prefix_logits(model, [prompt], [(0, tail)])  # what the guard keeps from running
    assert hooked == ref  # the same schedule: identical
    assert worst(hooked, clean) > 1e-2  # the hook moves the scores
    with model.hooks(fwd_hooks=[(name, _mean_z)]):
        full = model.original_model(input_ids=torch.tensor([prompt + tail])).logits[0, len(prompt):]
    assert (cached - full).abs().max() > 1e-2
    assert not has_hooks(model) and prefix_cache_ok(model)


def test_adapter_hooks_and_global_hooks_count(models, items):
    model = models["gpt2"]
    hf_module = model.original_model.base_model.h[0].mlp  # where an adapter would hook the transformers body
    handle = hf_module.register_forward_hook(lambda mod, args, out: out)
    try:
        assert has_hooks(model) and not prefix_cache_ok(model)
    finally:
        handle.remove()
    handle = torch.nn.modules.module.register_module_forward_pre_hook(lambda mod, args: None)
    try:
        assert has_hooks(model)
    finally:
        handle.remove()
    assert not has_hooks(model)


def test_sliding_window_shorter_than_rows_falls_back(models):
    model = models["gemma2"]
    window = model.original_model.config.sliding_window
    assert prefix_cache_ok(model, window - 1) and not prefix_cache_ok(model, window)


def test_output_recording_hooks_do_not_count(models, items):
    """transformers installs hooks that record attentions/hidden states on a model's first call that asks for
    them, and keeps them (the reference patching runs make such calls): they copy outputs and change nothing,
    so the cached schedule still runs, with the reference's numbers."""
    model = models["gemma2"]
    ids = torch.tensor([encode(model.tokenizer, render(items[0]["prompt"], model.tokenizer, False), False)])
    with torch.inference_mode():
        model.original_model(input_ids=ids, output_attentions=True, output_hidden_states=True)
    kept = [fn for m in model.original_model.modules() for fn in m._forward_hooks.values()]
    assert kept, "this transformers version installs no recording hooks: the case is not exercised"
    assert not has_hooks(model) and prefix_cache_ok(model, 300)
    fast = score_candidates(model, items, chat=False, batch_size=4, progress=False)
    ref = score_candidates(model, items, chat=False, batch_size=4, progress=False, reuse_prompt=False)
    assert worst(fast, ref) <= TOL
