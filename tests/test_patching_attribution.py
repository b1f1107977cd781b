"""Attribution patching: exact where it must be, close to exact patching, and the agreement report."""

import numpy as np
import pytest
import torch

from vru_lens.bench import PAIRABLE, make_items
from vru_lens.patching import activation_patch_heads, agreement, attribution_patch_heads
from vru_lens.patching.metrics import baseline_logit_diffs
from vru_lens.tokens import PairTokens, tokenize_pairs


@pytest.fixture(scope="module")
def setup(tiny_gpt2):  # the session's model (conftest): loaded once for the whole run
    model = tiny_gpt2
    return model, tokenize_pairs(model.tokenizer, make_items(24, 2, cfg=PAIRABLE), max_pairs=4)


def test_no_difference_no_effect(setup):
    model, pt = setup
    same = PairTokens(pt.clean, pt.clean.clone(), pt.lengths, pt.clean_answer, pt.corrupt_answer, pt.pairs)
    clean, _ = baseline_logit_diffs(model, same)
    est = attribution_patch_heads(model, same, progress=False)
    assert torch.allclose(est, clean[:, None, None].expand_as(est), atol=1e-5)


def test_close_to_exact(setup):
    model, pt = setup
    exact = activation_patch_heads(model, pt, "z", "denoising", progress=False)
    est = attribution_patch_heads(model, pt, "z", "denoising", progress=False)
    _, corrupt = baseline_logit_diffs(model, pt)
    effect_exact = exact - corrupt[:, None, None]
    effect_est = est - corrupt[:, None, None]
    # a first-order estimate: the same sign and size on a small random model
    assert np.corrcoef(effect_exact.flatten(), effect_est.flatten())[0, 1] > 0.9
    assert (effect_exact - effect_est).abs().max() > 0  # an estimate, not a copy


def test_agreement():
    a = np.arange(12.0).reshape(3, 4)
    assert agreement(a, a, k=3) == {"spearman": 1.0, "top3_overlap": 3, "k": 3}
    rev = agreement(a, -a, k=3)
    assert rev["spearman"] == pytest.approx(-1.0) and rev["top3_overlap"] == 0
    with pytest.raises(ValueError, match="shape"):
        agreement(a, a.T)


def _directional_derivative(model, pt, layer, head, eps=1e-2):
    """d(logit difference)/d(alpha) at alpha = 0 when one head's z moves alpha of the way to the corrupted
    run's (central finite difference of exact patching): what attribution patching must equal."""
    from vru_lens.heads import heads_view as _heads_view
    from vru_lens.patching.metrics import logit_diff_from_logits

    fp, a, b = pt.final_pos, pt.clean_answer, pt.corrupt_answer
    w = int(fp.max()) + 1
    clean, corrupt = pt.clean[:, :w], pt.corrupt[:, :w]
    name = f"blocks.{layer}.attn.hook_z"
    H = model.cfg.n_heads
    with torch.inference_mode():
        _, cc = model.run_with_cache(corrupt, names_filter=lambda n: n == name)
        _, cl = model.run_with_cache(clean, names_filter=lambda n: n == name)

        def run(alpha):
            def hook(act, hook):
                act = act.clone()
                x, src = _heads_view(cl[name], H)[:, :, head], _heads_view(cc[name], H)[:, :, head]
                _heads_view(act, H)[:, :, head] = x + alpha * (src - x)
                return act
            return logit_diff_from_logits(model.run_with_hooks(clean, fwd_hooks=[(name, hook)]), fp, a, b)

        return (run(eps) - run(-eps)) / (2 * eps)


def test_attribution_is_the_derivative_of_exact_patching():
    """Every head of every layer but the last on the organism: the estimate minus the base equals the
    directional derivative of exact patching, paths through later heads included (an earlier version
    cut them: the organism's layer-0 heads came out at 0 while their derivative was not)."""
    from vru_lens.models import load_model

    model, items = load_model("vru-organism", device="cpu"), make_items(16, 5, cfg=PAIRABLE, split="validation")
    pt = tokenize_pairs(model.tokenizer, items, max_pairs=4)
    clean, _ = baseline_logit_diffs(model, pt)
    est = attribution_patch_heads(model, pt, batch_size=8, progress=False) - clean[:, None, None]
    layers = range(model.cfg.n_layers - 1)  # the last layer has only direct paths
    fd = torch.stack([torch.stack([_directional_derivative(model, pt, layer, head) for head in range(model.cfg.n_heads)], 1)
                      for layer in layers], 1)  # [pair, layer, head]
    scale = float(fd.abs().max())
    assert scale > 0
    assert torch.allclose(est[:, : len(layers)], fd, atol=2e-3 * scale, rtol=2e-2), (est[:, : len(layers)] - fd).abs().max()
    assert int((fd.abs().amax(0) > 0.05 * scale).sum()) >= 3  # not vacuous: several heads have an effect


def test_integrated_gradients_one_step_is_attribution(setup):
    model, pt = setup
    plain = attribution_patch_heads(model, pt, progress=False)
    assert torch.equal(attribution_patch_heads(model, pt, progress=False, ig_steps=1), plain)
    ig = attribution_patch_heads(model, pt, progress=False, ig_steps=4)
    assert ig.shape == plain.shape and not torch.allclose(ig, plain)
    with pytest.raises(ValueError, match="ig_steps"):
        attribution_patch_heads(model, pt, progress=False, ig_steps=0)
