"""`vru-lens finetune` end to end on a tiny model (tiny data, tiny general suite)."""

import json

import torch

from typer.testing import CliRunner

from vru_lens.cli import app
from vru_lens.finetune import HeadDeltas

torch.set_num_threads(1)  # a shared 2-core machine: OpenMP spinning makes >1 thread far slower


def test_finetune_cli_json(tmp_path, tiny_llama):
    """--out is a folder: deltas, result, checkpoint and the stand-in ranking land inside it; the accuracies
    and pair accuracies before and after equal an independent measurement of the base and the tuned model."""
    from vru_lens.evaluate import evaluate, items_pair_accuracy
    from vru_lens.finetune import FinetuneConfig
    from vru_lens.models import load_model

    out = tmp_path / "ft"
    args = ["finetune", "--model", "tiny-llama", "--top-k", "2", "--components", "qkvo", "--steps", "2",
            "--batch-size", "2", "--eval-every", "1", "--n-train", "8", "--n-val", "4", "--n", "100",
            "--general-n", "1", "--mmlu-n", "0", "--tasks", "arc_easy", "--wiki-n", "1", "--lr", "0.05", "--out", str(out),
            "--cache-dir", str(tmp_path / "c"), "--activation-checkpointing", "--json"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    payload = json.loads(res.stdout.strip().splitlines()[-1])
    for key in ("vru_accuracy_before", "vru_accuracy_after", "general_before", "general_after", "trainable_params"):
        assert key in payload
    assert {p.name for p in out.iterdir()} >= {"deltas.safetensors", "result.json", "checkpoint.pt", "ranking.json"}
    assert json.loads((out / "result.json").read_text())["trainable_params"] == payload["trainable_params"]
    test = FinetuneConfig(n_train=8, n_val=4, n_test=100).splits()["test"]  # the CLI's test split (seed 0)
    tuned = load_model("tiny-llama", device="cpu", deltas=out / "deltas.safetensors")  # the saved (best) deltas: what was measured after
    assert payload["vru_accuracy_before"] == evaluate(tiny_llama, test, progress=False).accuracy  # a fraction
    assert payload["vru_accuracy_after"] == evaluate(tuned, test, progress=False).accuracy
    before = items_pair_accuracy(tiny_llama, test, chat=False)
    after = items_pair_accuracy(tuned, test, chat=False)
    assert before is not None and after is not None  # 100 paper-style items give a few pairs
    assert after["ld_gap"] != before["ld_gap"]  # the saved deltas change the model: before and after are two measurements
    for got, want in ((payload["vru_before"]["pairs"], before), (payload["vru_after"]["pairs"], after)):
        assert got["n_pairs"] == want["n_pairs"]
        assert abs(got["both_right"] - want["both_right"]) < 1e-9 and abs(got["ld_gap"] - want["ld_gap"]) < 1e-4
    assert "arc_easy" in payload["general_before"] and "average" in payload["general_before"] and "wiki/kl" in payload["general_after"]
    meta = HeadDeltas.read_metadata(out / "deltas.safetensors")
    assert meta["components"] == "qkvo" and len(meta["heads"]) == 2 and meta["train_config"]["steps"] == 2
    assert meta["train_config"]["activation_checkpointing"] is True


def test_finetune_cli_errors(tmp_path):
    r = CliRunner().invoke(app, ["finetune", "--model", "tiny-llama", "--heads", str(tmp_path / "nope.json")])
    assert r.exit_code == 2 and "rank-heads" in r.output
    r = CliRunner().invoke(app, ["finetune", "--model", "tiny-llama", "--heads", str(tmp_path)])  # a folder without one
    assert r.exit_code == 2 and "has no ranking.json" in r.output
    r = CliRunner().invoke(app, ["finetune", "--model", "tiny-llama", "--resume"])
    assert r.exit_code == 2 and "--resume needs --out" in r.output
    r = CliRunner().invoke(app, ["finetune", "--model", "tiny-llama", "--components", "qk"])
    assert r.exit_code == 2 and "qkvo" in r.output
    r = CliRunner().invoke(app, ["finetune", "--model", "no-such-model", "--method", "everything"])
    assert r.exit_code == 2 and "heads, random, bottom, full, lora" in r.output  # refused before loading the model
    r = CliRunner().invoke(app, ["finetune", "--model", "tiny-llama", "--steps", "0"])
    assert r.exit_code == 2 and "steps" in r.output and len(r.output.strip().splitlines()) == 1


def test_eval_and_rank_heads_on_a_fine_tuned_model(tmp_path, tiny_llama):
    """`--deltas` studies the fine-tuned model: eval equals evaluate() on the merged weights."""
    from vru_lens.bench import make_items
    from vru_lens.evaluate import evaluate
    from vru_lens.finetune.adapters import merge_deltas
    from vru_lens.models import load_model

    model = tiny_llama  # merged below, then unmerged exactly
    deltas = HeadDeltas(model, [(0, 1), (1, 3)], "qkvo")
    torch.manual_seed(0)
    with torch.no_grad():
        for p in deltas.trainable_parameters():
            p.normal_(0, 0.5)
    path = deltas.save(tmp_path / "ft" / "deltas.safetensors")  # as `vru-lens finetune --out ft` writes it
    items = make_items(12, 5, split="test")
    base = evaluate(model, items, progress=False)
    merged = merge_deltas(model, path)
    tuned = evaluate(model, items, progress=False)
    merged.unmerge(model)
    assert [r["scores"] for r in base.per_item] != [r["scores"] for r in tuned.per_item]
    loaded = load_model("tiny-llama", deltas=path)  # the same, in one call
    assert [r["scores"] for r in evaluate(loaded, items, progress=False).per_item] == [r["scores"] for r in tuned.per_item]
    loaded.vru_deltas.unmerge(loaded)
    assert [r["scores"] for r in evaluate(loaded, items, progress=False).per_item] == [r["scores"] for r in base.per_item]

    for given in (path, path.parent):  # --deltas: the file or the finetune --out folder holding it
        r = CliRunner().invoke(app, ["eval", "--model", "tiny-llama", "--n", "12", "--seed", "5", "--deltas", str(given),
                                     "--json"])
        assert r.exit_code == 0, r.output
        assert json.loads(r.stdout.strip().splitlines()[-1])["accuracy"] == tuned.summary()["accuracy"]
    r = CliRunner().invoke(app, ["rank-heads", "--model", "tiny-llama", "--n", "16", "--method", "ablation",
                                 "--n-boot", "0", "--deltas", str(path.parent), "--json"])
    assert r.exit_code == 0, r.output

    r = CliRunner().invoke(app, ["eval", "--model", "tiny-gpt2", "--n", "4", "--deltas", str(path)])
    assert r.exit_code == 2 and "tiny-llama" in r.output  # trained on another model: say which
    r = CliRunner().invoke(app, ["eval", "--model", "tiny-llama", "--n", "4", "--deltas", str(tmp_path / "none.safetensors")])
    assert r.exit_code == 2 and "vru-lens finetune" in r.output
    r = CliRunner().invoke(app, ["eval", "--model", "tiny-llama", "--n", "4", "--deltas", str(tmp_path)])
    assert r.exit_code == 2 and "has no deltas.safetensors" in r.output and "vru-lens finetune" in r.output


def test_base_measurement_comes_from_the_cache(tmp_path):
    """A second run reads the base's VRU measurement (fractions, with pairs and the blind baseline) from the cache."""
    args = ["finetune", "--model", "tiny-llama", "--top-k", "2", "--steps", "1", "--batch-size", "2", "--n-train", "8",
            "--n-val", "4", "--n", "30", "--general-n", "0", "--json", "--cache-dir", str(tmp_path)]
    first = json.loads(CliRunner().invoke(app, args).stdout.strip().splitlines()[-1])["vru_before"]
    assert first["blind_baseline"] is not None and first["n"] == 30
    cached = next(tmp_path.glob("vru_base_*.json"))
    cached.write_text(json.dumps({**first, "test": 0.125}))
    again = json.loads(CliRunner().invoke(app, args).stdout.strip().splitlines()[-1])["vru_before"]
    assert again == {**first, "test": 0.125}


def test_load_model_takes_a_finetune_out_folder(tmp_path, tiny_llama):
    """load_model(deltas=DIR) reads DIR/deltas.safetensors, as --deltas DIR does; a folder without one is
    explained (it used to reach safetensors as a directory: 'No such device')."""
    import pytest

    from vru_lens.finetune import HeadDeltas
    from vru_lens.models import load_model

    d = HeadDeltas(tiny_llama, [(1, 2)], "qo")
    with torch.no_grad():
        for p in d.trainable_parameters():
            p.normal_(0, 0.1)
    d.save(tmp_path / "deltas.safetensors")
    ids = torch.tensor([[0, 5, 9, 11]])
    with torch.no_grad():
        from_folder = load_model("tiny-llama", deltas=tmp_path)(ids)
        from_file = load_model("tiny-llama", deltas=tmp_path / "deltas.safetensors")(ids)
        assert not torch.allclose(from_file, tiny_llama(ids))
    torch.testing.assert_close(from_folder, from_file, atol=0, rtol=0)
    with pytest.raises(FileNotFoundError, match="writes DIR/deltas.safetensors"):
        load_model("tiny-llama", deltas=tmp_path / "empty_dir_that_is_missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="writes DIR/deltas.safetensors"):
        load_model("tiny-llama", deltas=tmp_path / "empty")
