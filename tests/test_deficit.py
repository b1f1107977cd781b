"""The deficit organism (issue 20, item 3) on its shipped weights: accuracy in its band, a card naming D that
the weights agree with, a ranking that finds D, and selective fine-tuning that repairs it where random heads do not."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from vru_lens.bench import BenchConfig, make_items
from vru_lens.models.organisms import circuit_heads, organism_card, organism_dir
from vru_lens.organism.deficit import BAND, Damage, bisect_amount, deficient_heads

NAME = "vru-organism-deficit"


@pytest.fixture(scope="module")
def card():
    return organism_card(NAME)


@pytest.fixture(scope="module")
def deficit(one_thread):
    from vru_lens.models import load_model

    return load_model(NAME, device="cpu")


def test_card_names_D_inside_the_circuit(card):
    D = deficient_heads(card)
    assert D and set(D) <= set(circuit_heads(card))
    assert card["deficit"]["deficient_heads"] == [list(h) for h in D]
    assert BAND[0] <= card["deficit"]["accuracy"] <= BAND[1]


def test_weights_differ_from_the_source_exactly_where_the_card_says(card):
    """Re-apply the card's damage (amount, seed) to the source's weights with plain tensor code: the shipped
    weights must equal it, and every tensor outside D's W_Q / W_K rows must be the source's, bit for bit."""
    src = load_file(str(organism_dir(card["deficit"]["from"]) / "model.safetensors"))
    got = load_file(str(organism_dir(NAME) / "model.safetensors"))
    amount, seed = card["deficit"]["damage"]["amount"], card["deficit"]["damage"]["seed"]
    d_head = got["model.layers.0.self_attn.q_proj.weight"].shape[0] // card["n_heads"]
    per_group = card["n_heads"] // card["n_kv_heads"]
    D = set(deficient_heads(card))
    want = {k: v.clone() for k, v in src.items()}
    kind = card["deficit"]["damage"].get("kind", "query")
    if kind == "output":  # D's W_O columns scaled toward zero
        projs = ("o_proj",)
        for l, h in sorted(D):
            want[f"model.layers.{l}.self_attn.o_proj.weight"][:, h * d_head:(h + 1) * d_head] *= 1 - amount
    else:  # W_Q of D and W_K of groups wholly in D, toward a seeded random matrix of the same norm
        projs = ("q_proj", "k_proj")
        gen = torch.Generator().manual_seed(seed)
        rows = [("q_proj", l, h) for l, h in sorted(D)]
        rows += [("k_proj", l, g) for l in sorted({l for l, _ in D}) for g in range(card["n_kv_heads"])
                 if all((l, g * per_group + r) in D for r in range(per_group))]
        for proj, l, i in rows:
            w = want[f"model.layers.{l}.self_attn.{proj}.weight"][i * d_head:(i + 1) * d_head]
            r = torch.randn(w.shape, generator=gen)
            w.copy_((1 - amount) * w + amount * r * (w.norm() / r.norm()))
    assert set(got) == set(want)
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=1e-6, msg=key)
    changed = [k for k in src if not torch.equal(src[k], got[k])]
    assert changed and all(any(p in k for p in projs) for k in changed)


def test_accuracy_in_band(deficit, card):
    from vru_lens.evaluate import evaluate

    acc = evaluate(deficit, make_items(400, 77, BenchConfig(style="paper")), batch_size=64, progress=False).accuracy
    assert BAND[0] <= acc <= BAND[1], acc
    src = organism_card(card["deficit"]["from"])["measured"]["accuracy"]
    assert src - acc >= 0.25  # the damage is what lost the items


def test_exact_ranking_finds_D(deficit, card):
    """Activation patching on fresh pairs ranks D above the other heads (a random ranking scores 0.5)."""
    from vru_lens.bench import PAIRABLE
    from vru_lens.organism.verify import auroc_ci
    from vru_lens.patching.rank import rank_heads
    from vru_lens.tokens import tokenize_pairs

    pt = tokenize_pairs(deficit.tokenizer, make_items(120, 5, PAIRABLE, split="validation"))
    scores = rank_heads(deficit, pt, "activation", n_boot=0, progress=False, batch_size=32)
    graded = auroc_ci(scores, deficient_heads(card), n_boot=100)
    assert graded["auroc"] >= 0.85 and graded["low"] >= 0.7, graded
    shuffled = np.random.default_rng(0).permutation(scores.scores.ravel()).reshape(scores.scores.shape)
    from vru_lens.organism.verify import auroc

    assert graded["auroc"] - auroc(shuffled, deficient_heads(card)) >= 0.2


@pytest.mark.xfail(strict=True, reason="issue 20 item 3, not met on the complete organism's deficit (D = (2,0), (2,1), "
                   "W_O scaled by 0.4375): own top-2 is D and repairs to 97.5%, but random-2 reaches 89.0% (one seed, "
                   "200 items): heads outside D learn to make up a weak write (docs/organism.md)")
def test_top_k_heads_repair_random_k_do_not(one_thread):
    """The cheap version of the fine-tuning bar: one seed, own top-k against random-k (the full run: 5 seeds,
    every arm, docs/organism.md)."""
    from dataclasses import replace

    from vru_lens.organism.repair import QUICK, repair

    result = repair(NAME, replace(QUICK, arms=("top", "random")), log=lambda m: None)
    top, rnd = result["summary"]["top"]["vru_acc"]["mean"], result["summary"]["random"]["vru_acc"]["mean"]
    before = result["before"]["vru_acc"]
    assert top >= 0.85 and top - rnd >= 0.15 and top - before >= 0.25, (before, top, rnd)
    assert result["summary"]["top"]["D_among"][0] >= len(result["deficient_heads"]) - 1


# ------------------------------------------------------------------ the pieces, on small inputs
def test_damage_touches_only_D_and_undoes_exactly():
    from vru_lens.models.loader import load_hf

    hf, _ = load_hf("tiny-llama")
    cfg = hf.config
    per_group = cfg.num_attention_heads // cfg.num_key_value_heads
    heads = [(0, h) for h in range(per_group)] + [(1, 0)]  # a whole KV group in layer 0, one query head in layer 1
    before = {k: v.detach().clone() for k, v in hf.state_dict().items()}
    dmg = Damage(hf, heads, seed=3)
    dmg.apply(1.0)
    after = hf.state_dict()
    changed = sorted(k for k in before if not torch.equal(before[k], after[k]))
    dmg.apply(0.0)
    restored = hf.state_dict()
    assert all(torch.equal(before[k], restored[k]) for k in before)
    k_layers = {s[1] for s in dmg.slices if s[0] == "k_proj"}
    assert k_layers == {0}  # layer 1's KV group also serves a head outside D: its W_K is left alone
    assert any("layers.0" in k and "k_proj" in k for k in changed)
    assert not any("layers.1" in k and "k_proj" in k for k in changed)
    assert all("q_proj" in k or "k_proj" in k for k in changed)


def test_output_damage_scales_only_D_write_columns():
    from vru_lens.models.loader import load_hf

    hf, _ = load_hf("tiny-llama")
    d_head = hf.config.hidden_size // hf.config.num_attention_heads
    before = {k: v.detach().clone() for k, v in hf.state_dict().items()}
    Damage(hf, [(1, 1)], kind="output").apply(0.25)
    after = hf.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed == ["model.layers.1.self_attn.o_proj.weight"]
    w0, w1 = before[changed[0]], after[changed[0]]
    cols = slice(d_head, 2 * d_head)
    torch.testing.assert_close(w1[:, cols], 0.75 * w0[:, cols], rtol=0, atol=0)
    assert torch.equal(w1[:, :d_head], w0[:, :d_head]) and torch.equal(w1[:, 2 * d_head:], w0[:, 2 * d_head:])
    with pytest.raises(ValueError, match="unknown damage kind"):
        Damage(hf, [(1, 1)], kind="values")


def test_bisection_lands_in_band_and_refuses_heads_that_do_not_matter():
    amount, acc, path = bisect_amount(lambda a: 1.0 - 0.8 * a ** 2, log=lambda m: None)
    assert BAND[0] <= acc <= BAND[1] and abs((1.0 - 0.8 * amount ** 2) - acc) < 1e-12
    with pytest.raises(ValueError, match="not where the task is done"):
        bisect_amount(lambda a: 0.9, log=lambda m: None)


def test_list_pairs_differ_in_one_token_and_flip_the_answer(deficit):
    from vru_lens.organism.data import list_items
    from vru_lens.organism.repair import list_pairs

    items = list_items(20, 1)
    pt = list_pairs(deficit.tokenizer, items)
    diff = (pt.clean != pt.corrupt).sum(1)
    assert torch.equal(diff, torch.ones_like(diff))
    assert bool((pt.clean_answer != pt.corrupt_answer).all())


def test_cli_refuses_bad_input_in_one_line(tmp_path):
    from typer.testing import CliRunner

    from vru_lens.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["organism", "deficit", "--out", str(tmp_path / "d"), "--heads", "one.two"])
    assert res.exit_code != 0 and "--heads 'one.two'" in res.output and not (tmp_path / "d").exists()
    res = runner.invoke(app, ["organism", "deficit", "--out", str(tmp_path / "d"), "--heads", "3.7"])
    assert res.exit_code != 0 and "not in the circuit" in res.output
    res = runner.invoke(app, ["organism", "deficit-study", "--out", str(tmp_path / "s"), "--parts", "probes"])
    assert res.exit_code != 0 and "unknown part" in res.output
    res = runner.invoke(app, ["organism", "deficit-study", "--model", "vru-organism", "--out", str(tmp_path / "s"),
                              "--parts", "repair", "--quick"])
    assert res.exit_code != 0 and "names no deficient heads" in res.output
