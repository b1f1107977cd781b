"""What makes each organism of the family a hard case for a ranking method, checked with plain forward hooks.

redundant: every final-turn head has a backup inside C; resampling either side leaves the answers, resampling
both removes the final turn (so one head's effect understates it and only sets show it).
noisy: the heads outside C are not silenced: they read the story (little attention to BOS) and write to the
residual stream as much as C's heads do, with a small effect on the answer (C is still complete: that is
checked for every organism in test_organism_circuit).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from plain_hooks import accuracy, choices, circuit_of

ROOT = Path(__file__).resolve().parents[1] / "vru_lens" / "models" / "organism"


def _unshipped(name):
    """Issue 24, open: the family's recipes exist (recipe.RECIPES) but these weights are not trained yet."""
    return pytest.mark.xfail(not (ROOT / name).exists(), strict=True, raises=OSError,
                             reason=f"{name} is not shipped yet: `vru-lens organism train --recipe {name}` (issue 24)")


def _load(name):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = ROOT / name
    model = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    return model, AutoTokenizer.from_pretrained(folder), json.loads((folder / "organism.json").read_text())


@pytest.fixture(scope="module")
def items():
    from vru_lens.bench import BenchConfig, make_items

    return make_items(400, seed=4343, cfg=BenchConfig(style="paper"))


@_unshipped("vru-organism-redundant")
def test_redundant_backups_take_over_and_only_the_set_matters(items):
    model, tok, card = _load("vru-organism-redundant")
    pairs = [(tuple(p), tuple(b)) for p, b in card["backup"]]
    assert pairs and all(set(side) <= circuit_of(card) for side in pairs)
    prim, back = {p for p, _ in pairs}, {b for _, b in pairs}
    base = accuracy(choices(model, tok, items), items)
    alone_p = accuracy(choices(model, tok, items, prim, 0), items)
    alone_b = accuracy(choices(model, tok, items, back, 0), items)
    both = accuracy(choices(model, tok, items, prim | back, 0), items)
    assert base - alone_p <= 0.05 and base - alone_b <= 0.05, (base, alone_p, alone_b)
    assert base - both >= 0.3, (base, both)


def test_duplicated_backups_compute_what_the_organism_did(items):
    """The redundant recipe's start: vru-organism with each backup a copy of its primary, each side writing
    half; it answers as the organism does, and resampling both sides costs what resampling the primaries did."""
    from transformers import AutoModelForCausalLM

    from vru_lens.organism.recipe import BACKUP, duplicate_heads

    model, tok, _ = _load("vru-organism")
    copy = AutoModelForCausalLM.from_pretrained(ROOT / "vru-organism", attn_implementation="eager").eval()
    duplicate_heads(copy, BACKUP)
    few = items[:150]
    same = sum(a == b for a, b in zip(choices(model, tok, few), choices(copy, tok, few))) / len(few)
    assert same >= 0.99, same  # what the silent backups wrote before (a few hundredths of a logit) is gone
    prim, back = {p for p, _ in BACKUP}, {b for _, b in BACKUP}
    both, alone = accuracy(choices(copy, tok, few, prim | back, 0), few), accuracy(choices(model, tok, few, prim, 0), few)
    assert abs(both - alone) <= 0.02, (both, alone)


def _bos_attention_and_writes(model, tok, items, heads):
    """Mean attention to BOS from every token, and mean norm of what each head writes (z_h W_O[:, h])."""
    L, H = model.config.num_hidden_layers, model.config.num_attention_heads
    d = model.config.hidden_size // H
    written = {}

    def keep(layer):
        def hook(module, args):
            written[layer] = args[0].detach()
        return hook

    hooks = [m.self_attn.o_proj.register_forward_pre_hook(keep(l)) for l, m in enumerate(model.model.layers)]
    bos, norms = torch.zeros(L, H), torch.zeros(L, H)
    with torch.no_grad():
        for it in items:
            ids = torch.tensor([tok(it["prompt"])["input_ids"]])
            att = model(ids, output_attentions=True).attentions
            for l in range(L):
                bos[l] += att[l][0, :, 1:, 0].mean(-1)
                w = model.model.layers[l].self_attn.o_proj.weight.view(-1, H, d)
                z = written[l][0].view(-1, H, d)
                norms[l] += torch.einsum("phd,mhd->phm", z, w).norm(dim=-1).mean(0)
    for h in hooks:
        h.remove()
    n = len(items)
    mean = lambda t: float(sum(t[l, h] for l, h in heads) / len(heads)) / n  # noqa: E731
    return mean(bos), mean(norms)


