"""`vru-lens finetune` end to end on a tiny model (tiny data, tiny general suite)."""

import json

import torch

from typer.testing import CliRunner

from vru_lens.cli import app
from vru_lens.finetune import HeadDeltas

torch.set_num_threads(1)  # a shared 2-core machine: OpenMP spinning makes >1 thread far slower


def test_finetune_cli_json(tmp_path):
    out = tmp_path / "d.safetensors"
    args = ["finetune", "--model", "tiny-llama", "--top-k", "2", "--components", "qkvo", "--steps", "2",
            "--batch-size", "2", "--eval-every", "1", "--n-train", "8", "--n-val", "4", "--n-test", "6",
            "--general-n", "1", "--mmlu-n", "0", "--tasks", "arc_easy", "--wiki-n", "1", "--lr", "0.05", "--out", str(out), "--cache-dir", str(tmp_path / "c"),
            "--results", str(tmp_path / "r.json"), "--json"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    payload = json.loads(res.stdout.strip().splitlines()[-1])
    for key in ("vru_accuracy_before", "vru_accuracy_after", "general_before", "general_after", "trainable_params"):
        assert key in payload
    assert "arc_easy" in payload["general_before"] and "average" in payload["general_before"] and "wiki/kl" in payload["general_after"]
    meta = HeadDeltas.read_metadata(out)
    assert meta["components"] == "qkvo" and len(meta["heads"]) == 2 and meta["train_config"]["steps"] == 2
    assert (tmp_path / "ranking_grad_tiny-llama.json").exists()  # no --heads: stand-in ranking, saved


def test_finetune_cli_errors(tmp_path):
    r = CliRunner().invoke(app, ["finetune", "--model", "tiny-llama", "--heads", str(tmp_path / "nope.json")])
    assert r.exit_code == 2 and "rank-heads" in r.output
    r = CliRunner().invoke(app, ["finetune", "--model", "tiny-llama", "--components", "qk"])
    assert r.exit_code == 2 and "qkvo" in r.output
