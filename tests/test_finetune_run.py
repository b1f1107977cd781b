"""The fine-tuning experiment for every method, the gradient ranking, and the rank -> finetune hand-off."""

from functools import partial

import numpy as np
import pytest
import torch

from vru_lens.bench import PAIRABLE, make_items
from vru_lens.evaluate import accuracy, evaluate, vru_breakdown
from vru_lens.finetune import METHODS, FinetuneConfig, TrainConfig, resolve_heads, run_experiment
from vru_lens.models import load_model
from vru_lens.patching import HeadScores
from vru_lens.patching.rank import REGISTRY, rank_heads
from vru_lens.tokens import tokenize_pairs

torch.set_num_threads(1)  # a shared 2-core machine: OpenMP spinning makes >1 thread far slower


@pytest.fixture(scope="module")
def ranking(tmp_path_factory, tiny_llama):
    """A saved HeadScores (the gradient ranking of tiny-llama) and its score map."""
    pt = tokenize_pairs(tiny_llama.tokenizer, make_items(24, 3, PAIRABLE, split="validation"))
    scores = rank_heads(tiny_llama, pt, "gradient", n_boot=0, progress=False)
    return scores.save(tmp_path_factory.mktemp("rank") / "ranking.json"), scores.scores


def test_resolve_heads_reads_a_saved_head_scores(ranking):
    """rank -> finetune: the file's top-k are the k largest scores, best first (an argsort of its own)."""
    path, s = ranking
    order = sorted(((float(s[l, h]), l, h) for l in range(s.shape[0]) for h in range(s.shape[1])), reverse=True)
    assert resolve_heads(path, 3) == [(l, h) for _, l, h in order[:3]]
    assert resolve_heads(HeadScores.load(path), 3) == resolve_heads(path, 3)
    assert len(set(resolve_heads(path, 12))) == 12  # every head of 3 x 4, once each
    with pytest.raises(ValueError, match="top_k"):
        resolve_heads(path)


def test_gradient_ranking_matches_a_per_head_loop(tiny_llama):
    """The registry's gradient ranking == d(-log p(answer)) / d(scale of head h's z) at scale 1, per pair and
    head, from one backward pass per (pair, head) through a scale factor (an independent computation)."""
    from vru_lens.heads import hook_name

    m = tiny_llama
    pt = tokenize_pairs(m.tokenizer, make_items(16, 3, PAIRABLE, split="validation"), max_pairs=3)
    got = rank_heads(m, pt, "gradient", n_boot=0, progress=False, batch_size=2)
    assert got.kind == "gradient" and got.method == "gradient" and "gradient" in REGISTRY
    L, H = m.cfg.n_layers, m.cfg.n_heads
    ref = np.zeros((len(pt), L, H))
    for i in range(len(pt)):
        n = int(pt.lengths[i])
        ids = pt.clean[i : i + 1, :n]
        for layer in range(L):
            for head in range(H):
                scale = torch.ones((), requires_grad=True)

                def hook(z, hook, head=head):
                    z = z.clone()
                    z.view(*z.shape[:2], H, -1)[:, :, head] *= scale
                    return z

                logits = m.run_with_hooks(ids, fwd_hooks=[(hook_name(layer, "z"), hook)])
                nll = -logits[0, n - 1].float().log_softmax(-1)[int(pt.clean_answer[i])]
                (g,) = torch.autograd.grad(nll, scale)
                ref[i, layer, head] = abs(float(g))
    np.testing.assert_allclose(got.per_pair, ref, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got.scores, ref.mean(0), rtol=1e-4, atol=1e-6)
    assert ref.max() > 0


def _expected_params(m, method, k, lora_rank):
    """Trainable parameters counted from the config alone."""
    c = m.cfg
    d, dh, n_kv = c.d_model, c.d_head, getattr(c, "n_key_value_heads", None) or c.n_heads
    if method in ("heads", "random", "bottom"):
        return k * (dh * d + d * dh)  # W_Q rows and W_O columns of each head ("qo")
    if method == "lora":  # A [r, in] and B [out, r] on q, k, v, o of every layer
        q, kv, o = (d, c.n_heads * dh), (d, n_kv * dh), (c.n_heads * dh, d)
        return c.n_layers * lora_rank * sum(i + j for i, j in (q, kv, kv, o))
    return sum(p.numel() for p in {id(p): p for p in m.original_model.parameters()}.values())


@pytest.mark.parametrize("method", METHODS)
def test_run_experiment_every_method(method, ranking, tmp_path, weights_hash):
    path, s = ranking
    m = load_model("tiny-llama", device="cpu")  # LoRA leaves PEFT's config on the model: one copy per method
    before = weights_hash(m)
    k = 2
    cfg = FinetuneConfig(method, top_k=k, n_train=8, n_val=4, n_test=12, data_seed=1,
                         train=TrainConfig(steps=2, batch_size=2, warmup_steps=1, eval_every=1, lr=5e-2))
    test_items = cfg.splits()["test"]
    base_acc = evaluate(m, test_items, progress=False).accuracy
    out = tmp_path / "d.safetensors"
    res = run_experiment(m, cfg, path, measure=partial(vru_breakdown, batch_size=8), accuracy=partial(accuracy, batch_size=8),
                         out=out, cache_dir=tmp_path / "cache", progress=False, log=lambda *a: None)
    assert weights_hash(m) == before  # the model is given back as it came
    assert res.trainable_params == _expected_params(m, method, k, res.extra.get("lora_rank"))
    assert res.method == method and res.train["trainable_params"] == res.trainable_params
    assert res.vru_accuracy_before == base_acc == res.vru_before["test"]  # a fraction, the evaluator's own
    assert len(res.train["history"]) == 2 and [v["step"] for v in res.train["validation"]] == [0, 1, 2]
    ordered = resolve_heads(path, 12)
    chosen = [tuple(h) for h in res.heads]
    if method == "heads":
        assert chosen == ordered[:k]
        tuned = load_model("tiny-llama", device="cpu", deltas=out)  # the saved best state, merged
        assert res.vru_accuracy_after == evaluate(tuned, test_items, progress=False).accuracy
    elif method == "bottom":
        assert chosen == sorted(ordered[-k:])
    elif method == "random":
        assert len(set(chosen)) == k and not set(chosen) & set(ordered[:k])
    else:
        assert chosen == [] and res.components == ""
    if method in ("heads", "lora"):
        assert out.exists()


def test_base_measurement_is_cached(ranking, tmp_path):
    """The second experiment reads the base's VRU measurement from the cache instead of measuring again."""
    path, _ = ranking
    m = load_model("tiny-llama", device="cpu")
    cfg = FinetuneConfig("heads", top_k=1, n_train=4, n_val=0, n_test=6,
                         train=TrainConfig(steps=1, batch_size=2, warmup_steps=1, eval_every=0))
    calls = []

    def measure(model, items):
        calls.append(len(items))
        return {"test": 0.5}

    for _ in range(2):
        res = run_experiment(m, cfg, path, measure=measure, accuracy=accuracy, cache_dir=tmp_path, progress=False,
                             log=lambda *a: None)
    assert calls == [6, 6, 6]  # before (once, then cached), after, after
    assert res.vru_before == {"test": 0.5} and len(list(tmp_path.glob("vru_base_*.json"))) == 1


def test_config_refuses_bad_settings():
    with pytest.raises(ValueError, match="method must be one of"):
        FinetuneConfig("everything")
    with pytest.raises(ValueError, match="components"):
        FinetuneConfig(components="qk")
    assert FinetuneConfig("full").train.lr == 1e-4  # the method's default learning rate (DEFAULT_LR)
