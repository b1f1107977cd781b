"""Induction-head grading: the ground-truth test on a model with hand-set attention heads, the contrastive
task's construction, the AUROC/Spearman grading, and (marked real) SmolLM2-135M-Instruct's induction heads."""

import numpy as np
import pytest
import torch

from vru_lens.grading import THRESHOLD, grade, induction_pairs, induction_scores, random_tokens
from vru_lens.patching.scores import HeadScores

torch.set_num_threads(1)
T = 7  # tokens per copy


def forced_heads(model, T, off=1):
    """Hooks that make head (1, 2) an ideal induction head (each second-copy token attends to the token after
    its first occurrence) and head (0, 1) a previous-token head; every other head is the model's own."""
    def set_rows(pattern, head, target):
        pattern = pattern.clone()
        n = pattern.shape[-1]
        for q in range(n):
            k = target(q)
            if 0 <= k <= q:
                pattern[:, head, q] = 0
                pattern[:, head, q, k] = 1
        return pattern

    induction = lambda q: q - T + 1 if q >= off + T + 1 else q  # noqa: E731
    previous = lambda q: q - 1 if q >= 1 else q  # noqa: E731
    return [("blocks.1.attn.hook_pattern", lambda p, hook: set_rows(p, 2, induction)),
            ("blocks.0.attn.hook_pattern", lambda p, hook: set_rows(p, 1, previous))]


def test_ground_truth_finds_the_hand_set_induction_head(tiny_llama):
    model = tiny_llama
    tokens = random_tokens(model.tokenizer, 4, T, seed=1)
    assert all(len(set(r.tolist())) == T for r in tokens)
    with model.hooks(fwd_hooks=forced_heads(model, T)):
        got = induction_scores(model, tokens)
    assert got.shape == (4, model.cfg.n_layers, model.cfg.n_heads)
    np.testing.assert_allclose(got[:, 1, 2], 1.0, atol=1e-6)  # the induction head
    assert got[:, 0, 1].max() < 1e-6  # a previous-token head attends elsewhere
    heads = {(int(l), int(h)) for l, h in np.argwhere(got.mean(0) > THRESHOLD)}
    assert heads == {(1, 2)}
    plain = induction_scores(model, tokens)  # without the hooks: a random model has none
    assert plain.mean(0).max() < THRESHOLD


def test_the_task_induces_the_answers(tiny_llama):
    """Clean answer = the token after the first occurrence of the final token (the corrupt prompt: its own)."""
    tok = tiny_llama.tokenizer
    tokens = random_tokens(tok, 6, T, seed=2)
    pt = induction_pairs(tok, tokens, seed=2)
    assert pt.pairs.summary()["source"] == "prompts" and len(pt) == 6
    for i in range(len(pt)):
        n = int(pt.lengths[i])
        for ids, ans in ((pt.clean[i, :n].tolist(), pt.clean_answer[i]), (pt.corrupt[i, :n].tolist(), pt.corrupt_answer[i])):
            first = ids.index(ids[-1])
            assert first < n - 1 and ids[first + 1] == int(ans)
        assert pt.clean[i, 0] == tok.bos_token_id and pt.clean_answer[i] != pt.corrupt_answer[i]
        assert (pt.clean[i, :n] != pt.corrupt[i, :n]).sum() == 1  # only the first copy's next token differs


def test_grade_reads_a_perfect_and_a_reversed_ranking():
    rng = np.random.default_rng(0)
    truth = rng.uniform(0, 0.2, (8, 3, 4))
    truth[:, 1, 2] += 0.6
    truth[:, 2, 0] += 0.5
    hs = lambda s: HeadScores("gradient", "m", "gradient", s, np.ones(8), np.zeros(8))  # noqa: E731
    good = grade(truth, hs(truth), n_boot=50)
    assert good["auroc"] == 1.0 and good["spearman"] == pytest.approx(1.0)
    assert good["auroc_ci"][0] <= 1.0 <= good["auroc_ci"][1] + 1e-12
    bad = grade(truth, hs(-truth), n_boot=50)
    assert bad["auroc"] == 0.0 and bad["spearman"] == pytest.approx(-1.0)
    none = grade(truth * 0, hs(truth), n_boot=10)
    assert none["auroc"] is None
    with pytest.raises(ValueError, match="pairs but there are"):
        grade(truth[:4], hs(truth), n_boot=0)


@pytest.mark.real
def test_smollm2_has_induction_heads_and_does_the_task(smollm2):
    """The independent test finds induction heads in SmolLM2-135M-Instruct, and the model follows the copy."""
    from vru_lens.readout import baseline_logit_diffs

    tokens = random_tokens(smollm2.tokenizer, 6, 10, seed=0)
    truth = induction_scores(smollm2, tokens).mean(0)
    uniform = 1 / (2 * 10)  # attention spread evenly over the context would score about this
    assert (truth > THRESHOLD).sum() >= 3 and np.median(truth) < uniform
    clean, corrupt = baseline_logit_diffs(smollm2, induction_pairs(smollm2.tokenizer, tokens))
    assert (clean > 0).float().mean() >= 0.8 and (corrupt < 0).float().mean() >= 0.8
