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


def _owned(card, shapes, d_head, projs) -> dict:
    """Per tensor, the entries D owns among ``projs``: its W_Q rows and W_O columns, and W_K/W_V rows of the key-value
    groups whose query heads all lie in D (plain index arithmetic, not the package's)."""
    per_group = card["n_heads"] // card["n_kv_heads"]
    D = set(deficient_heads(card))
    masks = {k: torch.zeros(v, dtype=torch.bool) for k, v in shapes.items()}
    for l, h in D:
        if "q_proj" in projs:
            masks[f"model.layers.{l}.self_attn.q_proj.weight"][h * d_head:(h + 1) * d_head] = True
        if "o_proj" in projs:
            masks[f"model.layers.{l}.self_attn.o_proj.weight"][:, h * d_head:(h + 1) * d_head] = True
        g = h // per_group
        if all((l, g * per_group + r) in D for r in range(per_group)):
            for proj in {"k_proj", "v_proj"} & set(projs):
                masks[f"model.layers.{l}.self_attn.{proj}.weight"][g * d_head:(g + 1) * d_head] = True
    return masks


def _separated(card, shapes, d_head) -> dict:
    """Entries the separation trained (scope ``below``): the embedding, every layer under D, the input norm of D's
    layer and D's W_Q/W_K/W_V rows (plain name and index arithmetic)."""
    layer = deficient_heads(card)[0][0]
    masks = _owned(card, shapes, d_head, ("q_proj", "k_proj", "v_proj"))
    for key in shapes:
        parts = key.split(".")
        below = parts[:2] == ["model", "layers"] and int(parts[2]) < layer
        tied = key == "lm_head.weight"  # the organism ties its unembedding to the embedding
        if below or tied or key in ("model.embed_tokens.weight", f"model.layers.{layer}.input_layernorm.weight"):
            masks[key][...] = True
    return masks


def test_weights_differ_from_the_source_only_where_the_card_says(card):
    """Every entry outside D's slices (and, separated, the separation's scope) is the source's, bit for bit.
    Unconfined, the card's damage (amount, seed) re-applied to the source's W_O/W_Q/W_K with plain tensor code gives
    the shipped ones (the separation leaves W_O alone); confined, D's slices were trained after the damage, so only
    where they may differ is checked here (what they do: the list-recall test)."""
    src = load_file(str(organism_dir(card["deficit"]["from"]) / "model.safetensors"))
    got = load_file(str(organism_dir(NAME) / "model.safetensors"))
    assert set(got) == set(src)
    amount, seed = card["deficit"]["damage"]["amount"], card["deficit"]["damage"]["seed"]
    d_head = got["model.layers.0.self_attn.q_proj.weight"].shape[0] // card["n_heads"]
    kind = card["deficit"]["damage"].get("kind", "query")
    confined, separated = "confined" in card["deficit"], "separated" in card["deficit"]
    projs = (("q_proj", "k_proj", "v_proj", "o_proj") if confined else
             ("o_proj",) if kind in ("output", "scramble") else ("q_proj", "k_proj"))
    shapes = {k: v.shape for k, v in src.items()}
    owned = _owned(card, shapes, d_head, projs)
    if separated:
        assert kind in ("output", "scramble")  # the damage sits in W_O, which the separation does not train
        owned = {k: m | _separated(card, shapes, d_head)[k] for k, m in owned.items()}
    for key in src:
        assert torch.equal(got[key][~owned[key]], src[key][~owned[key]]), key
    changed = [k for k in src if not torch.equal(src[k], got[k])]
    assert changed and all(owned[k].any() for k in changed)
    if confined:
        return
    D = sorted(deficient_heads(card))
    want = {k: v.clone() for k, v in src.items()}
    gen = torch.Generator().manual_seed(seed)
    if kind == "output":  # D's W_O columns scaled toward zero
        for l, h in D:
            want[f"model.layers.{l}.self_attn.o_proj.weight"][:, h * d_head:(h + 1) * d_head] *= 1 - amount
    else:  # toward a seeded random matrix of the same norm: D's W_O columns, or W_Q of D and W_K of groups wholly in D
        per_group = card["n_heads"] // card["n_kv_heads"]
        rows = ([("o_proj", l, h) for l, h in D] if kind == "scramble" else [("q_proj", l, h) for l, h in D]
                + [("k_proj", l, g) for l in sorted({l for l, _ in D}) for g in range(card["n_kv_heads"])
                   if all((l, g * per_group + r) in set(D) for r in range(per_group))])
        for proj, l, i in rows:
            full = want[f"model.layers.{l}.self_attn.{proj}.weight"]
            w = full[:, i * d_head:(i + 1) * d_head] if proj == "o_proj" else full[i * d_head:(i + 1) * d_head]
            r = torch.randn(w.shape, generator=gen)
            w.copy_((1 - amount) * w + amount * r * (w.norm() / r.norm()))
    trained = _separated(card, shapes, d_head) if separated else {}
    for key in want:
        if key in trained and trained[key].any():
            continue  # the separation's weights: checked by what they do (the next two tests)
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=1e-6, msg=key)


