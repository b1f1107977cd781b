"""Training loop: resume equals an uninterrupted run, best-on-validation kept, baselines run."""

from functools import partial

import pytest
import torch

from vru_lens.bench import make_items
from vru_lens.evaluate import accuracy
from vru_lens.finetune import FullFinetune, HeadDeltas, LoraAdapters, TrainConfig, bottom_heads, random_heads, train
from vru_lens.models import load_model

torch.set_num_threads(1)  # a shared 2-core machine: OpenMP spinning makes >1 thread far slower


@pytest.fixture(scope="module")
def items():
    return make_items(16, seed=5, split="train"), make_items(6, seed=5, split="validation")


def test_lr_schedule():
    cfg = TrainConfig(steps=10, warmup_steps=2, min_lr_ratio=0.1)
    f = [cfg.lr_factor(s) for s in range(10)]
    assert f[0] == 0.5 and f[1] == 1.0 and f[2] == pytest.approx(1.0) and f[-1] > 0.1
    assert all(a >= b for a, b in zip(f[1:], f[2:]))


def test_resume_matches_uninterrupted(tiny_llama, items, tmp_path):
    train_items, val = items
    cfg = TrainConfig(steps=4, batch_size=2, grad_accum=2, warmup_steps=2, lr=5e-3, eval_every=2, checkpoint_every=2)
    m = tiny_llama
    a = HeadDeltas(m, [(0, 1), (2, 0)], "qkvo")
    acc = partial(accuracy, batch_size=4)
    ra = train(m, a, train_items, val, cfg, checkpoint=tmp_path / "a.pt", progress=False, accuracy=acc)
    b = HeadDeltas(m, [(0, 1), (2, 0)], "qkvo")
    train(m, b, train_items, val, cfg, checkpoint=tmp_path / "b.pt", progress=False, stop_after=2, accuracy=acc)
    c = HeadDeltas(m, [(0, 1), (2, 0)], "qkvo")  # a fresh process would start like this
    rc = train(m, c, train_items, val, cfg, checkpoint=tmp_path / "b.pt", resume=True, progress=False, accuracy=acc)
    for k in a.deltas:
        torch.testing.assert_close(a.deltas[k], c.deltas[k], atol=0, rtol=0)
    assert [h["loss"] for h in ra.history] == [h["loss"] for h in rc.history]
    assert ra.validation == rc.validation and ra.best_step == rc.best_step
    assert [v["step"] for v in ra.validation] == [0, 2, 4]
    with pytest.raises(ValueError, match="TrainConfig"):
        train(m, c, train_items, val, TrainConfig(steps=7), checkpoint=tmp_path / "b.pt", resume=True, progress=False,
              accuracy=acc)
    with pytest.raises(ValueError, match="accuracy="):  # validation without a way to score it
        train(m, c, train_items, val, cfg, progress=False)


def test_validation_uses_the_accuracy_function_with_the_trainable_active(items):
    """Validation records what the accuracy function returns, on the validation items, and keeps the best."""
    train_items, val = items
    m = load_model("tiny-llama")
    d = HeadDeltas(m, [(0, 1)], "qo")
    seen = []

    def acc(model, its):
        seen.append((model is m, len(its)))
        return 0.25 * len(seen)

    res = train(m, d, train_items, val, TrainConfig(steps=2, batch_size=2, warmup_steps=1, eval_every=1),
                progress=False, accuracy=acc)
    assert [v["accuracy"] for v in res.validation] == [0.25, 0.5, 0.75]
    assert res.best_accuracy == 0.75 and res.best_step == 2
    assert seen == [(True, len(val))] * 3


