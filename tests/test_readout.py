"""One unembedding: every readout equals the model's own logits, on a tiny model whose final soft-cap bites.

The Gemma 2 model here caps its logits at 3.0 with weights large enough that raw
logits go far past it, so a readout that skips the cap (or the bias) is off by
O(1); each fast patching path is compared with its plain reference, which reads
the model's full logits.
"""

import warnings

import pytest
import torch

from vru_lens.bench import PAIRABLE, make_items
from vru_lens.readout import (final_normed, logit_diff_from_logits, logit_diff_from_resid, record, resid_log_probs,
                              resid_logits, rows_logits, run_until, score_rows, soft_cap, unembed)
from vru_lens.tokens import tokenize_pairs


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def capped(tiny_gemma2_capped):
    model = tiny_gemma2_capped
    pt = tokenize_pairs(model.tokenizer, make_items(40, seed=1, cfg=PAIRABLE), max_pairs=3)
    return model, pt


def test_the_cap_bites(capped):
    """Non-vacuity: without the cap the readout would be far from the model's logits."""
    model, pt = capped
    assert model.cfg.output_logits_soft_cap == 3.0
    ids = pt.clean[:1, : int(pt.final_pos[0]) + 1]
    with torch.inference_mode():
        logits = model(ids)[0]
        normed = final_normed(model, ids, torch.arange(ids.shape[1])[None])[0]
        raw = normed @ model.W_U
    assert logits.abs().max() <= 3.0
    assert (raw - logits).abs().max() > 1.0


def test_every_readout_equals_the_model_logits(capped):
    model, pt = capped
    n = len(pt)
    width = int(pt.final_pos.max()) + 1
    ids = pt.clean[:, :width]
    last = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    with torch.inference_mode():
        logits, got = record(model, ids, [last], pt.final_pos)
        want = logits[torch.arange(n), pt.final_pos]
        pos = pt.final_pos[:, None]
        torch.testing.assert_close(unembed(model, final_normed(model, ids, pos))[:, 0], want, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(rows_logits(model, ids, pos)[:, 0], want, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(resid_logits(model, got[last]), want, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(resid_log_probs(model, got[last]), want.float().log_softmax(-1), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(resid_logits(model, got[last], pt.clean_answer), want[torch.arange(n), pt.clean_answer],
                                   atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(logit_diff_from_resid(model, got[last], pt.clean_answer, pt.corrupt_answer),
                                   logit_diff_from_logits(logits, pt.final_pos, pt.clean_answer, pt.corrupt_answer),
                                   atol=1e-4, rtol=1e-4)
        rows = [(ids[i, : int(pt.final_pos[i]) + 1].tolist(), [0, int(pt.final_pos[i])]) for i in range(n)]
        for i, logp in score_rows(model, rows, batch_size=2):
            torch.testing.assert_close(logp[1], want[i].float().log_softmax(-1), atol=1e-4, rtol=1e-4)


def test_soft_cap_is_the_models():
    class M:
        class cfg:
            output_logits_soft_cap = 2.0

    x = torch.tensor([-100.0, 0.5, 100.0])
    torch.testing.assert_close(soft_cap(M, x), 2.0 * torch.tanh(x / 2.0))
    M.cfg.output_logits_soft_cap = -1.0  # TransformerLens's "none"
    assert soft_cap(M, x) is x


def test_logit_lens_last_layer_is_the_model_output(capped):
    from vru_lens.logit_lens import logit_lens

    model, _ = capped
    items = [it for it in make_items(12, seed=3) if it["answerable"]][:4]
    res = logit_lens(model, items, progress=False)
    from vru_lens.tokens import answer_ids, encode, render

    for i, it in enumerate(items):
        ids = torch.tensor([encode(model.tokenizer, render(it["prompt"], model.tokenizer, False), False)])
        with torch.inference_mode():
            logp = model(ids)[0, -1].float().log_softmax(-1)
        gold = answer_ids(model.tokenizer, it["answer"], False)[0]
        assert abs(res.gold_logprob[i, -1] - float(logp[gold])) < 1e-4


@pytest.mark.parametrize("fast,reference", [
    ("ablation_kl", "ablation_reference"),
    ("activation_patch_heads", "activation_patch_heads_reference"),
    ("path_patch_logits", "path_patch_logits_reference"),
])
def test_fast_patching_reads_the_capped_logits(capped, fast, reference):
    from vru_lens import patching

    model, pt = capped
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no silent fallback to the reference
        got = getattr(patching, fast)(model, pt, progress=False)
    want = getattr(patching, reference)(model, pt, progress=False)
    got, want = (got[0], want[0]) if isinstance(got, tuple) else (got, want)  # ablation: (KL, logit difference)
    got, want = (got.effects, want.effects) if hasattr(got, "effects") else (got, want)  # path: PathPatchResult
    assert want.abs().max() > 1e-2  # patching moves something
    assert (got - want).abs().max() <= 1e-4


def test_run_until_stops_after_the_named_hook(tiny_llama):
    seen = []
    hooks = [(f"blocks.{l}.hook_resid_post", lambda x, hook: seen.append(hook.name)) for l in range(3)]
    out = run_until(tiny_llama, torch.tensor([[0, 5, 6]]), hooks, stop_at="blocks.1.hook_resid_post")
    assert out is None and len(seen) == 2  # layers 0 and 1 (the bridge names them blocks.{l}.hook_out)
    seen.clear()
    assert run_until(tiny_llama, torch.tensor([[0, 5, 6]]), hooks).shape[-1] == tiny_llama.cfg.d_vocab
    assert len(seen) == 3


def test_sliding_window_longer_than_the_window_falls_back_exactly(strong):
    """The tail replay's mask is full causal: where a sliding window is shorter than the prompts it must not run
    (it gave an ablation KL off by 0.03 and activation patching off by 0.36 here before it refused)."""
    import transformers as tf

    from vru_lens import patching
    from vru_lens.models.tiny import tiny_tokenizer

    cfg = tf.Gemma2Config(
        vocab_size=len(tiny_tokenizer()), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
        sliding_window=16, bos_token_id=0, eos_token_id=1, pad_token_id=2)
    model = strong(tf.Gemma2ForCausalLM(cfg))
    pt = tokenize_pairs(model.tokenizer, make_items(40, seed=1, cfg=PAIRABLE), max_pairs=2)
    assert int(pt.lengths.min()) > 16
    with pytest.warns(RuntimeWarning, match="sliding-window"):
        got = patching.activation_patch_heads(model, pt, progress=False)
    want = patching.activation_patch_heads_reference(model, pt, progress=False)
    assert (got - want).abs().max() <= 1e-4 and want.abs().max() > 1e-2
