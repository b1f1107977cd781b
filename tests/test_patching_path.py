"""Path patching: the fast paths against the plain hook references, on tiny models with real effects.

The tiny models here are rebuilt with larger random weights (std 0.3) so that
patching a head moves the logit difference by O(0.1-1): a tolerance of 1e-4 then
means something. Each test also checks that the effects are large compared
with that tolerance, so none of them could pass on a model where nothing moves.
"""

import dataclasses
import warnings

import pytest
import torch

from vru_lens.bench import PAIRABLE, PAIRABLE_STORY, make_items
from vru_lens.models.tiny import tiny_hf_model, tiny_tokenizer
from vru_lens.patching import path as pp
from vru_lens.patching.metrics import baseline_logit_diffs
from vru_lens.tokens import tokenize_pairs

TOL = 1e-4


pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny_gemma3():
    import transformers as tf

    cfg = tf.Gemma3TextConfig(
        vocab_size=len(tiny_tokenizer()), hidden_size=64, intermediate_size=128, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512, sliding_window=8,
        bos_token_id=0, eos_token_id=1, pad_token_id=2)
    hf = tf.Gemma3ForCausalLM(cfg)
    hf.config.architectures = [type(hf).__name__]
    return hf.eval()


def _strong(name: str, std: float = 0.3):
    """A tiny model with large random matrices (norm gains untouched), loaded through load_model(folder)."""
    from conftest import strong_model

    return strong_model(_tiny_gemma3() if name == "tiny-gemma3" else tiny_hf_model(name), std)


@pytest.fixture(scope="module", params=["tiny-llama", "tiny-gpt2"])
def setup(request):
    model = _strong(request.param)
    pt = tokenize_pairs(model.tokenizer, make_items(40, seed=6, cfg=PAIRABLE_STORY), max_pairs=2)
    clean, _ = baseline_logit_diffs(model, pt)
    return model, pt, clean


@pytest.fixture(scope="module")
def reference(setup):
    model, pt, _ = setup
    return pp.path_patch_logits_reference(model, pt, progress=False)


def _assert_close_with_signal(fast, ref, clean, min_effect=1e-2):
    """fast, ref: PathPatchResults; clean: the clean logit differences, computed independently."""
    for res in (fast, ref):
        assert (res.clean_ld - clean).abs().max() <= TOL
    fast, ref = fast.effects, ref.effects
    assert fast.shape == ref.shape
    assert not torch.isnan(fast).any() and not torch.isnan(ref).any()
    assert (fast - ref).abs().max() <= TOL
    effect = (ref - clean[:, None, None]).abs().max()
    assert effect > min_effect, f"patching barely moves the logit difference ({effect:.2g}): the test would be vacuous"


def test_logits_fast_matches_reference(setup, reference):
    model, pt, clean = setup
    fast = pp.path_patch_logits(model, pt, batch_size=1, progress=False)  # two chunks
    ref = reference
    assert fast.effects.shape == (len(pt), model.cfg.n_layers, model.cfg.n_heads)
    assert fast.receivers is None and fast.component is None
    _assert_close_with_signal(fast, ref, clean, min_effect=0.1)


@pytest.mark.parametrize("component,receivers", [
    ("q", [(2, 1), (1, 3)]),  # two receiver layers: layer-1 senders only reach (2, 1)
    ("k", [(2, 1)]),  # tiny-llama: key/value head 1 = query heads 2 and 3 (GQA)
    ("v", [(2, 0), (1, 1)]),
])
def test_receivers_fast_matches_reference(setup, component, receivers):
    model, pt, clean = setup
    fast = pp.path_patch_receivers(model, pt, receivers, component, batch_size=4, progress=False)
    ref = pp.path_patch_receivers_reference(model, pt, receivers, component, progress=False, batch_size=4)
    _assert_close_with_signal(fast, ref, clean)
    # senders at or after the last receiver layer reach no receiver: exactly the clean run
    top = max(l for l, _ in receivers)
    eff = fast.effects
    assert torch.allclose(eff[:, top:], clean[:, None, None].expand_as(eff[:, top:]), atol=TOL)
    assert fast.component == component and fast.receivers == receivers
    assert fast.receiver_query_heads == pp.receiver_query_heads(model, receivers, component)
    # the drop is clean - patched, averaged over pairs: senders that reach no receiver drop nothing
    assert torch.allclose(fast.drop, (clean[:, None, None] - eff).mean(0), atol=TOL)
    assert fast.drop[top:].abs().max() <= TOL


def test_gqa_kv_receiver_is_a_key_value_head(setup):
    model, pt, _ = setup
    n_kv = pp._n_kv_heads(model)
    group = model.cfg.n_heads // n_kv
    expected = [(2, 2), (2, 3)] if group == 2 else [(2, 1)]  # tiny-llama: 4 query heads over 2 key/value heads
    assert pp.receiver_query_heads(model, [(2, 1)], "k") == expected
    assert pp.receiver_query_heads(model, [(2, 3)], "q") == [(2, 3)]
    if n_kv < model.cfg.n_heads:  # tiny-llama: 3 is a query head index, not a key/value head index
        with pytest.raises(ValueError, match="key/value head"):
            pp.path_patch_receivers(model, pt, [(2, 3)], "v", progress=False)


def test_bad_receivers_are_refused(setup):
    model, pt, _ = setup
    with pytest.raises(ValueError, match="layer 0"):
        pp.path_patch_receivers(model, pt, [(0, 1)], "q", progress=False)
    with pytest.raises(ValueError, match="component"):
        pp.path_patch_receivers(model, pt, [(1, 1)], "z", progress=False)


