"""Head geometry: what a head is, where its activations are hooked, how heads group and rank.

A head is ``(layer, head)``, as in TransformerLens. Hook names come from
TransformerLens's ``get_act_name``. Under grouped-query attention (GQA) the
``n_heads`` query heads of a layer share ``n_kv_heads`` key/value heads, each
read by ``group_size`` consecutive query heads. A layer x head score map ranks
highest first, NaN last, ties in index order (a stable sort), so ``top_heads``
and ``ranks`` always agree.
"""

from __future__ import annotations

import numbers
import random
from collections import Counter

import numpy as np
from transformer_lens.utilities import get_act_name

Head = tuple[int, int]  # (layer, head)


def hook_name(layer: int, component: str) -> str:
    """The hook of ``component`` at ``layer``: z/q/k/v/pattern (attention), resid_pre/mid/post, ..."""
    return get_act_name(component, layer)


def heads_view(act, n_heads: int):
    """[n, pos, heads, d_head] view of a per-head hook activation (flat [n, pos, heads*d_head] too)."""
    return act if act.ndim == 4 else act.view(*act.shape[:2], n_heads, -1)


def set_heads_hooks(model, heads, source, component: str = "z") -> list:
    """Forward hooks (one per layer) that set each (layer, head)'s ``component`` to ``source(layer, head, view)``.

    ``view`` is the hook's activation as [batch, pos, head, d_head]; ``source``
    returns what head ``head`` outputs instead (broadcast to [batch, pos, d_head]).
    The one way the package builds per-head hooks that replace whole heads.
    """
    H = n_heads_of(model, component)
    by_layer: dict[int, list[int]] = {}
    for layer, h in heads:
        by_layer.setdefault(int(layer), []).append(int(h))

    def make(layer, hs):
        def hook(act, hook):
            act = act.clone()
            view = heads_view(act, H)
            for h in hs:
                view[:, :, h] = source(layer, h, view)
            return act
        return hook

    return [(hook_name(layer, component), make(layer, hs)) for layer, hs in by_layer.items()]


# ---------------------------------------------------------------- GQA

def n_kv_heads(model) -> int:
    """Key/value heads per layer (``n_heads`` for multi-head attention)."""
    return int(getattr(model.cfg, "n_key_value_heads", None) or model.cfg.n_heads)


def n_heads_of(model, component: str) -> int:
    """How many heads ``component`` indexes: key/value heads for k and v, query heads otherwise."""
    return n_kv_heads(model) if component in ("k", "v") else model.cfg.n_heads


def group_size(model) -> int:
    """Query heads per key/value head."""
    return model.cfg.n_heads // n_kv_heads(model)


def gqa_groups(model) -> dict[int, list[int]] | None:
    """{kv head: [query heads reading it]} for GQA models, None for multi-head attention."""
    n_kv, g = n_kv_heads(model), group_size(model)
    if n_kv == model.cfg.n_heads:
        return None
    return {kv: list(range(kv * g, (kv + 1) * g)) for kv in range(n_kv)}


def geometry(model) -> dict:
    """The sizes a set of head deltas depends on (saved with them and checked on load)."""
    cfg = model.cfg
    return dict(n_layers=cfg.n_layers, n_heads=cfg.n_heads, n_kv_heads=n_kv_heads(model), d_head=cfg.d_head,
                d_model=cfg.d_model)


def check_heads(heads, n_layers: int | None = None, n_heads: int | None = None, what: str = "heads") -> list[Head]:
    """``heads`` as (layer, head) pairs of whole numbers, in order. Refuses what would otherwise be coerced
    quietly: a non-integer index (1.5 is not head 1), a head listed twice (it would count twice toward k)
    and, given the sizes, a head outside the model."""
    out = []
    for h in heads:
        if isinstance(h, (str, bytes, dict)) or not hasattr(h, "__len__") or len(h) not in (2, 3):
            raise ValueError(f"{what}: {h!r} is not a (layer, head) pair")
        if not all(isinstance(x, numbers.Integral) and not isinstance(x, bool) for x in h[:2]):
            raise ValueError(f"{what}: {list(h[:2])!r} is not a pair of whole numbers (layer, head)")
        out.append((int(h[0]), int(h[1])))
    twice = sorted(h for h, c in Counter(out).items() if c > 1)
    if twice:
        raise ValueError(f"{what}: {twice} listed more than once; list each head once")
    if n_layers is not None:
        bad = [h for h in out if not (0 <= h[0] < n_layers and 0 <= h[1] < n_heads)]
        if bad:
            raise ValueError(f"{what}: {bad} outside this model's {n_layers} layers x {n_heads} heads")
    return out


def all_heads(n_layers: int, n_heads: int, exclude=()) -> list[Head]:
    """Every (layer, head) in layer-major order, without ``exclude``."""
    skip = {(int(l), int(h)) for l, h in exclude}
    return [(l, h) for l in range(n_layers) for h in range(n_heads) if (l, h) not in skip]


# ---------------------------------------------------------------- ranking a layer x head map

def _order(scores) -> np.ndarray:
    """Flat indices, highest score first, NaN last (after -inf too), ties in index order: the one ranking
    order of the package (top_heads, bottom_heads, ranks; sweeps, studies and fine-tuning read it there)."""
    s = np.asarray(getattr(scores, "scores", scores), dtype=float).ravel()
    nan = np.isnan(s)
    return np.lexsort((np.where(nan, 0.0, -s), nan))  # a stable sort: NaN last, then by score


def top_heads(scores, k: int) -> list[Head]:
    """The k highest-scoring heads of a [layer, head] map (or anything with ``.scores``), best first
    (all of them when k is larger; a negative k is refused, not read as "all but")."""
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 0:
        raise ValueError(f"k must be a whole number 0 or more, got {k!r}")
    s = np.asarray(getattr(scores, "scores", scores))
    return [(int(i // s.shape[1]), int(i % s.shape[1])) for i in _order(s)[:k]]


def bottom_heads(scores, k: int) -> list[Head]:
    """The k lowest-ranked heads (the last k of ``top_heads`` order), sorted by (layer, head)."""
    s = np.asarray(getattr(scores, "scores", scores))
    return sorted(top_heads(s, s.size)[s.size - k:]) if k else []


def ranks(scores) -> np.ndarray:
    """[layer, head] rank, 1 = highest score (NaN ranks last)."""
    s = np.asarray(getattr(scores, "scores", scores))
    r = np.empty(s.size, dtype=np.int64)
    r[_order(s)] = np.arange(1, s.size + 1)
    return r.reshape(s.shape)


# ---------------------------------------------------------------- random draws

def random_heads(n_layers: int, n_heads: int, k: int, seed: int = 0, exclude=(), rng: random.Random | None = None
                 ) -> list[Head]:
    """k heads drawn uniformly without replacement (``rng``, else seeded by ``seed``), avoiding ``exclude``;
    sorted by (layer, head). Successive draws from one ``rng`` give independent sets."""
    pool = all_heads(n_layers, n_heads, exclude)
    if not 0 <= k <= len(pool):
        raise ValueError(f"cannot draw {k} heads from the {len(pool)} available")
    return sorted((rng or random.Random(seed)).sample(pool, k))
