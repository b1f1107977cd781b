"""Faithfulness curves against a direct computation: one plain hooked forward per (pair, k), written here."""

import numpy as np
import pytest
import torch

from vru_lens.bench import PAIRABLE, make_items
from vru_lens.patching.faithfulness import FaithfulnessResult, cpr_cmd, default_ks, faithfulness_curve
from vru_lens.results import load_result
from vru_lens.tokens import tokenize_pairs

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def setup(strong):
    from vru_lens.models.tiny import tiny_hf_model

    model = strong(tiny_hf_model("tiny-llama", seed=3, n_layers=2))
    pt = tokenize_pairs(model.tokenizer, make_items(30, 1, PAIRABLE), max_pairs=5)
    assert len(set(pt.lengths.tolist())) > 1  # padding is exercised
    return model, pt


def direct_lds(model, pt, kept, how):
    """Per-pair logit difference on the clean prompt with heads ``kept`` at their clean z and every other head
    replaced by ``how`` (resample: the corrupt prompt's z; mean: the mean over corrupt real tokens; zero)."""
    L, H = model.cfg.n_layers, model.cfg.n_heads
    names = [f"blocks.{l}.attn.hook_z" for l in range(L)]
    zs = {}
    for side in ("clean", "corrupt"):
        zs[side] = []
        for i in range(len(pt)):
            n = int(pt.lengths[i])
            _, cache = model.run_with_cache(getattr(pt, side)[i : i + 1, :n], names_filter=lambda x: x in names)
            zs[side].append([cache[nm].reshape(1, n, H, -1) for nm in names])
    mean = [torch.cat([z[l][0] for z in zs["corrupt"]]).mean(0) for l in range(L)]  # [H, d] over real tokens
    out = []
    for i in range(len(pt)):
        n = int(pt.lengths[i])

        def patch(z0, layer):
            z = z0.clone().reshape(1, n, H, -1)
            for h in range(H):
                if (layer, h) in kept:
                    z[0, :, h] = zs["clean"][i][layer][0, :, h]
                elif how == "resample":
                    z[0, :, h] = zs["corrupt"][i][layer][0, :, h]
                elif how == "mean":
                    z[0, :, h] = mean[layer][h]
                else:
                    z[0, :, h] = 0
            return z.reshape(z0.shape)

        hooks = [(names[l], lambda z, hook, l=l: patch(z, l)) for l in range(L)]
        logits = model.run_with_hooks(pt.clean[i : i + 1, :n], fwd_hooks=hooks)[0, -1]
        out.append(float(logits[pt.clean_answer[i]] - logits[pt.corrupt_answer[i]]))
    return np.array(out)


def direct_clean_corrupt(model, pt):
    ld = lambda ids, i: model(ids)[0, -1, pt.clean_answer[i]] - model(ids)[0, -1, pt.corrupt_answer[i]]  # noqa: E731
    n = pt.lengths.tolist()
    return (np.array([float(ld(pt.clean[i : i + 1, : n[i]], i)) for i in range(len(pt))]),
            np.array([float(ld(pt.corrupt[i : i + 1, : n[i]], i)) for i in range(len(pt))]))