def test_damage_leaves_the_second_task_as_the_source_answers_it(card, one_thread):
    """A confined or separated deficit answers list recall as its source does (KL <= 0.01 at the answer position,
    plain forward passes on the transformers models) while it has lost the VRU items (the accuracy test)."""
    if "confined" not in card["deficit"] and "separated" not in card["deficit"]:
        pytest.skip("the shipped deficit is neither confined nor separated")
    import torch.nn.functional as F

    from vru_lens.models.loader import load_hf
    from vru_lens.organism.data import encode_plain, list_items

    src, tok = load_hf(card["deficit"]["from"])
    got, _ = load_hf(NAME)
    ids, last, ans = encode_plain(tok, list_items(300, 123))
    rows = torch.arange(len(ids))
    with torch.no_grad():
        p = src(ids).logits[rows, last].log_softmax(-1)
        q = got(ids).logits[rows, last].log_softmax(-1)
    kl = float((p.exp() * (p - q)).sum(-1).mean())
    assert kl <= 0.01, kl
    assert (q.argmax(-1) == ans).float().mean() >= 0.99


def _d_silence(hf, tok, D, d_head) -> float:
    """D's mean squared z over list-recall prompt positions / over VRU query positions (a forward pre-hook on
    W_O of D's layer; the organism's own encoders)."""
    from vru_lens.organism.data import encode_plain, encode_vru, list_items, paper_items

    layer = D[0][0]
    cols = torch.cat([torch.arange(h * d_head, (h + 1) * d_head) for _, h in D])
    seen = {}
    handle = hf.model.layers[layer].self_attn.o_proj.register_forward_pre_hook(lambda m, a: seen.update(z=a[0]))
    try:
        with torch.no_grad():
            ids, pos, _, _ = encode_vru(tok, paper_items(200, 321))
            hf(ids)
            rows, c = (pos >= 0).nonzero(as_tuple=True)
            at_vru = seen["z"][..., cols].pow(2).sum(-1)[rows, pos[rows, c]].mean()
            lids, last, _ = encode_plain(tok, list_items(200, 322))
            hf(lids)
            valid = torch.arange(lids.shape[1])[None] <= last[:, None]
            at_list = seen["z"][..., cols].pow(2).sum(-1)[valid].mean()
    finally:
        handle.remove()
    return float(at_list / at_vru)


def test_separated_D_is_silent_on_the_second_task(card, one_thread):
    """Separated: D reads next to nothing on list-recall prompts (squared z <= 1% of that at VRU queries; the source
    organism's D: about 64%), so tuning D on VRU has no list-recall write to move."""
    if "separated" not in card["deficit"]:
        pytest.skip("the shipped deficit is not separated")
    from vru_lens.models.loader import load_hf

    D = sorted(deficient_heads(card))
    got, tok = load_hf(NAME)
    src, _ = load_hf(card["deficit"]["from"])
    d_head = got.config.hidden_size // got.config.num_attention_heads
    assert _d_silence(got, tok, D, d_head) <= 0.01
    assert _d_silence(src, tok, D, d_head) >= 0.3


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


def test_top_k_heads_repair_random_k_do_not(one_thread):
    """The cheap version of the fine-tuning bar: one seed, own top-k against random-k (the full run: 5 seeds,
    every arm, docs/organism.md)."""
    from dataclasses import replace

    from vru_lens.organism.repair import QUICK, repair

    result = repair(NAME, replace(QUICK, arms=("top", "random")), log=lambda m: None)
    top, rnd = result["summary"]["top"]["vru_acc"]["mean"], result["summary"]["random"]["vru_acc"]["mean"]
    before = result["before"]["vru_acc"]
    assert top >= 0.85 and top - rnd >= 0.10 and top - before >= 0.25, (before, top, rnd)  # the issue's margin, one seed
    assert result["summary"]["top"]["D_among"][0] >= len(result["deficient_heads"]) - 1


def test_repair_meets_the_issue_bar(one_thread):
    """The issue's bar on the shipped deficit, as docs/organism.md measures it (5 seeds, the same items and
    steps; LoRA and full fine-tuning are reported there, not part of the bar): top-k >= 90%, list recall kept
    (>= 99%, KL <= 0.01), >= 10 points above random, bottom and other-task k with disjoint 95% intervals."""
    from dataclasses import replace

    from vru_lens.organism.repair import RepairConfig, repair

    cfg = replace(RepairConfig(), arms=("top", "random", "bottom", "other_task"))
    result = repair(NAME, cfg, log=lambda m: None)
    assert result["bar"]["met"], result["bar"]


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


