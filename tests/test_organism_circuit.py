"""Every shipped organism's circuit C is complete, checked with plain forward hooks on the transformers model.

Nothing of vru_lens is used but the benchmark (items, rotation-blind rules) and the card's path:
the model is loaded with ``transformers``, each head's ``z`` is the input of ``o_proj`` sliced by head,
and resample-ablation takes a head's ``z`` from another story of the same token length (InterpBench /
SIIT completeness). Bars (issue 20): resampling every head outside C keeps accuracy within 2 points
and changes the top answer on at most 2% of items; resampling C brings accuracy to within 5 points of
the best rotation-blind rule.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from plain_hooks import accuracy, choices, circuit_of

ROOT = Path(__file__).resolve().parents[1] / "vru_lens" / "models" / "organism"
N_ITEMS, DRAWS = 600, 3


# every shipped organism that claims a complete circuit (a deficit organism is damaged on purpose)
COMPLETE = sorted(p.name for p in ROOT.iterdir()
                  if (p / "organism.json").exists() and "deficit" not in json.loads((p / "organism.json").read_text()))


def test_every_organism_of_the_family_is_shipped():
    assert {"vru-organism", "vru-organism-noisy", "vru-organism-deep", "vru-organism-redundant"} <= set(COMPLETE), COMPLETE


@pytest.fixture(scope="module", params=COMPLETE)
def plain(request):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = ROOT / request.param
    card = json.loads((folder / "organism.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    return model, AutoTokenizer.from_pretrained(folder), card


@pytest.fixture(scope="module")
def items():
    from vru_lens.bench import BenchConfig, make_items

    return make_items(N_ITEMS, seed=4242, cfg=BenchConfig(style="paper"))


def test_derangement_never_reads_itself(plain, items):
    """The resampling helper above really takes z from another story (else completeness is trivial)."""
    model, tok, card = plain
    every = {(l, h) for l in range(model.config.num_hidden_layers) for h in range(model.config.num_attention_heads)}
    assert accuracy(choices(model, tok, items, every), items) < accuracy(choices(model, tok, items), items) - 0.3


@pytest.fixture(scope="module")
def outside_C(plain, items):
    """Accuracy and changed share of top answers with every head outside C resampled, per draw."""
    model, tok, card = plain
    C = circuit_of(card)
    every = {(l, h) for l in range(model.config.num_hidden_layers) for h in range(model.config.num_attention_heads)}
    base = choices(model, tok, items)
    runs = [choices(model, tok, items, every - C, d) for d in range(DRAWS)]
    return accuracy(base, items), [(accuracy(p, items), sum(a != b for a, b in zip(p, base)) / len(items)) for p in runs]


def test_resampling_every_head_outside_C_keeps_accuracy(outside_C):
    acc, runs = outside_C
    assert all(abs(a - acc) <= 0.02 for a, _ in runs), (acc, runs)


def test_resampling_every_head_outside_C_keeps_the_answers(outside_C):
    # issue 24: vru-organism-noisy and vru-organism-deep were strict xfails here (3.2-3.5% and 3.0-4.0% changed)
    # until further settling phases (recipe.NOISY, recipe.DEEP); on these 600 items they now change 1.3-1.8% and
    # 1.7-1.8%: at the bar, not far under it
    acc, runs = outside_C
    assert all(changed <= 0.02 for _, changed in runs), (acc, runs)


def test_resampling_C_falls_to_the_best_blind_rule(plain, items):
    from vru_lens.bench import RULES
    from vru_lens.bench.shortcuts import view

    model, tok, card = plain
    best = max(sum(rule(view(it)) == it["answer"] for it in items) / len(items) for rule in RULES.values())
    for draw in range(DRAWS):
        acc = accuracy(choices(model, tok, items, circuit_of(card), draw), items)
        assert abs(acc - best) <= 0.05, (draw, acc, best)


def test_card_names_the_circuit_its_roles_and_the_final_turn_subset(plain):
    from vru_lens.organism.recipe import ROLES_UNMEASURED

    model, tok, card = plain
    C = circuit_of(card)
    G = {tuple(h) for h in card["final_turn"]}
    # the final-turn subset lies in C; on vru-organism it is 3 of 8 heads, on vru-organism-deep all 16: no
    # smaller set found by verify.final_turn_subset flips the answer together there (its card, final_turn_flips)
    assert G and G <= C, (G, C)
    assert all(role and role != ROLES_UNMEASURED for role in card["circuit"].values())
