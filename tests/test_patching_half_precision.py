"""Half-precision models keep their fast paths, and land where the same model in float32 does.

The model is a bf16 Llama with large random weights (logits of O(10), where one bf16 rounding step of
a logit is 0.06, larger than the self-check's 0.05). Its float32 twin holds the very same weights
(the bf16 values cast up), so any difference between the two is arithmetic precision, nothing else.
On the bf16 model every fast path must run without its fallback warning, give its own plain reference's
result within the half-precision bound the self-checks use (0.05 + 2% of the value), and be no further
from the float32 twin than that reference is (+ 0.05): the bf16 model itself moves the clean logit
difference by 1.1 here, which no fast path can undo.
The float32 fast paths are checked against their plain references to 1e-4 elsewhere
(test_patching_path.py, test_patching_activation.py, test_patching_ablation.py).

Path patching to receivers used to be refused here by its self-check (the unpatched row's q): the check
compared the float32 recurrence's q with the bf16 model's own q, which is further from a float32
computation (0.148) than the bound allowed; the check now allows for that rounding (path._projection_slack).
"""

import warnings

import pytest
import torch

from vru_lens.bench import PAIRABLE, make_items
from vru_lens.patching import path as pp
from vru_lens.patching.ablation import ablation_kl
from vru_lens.patching.activation import activation_patch_heads
from vru_lens.tokens import tokenize_pairs

pytestmark = pytest.mark.usefixtures("one_thread")

WIDTH, LAYERS, STD = 256, 4, 0.3
ATOL, RTOL = 5e-2, 2e-2  # path.py's and tail.py's half-precision tolerance


def _llama(dtype):
    import transformers as tf

    from vru_lens.models.loader import bridge_from_hf
    from vru_lens.models.tiny import tiny_tokenizer

    torch.manual_seed(0)
    cfg = tf.LlamaConfig(vocab_size=len(tiny_tokenizer()), hidden_size=WIDTH, intermediate_size=2 * WIDTH,
                         num_hidden_layers=LAYERS, num_attention_heads=8, num_key_value_heads=2,
                         max_position_embeddings=512, bos_token_id=0, eos_token_id=1, pad_token_id=2)
    hf = tf.LlamaForCausalLM(cfg).eval()
    hf.config.architectures = ["LlamaForCausalLM"]
    with torch.no_grad():
        for p in hf.parameters():
            if p.ndim >= 2:
                p.normal_(0, STD)
    hf = hf.to(torch.bfloat16).to(dtype)  # the float32 twin: bf16 weights cast up
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return bridge_from_hf(hf, tiny_tokenizer(), f"half-{dtype}", device="cpu", dtype=dtype)


@pytest.fixture(scope="module")
def twins():
    half, full = _llama(torch.bfloat16), _llama(torch.float32)
    pt = tokenize_pairs(half.tokenizer, make_items(40, 0, cfg=PAIRABLE), max_pairs=2)
    assert len(pt) == 2
    return half, full, pt


def _no_fallback(fn, *args, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = fn(*args, **kwargs)
    fallbacks = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert not fallbacks, fallbacks
    return out


def _close(got, ref, want, what):
    """``got`` (bf16 fast path) against ``ref`` (the bf16 model's plain reference) within the half-precision
    bound, and against ``want`` (float32 twin) no further than the bf16 model itself is, plus that bound's atol."""
    got, ref, want = got.float(), ref.float(), want.float()
    err = (got - ref).abs()
    # elementwise: the bf16 model is itself off from float32 by (ref - want), and a float32 recurrence from its
    # caches may land anywhere within that (its rounding differs by CPU: 0.11 logits here on one pair)
    room = ATOL + RTOL * ref.abs() + (ref - want).abs()
    assert bool((err <= room).all()), f"{what}: max error {float(err.max()):.3g} against the bf16 reference"
    own = float((ref - want).abs().max())  # the bf16 model's own distance from float32 (1.1 logits on this model)
    assert float((got - want).abs().max()) <= own + ATOL, f"{what}: further from fp32 than the bf16 model is ({own:.3g})"


def test_path_patching_fast_in_bf16(twins):
    half, full, pt = twins
    assert next(half.blocks[0].parameters()).dtype == torch.bfloat16
    got = _no_fallback(pp.path_patch_logits, half, pt, progress=False)
    ref = pp.path_patch_logits_reference(half, pt, progress=False)
    want = pp.path_patch_logits(full, pt, progress=False)
    effect = float((want.effects - want.clean_ld[:, None, None]).abs().max())
    assert effect > 10 * ATOL, f"patching barely moves the logit difference ({effect:.2g}): the test would be vacuous"
    assert float(want.clean_ld.abs().max()) > 2, "logits too small for bf16 rounding to matter"
    _close(got.clean_ld, ref.clean_ld, want.clean_ld, "clean logit difference")
    _close(got.effects, ref.effects, want.effects, "path-patched logit difference")


def test_path_patching_to_receivers_fast_in_bf16(twins):
    """The self-check allows for the bf16 model's own rounding of q (without it: fallback, q off by
    0.188, 2.3 times the 0.05 + 2% bound)."""
    half, full, pt = twins
    receivers = [(LAYERS - 1, 0), (LAYERS - 1, 5)]
    got = _no_fallback(pp.path_patch_receivers, half, pt, receivers, "q", progress=False)
    ref = pp.path_patch_receivers_reference(half, pt, receivers, "q", progress=False)
    want = pp.path_patch_receivers(full, pt, receivers, "q", progress=False)
    _close(got.effects, ref.effects, want.effects, "path patching to receivers' q")


def test_activation_patching_and_ablation_fast_in_bf16(twins):
    from vru_lens.patching.ablation import ablation_reference
    from vru_lens.patching.activation import activation_patch_heads_reference

    half, full, pt = twins
    got = _no_fallback(activation_patch_heads, half, pt, "z", "noising", progress=False)
    ref = activation_patch_heads_reference(half, pt, "z", "noising", progress=False)
    want = activation_patch_heads(full, pt, "z", "noising", progress=False)
    _close(got, ref, want, "activation patching (z, noising)")
    kl_h, ld_h = _no_fallback(ablation_kl, half, pt, progress=False)
    kl_r, ld_r = ablation_reference(half, pt, progress=False)
    kl_f, ld_f = ablation_kl(full, pt, progress=False)
    _close(ld_h, ld_r, ld_f, "mean-ablated logit difference")
    _close(kl_h, kl_r, kl_f, "ablation KL")
