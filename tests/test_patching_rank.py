"""rank_heads: every method, GQA notes, checkpoint/resume, and the rank-heads command."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from vru_lens.bench import PAIRABLE, make_items
from vru_lens.patching import activation as act_mod
from vru_lens.patching import agreement, rank_heads
from vru_lens.patching.checkpoint import Checkpoint
from vru_lens.tokens import tokenize_pairs


@pytest.fixture(scope="module")
def setup(tiny_llama):  # the session's model (conftest): loaded once for the whole run
    model = tiny_llama
    return model, tokenize_pairs(model.tokenizer, make_items(24, 0, cfg=PAIRABLE), max_pairs=5)


def test_methods(setup):
    model, pt = setup
    res = {m: rank_heads(model, pt, m, batch_size=3, n_boot=20, progress=False)
           for m in ("activation", "attribution", "path", "ablation")}
    for m, hs in res.items():
        assert hs.method == m and hs.model == "tiny-llama" and hs.n_pairs == len(pt)
        assert hs.scores.shape == (3, 4) and hs.ci_low is not None
        assert hs.gqa["groups"] == {0: [0, 1], 1: [2, 3]}
        assert len(hs.top(5)) == 5
    assert res["ablation"].kind == "kl" and (res["ablation"].scores >= -1e-7).all()
    # attribution estimates activation patching: they agree more than chance on this model
    assert agreement(res["attribution"], res["activation"], k=3)["spearman"] > 0.5
    kv = rank_heads(model, pt, "activation", component="k", n_boot=0, progress=False)
    assert kv.scores.shape == (3, 2) and "key/value" in kv.gqa["note"]


def test_bad_options_are_one_value_error(setup):
    with pytest.raises(ValueError, match="method must be one of path, activation, attribution, ablation, gradient"):
        rank_heads(setup[0], setup[1], "magic")
    with pytest.raises(ValueError, match="component must be one of z, q, k, v, got 'w'"):
        rank_heads(setup[0], setup[1], "activation", component="w")
    with pytest.raises(ValueError, match="direction"):
        rank_heads(setup[0], setup[1], "attribution", direction="sideways")
    with pytest.raises(ValueError, match="ablation must be one of mean, scaled_query"):
        rank_heads(setup[0], setup[1], "ablation", ablation="zero")


def test_registry_is_the_method_list():
    from vru_lens.patching.rank import METHODS, REGISTRY, RankOptions

    assert METHODS == ("path", "activation", "attribution", "ablation", "gradient") == tuple(REGISTRY)
    assert {k: m.kind(RankOptions(direction="denoising")) for k, m in REGISTRY.items()} == {
        "path": "noising", "activation": "denoising", "attribution": "denoising", "ablation": "kl",
        "gradient": "gradient"}


def test_checkpoint_resumes(setup, tmp_path, monkeypatch):
    model, pt = setup
    path = tmp_path / "ckpt.json"
    full = rank_heads(model, pt, "activation", batch_size=2, n_boot=0, progress=False)
    real, calls = act_mod.activation_patch_heads, []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(act_mod, "activation_patch_heads", flaky)
    with pytest.raises(KeyboardInterrupt):
        rank_heads(model, pt, "activation", batch_size=2, n_boot=0, progress=False, checkpoint=path)
    assert path.exists() and len(json.loads(path.read_text())["chunks"]) == 1
    monkeypatch.setattr(act_mod, "activation_patch_heads", real)
    resumed = rank_heads(model, pt, "activation", batch_size=2, n_boot=0, progress=False, checkpoint=path)
    assert resumed.meta["resumed_chunks"] == 1
    assert np.allclose(resumed.per_pair, full.per_pair, atol=1e-6)
    assert not path.exists()  # removed once complete


def test_checkpoint_refuses_other_run(tmp_path):
    ck = Checkpoint(tmp_path / "c.json", {"method": "path"})
    ck.put("0:2", per_pair=torch.zeros(2, 1, 1))
    assert Checkpoint(tmp_path / "c.json", {"method": "path"}).resumed == 1
    with pytest.raises(ValueError, match="different run.*method"):
        Checkpoint(tmp_path / "c.json", {"method": "activation"})


def test_cli_json(tmp_path):
    from vru_lens.cli import app

    out = tmp_path / "r"
    r = CliRunner().invoke(app, ["rank-heads", "--model", "tiny-gpt2", "--n", "12", "--method", "activation",
                                 "--top-k", "3", "--out", str(out), "--n-boot", "20", "--json"])
    assert r.exit_code == 0, r.output
    payload = json.loads(r.stdout.strip().splitlines()[-1])
    assert payload["method"] == "activation" and len(payload["top"]) == 3
    assert all(len(t) == 3 for t in payload["top"]) and len(payload["scores"]) == 3
    assert payload["gqa"] is None  # tiny-gpt2 is multi-head attention
    from vru_lens.finetune.adapters import resolve_heads
    from vru_lens.patching import HeadScores
    assert {"ranking.json", "ranking.html"} <= {f.name for f in out.iterdir()}  # --out is a folder of named files
    assert HeadScores.load(out / "ranking.json").top(3) == [tuple(t) for t in payload["top"]]
    # the rank -> knockout hand-off: --heads takes the folder (or the file) and reads the same top heads
    assert resolve_heads(out / "ranking.json", 2) == [tuple(t[:2]) for t in payload["top"][:2]]
    for given in (out, out / "ranking.json"):
        k = CliRunner().invoke(app, ["knockout", "--model", "tiny-gpt2", "--heads", str(given), "--top-k", "2", "--n", "8",
                                     "--n-pairs", "8", "--n-random", "1", "--out", str(tmp_path / "ko"), "--json"])
        assert k.exit_code == 0, k.output
        assert json.loads(k.stdout.strip().splitlines()[-1])["top"] == [t[:2] for t in payload["top"][:2]]
        assert json.loads((tmp_path / "ko" / "knockout.json").read_text())["top"] == [t[:2] for t in payload["top"][:2]]
        from vru_lens.results import load_result

        saved = load_result(tmp_path / "ko" / "knockout.json")  # a typed result, read back as one
        printed = json.loads(k.stdout.strip().splitlines()[-1])
        assert type(saved).__name__ == "KnockoutResult" and saved.summary()["random_k_band"] == printed["random_k_band"]
        assert saved.summary()["top_k_accuracy"] == printed["top_k_accuracy"] and printed["n_items"] == 8
    k = CliRunner().invoke(app, ["knockout", "--model", "tiny-gpt2", "--heads", str(tmp_path), "--top-k", "2"])
    assert k.exit_code == 2 and "has no ranking.json" in k.output and "vru-lens rank-heads" in k.output
    bad = CliRunner().invoke(app, ["rank-heads", "--model", "tiny-gpt2", "--method", "nope", "--json"])
    assert bad.exit_code == 2 and "method must be one of" in bad.output and len(bad.output.strip().splitlines()) == 1
    bad = CliRunner().invoke(app, ["rank-heads", "--model", "tiny-gpt2", "--component", "w"])
    assert bad.exit_code == 2 and "component must be one of z, q, k, v" in bad.output