def test_baselines_budgets(tiny_llama, items):
    train_items, _ = items
    m = tiny_llama
    heads = [(0, 1), (2, 0)]
    top = HeadDeltas(m, heads, "qo")
    rnd = HeadDeltas(m, random_heads(m.cfg.n_layers, m.cfg.n_heads, 2, seed=1, exclude=heads), "qo")
    low = HeadDeltas(m, bottom_heads(torch.arange(12.0).reshape(3, 4), 2), "qo")
    assert low.heads == [(0, 0), (0, 1)]
    assert top.num_parameters() == rnd.num_parameters() == low.num_parameters()
    lora = LoraAdapters(m, budget=top.num_parameters())
    assert abs(lora.num_parameters() - top.num_parameters()) <= lora.num_parameters() / lora.rank
    cfg = TrainConfig(steps=2, batch_size=4, warmup_steps=1, lr=1e-2, eval_every=0)
    ids = torch.tensor([[0, 5, 9, 11]])
    base = m(ids).detach()
    res = train(m, lora, train_items, None, cfg, progress=False)
    assert res.trainable_params == lora.num_parameters()
    with lora.active(m):
        assert not torch.allclose(m(ids), base)  # the LoRA adapters are live in the bridge's forward
    assert torch.equal(m(ids), base)  # and gone outside the block
    g = load_model("tiny-gpt2")
    full = FullFinetune(g)
    res = train(g, full, train_items, None, cfg, progress=False)
    assert res.trainable_params == full.num_parameters()
    assert res.optimizer_state_bytes >= 0.8 * 2 * 4 * full.num_parameters()  # (an unused fused c_attn gets no state)


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
def test_fast_rows_match_the_bridge(name, items):
    from vru_lens.finetune.train import rows_logits
    from vru_lens.readout import final_normed, unembed_rows

    m = load_model(name)
    ids = torch.randint(3, 300, (3, 12))
    pos = torch.tensor([[2, 11], [0, 5], [7, 7]])
    with torch.no_grad():
        torch.testing.assert_close(rows_logits(m, ids, pos), unembed_rows(m, final_normed(m, ids, pos)),
                                   atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", ["heads", "lora", "full"])  # full after lora: on the same model object
def test_every_method_gives_the_model_back(tiny_llama, items, method, weights_hash):
    """After training (and measuring with the method active), the model hashes as before; re-activating gives
    the tuned model again, so the tuned state was kept, not lost."""
    train_items, _ = items
    m = tiny_llama
    before = weights_hash(m)
    flags = [p.requires_grad for p in m.parameters()]
    assert all(flags)  # as loaded; PEFT's injection used to freeze them for good, which broke full fine-tuning
    ids = torch.tensor([[0, 5, 9, 11]])
    with torch.no_grad():
        base = m(ids)
    trainable = {"heads": lambda: HeadDeltas(m, [(0, 1), (2, 0)], "qkvo"), "full": lambda: FullFinetune(m),
                 "lora": lambda: LoraAdapters(m, rank=2)}[method]()
    assert weights_hash(m) == before  # building it changes nothing either
    cfg = TrainConfig(steps=2, batch_size=4, warmup_steps=1, lr=5e-2, eval_every=0)
    train(m, trainable, train_items, None, cfg, progress=False)
    with trainable.active(m), torch.no_grad():
        tuned = m(ids)
    assert (tuned - base).abs().max() > 1e-3  # training moved something
    assert weights_hash(m) == before
    with torch.no_grad():
        assert torch.equal(m(ids), base)
        with trainable.active(m):
            torch.testing.assert_close(m(ids), tuned)
    assert weights_hash(m) == before
    assert [p.requires_grad for p in m.parameters()] == flags


def _saved_bytes(model, deltas, batch, checkpointed: bool) -> tuple[int, dict]:
    """Bytes the autograd graph keeps for backward (outside checkpointed regions), and the delta gradients."""
    from vru_lens.finetune.train import answer_loss, checkpointed_blocks, encode_examples

    saved = []

    def pack(t):
        saved.append(t.numel() * t.element_size())
        return t

    examples = encode_examples(model.tokenizer, batch, False)
    for p in deltas.trainable_parameters():
        p.grad = None
    with deltas.active(model), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with checkpointed_blocks(model) if checkpointed else torch.enable_grad():
            answer_loss(model, examples).backward()
    return sum(saved), {k: p.grad.clone() for k, p in deltas.deltas.items()}


def test_activation_checkpointing_same_gradients_less_saved(tiny_llama, items):
    """Checkpointed blocks give the same gradients while the graph keeps far fewer activations."""
    m = tiny_llama
    d = HeadDeltas(m, [(0, 1), (2, 0)], "qkvo")
    with torch.no_grad():
        for p in d.trainable_parameters():
            p.normal_(0, 0.05)  # nonzero deltas: gradients reach every slice through a non-trivial path
    for p in m.parameters():
        p.requires_grad_(False)
    plain, g_plain = _saved_bytes(m, d, items[0][:4], False)
    ckpt, g_ckpt = _saved_bytes(m, d, items[0][:4], True)
    for k in g_plain:
        assert g_plain[k].abs().max() > 0
        torch.testing.assert_close(g_ckpt[k], g_plain[k], atol=1e-6, rtol=1e-5)
    assert ckpt < plain / 2, (ckpt, plain)
    for b in m.blocks:  # the blocks' own forward is back, and the wrapped modules were never touched
        assert "forward" not in vars(b) and "forward" not in vars(b.original_component)
    cfg = TrainConfig(steps=1, batch_size=4, warmup_steps=1, eval_every=0, activation_checkpointing=True)
    assert train(m, d, items[0][:4], None, cfg, progress=False).history[0]["loss"] > 0
