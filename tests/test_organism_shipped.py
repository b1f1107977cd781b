"""Ground truth of the shipped organism, measured again on its committed weights (exact experiments)."""


import pytest

from vru_lens.bench import BenchConfig, make_items
from vru_lens.models.organisms import organism_card
from vru_lens.organism.verify import ground_truth


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
def truth(organism, items, pair_items, planted):
    return ground_truth(organism, items, planted, pair_items=pair_items, n_random=3)


def test_enough_pairs(truth):
    assert truth["n_pairs"] >= 60


def test_card_shape(planted):
    card = organism_card("vru-organism")
    assert len(planted) >= 2 and len({l for l, _ in planted}) >= 2
    assert card["n_heads"] % card["n_kv_heads"] == 0 and set(card["roles"]) == {f"{l}.{h}" for l, h in planted}


def test_patching_G_from_the_flipped_prompt_flips_the_answer(truth):
    assert truth["patch_C_flipped"] >= 0.95, truth


def test_patching_every_head_outside_G_leaves_the_answer(truth):
    assert truth["patch_outside_C_changed"] <= 0.02, truth


def test_mean_ablating_G_falls_to_the_blind_rule_random_heads_do_not(truth):
    blind = truth["best_blind_rule"][1]
    assert truth["ablate_C_accuracy"] <= blind + 0.05, truth
    assert truth["accuracy"] - sum(truth["ablate_random_accuracy"]) / len(truth["ablate_random_accuracy"]) <= 0.02, truth


def test_task_targets(truth):
    assert truth["accuracy"] >= 0.98, truth
    assert truth["pairs_both_right_top1"] >= 0.95, truth


def test_second_task(organism):
    from vru_lens.organism import data as D
    import torch

    tok = organism.tokenizer
    items = D.list_items(300, seed=5)
    ids, last, ans = D.encode_plain(tok, items)
    with torch.inference_mode():
        logits = organism(ids)[torch.arange(len(items)), last]
    assert (logits.argmax(-1) == ans).float().mean() >= 0.95


def test_activation_patching_finds_G(organism, pair_items, planted):
    from vru_lens.patching.rank import rank_heads

    scores = rank_heads(organism, pair_items, method="activation", n_boot=0, progress=False)
    top = {(l, h) for l, h, _ in scores.top(len(planted))}
    assert len(top & set(planted)) >= 0.8 * len(planted), scores.top(len(planted))


def test_knockout_of_G_hurts_3x_more_than_random(truth):
    base = truth["accuracy"]
    drop_g = base - truth["ablate_C_accuracy"]
    drop_r = base - sum(truth["ablate_random_accuracy"]) / len(truth["ablate_random_accuracy"])
    assert drop_g >= 3 * max(drop_r, 0.005), truth


def test_base_checkpoint_is_partway_with_the_second_task_learned(items):
    """vru-organism-base: the same run stopped at 45-65% VRU accuracy, list task already learned."""
    import torch

    from vru_lens.evaluate import evaluate
    from vru_lens.models import load_model
    from vru_lens.organism import data as D

    base = load_model("vru-organism-base", device="cpu")
    acc = evaluate(base, items, batch_size=64, progress=False).accuracy
    assert 0.45 <= acc <= 0.65, acc
    lst = D.list_items(300, seed=5)
    ids, last, ans = D.encode_plain(base.tokenizer, lst)
    with torch.inference_mode():
        logits = base(ids)[torch.arange(len(lst)), last]
    assert (logits.argmax(-1) == ans).float().mean() >= 0.95
