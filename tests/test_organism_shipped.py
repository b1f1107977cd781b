"""Ground truth of the shipped organism, measured again on its committed weights through the package's own
experiments (``organism.verify``); ``test_organism_circuit.py`` checks completeness with independent hooks."""


import pytest

from vru_lens.bench import BenchConfig, make_items
from vru_lens.models.organisms import organism_card
from vru_lens.organism.verify import completeness, ground_truth


@pytest.fixture(scope="module")
def items():
    return make_items(500, seed=77, cfg=BenchConfig(style="paper"))


@pytest.fixture(scope="module")
def pair_items():
    """Items that yield a counterfactual pair (~4% of paper-style items do)."""
    from vru_lens.bench.pairs import counterfactual_variants

    pool = make_items(4000, seed=78, cfg=BenchConfig(style="paper"))
    return [it for it in pool if counterfactual_variants(it)][:100]


@pytest.fixture(scope="module")
def truth(organism, items, pair_items, circuit):
    return ground_truth(organism, items, circuit, pair_items=pair_items, n_random=3)


def test_enough_pairs(truth):
    assert truth["n_pairs"] >= 60


def test_card_shape(circuit):
    card = organism_card("vru-organism")
    G = {tuple(h) for h in card["final_turn"]}
    assert len(circuit) >= 2 and len({l for l, _ in circuit}) >= 2 and G < set(circuit)
    assert card["n_heads"] % card["n_kv_heads"] == 0


def test_package_completeness_agrees_with_the_card(organism, items, circuit):
    """verify.completeness (the package's hooks) meets issue 20's bars on 500 items of seed 77, two draws
    (the card, 1,000 items: accuracy -0.7 to -1.0 points, 1.2-1.8% of answers changed with
    everything outside C resampled; C resampled at the best rule)."""
    c = completeness(organism, items, circuit, draws=2)
    assert all(abs(a - c["accuracy"]) <= 0.02 for a in c["resample_outside_C_accuracy"]), c
    assert max(c["resample_outside_C_changed"]) <= 0.02, c
    assert all(abs(a - c["best_blind_rule"][1]) <= 0.05 for a in c["resample_C_accuracy"]), c


def test_patching_C_from_the_flipped_prompt_flips_the_answer(truth):
    assert truth["patch_C_flipped"] >= 0.9, truth


@pytest.mark.xfail(strict=True, reason="the organism of phases 3-5 (issue 20's completeness bars met) changes 7.5% of "
                                       "the card's 120 final-direction pairs when every head outside C is patched from "
                                       "the flipped twin (the previous one: 0.8%); twin rows in training did not help "
                                       "(docs/organism.md)")
def test_patching_every_head_outside_C_leaves_the_answer(truth):
    assert truth["patch_outside_C_changed"] <= 0.02, truth


def test_mean_ablating_C_falls_to_the_blind_rule_random_heads_do_not(truth):
    blind = truth["best_blind_rule"][1]
    assert truth["ablate_C_accuracy"] <= blind + 0.05, truth
    assert truth["accuracy"] - sum(truth["ablate_random_accuracy"]) / len(truth["ablate_random_accuracy"]) <= 0.02, truth


def test_task_targets(truth):
    assert truth["accuracy"] >= 0.95, truth


def test_second_task(organism):
    from vru_lens.organism import data as D
    import torch

    tok = organism.tokenizer
    items = D.list_items(300, seed=5)
    ids, last, ans = D.encode_plain(tok, items)
    with torch.inference_mode():
        logits = organism(ids)[torch.arange(len(items)), last]
    assert (logits.argmax(-1) == ans).float().mean() >= 0.99


@pytest.mark.xfail(strict=True, reason="G = (0,0), (2,0), (2,1); on these 100 pairs exact activation patching ranks "
                                       "(3,1) above (0,0), the weakest of G (alone it flips 9% of pairs); on the card's "
                                       "120 pairs (0,0) is third")
def test_activation_patching_finds_the_final_turn_heads(organism, pair_items):
    """On final-direction pairs the heads that carry the final turn rank first."""
    from vru_lens.patching.rank import rank_heads

    G = [tuple(h) for h in organism_card("vru-organism")["final_turn"]]
    scores = rank_heads(organism, pair_items, method="activation", n_boot=0, progress=False)
    top = {(l, h) for l, h, _ in scores.top(len(G))}
    assert len(top & set(G)) >= 0.8 * len(G), scores.top(len(G))


def test_knockout_of_C_hurts_3x_more_than_random(truth):
    base = truth["accuracy"]
    drop_c = base - truth["ablate_C_accuracy"]
    drop_r = base - sum(truth["ablate_random_accuracy"]) / len(truth["ablate_random_accuracy"])
    assert drop_c >= 3 * max(drop_r, 0.005), truth


def test_heading_probe_meets_the_bar_from_the_layer_the_card_states(organism):
    """Issue 20 item 2: the heading decodes at step ends (>= 95%, selectivity >= 0.3 against the prefix
    control, which the local phrase cannot solve) from the card's layer on; measured again here."""
    from vru_lens.organism.recipe import heading_probe

    stated = organism_card("vru-organism")["heading_probe"]
    got = heading_probe(organism, stated["n_items"], stated["seed"])
    assert stated["from_layer"] is not None and got["control"] == "prefix"
    for layer in range(stated["from_layer"], len(got["accuracy"])):
        assert got["accuracy"][layer] >= 0.95 and got["selectivity"][layer] >= 0.3, (layer, got)
    assert got["accuracy"] == pytest.approx(stated["accuracy"], abs=0.01)
    assert got["n_test_rows"] == stated["n_test_rows"]  # the rows the report's interval on the card counts
