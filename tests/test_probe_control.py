"""The heading probe's control task (issue 20, item 2): the phrase control is solvable from the local phrase
alone, the prefix control is not, so only the prefix control separates a model that tracks the heading from
one that only sees the current phrase. Checked on residuals built by hand, where the answer is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vru_lens import probe as P
from vru_lens.bench import BenchConfig, make_items

TURNS = [(a, d) for a in (0, 90, 180, 270, 360) for d in ("left", "right")]


@pytest.fixture(scope="module")
def items():
    return make_items(300, 11, BenchConfig(style="paper"), split="train")


def _cache(items, keep_heading: bool, seed: int = 0) -> P.ResidCache:
    """One row per step end and question; features: the local turn at a step end or at the question
    (one-hot over both, as a model sees different tokens there), and, when ``keep_heading``, the heading
    slot after the turns so far (one-hot), plus a little noise."""
    rng = np.random.default_rng(seed)
    rows, item, step = [], [], []
    for i, it in enumerate(items):
        for s in range(it["n_steps"] + 1):
            st = it["steps"][min(s, it["n_steps"] - 1)]
            x = np.zeros(2 * len(TURNS) + 4)
            x[TURNS.index((st["angle"], st["direction"])) + len(TURNS) * (s == it["n_steps"])] = 1
            if keep_heading:
                x[2 * len(TURNS) + it["label_heading_slot"][min(s, it["n_steps"] - 1)]] = 1
            rows.append(x + 0.01 * rng.standard_normal(len(x)))
            item.append(i)
            step.append(s)
    resid = torch.tensor(np.stack(rows), dtype=torch.float32)[None]
    return P.ResidCache(resid, np.asarray(item), np.asarray(step), np.zeros(len(item), dtype=int), [0],
                        meta={"n_items": len(items)})


def test_prefix_types_are_the_turns_so_far(items):
    cache = _cache(items[:5], keep_heading=False)
    types = P.control_types(items[:5], cache, "prefix")
    for t, i, s in zip(types, cache.item, cache.step):
        steps = items[i]["steps"]
        assert t == (s == len(steps), tuple((x["angle"], x["direction"]) for x in steps[: s + 1]))


def test_phrase_control_is_solvable_from_the_phrase_prefix_control_is_not(items, one_thread):
    local = _cache(items, keep_heading=False)
    tracked = _cache(items, keep_heading=True)
    by_phrase = P.fit_target(local, items, "heading", control_by="phrase")
    by_prefix_local = P.fit_target(local, items, "heading", control_by="prefix")
    by_prefix_tracked = P.fit_target(tracked, items, "heading", control_by="prefix")
    # the phrase control only needs the local phrase, which both representations hold
    assert by_phrase.control_accuracy[0] >= 0.95
    # against the prefix control, only the representation that keeps the heading is selective
    assert by_prefix_tracked.accuracy[0] >= 0.95
    assert by_prefix_tracked.selectivity[0] >= 0.4
    assert by_prefix_local.selectivity[0] <= 0.15
    assert by_prefix_tracked.selectivity[0] - by_prefix_local.selectivity[0] >= 0.3


def test_heading_defaults_to_the_prefix_control(items):
    cache = _cache(items[:40], keep_heading=True)
    assert P.fit_target(cache, items[:40], "heading").control_by == "prefix"
    assert P.fit_target(cache, items[:40], "object").control_by == "phrase"
