"""Knockout curves compare a ranking's top k with random k-sets drawn outside that top k."""

import contextlib
from types import SimpleNamespace

import pytest


def test_random_sets_never_share_a_head_with_the_top_k(monkeypatch):
    import importlib

    K = importlib.import_module("vru_lens.patching.knockout")  # the package exports a function of that name

    seen = []

    @contextlib.contextmanager
    def record(model, heads, means):
        seen.append({tuple(h) for h in heads})
        yield

    monkeypatch.setattr(K, "ablate_heads", record)
    model = SimpleNamespace(cfg=SimpleNamespace(n_layers=2, n_heads=4))
    rankings = {"a": [(0, 0), (0, 1), (1, 2)], "b": [(1, 3), (0, 0), (1, 0)]}
    curve = K.knockout_curve(model, [], rankings, None, max_k=3, n_random=4, seed=1,
                             accuracy=lambda m, items: len(seen[-1]) / 10)
    # calls: base, then each ranking's top-k, then per ranking and k its random draws, in that order
    draws = seen[1 + 2 * 3:]
    assert len(draws) == 2 * 3 * 4
    for i, (name, k) in enumerate((n, k) for n in rankings for k in (1, 2, 3)):
        top = set(rankings[name][:k])
        for heads in draws[4 * i: 4 * i + 4]:
            assert len(heads) == k and not heads & top, (name, k, heads)
    assert set(curve.random) == {"a", "b"} and curve.random["a"]["2"] == [0.2] * 4
    assert curve.random_summary()["b"]["3"]["n_draws"] == 4


def test_max_k_must_leave_room_outside():
    from vru_lens.patching.knockout import knockout_curve

    model = SimpleNamespace(cfg=SimpleNamespace(n_layers=2, n_heads=4))
    with pytest.raises(ValueError, match="max_k <= 4"):
        knockout_curve(model, [], {"a": [(0, 0)]}, None, max_k=5, accuracy=lambda m, i: 0.0)


def test_a_file_with_shared_random_sets_is_refused():
    from vru_lens.patching.knockout import KnockoutCurve

    with pytest.raises(ValueError, match="rerun the knockout stage"):
        KnockoutCurve("m", 1.0, [1], {"a": [0.5]}, {"a": [[0, 0]]}, {"1": [0.9]})
