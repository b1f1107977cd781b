"""The VRU model organism: tokenizer, the training code on a tiny variant, and the shipped card."""

import json

import torch
from typer.testing import CliRunner

from vru_lens.organism import data as D


def test_tokenizer_reads_paper_prompts_whole():
    from vru_lens.bench import BenchConfig, make_items

    tok = D.build_tokenizer()
    unk = tok.convert_tokens_to_ids("<unk>")
    for it in make_items(50, seed=1, cfg=BenchConfig(style="paper")):
        ids = tok(it["prompt"])["input_ids"]
        assert unk not in ids, it["prompt"]
        assert ids[0] == tok.bos_token_id
        assert len(ids) == 5 + 4 * it["n_steps"] - 1  # bos, instruction, newline, initial obs, object; 4 per action
        flipped = D.flip_final(it)
        assert len(tok(flipped["prompt"])["input_ids"]) == len(ids)
        assert tok(" " + it["answer"], add_special_tokens=False)["input_ids"] != [unk]


def test_training_stories_are_written_as_the_bench_writes_them():
    """The sampler's text is the bench's paper style, checked against the study's line format written out here
    (not with the renderer both share), so a wording change cannot split training text from evaluation text."""
    from vru_lens.bench.styles import INSTRUCTION

    for it in D.paper_items(50, seed=5):
        lines = [INSTRUCTION, f"Initial Observation: {it['slot_objects'][0]}"]
        for s in it["steps"]:
            lines.append(f"Action: Turn to the {s['direction']} by {s['angle']} degrees")
            lines.append("Observation:" + (f" {s['observed']}" if s["observed"] else ""))
        assert it["prompt"] == "\n".join(lines)


def test_query_targets_follow_the_rule():
    rng = __import__("random").Random(0)
    for _ in range(200):
        it = D.paper_item(rng)
        targets = D.query_targets(it)
        assert targets[-1][0] == it["answer"]
        seen = {0}
        for s, (word, slot) in zip(it["steps"], targets):
            assert slot == s["heading_after"] // 90
            assert (word == D.UNKNOWN) == (s["heading_after"] not in seen)
            seen.add(s["heading_after"])


def test_flip_changes_only_the_final_direction():
    it = D.paper_items(1, seed=3, min_steps=3, max_steps=3)[0]
    f = D.flip_final(it)
    a, b = it["prompt"].splitlines(), f["prompt"].splitlines()
    assert a[:-2] == b[:-2] and a[-2] != b[-2] and a[-1] == b[-1]


def test_tiny_training_run_saves_a_loadable_organism(tmp_path):
    """A few steps of the tiny variant: losses are finite, the folder loads as a bridge with its card."""
    from vru_lens.models import load_model
    from vru_lens.models.organisms import organism_card
    from vru_lens.organism.recipe import run_recipe

    logs = []
    card = run_recipe(tmp_path / "org", tiny=True, threads=1, log=logs.append)
    assert sorted(card["circuit"]) == ["0.0", "1.0"] and card["n_kv_heads"] == 2
    curve = json.loads((tmp_path / "org" / "training.json").read_text())["curve"]
    assert curve and all(torch.isfinite(torch.tensor(p["task"])) for p in curve)
    assert {"acc", "pairs_both", "patch_C_flipped", "patch_outside_C_changed", "resample_outside_C_acc",
            "resample_outside_C_changed", "list_acc"} <= set(curve[-1])
    assert organism_card(tmp_path / "org")["circuit"] == card["circuit"]
    bridge = load_model(str(tmp_path / "org"), device="cpu")
    assert bridge.cfg.n_layers == 2 and bridge.cfg.n_heads == 4
    ids = bridge.tokenizer(D.paper_items(1, 0)[0]["prompt"], return_tensors="pt")["input_ids"]
    _, cache = bridge.run_with_cache(ids, names_filter=lambda n: n == "blocks.1.attn.hook_z")
    assert cache["blocks.1.attn.hook_z"].shape[-2:] == (4, 8)


