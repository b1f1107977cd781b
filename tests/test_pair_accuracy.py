"""Counterfactual pair accuracy: against one unpadded forward per prompt, and its two anchors."""

import json

import torch
from typer.testing import CliRunner

from vru_lens.bench import PAIRABLE, make_items
from vru_lens.cli import app
from vru_lens.evaluate import pair_accuracy
from vru_lens.tokens import PairTokens, tokenize_pairs

torch.set_num_threads(1)


def test_matches_one_forward_per_prompt(tiny_llama):
    pt = tokenize_pairs(tiny_llama.tokenizer, make_items(40, 3, cfg=PAIRABLE), max_pairs=10)
    got = pair_accuracy(tiny_llama, pt, batch_size=4)
    clean, corrupt = [], []
    with torch.inference_mode():
        for i in range(len(pt)):
            n = int(pt.lengths[i])
            for ids, out in ((pt.clean, clean), (pt.corrupt, corrupt)):
                last = tiny_llama(ids[i : i + 1, :n])[0, -1]
                out.append(float(last[pt.clean_answer[i]] - last[pt.corrupt_answer[i]]))
    clean, corrupt = torch.tensor(clean), torch.tensor(corrupt)
    assert got["n_pairs"] == len(pt)
    assert abs(got["clean_right"] - (clean > 0).float().mean()) < 1e-9
    assert abs(got["corrupt_right"] - (corrupt < 0).float().mean()) < 1e-9
    assert abs(got["both_right"] - ((clean > 0) & (corrupt < 0)).float().mean()) < 1e-9
    assert abs(got["ld_gap"] - float((clean - corrupt).mean())) < 1e-4
    assert abs(got["same_pick"] - ((clean > 0) == (corrupt > 0)).float().mean()) < 1e-9


def test_a_model_blind_to_the_phrase_gets_no_pair_right(tiny_llama):
    pt = tokenize_pairs(tiny_llama.tokenizer, make_items(40, 3, cfg=PAIRABLE), max_pairs=10)
    blind = PairTokens(pt.clean, pt.clean.clone(), pt.lengths, pt.clean_answer, pt.corrupt_answer, pt.pairs)
    got = pair_accuracy(tiny_llama, blind)
    assert got["both_right"] == 0 and abs(got["ld_corr"] - 1) < 1e-5 and abs(got["ld_gap"]) < 1e-5
    assert abs(got["clean_right"] + got["corrupt_right"] - 1) < 1e-9  # one answer is preferred on both prompts
    assert got["same_pick"] == 1


def test_unknown_first_counts_both_prompts_of_each_pair(tiny_llama):
    from vru_lens.evaluate import evaluate
    from vru_lens.evaluate import items_pair_accuracy

    items = make_items(30, 3, cfg=PAIRABLE, split="test")
    got = items_pair_accuracy(tiny_llama, items, max_pairs=6)
    pt = tokenize_pairs(tiny_llama.tokenizer, items, max_pairs=6)
    assert got["n_pairs"] == len(pt) == 6
    preds = [r["pred"] for r in evaluate(tiny_llama, pt.pairs.items + pt.pairs.corrupt_items, chat=False,
                                         progress=False).per_item]
    assert got["unknown_first"] == sum(p == "unknown" for p in preds) / 12


def test_eval_cli_pairs(tiny_llama):
    """The CLI's pair scores are the library's on the same items (the object-object pairs come from
    --n pairable items generated with seed + 1)."""
    from vru_lens.evaluate import items_pair_accuracy
    from vru_lens.tokens import is_chat_model

    r = CliRunner().invoke(app, ["eval", "--model", "tiny-llama", "--n", "30", "--pairs", "--json"])
    assert r.exit_code == 0, r.output
    pairs = json.loads(r.stdout.strip().splitlines()[-1])["pairs"]
    want = items_pair_accuracy(tiny_llama, make_items(30, 1, PAIRABLE, split="test"), is_chat_model(tiny_llama))
    assert pairs["n_pairs"] == want["n_pairs"] >= 2
    for key in ("clean_right", "corrupt_right", "both_right", "ld_gap", "ld_corr"):
        assert abs(pairs[key] - want[key]) < 1e-6, key