@pytest.mark.parametrize("how", ["resample", "mean", "zero"])
def test_curve_matches_direct_hooks(setup, how, tmp_path):
    model, pt = setup
    L, H = model.cfg.n_layers, model.cfg.n_heads
    order = [(1, 2), (0, 0), (1, 0), (0, 3), (0, 1), (1, 1), (0, 2), (1, 3)]
    ks = [0, 1, 3, 8]
    res = faithfulness_curve(model, pt, {"mine": order}, ks=ks, ablation=how, n_random=3, batch_size=2, progress=False)
    clean, corrupt = direct_clean_corrupt(model, pt)
    np.testing.assert_allclose(res.clean_ld, clean, atol=1e-4)
    np.testing.assert_allclose(res.corrupt_ld, corrupt, atol=1e-4)
    with torch.inference_mode():
        want = np.stack([direct_lds(model, pt, set(order[:k]), how) for k in ks])
    np.testing.assert_allclose(res.curves["mine"], want, atol=1e-4)
    f = (want.mean(1) - corrupt.mean()) / (clean.mean() - corrupt.mean())
    np.testing.assert_allclose(res.faithfulness(res.curves["mine"]), f, atol=1e-3)  # float32 batches
    assert f[-1] == pytest.approx(1, abs=1e-3)  # every head clean: the clean run
    assert np.ptp(f) > 0.05  # the curve moves: the check can fail
    s = res.summary(n_boot=50)["rankings"]["mine"]
    x = np.array(ks) / (L * H)
    assert s["cpr"] == pytest.approx(np.trapezoid(f, x), abs=1e-3)
    assert s["cmd"] == pytest.approx(np.trapezoid(np.abs(1 - f), x), abs=1e-3)
    assert s["cpr_ci"][0] <= s["cpr"] + 0.05 and s["cpr_ci"][1] >= s["cpr"] - 0.05
    # the random orderings: each a curve of nested sets, also exact at k = n
    assert res.random.shape == (3, len(ks), len(pt))
    np.testing.assert_allclose(res.random_curves()[:, -1], 1, atol=1e-3)
    back = load_result(res.save(tmp_path / "faith.json"))
    assert isinstance(back, FaithfulnessResult) and back.summary(n_boot=50) == res.summary(n_boot=50)
    frame = res.to_frame()
    assert set(frame.ranking) == {"mine", "random"} and len(frame) == 2 * len(ks)
    assert len(res.plot().data) == 3


def test_a_head_scores_ranking_and_bad_input(setup):
    from vru_lens.patching import rank_heads

    model, pt = setup
    hs = rank_heads(model, pt, "activation", n_boot=0, progress=False)
    res = faithfulness_curve(model, pt, {"activation": hs}, n_random=2, progress=False)
    assert res.ks == list(range(9)) and res.orders["activation"] == [[l, h] for l, h, _ in hs.top(8)]
    assert default_ks(270) == [0, 1, 3, 5, 14, 27, 54, 81, 135, 189, 270]
    assert cpr_cmd(np.array([0, 0.5, 1]), np.array([1.0, 1.0, 1.0])) == (1.0, 0.0)
    with pytest.raises(ValueError, match="ablation must be one of resample, mean, zero"):
        faithfulness_curve(model, pt, {"a": hs}, ablation="noise")
    with pytest.raises(ValueError, match="ks must hold"):
        faithfulness_curve(model, pt, {"a": hs}, ks=[0, 99])
    with pytest.raises(ValueError, match="distinct heads"):
        faithfulness_curve(model, pt, {"a": [(0, 0), (0, 0)]})
    kv = rank_heads(model, pt, "activation", component="k", n_boot=0, progress=False)
    with pytest.raises(ValueError, match="key/value heads"):
        faithfulness_curve(model, pt, {"k": kv})


def test_f_at_one_k_with_its_bootstrap_ci():
    """``at``: f at one k is the curve's value there; its CI comes from resampling pairs; random gives its band."""
    clean, corrupt = np.array([4.0, 6.0, 5.0]), np.array([0.0, 0.0, 1.0])
    lds = np.array([[0.0, 0.0, 1.0], [2.0, 3.0, 3.0], [4.0, 6.0, 5.0]])  # k = 0, 2, 4
    rnd = np.stack([lds * 0.5, lds * 0.25])
    res = FaithfulnessResult("m", "resample", 4, [0, 2, 4], clean, corrupt, {"r": lds}, rnd, {"r": []})
    got = res.at("r", 2, n_boot=300)
    assert got["f"] == pytest.approx(res.faithfulness(lds)[1]) and got["low"] <= got["f"] <= got["high"]
    assert res.at("r", 4)["f"] == pytest.approx(1.0) and res.at("r", 4)["high"] - res.at("r", 4)["low"] < 1e-9
    band = res.at("random", 2)
    f = res.random_curves()[:, 1]
    assert band["f"] == pytest.approx(f.mean()) and band["low"] == pytest.approx(np.quantile(f, 0.05))
    with pytest.raises(ValueError, match="not on this curve's grid"):
        res.at("r", 3)
