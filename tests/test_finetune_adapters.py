"""Head-delta adapters: hooks equal hand-edited weights, merge/unmerge exact, untouched weights, save/load."""

import hashlib

import pytest
import torch

from vru_lens.finetune import HeadDeltas, TrainConfig, train
from vru_lens.bench import make_items

torch.set_num_threads(1)  # a shared 2-core machine: OpenMP spinning makes >1 thread far slower


@pytest.fixture(scope="module", params=["tiny_llama", "tiny_gpt2"])
def model(request):
    return request.getfixturevalue(request.param)  # conftest's; every test here leaves the weights as they were


def _hashes(model):
    return {n: hashlib.sha256(p.detach().cpu().numpy().tobytes()).hexdigest() for n, p in model.named_parameters()}


def _randomise(deltas, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in deltas.deltas.values():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)


IDS = torch.tensor([[0, 5, 9, 11, 40, 7, 3], [0, 8, 2, 30, 41, 6, 12]])


@pytest.mark.parametrize("components", ["qo", "qkvo"])
def test_hooks_equal_hand_edited_weights(model, components):
    heads = [(0, 1), (2, 3), (2, 2)]
    d = HeadDeltas(model, heads, components)
    _randomise(d)
    with d.applied(model):
        hooked = model(IDS).detach()
    dh = model.cfg.d_head
    gpt2 = model.blocks[0].attn.o.original_component.__class__.__name__ == "Conv1D"
    before = _hashes(model)
    originals = {}  # one copy per weight, taken before its first edit (several slices share a weight)
    with torch.no_grad():  # edit the weights by hand from the documented slice layout
        for key, delta in d.deltas.items():
            layer, idx, kind = key.split("_")
            l, i = int(layer[1:]), int(idx[1:])
            w = getattr(model.blocks[l].attn, kind).original_component.weight
            originals.setdefault(id(w), (w, w.detach().clone()))
            rows = slice(i * dh, (i + 1) * dh)
            if kind == "o":
                if gpt2:
                    w[rows, :] += delta.T
                else:
                    w[:, rows] += delta
            else:
                w[rows, :] += delta  # q/k/v are nn.Linear ([out, in]) in both bridges
        edited = model(IDS).detach()
        for w, w0 in originals.values():
            w.copy_(w0)
    assert _hashes(model) == before  # the model (shared with other tests) is as it was
    assert (hooked - model(IDS)).abs().max() > 1e-3  # the deltas do something
    torch.testing.assert_close(hooked, edited, atol=1e-5, rtol=1e-5)


def test_merge_unmerge_exact_and_context_always_removes(model):
    d = HeadDeltas(model, [(1, 0), (2, 3)], "qkvo")
    _randomise(d, 1)
    before = _hashes(model)
    base = model(IDS).detach()
    with pytest.raises(ValueError):
        with d.applied(model):
            raise ValueError("boom")
    torch.testing.assert_close(model(IDS).detach(), base, atol=0, rtol=0)  # hooks gone after the error
    with d.applied(model):
        hooked = model(IDS).detach()
    d.merge(model)
    assert _hashes(model) != before
    torch.testing.assert_close(model(IDS).detach(), hooked, atol=1e-5, rtol=1e-5)
    with pytest.raises(RuntimeError):
        d.attach(model)
    d.unmerge(model)
    assert _hashes(model) == before


def test_training_leaves_every_weight_bit_identical(model):
    items = make_items(12, seed=3)
    d = HeadDeltas(model, [(0, 0), (1, 2)], "qkvo")
    before = _hashes(model)
    flags = [p.requires_grad for p in model.parameters()]
    res = train(model, d, items, None, TrainConfig(steps=3, batch_size=4, warmup_steps=1, lr=1e-2, eval_every=0),
                progress=False)
    assert _hashes(model) == before
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.abs().sum() > 0 for p in d.deltas.values())
    assert res.trainable_params == d.num_parameters()
    # AdamW state (exp_avg, exp_avg_sq, step) exists for the deltas only
    assert res.optimizer_state_bytes <= 2 * 4 * d.num_parameters() + 64 * len(d.deltas)


def test_gqa_slices_and_parameter_count(tiny_llama):
    m = tiny_llama  # 4 query heads, 2 KV heads: groups {0,1}, {2,3}
    d = HeadDeltas(m, [(0, 0), (0, 1), (1, 3)], "qkvo")
    dh, dm = m.cfg.d_head, m.cfg.d_model
    assert d.kv_sharing == [{"layer": 0, "kv_group": 0, "query_heads": [0, 1], "chosen": [0, 1]},
                            {"layer": 1, "kv_group": 1, "query_heads": [2, 3], "chosen": [3]}]
    assert d.num_parameters() == 3 * 2 * dh * dm + 2 * 2 * dh * dm
    assert HeadDeltas(m, [(0, 0)], "qo").num_parameters() == 2 * dh * dm
    with pytest.raises(ValueError, match="outside"):
        HeadDeltas(m, [(5, 0)])
    with pytest.raises(ValueError, match="components"):
        HeadDeltas(m, [(0, 0)], "qk")


