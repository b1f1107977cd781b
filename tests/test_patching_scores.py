"""HeadScores: sign convention, top-k, JSON round trip, bootstrap over pairs, frame and figures."""

import numpy as np
import pytest

from vru_lens.patching.scores import HeadScores, score_from


def make(kind="noising", n=20, seed=0):
    rng = np.random.default_rng(seed)
    clean = 2 + 0.1 * rng.standard_normal(n)
    corrupt = -2 + 0.1 * rng.standard_normal(n)
    patched = np.repeat(clean[:, None, None], 6, axis=2).repeat(3, axis=1) + 0.05 * rng.standard_normal((n, 3, 6))
    if kind == "noising":
        patched[:, 2, 4] = corrupt  # this head alone flips the answer
        patched[:, 1, 0] = 0.5 * (clean + corrupt)  # this one halfway
    return HeadScores.from_patched(patched, clean, corrupt, method="activation", model="toy", kind=kind,
                                   gqa={"n_key_value_heads": 2, "groups": {0: [0, 1, 2], 1: [3, 4, 5]}, "note": "x"})


def test_sign_and_top():
    hs = make()
    top = hs.top(2)
    assert [(l, h) for l, h, _ in top] == [(2, 4), (1, 0)]
    assert top[0][2] == pytest.approx(1.0, abs=1e-9)  # full flip = 1
    assert top[1][2] == pytest.approx(0.5, abs=0.05)
    assert abs(hs.scores[0, 0]) < 0.05  # no effect = 0
    assert hs.ranks()[2, 4] == 1
    assert hs.n_pairs == 20 and hs.shape == (3, 6)


def test_denoising_and_kl_kinds():
    per = np.zeros((4, 1, 2))
    per[:, 0, 1] = 1.0
    clean, corrupt = np.ones(4), np.zeros(4)
    assert score_from(per, clean, corrupt, "denoising").tolist() == [[0.0, 1.0]]
    assert score_from(per, clean, corrupt, "noising").tolist() == [[1.0, 0.0]]
    assert score_from(per, clean, corrupt, "kl").tolist() == [[0.0, 1.0]]
    with pytest.raises(ValueError, match="no signal"):
        score_from(per, clean, clean, "noising")


def test_save_load_roundtrip(tmp_path):
    hs = make().bootstrap(50, seed=1)
    path = hs.save(tmp_path / "scores.json")
    back = HeadScores.load(path)
    assert np.allclose(back.scores, hs.scores)
    assert np.allclose(back.ci_low, hs.ci_low) and np.allclose(back.ci_high, hs.ci_high)
    assert back.top(3) == hs.top(3)
    assert back.gqa["groups"] == {0: [0, 1, 2], 1: [3, 4, 5]}
    assert back.method == "activation" and back.model == "toy" and back.kind == "noising"


def test_bootstrap_recomputes_over_pairs():
    hs = make().bootstrap(200, seed=0)
    assert (hs.ci_low <= hs.scores + 1e-9).all() and (hs.scores - 1e-9 <= hs.ci_high).all()
    assert hs.ci_low[2, 4] > 0.9  # the flip head is clearly important on every resample
    assert hs.ci_high[0, 0] < 0.2
    # the CI is from resampling pairs: a ranking from identical pairs has zero width
    same = HeadScores.from_patched(np.repeat(hs.per_pair[:1], 10, 0), np.full(10, 2.0), np.full(10, -2.0),
                                   method="activation", model="toy")
    same.bootstrap(20)
    assert np.allclose(same.ci_low, same.ci_high)
    st = hs.stability(k=2)
    assert -1 <= st["kendall_tau_mean"] <= 1
    assert st["top_k_frequency"]["L2H4"] == 1.0
    assert hs.boot_ranks.shape == (200, 3, 6)
    same2 = make().bootstrap(200, seed=0)
    assert np.array_equal(same2.ci_low, hs.ci_low)  # seeded


def test_frame_and_figures():
    hs = make().bootstrap(30)
    df = hs.to_frame()
    assert list(df.columns[:4]) == ["layer", "head", "score", "rank"]
    assert {"ci_low", "ci_high", "kv_head"} <= set(df.columns)
    assert (df.iloc[0]["layer"], df.iloc[0]["head"], df.iloc[0]["kv_head"]) == (2, 4, 1)
    assert len(df) == 18
    fig = hs.plot()
    assert fig.data[0].z.shape == (3, 6)
    assert len(hs.plot_stability(k=3).data) == 4


def test_stability_needs_bootstrap():
    with pytest.raises(ValueError, match="bootstrap"):
        make().stability()
    with pytest.raises(ValueError, match="kind"):
        HeadScores.from_patched(np.zeros((2, 1, 1)), np.ones(2), np.zeros(2), method="x", model="y", kind="bad")


def test_signal_flags_pairs_the_model_does_not_separate():
    hs = make().bootstrap(100)
    assert hs.meta["signal"]["ok"] and "warning" not in hs.meta
    assert hs.ld_effect[2, 4] == pytest.approx(hs.clean_ld.mean() - hs.corrupt_ld.mean())
    rng = np.random.default_rng(0)
    noise = HeadScores.from_patched(rng.standard_normal((30, 2, 2)), rng.standard_normal(30), rng.standard_normal(30),
                                    method="path", model="toy").bootstrap(100)
    assert not noise.meta["signal"]["ok"] and "not meaningful" in noise.meta["warning"]
    assert "ld_effect" in noise.to_frame().columns
