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
