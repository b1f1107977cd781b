"""Probes: capture at the right positions, batched trainer = per-layer loop, a planted label is found."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vru_lens import probe as P
from vru_lens.bench import make_items
from vru_lens.tokens import encode, render, step_positions


@pytest.fixture(scope="module")
def model(tiny_llama):
    return tiny_llama


@pytest.fixture(scope="module")
def items():
    return make_items(40, seed=3)


@pytest.fixture(scope="module")
def cache(model, items):
    return P.capture(model, items, batch_size=16, final=True, progress=False)


def test_capture_matches_run_with_cache(model, items, cache):
    for i in (0, 7, 31):  # items from different length-sorted batches
        it = items[i]
        ids = torch.tensor([encode(model.tokenizer, render(it["prompt"], model.tokenizer))])
        _, full = model.run_with_cache(ids, names_filter=lambda n: n.endswith("hook_resid_post"))
        pos = step_positions(model.tokenizer, it)
        rows = np.flatnonzero(cache.item == i)
        assert list(cache.step[rows]) == list(range(it["n_steps"] + 1))
        assert list(cache.token[rows]) == [ids[0, p].item() for p in pos]
        for l in range(model.cfg.n_layers):
            ref = full[f"blocks.{l}.hook_resid_post"][0]
            torch.testing.assert_close(cache.resid[l, torch.from_numpy(rows)], ref[pos])
            torch.testing.assert_close(cache.final[l, i], ref[-1])


def test_capture_subset_of_layers(model, items, cache):
    part = P.capture(model, items[:12], layers=[1], batch_size=5, progress=False)
    rows = torch.from_numpy(np.flatnonzero(cache.item < 12))
    torch.testing.assert_close(part.resid[0], cache.resid[1, rows])
    with pytest.raises(ValueError, match="out of range"):
        P.capture(model, items[:2], layers=[7], progress=False)


def _reference_loop(X, y, n_classes, weight_decay, steps, lr, seed, solver):
    """Plain per-layer training, written independently: nn.Linear on standardised inputs, autograd gradients,
    then the solver's update written out per layer (Adam: torch.optim.Adam's update with the cosine-decayed rate;
    bound: solve (S/2 + wd I) D = -grad with torch.linalg.solve), from the same init."""
    W0 = torch.randn(X.shape[0], X.shape[2], n_classes, generator=torch.Generator().manual_seed(seed)) * 0.01
    y = torch.as_tensor(y)
    out = []
    for l in range(X.shape[0]):
        Xs = (X[l] - X[l].mean(0)) / X[l].std(0)
        lin = torch.nn.Linear(X.shape[2], n_classes)
        with torch.no_grad():
            lin.weight.copy_(W0[l].T if solver == "adam" else torch.zeros_like(lin.weight))
            lin.bias.zero_()
        params = list(lin.parameters())
        moments = [(torch.zeros_like(p), torch.zeros_like(p)) for p in params]
        A = Xs.T @ Xs / len(Xs) / 2 + weight_decay * torch.eye(X.shape[2])
        for t in range(1, steps + 1):
            lin.zero_grad()
            loss = torch.nn.functional.cross_entropy(lin(Xs), y) + 0.5 * weight_decay * lin.weight.pow(2).sum()
            loss.backward()
            with torch.no_grad():
                if solver == "bound":
                    gW = lin.weight.grad.T  # [d, C]
                    step = torch.linalg.solve(A, gW - gW.mean(1, keepdim=True))
                    lin.weight.copy_((lin.weight.T - lin.weight.T.mean(1, keepdim=True) - step).T)
                    lin.bias -= 2 * lin.bias.grad
                    continue
                rate = lr * 0.5 * (1 + math.cos(math.pi * (t - 1) / steps))
                for p, (m, v) in zip(params, moments):
                    m.copy_(0.9 * m + 0.1 * p.grad)
                    v.copy_(0.999 * v + 0.001 * p.grad ** 2)
                    p -= rate * (m / (1 - 0.9 ** t)) / ((v / (1 - 0.999 ** t)).sqrt() + 1e-8)
        out.append((lin, X[l].mean(0), X[l].std(0)))
    return out


@pytest.mark.parametrize("solver,steps", [("bound", 15), ("adam", 60)])
def test_batched_trainer_matches_per_layer_loop(solver, steps):
    gen = torch.Generator().manual_seed(0)
    n_layers, n, d, c = 3, 600, 24, 4
    y = torch.randint(0, c, (n,), generator=gen)
    centers = torch.randn(n_layers, c, d, generator=gen) * torch.tensor([0.2, 0.6, 1.5])[:, None, None]
    X = centers[:, y] + torch.randn(n_layers, n, d, generator=gen) * 2 + 3.0  # offsets and scales: standardisation matters
    tr, te = slice(0, 400), slice(400, None)
    kw = dict(weight_decay=1e-2, steps=steps, lr=0.05, seed=5)
    probes = P.train_probes(X[:, tr], y[tr], c, solver=solver, **kw)
    acc = (probes.predict(X[:, te]) == y[te]).float().mean(1)
    ref = _reference_loop(X[:, tr], y[tr], c, solver=solver, **kw)
    for l, (lin, mu, sd) in enumerate(ref):
        with torch.no_grad():
            ref_logits = lin((X[l, te] - mu) / sd)
        ref_acc = (ref_logits.argmax(-1) == y[te]).float().mean()
        assert abs(acc[l] - ref_acc) <= 0.005, (l, acc[l], ref_acc)
        torch.testing.assert_close(X[l, te] @ probes.W[l] + probes.b[l], ref_logits, atol=1e-3, rtol=1e-3)
    assert acc[2] > acc[0]  # the data get more separable by layer, and the probes see it


def test_bound_solver_reaches_the_optimum_adam_approaches():
    """Both solvers minimise the same objective: with enough steps they agree on held-out predictions."""
    gen = torch.Generator().manual_seed(1)
    y = torch.randint(0, 3, (500,), generator=gen)
    X = torch.randn(2, 3, 16, generator=gen)[:, y] + torch.randn(2, 500, 16, generator=gen)
    bound = P.train_probes(X, y, 3, solver="bound", steps=40)
    adam = P.train_probes(X, y, 3, solver="adam", steps=400, lr=0.05)
    agree = (bound.predict(X) == adam.predict(X)).float().mean()
    assert agree > 0.97, agree
    with pytest.raises(ValueError, match="valid: bound, adam"):
        P.train_probes(X, y, 3, solver="lbfgs")


def test_probe_finds_planted_label_and_random_control_does_not(model, items):
    """Write a known label (prefix token-id sum mod 3) into the residual stream after block 1 only."""
    k, scale = 3, 0.6
    dirs = torch.nn.functional.normalize(torch.randn(k, model.cfg.d_model, generator=torch.Generator().manual_seed(1)), dim=-1) * scale
    state = {}

    def keep_ids(module, args, kwargs):
        state["ids"] = args[0] if args else kwargs["input_ids"]

    def plant(x, hook):
        label = state["ids"].cumsum(1) % k
        return x + dirs[label.to(x.device)]

    handle = model.embed.register_forward_pre_hook(keep_ids, with_kwargs=True)
    try:
        with model.hooks(fwd_hooks=[("blocks.1.hook_resid_post", plant)]):
            planted = P.capture(model, items, batch_size=16, progress=False)
    finally:
        handle.remove()
    y = []
    for i, it in enumerate(items):
        ids = torch.tensor(encode(model.tokenizer, render(it["prompt"], model.tokenizer)))
        y += [int(ids[: p + 1].sum()) % k for p in step_positions(model.tokenizer, it)]
    y = np.asarray(y)
    res = P.fit(planted, y, list(range(k)), control=None, seed=0)
    chance = res.chance
    assert res.accuracy[1] > 0.95 and res.accuracy[2] > 0.95, res.accuracy
    assert res.accuracy[0] < chance + 0.25, (res.accuracy, chance)  # not there before it is written
    # random labels per item (no consistent type): the same probe stays near chance at every layer
    rng = np.random.default_rng(0)
    shuffled = rng.integers(0, k, size=len(items))[planted.item]
    ctrl = P.fit(planted, shuffled, list(range(k)), seed=0)
    assert (ctrl.accuracy < ctrl.chance + 0.15).all(), (ctrl.accuracy, ctrl.chance)


def test_split_is_by_item(cache):
    test_item = P.split_items(int(cache.item.max()) + 1, 0.25, seed=4)
    test_rows = test_item[cache.item]
    assert set(cache.item[test_rows]).isdisjoint(cache.item[~test_rows])
    assert (P.split_items(40, 0.25, seed=4) == test_item).all()
    assert not (P.split_items(40, 0.25, seed=5) == test_item).all()


def test_control_labels_consistent_per_type(items, cache):
    y, classes = P.target_labels(items, cache, "heading")
    types = P.control_types(items, cache, "phrase")
    a = P.control_labels(types, y, len(classes), seed=2)
    assert (a == P.control_labels(types, y, len(classes), seed=2)).all()
    by_type = {}
    for t, v in zip(types, a):
        assert by_type.setdefault(t, v) == v
    assert len(set(types)) > len(classes)  # phrases are finer than the labels: memorising them is a real task
    tok = P.control_types(items, cache, "token")
    assert tok == [int(t) for t in cache.token]


def test_target_labels(items, cache):
    y, classes = P.target_labels(items, cache, "heading")
    assert classes == [0, 1, 2, 3]
    rows = np.flatnonzero(cache.item == 5)
    it = items[5]
    assert [classes[v] for v in y[rows]] == it["label_heading_slot"] + it["label_heading_slot"][-1:]
    y_obj, objs = P.target_labels(items, cache, "object")
    assert objs[y_obj[rows[-1]]] == it["answer"]
    with pytest.raises(ValueError, match="valid targets: heading, cum_angle, observed, object"):
        P.target_labels(items, cache, "rotation")


def test_fit_target_result_roundtrip(items, cache, tmp_path):
    res = P.fit_target(cache, items, "heading", steps=20, seed=1)
    assert res.n_train_items + res.n_test_items == len(items)
    np.testing.assert_allclose(res.selectivity, res.accuracy - res.control_accuracy)
    assert res.confusion.shape == (3, 4, 4) and res.confusion[0].sum() == res.n_test_rows
    np.testing.assert_allclose(res.confusion.trace(axis1=1, axis2=2) / res.n_test_rows, res.accuracy, atol=1e-6)
    assert res.weights.shape == (3, model_d(cache), 4)
    path = res.save(tmp_path / "probe.json")
    back = P.ProbeResult.load(path)
    np.testing.assert_array_equal(back.accuracy, res.accuracy)
    np.testing.assert_array_equal(back.weights, res.weights)
    assert back.classes == res.classes
    frame = back.to_frame()
    assert list(frame["layer"]) == [0, 1, 2] and {"accuracy", "control_accuracy", "selectivity", "chance"} <= set(frame)
    assert len(back.plot().data) == 4
    again = P.fit_target(cache, items, "heading", steps=20, seed=1)
    np.testing.assert_array_equal(again.accuracy, res.accuracy)  # seeded


def model_d(cache):
    return cache.resid.shape[-1]


def test_clear_errors(model, items):
    with pytest.raises(ValueError, match="valid targets"):
        P.probe(model, items, target="nope", progress=False)
    with pytest.raises(ValueError, match="at least 10 items"):
        P.probe(model, items[:4], progress=False)
    with pytest.raises(ValueError, match="valid: prefix, phrase, token, label"):
        P.probe(model, items, control_by="word", progress=False)


def test_cli_json(tmp_path):
    import json

    from typer.testing import CliRunner

    from vru_lens.cli import app

    out = CliRunner().invoke(app, ["probe", "--model", "tiny-llama", "--n", "12", "--train-steps", "10", "--json",
                                   "--no-progress", "--lens", "--out", str(tmp_path / "p")])
    assert out.exit_code == 0, out.output
    payload = json.loads(out.stdout.strip().splitlines()[-1])
    assert payload["layers"] == [0, 1, 2]
    for key in ("accuracy", "control_accuracy", "selectivity"):
        assert len(payload[key]) == 3
    written = {f.name for f in (tmp_path / "p").iterdir()}  # --out is a folder of named files
    assert written == {"probe.json", "probe.html", "lens.json", "lens.html", "resid.pt"}
    assert P.ProbeResult.load(tmp_path / "p" / "probe.json").summary()["best_layer"] == payload["best_layer"]
    bad = CliRunner().invoke(app, ["probe", "--model", "tiny-llama", "--n", "12", "--target", "angle"])
    assert bad.exit_code == 2 and "valid targets" in bad.output


def test_resid_cache_save_load_roundtrip(cache, tmp_path):
    path = cache.save(tmp_path / "acts.pt")
    back = P.ResidCache.load(path)
    assert torch.equal(back.resid, cache.resid) and torch.equal(back.final, cache.final)
    for k in ("item", "step", "token"):
        assert np.array_equal(getattr(back, k), getattr(cache, k))
    assert back.layers == cache.layers and back.meta == cache.meta
    # two halves captured apart and joined equal the whole
    n = cache.meta["n_items"]
    first = np.flatnonzero(cache.item < n // 2)
    assert len(P.ResidCache.concat([cache, cache])) == 2 * len(cache)
    assert P.ResidCache.concat([cache, cache]).item[len(cache) + first[-1]] == cache.item[first[-1]] + n


def test_stale_cache_is_refused(model, items, cache, tmp_path):
    want = {"model": cache.meta["model"], "chat": False, "n_items": len(items), "item_ids": [it["id"] for it in items]}
    cache.meta.update(want)
    path = cache.save(tmp_path / "acts.pt")
    assert P.ResidCache.load(path).check(want, layers=[0, 1, 2], final=True).layers == [0, 1, 2]
    with pytest.raises(ValueError, match="chat"):
        P.ResidCache.load(path).check({**want, "chat": True})
    with pytest.raises(ValueError, match="item_ids"):
        P.ResidCache.load(path).check({**want, "item_ids": want["item_ids"][::-1]})
    with pytest.raises(ValueError, match="layers"):
        P.ResidCache.load(path).check(want, layers=[1])
    part = P.capture(model, items[:12], layers=[1], progress=False)
    part.meta.update(want)
    with pytest.raises(ValueError, match="final"):
        part.check(want, final=True)


def test_cached_capture_reuses_a_fresh_cache_and_refuses_a_stale_one(model, items, tmp_path, monkeypatch):
    path = tmp_path / "resid.pt"
    first = P.ResidCache.cached(path, model, items, final=True, progress=False)
    assert path.exists()
    fresh = P.capture(model, items, final=True, progress=False)
    assert torch.equal(first.resid, fresh.resid) and first.meta == fresh.meta
    monkeypatch.setattr(P, "capture", lambda *a, **k: pytest.fail("a fresh cache must be reused, not recaptured"))
    again = P.ResidCache.cached(path, model, items, final=True, progress=False)
    assert torch.equal(again.resid, first.resid) and torch.equal(again.final, first.final)
    assert P.ResidCache.cached(path, model, items, layers=[0, 1, 2], progress=False).layers == [0, 1, 2]
    with pytest.raises(ValueError, match="resid.pt.*other settings.*item_ids"):
        P.ResidCache.cached(path, model, items[::-1], progress=False)
    with pytest.raises(ValueError, match="other settings.*chat"):
        P.ResidCache.cached(path, model, items, chat=True, progress=False)
    with pytest.raises(ValueError, match="other settings.*layers"):
        P.ResidCache.cached(path, model, items, layers=[1], progress=False)
    part = tmp_path / "part.pt"
    monkeypatch.undo()
    P.ResidCache.cached(part, model, items, layers=[1], progress=False)
    with pytest.raises(ValueError, match="other settings.*layers"):  # all layers wanted, the cache holds one
        P.ResidCache.cached(part, model, items, progress=False)
    with pytest.raises(ValueError, match="final"):
        P.ResidCache.cached(part, model, items, layers=[1], final=True, progress=False)


def test_cli_refuses_a_stale_cache(tmp_path):
    from typer.testing import CliRunner

    from vru_lens.cli import app

    args = ["probe", "--model", "tiny-llama", "--n", "12", "--train-steps", "5", "--json", "--no-progress",
            "--out", str(tmp_path / "p")]
    assert CliRunner().invoke(app, args).exit_code == 0
    assert CliRunner().invoke(app, args).exit_code == 0  # reused
    bad = CliRunner().invoke(app, [*args[:4], "13", *args[5:]])
    assert bad.exit_code == 2 and "other settings" in bad.output and "n_items" in bad.output
