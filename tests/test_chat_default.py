"""``chat=None`` means one thing everywhere: every function that renders prompts, called with its
defaults on an instruction-tuned model, feeds the model the same chat-rendered prompts as ``evaluate``."""

import tempfile
from pathlib import Path

import pytest
import torch

from vru_lens.bench import PAIRABLE, make_items
from vru_lens.tokens import encode, render


@pytest.fixture(scope="module")
def instruct(one_thread):
    """tiny-llama saved under a name that says "instruct", with the tiny tokenizer's chat template."""
    import warnings

    from vru_lens.models import load_model
    from vru_lens.models.tiny import tiny_hf_model, tiny_tokenizer

    folder = Path(tempfile.mkdtemp(prefix="vru-chat-")) / "tiny-llama-instruct"
    tiny_hf_model("tiny-llama").save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_model(str(folder), device="cpu")


@pytest.fixture(scope="module")
def items():
    return make_items(24, 3, PAIRABLE)


def chat_prefixes(tok, items) -> set:
    """Token ids of every prompt the functions may read (items and their counterfactual twins), as a chat."""
    from vru_lens.bench.pairs import build_pairs

    prompts = {it["prompt"] for it in items}
    pairs = build_pairs(items, lambda p: len(encode(tok, render(p, tok, True), True)),
                        lambda a: tok(a, add_special_tokens=False)["input_ids"][0])
    prompts |= set(pairs.clean_prompts) | set(pairs.corrupt_prompts)
    return {tuple(encode(tok, render(p, tok, True), True)) for p in prompts}


def is_chat_row(row: list[int], prefixes: set) -> bool:
    return any(tuple(row[: len(p)]) == p for p in prefixes)


def fed_rows(model, call) -> list[list[int]]:
    """The token rows the model embeds while ``call()`` runs (every forward pass goes through embed_tokens)."""
    rows = []
    embed = model.original_model.get_input_embeddings()
    handle = embed.register_forward_pre_hook(lambda m, args: rows.extend(args[0].detach().cpu().tolist()))
    try:
        call()
    finally:
        handle.remove()
    return rows


def test_every_default_reads_the_prompts_evaluate_reads(instruct, items):
    from vru_lens.evaluate import accuracy, evaluate, items_pair_accuracy, score_candidates, vru_breakdown
    from vru_lens.finetune.adapters import HeadDeltas
    from vru_lens.finetune.train import TrainConfig, train
    from vru_lens.logit_lens import logit_lens
    from vru_lens.patching.rank import rank_heads
    from vru_lens.probe import ResidCache, capture
    from vru_lens.viz import attention_patterns

    tok = instruct.tokenizer
    prefixes = chat_prefixes(tok, items)
    answerable = [it for it in items if it["answerable"]]
    calls = {
        "evaluate": lambda: evaluate(instruct, items, progress=False),
        "accuracy": lambda: accuracy(instruct, items),
        "vru_breakdown": lambda: vru_breakdown(instruct, items),
        "score_candidates": lambda: score_candidates(instruct, items, progress=False),
        "items_pair_accuracy": lambda: items_pair_accuracy(instruct, items),
        "capture": lambda: capture(instruct, items, progress=False),
        "ResidCache.cached": lambda: ResidCache.cached(None, instruct, items, progress=False),
        "logit_lens": lambda: logit_lens(instruct, answerable, progress=False),
        "rank_heads": lambda: rank_heads(instruct, items, "activation", n_boot=0, progress=False),
        "attention_patterns": lambda: attention_patterns(instruct, items[0], [(0, 0)]),
        "finetune.train": lambda: train(instruct, HeadDeltas(instruct, [(0, 0)]), items,
                                        cfg=TrainConfig(steps=1, batch_size=2, warmup_steps=1), progress=False),
    }
    assert evaluate(instruct, items[:2], progress=False).chat  # the reference: evaluate reads a chat
    plain = {}
    for name, call in calls.items():
        rows = fed_rows(instruct, call)
        assert rows, name
        plain[name] = sum(not is_chat_row(r, prefixes) for r in rows)
    assert plain == dict.fromkeys(calls, 0)  # how many rows each function fed that are not the chat prompts


def test_defaults_record_the_resolved_chat(instruct, items, tiny_llama):
    from vru_lens.finetune.adapters import HeadDeltas
    from vru_lens.finetune.train import TrainConfig, train
    from vru_lens.probe import capture
    from vru_lens.tokens import chat_for, tokenize_pairs

    tok = instruct.tokenizer
    pt = tokenize_pairs(tok, items)
    assert all(is_chat_row(r[: int(n)], chat_prefixes(tok, items)) for r, n in zip(pt.clean.tolist(), pt.lengths))
    assert capture(instruct, items[:2], progress=False).meta["chat"] is True
    res = train(instruct, HeadDeltas(instruct, [(0, 0)]), items, cfg=TrainConfig(steps=1, batch_size=2, warmup_steps=1),
                progress=False)
    assert res.config["chat"] is True
    # a base model (no instruct in its name) reads plain text by default; True/False still force it
    assert (chat_for(instruct, None), chat_for(tiny_llama, None), chat_for(instruct, False), chat_for(tiny_llama, True)) \
        == (True, False, False, True)
    assert torch.equal(tokenize_pairs(tiny_llama.tokenizer, items).clean, tokenize_pairs(tiny_llama.tokenizer, items, chat=False).clean)