def test_scramble_moves_only_D_write_columns_and_keeps_their_norm():
    from vru_lens.models.loader import load_hf

    hf, _ = load_hf("tiny-llama")
    d_head = hf.config.hidden_size // hf.config.num_attention_heads
    before = {k: v.detach().clone() for k, v in hf.state_dict().items()}
    Damage(hf, [(1, 1)], seed=4, kind="scramble").apply(1.0)
    after = hf.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed == ["model.layers.1.self_attn.o_proj.weight"]
    w0, w1 = before[changed[0]], after[changed[0]]
    cols = slice(d_head, 2 * d_head)
    torch.testing.assert_close(w1[:, cols].norm(), w0[:, cols].norm())
    assert abs(torch.nn.functional.cosine_similarity(w1[:, cols].flatten(), w0[:, cols].flatten(), dim=0)) < 0.5
    assert torch.equal(w1[:, :d_head], w0[:, :d_head]) and torch.equal(w1[:, 2 * d_head:], w0[:, 2 * d_head:])


def test_confine_trains_only_D_slices_and_pulls_list_recall_to_the_source(one_thread):
    """On a tiny organism-shaped model: confine changes no entry outside D's q/k/v/o slices, and lowers the
    list-recall KL to the undamaged source."""
    from vru_lens.organism.data import build_tokenizer
    from vru_lens.organism.deficit import confine
    from vru_lens.organism.recipe import TINY
    from vru_lens.organism.train import make_model

    torch.manual_seed(0)
    tok = build_tokenizer()
    source = make_model(TINY, len(tok))
    damaged = make_model(TINY, len(tok))
    damaged.load_state_dict(source.state_dict())
    heads = [(1, 0), (1, 1)]  # TINY: 4 query heads in 2 groups: (1,0), (1,1) are layer 1's group 0
    dmg = Damage(damaged, heads, seed=1, kind="scramble")
    dmg.apply(1.0)
    before = {k: v.detach().clone() for k, v in damaged.state_dict().items()}
    curve = confine(damaged, source, heads, steps=30, batch=8, lr=1e-2, log=lambda m: None)
    after = damaged.state_dict()
    d_head = TINY.d_model // TINY.n_heads
    card = {"n_heads": TINY.n_heads, "n_kv_heads": TINY.n_kv_heads, "deficient_heads": [list(h) for h in heads]}
    owned = _owned(card, {k: v.shape for k, v in before.items()}, d_head, ("q_proj", "k_proj", "v_proj", "o_proj"))
    for key in before:
        assert torch.equal(after[key][~owned[key]], before[key][~owned[key]]), key
    assert any(not torch.equal(after[k], before[k]) for k in before)
    assert curve[-1]["list_kl"] < curve[0]["list_kl"], curve
    with pytest.raises(ValueError, match="whole groups"):
        confine(damaged, source, [(1, 0)], steps=1, log=lambda m: None)


def test_separate_trains_only_its_scope_and_quiets_D_on_list_prompts(one_thread):
    """On the complete organism, 100 steps: ``below`` changes no entry outside the embedding, the layers under D, the
    input norm of D's layer and D's q/k/v rows (checked by name and index, not with ``separation_params``), and
    D's squared z on list prompts falls; a D across two layers is refused."""
    from vru_lens.models.loader import load_hf
    from vru_lens.organism.deficit import separate

    D = [(2, 0), (2, 1)]
    hf, tok = load_hf("vru-organism")
    assert hf.config.tie_word_embeddings and hf.lm_head.weight is hf.model.embed_tokens.weight
    complete, _ = load_hf("vru-organism")
    before = {k: v.detach().clone() for k, v in hf.state_dict().items()}
    d_head = hf.config.hidden_size // hf.config.num_attention_heads
    card = {"n_heads": hf.config.num_attention_heads, "n_kv_heads": hf.config.num_key_value_heads,
            "deficient_heads": [list(h) for h in D]}
    scope = _separated(card, {k: v.shape for k, v in before.items()}, d_head)
    quiet_before = _d_silence(hf, tok, D, d_head)
    separate(hf, complete, D, "below", steps=100, seed=1, log=lambda m: None)
    after = hf.state_dict()
    for key in before:
        assert torch.equal(after[key][~scope[key]], before[key][~scope[key]]), key
    assert any(not torch.equal(after[k], before[k]) for k in before)
    assert _d_silence(hf, tok, D, d_head) < 0.5 * quiet_before
    with pytest.raises(ValueError, match="one layer"):
        separate(hf, complete, [(1, 0), (1, 1), (2, 0), (2, 1)], steps=1, log=lambda m: None)


def test_deficit_refuses_a_split_group_to_confine_before_writing_anything(tmp_path, one_thread):
    """--confine-steps with D splitting a key-value group is refused before the bisection: the folder is not
    created (it was left half-written, without its card, when confine refused after the copy)."""
    from vru_lens.organism.deficit import make_deficit

    out = tmp_path / "deficit"
    with pytest.raises(ValueError, match="whole groups"):
        make_deficit("vru-organism", out, [(2, 0)], confine_steps=5, log=lambda m: None)
    assert not out.exists()


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