def test_save_load_roundtrip(tmp_path, tiny_llama, tiny_gpt2):
    m = tiny_llama
    d = HeadDeltas(m, [(0, 1), (2, 2)], "qkvo")
    _randomise(d, 2)
    path = d.save(tmp_path / "d.safetensors", train_config={"lr": 0.01})
    meta = HeadDeltas.read_metadata(path)
    assert meta["model"] == "tiny-llama" and meta["components"] == "qkvo" and meta["heads"] == [(0, 1), (2, 2)]
    assert meta["train_config"] == {"lr": 0.01} and meta["kv_sharing"] == d.kv_sharing
    back = HeadDeltas.load(path, m)
    for k, v in d.deltas.items():
        assert torch.equal(back.deltas[k], v)
    with pytest.raises(ValueError, match="geometry"):
        HeadDeltas.load(path, tiny_gpt2)


def test_resolve_heads_from_a_saved_ranking(tmp_path):
    """The rank -> finetune hand-off: a HeadScores saved by `rank-heads` (and the stand-in gradient ranking's
    earlier file format) gives its top-k heads, best first, read back from the file."""
    import json

    import numpy as np

    from vru_lens.finetune.adapters import resolve_heads
    from vru_lens.patching import HeadScores

    # noising scores = (mean clean - mean patched) / (mean clean - mean corrupt); clean 2, corrupt 0:
    # patched = 2 - 2 * score, so the planted score map comes back exactly
    want = np.array([[0.1, 0.9, 0.0, 0.3], [0.5, -0.2, 0.8, 0.05], [0.7, 0.2, 0.4, 0.6]])
    per_pair = np.stack([2 - 2 * want] * 3)
    hs = HeadScores.from_patched(per_pair, np.full(3, 2.0), np.zeros(3), method="path", model="tiny-llama")
    np.testing.assert_allclose(hs.scores, want)
    path = hs.save(tmp_path / "ranking.json")
    best = [(0, 1), (1, 2), (2, 0), (2, 3)]  # 0.9, 0.8, 0.7, 0.6
    assert resolve_heads(path, 4) == best
    assert resolve_heads(str(path), 2) == best[:2]
    assert resolve_heads(hs, 4) == best
    grad = tmp_path / "grad.json"  # as finetune.rank wrote it before the gradient ranking became a HeadScores
    grad.write_text(json.dumps({"type": "GradientHeadScores", "model": "tiny-llama", "scores": want.tolist()}))
    assert resolve_heads(grad, 4) == best
    assert resolve_heads([(2, 1), (0, 3, 0.5)], None) == [(2, 1), (0, 3)]
    with pytest.raises(ValueError, match="top_k"):
        resolve_heads(path)


def test_stand_in_ranking_is_kept_and_reused_for_the_same_settings_only(tiny_llama, tmp_path, monkeypatch):
    """finetune without --heads: the gradient ranking of the pairs of n training items, a HeadScores equal to
    ``rank_heads(..., "gradient")`` on them; the file is reused for the same model and settings, recomputed
    for another seed."""
    import numpy as np

    from vru_lens.bench import PAIRABLE, make_items
    from vru_lens.finetune import run as R
    from vru_lens.patching import rank as P
    from vru_lens.patching.scores import HeadScores

    path = tmp_path / "ranking.json"
    got = R.gradient_ranking(tiny_llama, path, seed=3, n_items=32, log=lambda m: None)
    want = P.rank_heads(tiny_llama, make_items(32, 4, PAIRABLE, split="train"), "gradient", n_boot=0, progress=False)
    np.testing.assert_allclose(got.per_pair, want.per_pair, rtol=1e-6, atol=1e-9)
    assert HeadScores.load(path).meta["stand_in"] == {"seed": 3, "chat": False, "n_items": 32}
    monkeypatch.setattr(P, "rank_heads", lambda *a, **k: pytest.fail("a fresh ranking must be reused"))
    np.testing.assert_array_equal(R.gradient_ranking(tiny_llama, path, seed=3, n_items=32).per_pair, got.per_pair)
    monkeypatch.undo()
    other = R.gradient_ranking(tiny_llama, path, seed=5, n_items=32, log=lambda m: None)
    assert HeadScores.load(path).meta["stand_in"]["seed"] == 5
    want = P.rank_heads(tiny_llama, make_items(32, 6, PAIRABLE, split="train"), "gradient", n_boot=0, progress=False)
    np.testing.assert_allclose(other.per_pair, want.per_pair, rtol=1e-6, atol=1e-9)