def test_identical_pairs_give_the_clean_logit_diff(setup):
    model, pt, clean = setup
    same = dataclasses.replace(pt, corrupt=pt.clean.clone())
    expected = clean[:, None, None].expand(len(pt), model.cfg.n_layers, model.cfg.n_heads)
    assert (pp.path_patch_logits(model, same, progress=False).effects - expected).abs().max() <= TOL
    ref = pp.path_patch_logits_reference(model, same, progress=False, senders=[(0, 0), (1, 2)]).effects
    assert (ref[:, 0, 0] - clean).abs().max() <= TOL and (ref[:, 1, 2] - clean).abs().max() <= TOL
    assert (pp.path_patch_receivers(model, same, [(2, 0)], "v", progress=False).effects - expected).abs().max() <= TOL


def test_path_patching_is_not_activation_patching(setup):
    """Freezing the downstream heads matters: plain activation patching of a layer-0 head gives other numbers."""
    model, pt, clean = setup
    path = pp.path_patch_logits(model, pt, progress=False).effects[:, 0]
    _, kz = pp._capture(model, pt.corrupt.to(model.cfg.device), [pp._z(0)])
    act = torch.empty_like(path)
    for h in range(model.cfg.n_heads):
        def patch(t, hook, h=h):
            t = t.clone()
            t[:, :, h] = kz[pp._z(0)][:, :, h]
            return t
        logits = model.run_with_hooks(pt.clean, fwd_hooks=[(pp._z(0), patch)])
        act[:, h] = pp.logit_diff_from_logits(logits, pt.final_pos, pt.clean_answer, pt.corrupt_answer)
    assert (path - act).abs().max() > 10 * TOL


def test_self_check_catches_a_wrong_recurrence(setup, monkeypatch):
    """If the recurrence stops describing the model (here: MLPs dropped), the fast path refuses and falls back."""
    model, pt, _ = setup
    monkeypatch.setattr(pp, "path_patch_logits_reference", lambda *a, **k: "reference")
    monkeypatch.setattr(pp, "path_patch_receivers_reference", lambda *a, **k: "reference")
    monkeypatch.setattr(pp, "_mlp_out", lambda block, x: torch.zeros_like(x))
    with pytest.warns(RuntimeWarning, match="self-check failed"):
        assert pp.path_patch_logits(model, pt, progress=False) == "reference"
    with pytest.warns(RuntimeWarning, match="self-check failed"):
        assert pp.path_patch_receivers(model, pt, [(2, 0)], "v", progress=False) == "reference"


def test_readout_check_catches_a_wrong_readout(setup, monkeypatch):
    """A final logit soft-cap the model does not have: the two-column readout disagrees with the logits."""
    model, pt, _ = setup
    monkeypatch.setattr(pp, "path_patch_logits_reference", lambda *a, **k: "reference")
    monkeypatch.setattr(model.cfg, "output_logits_soft_cap", 0.5, raising=False)
    with pytest.warns(RuntimeWarning, match="readout"):
        assert pp.path_patch_logits(model, pt, progress=False) == "reference"


def test_parallel_blocks_fall_back(setup, monkeypatch):
    model, pt, _ = setup
    monkeypatch.setattr(pp, "path_patch_logits_reference", lambda *a, **k: "reference")
    monkeypatch.setattr(model.cfg, "parallel_attn_mlp", True, raising=False)
    with pytest.warns(RuntimeWarning, match="parallel attention"):
        assert pp.path_patch_logits(model, pt, progress=False) == "reference"


def test_gemma3_sandwich_norms():
    """Gemma 3 adds post-attention and post-feedforward norms; the fast path applies them."""
    model = _strong("tiny-gemma3")
    assert getattr(model.blocks[0], "ln1_post", None) is not None
    pt = tokenize_pairs(model.tokenizer, make_items(40, seed=1, cfg=PAIRABLE), max_pairs=2)
    clean, _ = baseline_logit_diffs(model, pt)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no silent fallback to the reference
        fast = pp.path_patch_logits(model, pt, progress=False)
        fast_v = pp.path_patch_receivers(model, pt, [(2, 0)], "v", batch_size=4, progress=False)
    _assert_close_with_signal(fast, pp.path_patch_logits_reference(model, pt, progress=False), clean, 0.1)
    ref_v = pp.path_patch_receivers_reference(model, pt, [(2, 0)], "v", progress=False, batch_size=4)
    _assert_close_with_signal(fast_v, ref_v, clean)


@pytest.mark.real
def test_smollm2_sampled_senders(smollm2):
    """SmolLM2 (GQA, 30 layers): fast vs reference on a few senders spread over the layers."""
    pt = tokenize_pairs(smollm2.tokenizer, make_items(20, seed=3, cfg=PAIRABLE_STORY), max_pairs=2)
    senders = [(0, 0), (14, 4), (29, 8)]
    fast = pp.path_patch_logits(smollm2, pt, progress=False).effects
    ref = pp.path_patch_logits_reference(smollm2, pt, progress=False, senders=senders).effects
    for l, h in senders:
        assert (fast[:, l, h] - ref[:, l, h]).abs().max() <= TOL


def test_fast_paths_read_w_o_without_copying(setup):
    """The fast paths take each layer's W_O as a view of its output projection, not model.W_O's stacked copy."""
    model, _, _ = setup
    per_layer = pp._layer_W_O(model)
    stacked = model.W_O
    for l, w in enumerate(per_layer):
        assert torch.equal(w, stacked[l])
        assert w.untyped_storage().data_ptr() == model.blocks[l].attn.o.original_component.weight.untyped_storage().data_ptr()
    assert stacked.untyped_storage().data_ptr() != per_layer[0].untyped_storage().data_ptr()  # model.W_O is a copy