@_unshipped("vru-organism-noisy")
def test_noisy_background_reads_and_writes_where_the_quiet_organism_does_not(items):
    noisy, tok, card = _load("vru-organism-noisy")
    quiet, qtok, qcard = _load("vru-organism")
    every = {(l, h) for l in range(noisy.config.num_hidden_layers) for h in range(noisy.config.num_attention_heads)}
    outside = sorted(every - circuit_of(card))
    bos_n, write_n = _bos_attention_and_writes(noisy, tok, items[:60], outside)
    _, write_c = _bos_attention_and_writes(noisy, tok, items[:60], sorted(circuit_of(card)))
    bos_q, write_q = _bos_attention_and_writes(quiet, qtok, items[:60], sorted(every - circuit_of(qcard)))
    assert bos_q >= 0.9 and bos_n <= 0.6, (bos_q, bos_n)  # the quiet one's outside heads read BOS only
    assert write_n >= 0.25 * write_c and write_n >= 3 * write_q, (write_n, write_c, write_q)


@_unshipped("vru-organism-deep")
def test_deep_is_deep_wide_and_grouped_and_its_fast_paths_match_plain_hooks():
    """>= 8 layers x >= 8 query heads in key-value groups; the fast activation-patching sweep (tail replays)
    gives, for every head, what one plain o_proj hook per head gives on the transformers model, without a
    fallback warning."""
    import warnings

    from vru_lens.bench import PAIRABLE, make_items
    from vru_lens.models import load_model
    from vru_lens.patching.activation import activation_patch_heads
    from vru_lens.tokens import tokenize_pairs

    model, tok, card = _load("vru-organism-deep")
    cfg = model.config
    L, H = cfg.num_hidden_layers, cfg.num_attention_heads
    assert L >= 8 and H >= 8 and cfg.num_key_value_heads < H and len(circuit_of(card)) < L * H // 2
    bridge = load_model("vru-organism-deep", device="cpu")
    pt = tokenize_pairs(bridge.tokenizer, make_items(40, 5, cfg=PAIRABLE, split="validation"), chat=False, max_pairs=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a fallback warns: here it fails the test
        fast = activation_patch_heads(bridge, pt, progress=False)
    d = cfg.hidden_size // H
    for i in range(len(pt)):
        n = int(pt.lengths[i])
        clean, corrupt = pt.clean[i : i + 1, :n], pt.corrupt[i : i + 1, :n]
        a, b = int(pt.clean_answer[i]), int(pt.corrupt_answer[i])
        saved = {}
        grab = [m.self_attn.o_proj.register_forward_pre_hook(
            lambda mod, args, l=l: saved.__setitem__(l, args[0].detach().clone())) for l, m in enumerate(model.model.layers)]
        with torch.no_grad():
            model(corrupt)
        for hk in grab:
            hk.remove()
        for l in range(L):
            for h in range(H):
                def put(mod, args, l=l, h=h):
                    x = args[0].clone()
                    x[..., h * d:(h + 1) * d] = saved[l][..., h * d:(h + 1) * d]
                    return (x,)
                hk = model.model.layers[l].self_attn.o_proj.register_forward_pre_hook(put)
                with torch.no_grad():
                    logits = model(clean).logits[0, -1]
                hk.remove()
                want = float(logits[a] - logits[b])
                assert abs(float(fast[i, l, h]) - want) <= 1e-3 * max(1.0, abs(want)), (i, l, h, float(fast[i, l, h]), want)
