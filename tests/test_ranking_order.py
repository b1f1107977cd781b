"""One ranking order (``heads``): highest first, ties in (layer, head) order, NaN last. Every place that orders
heads (sweep cells, the organism study's grades, ranks and top lists) reads it there."""

import math
from types import SimpleNamespace

import numpy as np

from vru_lens.heads import bottom_heads, ranks, top_heads

TIED = [[1.0, 1.0], [0.0, 1.0]]
TIED_ORDER = [(0, 0), (0, 1), (1, 1), (1, 0)]


def reference_order(s) -> list:
    """Written without numpy's sorts: NaN last, then by score (highest first), then by (layer, head)."""
    cells = [(l, h) for l in range(len(s)) for h in range(len(s[0]))]
    return sorted(cells, key=lambda c: (math.isnan(s[c[0]][c[1]]), -s[c[0]][c[1]] if not math.isnan(s[c[0]][c[1]]) else 0, c))


def test_heads_order_matches_a_brute_force_reference():
    assert top_heads(np.array(TIED), 4) == TIED_ORDER == reference_order(TIED)
    assert ranks(np.array(TIED)).tolist() == [[1, 2], [4, 3]]
    assert bottom_heads(np.array(TIED), 2) == [(1, 0), (1, 1)]
    rng = np.random.default_rng(0)
    values = np.array([np.nan, -np.inf, np.inf, 0.0, -0.0, 1.0, -1.0])
    for _ in range(300):
        s = rng.choice(values, size=(int(rng.integers(1, 4)), int(rng.integers(1, 5))))
        want = reference_order(s.tolist())
        assert top_heads(s, s.size) == want, s
        r = ranks(s)
        assert [r[l, h] for l, h in want] == list(range(1, s.size + 1)), s


def test_nan_ranks_after_minus_infinity():
    assert top_heads(np.array([[np.nan, -np.inf, 2.0]]), 3) == [(0, 2), (0, 1), (0, 0)]


def test_the_organism_study_grades_in_that_order():
    from vru_lens.organism.graded import grade

    for s in (TIED, [[np.nan, -np.inf], [0.0, 0.0]]):
        g = grade(np.array(s), [(0, 0)])
        assert [tuple(t) for t in g["ranking"]] == top_heads(np.array(s), 4) == reference_order(s)


def test_a_sweep_cell_lists_its_top_heads_in_that_order(monkeypatch):
    import vru_lens.patching.rank as rank
    from vru_lens.sweep import DEFAULT_OPTIONS, run_cell

    scores = np.array(TIED)
    monkeypatch.setattr(rank, "rank_heads", lambda *a, **k: SimpleNamespace(scores=scores, ld_effect=scores))
    cell = run_cell({"model": "tiny-llama", "method": "path", "metric": "score", "pairs": 2, "style": "paper", "seed": 0},
                    {**DEFAULT_OPTIONS, "top_k": 3})
    assert [tuple(t[:2]) for t in cell["top"]] == TIED_ORDER[:3]