def test_training_losses_do_their_job():
    """A short tiny run: the task, list and structural (attention-to-BOS) losses all fall."""
    from dataclasses import replace

    from vru_lens.organism.recipe import TINY
    from vru_lens.organism.train import train_organism

    lines = []
    cfg = replace(TINY, steps=40, eval_every=40, eval_n=50, batch=16, list_batch=32, lr=1e-2, threads=1, list_warm=0,
                  attn_weight=1.0, siit_start=0.0)
    _, _, curve = train_organism(cfg, log=lines.append)
    first = dict(kv.split("=") for kv in lines[0].split()[3:])
    last = curve[-1]
    assert last["task"] < 0.8 * float(first["task"]), (first, last)
    assert last["attn"] < 0.8 * float(first["attn"]), (first, last)
    assert last["list"] < float(first["list"]), (first, last)


def test_organism_info_cli(tmp_path):
    from vru_lens.cli import app
    from vru_lens.organism.recipe import card, write_card, TINY

    write_card(tmp_path, card(TINY, {"step": 1}))
    res = CliRunner().invoke(app, ["organism", "info", "--model", str(tmp_path), "--json"])
    assert res.exit_code == 0, res.output
    payload = json.loads(res.stdout)
    assert sorted(payload["circuit"]) == ["0.0", "1.0"] and payload["n_kv_heads"] == 2
    assert {"n_layers", "n_heads"} <= set(payload)
    res = CliRunner().invoke(app, ["organism", "info", "--model", str(tmp_path / "nothing"), "--json"])
    assert res.exit_code != 0


def test_organism_train_cli_tiny(tmp_path):
    from vru_lens.cli import app

    res = CliRunner().invoke(app, ["organism", "train", "--tiny", "--out", str(tmp_path / "o"), "--threads", "1"])
    assert res.exit_code == 0, res.output
    assert "step 0" in res.output and '"acc"' in res.output  # the learning curve is shown
    bad = CliRunner().invoke(app, ["organism", "train", "--recipe", "nope", "--out", str(tmp_path / "p")])
    assert bad.exit_code == 2 and "known: vru-organism" in bad.output, bad.output
    assert (tmp_path / "o" / "model.safetensors").exists() and (tmp_path / "o" / "organism.json").exists()


def test_a_recipe_resumed_after_its_first_phase_equals_one_run_from_scratch(tmp_path, monkeypatch):
    """run_recipe(start=...) goes on from a folder the recipe saved after its first phases; the weights equal a
    run of every phase from scratch, and a folder from other phases is refused."""
    from dataclasses import replace

    import pytest
    from safetensors.torch import load_file

    from vru_lens.organism import recipe as R

    second = replace(R.TINY, lr=1e-3, steps=4, eval_every=4)
    monkeypatch.setitem(R.RECIPES, "two", (R.TINY, second))
    monkeypatch.setitem(R.RECIPES, "first", (R.TINY,))
    monkeypatch.setitem(R.RECIPES, "other", (replace(R.TINY, lr=5e-4),))
    quiet = lambda *a: None  # noqa: E731
    R.run_recipe(tmp_path / "whole", recipe="two", log=quiet)
    R.run_recipe(tmp_path / "half", recipe="first", log=quiet)
    R.run_recipe(tmp_path / "resumed", recipe="two", start=tmp_path / "half", log=quiet)
    a, b = load_file(tmp_path / "whole" / "model.safetensors"), load_file(tmp_path / "resumed" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    curve = lambda name: [{k: v for k, v in p.items() if k != "seconds"}  # noqa: E731
                          for p in json.loads((tmp_path / name / "training.json").read_text())["curve"]]
    assert curve("resumed") == curve("whole") and len(curve("whole")) >= 2  # both phases' evaluations
    R.run_recipe(tmp_path / "elsewhere", recipe="other", log=quiet)
    with pytest.raises(ValueError, match="not saved by this recipe"):
        R.run_recipe(tmp_path / "x", recipe="two", start=tmp_path / "elsewhere", log=quiet)
