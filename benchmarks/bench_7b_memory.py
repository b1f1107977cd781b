"""Peak memory of the study's model size: a random Qwen2.5-7B-Instruct-shaped model in bfloat16 on the CPU.

Stages, each measured as the process's peak resident memory (VmHWM, reset before
the stage through /proc/self/clear_refs) and its wall time:

1. load: build the model on the meta device, materialise it with ``to_empty`` and
   a cheap uniform init (never a float32 copy), boot the TransformerBridge on it;
2. path: path-patching ranking of every head (28 x 28 = 784) on ``--pairs``
   counterfactual pairs, ``--chunk`` pairs at a time (``rank_heads(checkpoint=...)``'s chunks);
3. finetune: one optimizer step of HeadDeltas on the top ``--heads`` heads' W_Q/W_K/W_V/W_O
   (batch ``--batch``), with and without activation checkpointing.

Weights are random, so the numbers measure memory and time, not behaviour. The tokenizer is
Qwen2.5-Coder-0.5B's (same vocabulary) when it is cached, else the tiny test tokenizer.

    python benchmarks/bench_7b_memory.py --out results/bench_7b.json       # ~15 GB, minutes on 2 cores
    python benchmarks/bench_7b_memory.py --tiny                             # the same code on a tiny shape
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import replace
from pathlib import Path

import torch

# Qwen2.5-7B-Instruct's config.json (the shape only).
QWEN_7B = dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
               num_key_value_heads=4, vocab_size=152064, max_position_embeddings=32768, rope_theta=1_000_000.0,
               rms_norm_eps=1e-6, tie_word_embeddings=False)
TINY = dict(QWEN_7B, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2)


def rss_gb() -> tuple[float, float]:
    """(current, peak) resident memory of this process in GB."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) * 1024 / 1e9
    return fields["VmRSS"], fields["VmHWM"]


def reset_peak() -> bool:
    """Start a new peak (VmHWM) measurement; False where the kernel refuses."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class SavedForBackward:
    """Bytes autograd keeps for backward, new tensors only (the frozen weights it also references are not counted).

    Exact where RSS is noisy: outside checkpointed blocks this is what the graph holds; inside one,
    checkpointing keeps nothing and recomputes one block at a time in backward.
    """

    def __init__(self, model):
        self.params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.seen: set[int] = set()
        self.bytes = 0

    def pack(self, t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in self.params and ptr not in self.seen:
            self.seen.add(ptr)
            self.bytes += t.untyped_storage().nbytes()
        return t

    def __enter__(self):
        self.ctx = torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)
        self.ctx.__enter__()
        return self

    def __exit__(self, *exc):
        self.ctx.__exit__(*exc)


class Stage:
    """Times a block and records its peak RSS above and including what was resident before."""

    def __init__(self, name: str, record: dict):
        self.name, self.record = name, record

    def __enter__(self):
        self.exact = reset_peak()
        self.before = rss_gb()[0]
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        now, peak = rss_gb()
        self.record[self.name] = {"seconds": round(time.perf_counter() - self.t0, 1), "rss_before_gb": round(self.before, 2),
                                  "peak_gb": round(peak, 2), "rss_after_gb": round(now, 2), "peak_exact": self.exact}
        print(self.name, self.record[self.name], flush=True)


def build_model(shape: dict, dtype=torch.bfloat16):
    """A randomly initialised Qwen2 causal LM of this shape, materialised once in ``dtype``."""
    from transformers import Qwen2Config, Qwen2ForCausalLM
    from transformers.models.qwen2.modeling_qwen2 import Qwen2RotaryEmbedding

    config = Qwen2Config(**shape, dtype=dtype)
    with torch.device("meta"):
        model = Qwen2ForCausalLM(config).to(dtype)
    model.to_empty(device="cpu")
    gen = torch.Generator().manual_seed(0)
    bound = 0.02 * math.sqrt(3)  # uniform with std 0.02, transformers' init scale
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            elif name.endswith("bias"):
                p.zero_()
            else:
                p.uniform_(-bound, bound, generator=gen)
        model.model.rotary_emb = Qwen2RotaryEmbedding(config)  # its buffers are not parameters: recompute
    model.config.architectures = ["Qwen2ForCausalLM"]
    return model.eval()


def tokenizer():
    from vru_lens.models import cache_dir, tiny_tokenizer

    folder = cache_dir() / "qwen2.5-coder-0.5b-instruct"
    if (folder / "tokenizer.json").exists():
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(folder), "qwen2.5 (from the cached 0.5B model)"
    return tiny_tokenizer(), "tiny test tokenizer (Qwen 0.5B not cached)"


def flops(shape: dict, tokens: int) -> dict:
    """Forward FLOPs per token of the transformer body (2 per multiply-add), attention scores included."""
    d, f, L = shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"]
    H, kv = shape["num_attention_heads"], shape["num_key_value_heads"]
    dh = d // H
    proj = 2 * d * (H * dh + 2 * kv * dh + H * dh)  # q, k, v, o
    mlp = 2 * 3 * d * f
    attn = 2 * 2 * H * dh * tokens / 2  # scores and mixing, causal: half the positions on average
    per_layer = proj + mlp + attn
    return {"per_token_body": L * per_layer, "per_token_unembed": 2 * d * shape["vocab_size"],
            "params": sum([L * (d * (H * dh + 2 * kv * dh + H * dh) + 3 * d * f + 2 * d),
                           2 * d * shape["vocab_size"], d])}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="the same stages on a tiny shape (a quick check)")
    ap.add_argument("--pairs", type=int, default=4, help="counterfactual pairs ranked")
    ap.add_argument("--chunk", type=int, default=1, help="pairs per path-patching chunk (memory grows with it)")
    ap.add_argument("--max-chunks", type=int, default=0, help="run only this many chunks and extrapolate (0 = all)")
    ap.add_argument("--heads", type=int, default=32, help="heads fine-tuned (W_Q/W_K/W_V/W_O)")
    ap.add_argument("--batch", type=int, default=2, help="fine-tuning sequences per step")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--layers", type=int, default=0, help="keep the width, use this many layers (0 = all 28): where "
                                                          "memory is short, two depths give the per-layer cost")
    ap.add_argument("--skip-path", action="store_true", help="no path-patching stage; fine-tune heads spread over "
                                                              "every layer (layer 0 included: backward runs the full depth)")
    ap.add_argument("--out", default=None, help="write the measurements here as JSON")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from vru_lens.bench import PAIRABLE, make_items
    from vru_lens.models.loader import bridge_from_hf
    from vru_lens.patching import rank_heads
    from vru_lens.tokens import tokenize_pairs

    shape = TINY if args.tiny else QWEN_7B
    if args.layers:
        shape = dict(shape, num_hidden_layers=args.layers)
    record: dict = {"shape": shape, "dtype": "bfloat16", "threads": args.threads, "stages": {}}
    stages = record["stages"]
    print("resident before loading:", rss_gb(), flush=True)
    tok, record["tokenizer"] = tokenizer()
    with Stage("load", stages):
        hf = build_model(shape)
        model = bridge_from_hf(hf, tok, "qwen2.5-7b-shaped-random", device="cpu", dtype=torch.bfloat16)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    record["weights_gb"] = round(weights / 1e9, 2)
    hf_ptrs = {q.data_ptr() for q in hf.parameters()}
    record["parameter_tensors_shared_with_hf"] = all(p.data_ptr() in hf_ptrs for p in model.parameters())
    save(record, args.out)

    # Short pairs: 3-step paper-style items, plain prompts.
    cfg = replace(PAIRABLE, min_steps=3, max_steps=3)
    items = make_items(8 * args.pairs, seed=0, cfg=cfg, split="test")
    pt = tokenize_pairs(tok, items, max_pairs=args.pairs)
    record["pairs"] = len(pt)
    record["tokens_per_prompt"] = int(pt.lengths.float().mean())
    record["flops"] = flops(shape, record["tokens_per_prompt"])

    from vru_lens.tokens import PairTokens
    from vru_lens.patching.rank import subset

    n_run = len(pt) if not args.max_chunks else min(len(pt), args.max_chunks * args.chunk)
    L, H = shape["num_hidden_layers"], shape["num_attention_heads"]
    if args.skip_path:
        top = sorted({(i % L, (5 * i) % H) for i in range(args.heads)})
    else:
        with Stage("path_patching", stages):
            scores = rank_heads(model, subset(pt, slice(0, n_run)), method="path", batch_size=args.chunk, n_boot=0,
                                progress=False)
        stages["path_patching"].update(pairs=n_run, chunk=args.chunk, senders=len(scores.top(10**6)),
                                       seconds_per_pair=round(stages["path_patching"]["seconds"] / n_run, 1))
        assert isinstance(pt, PairTokens)
        top = [(l, h) for l, h, _ in scores.top(args.heads)]
    record["finetuned_heads"] = top

    save(record, args.out)
    from vru_lens.finetune.adapters import HeadDeltas  # imported here so that a long run picks up the latest code
    from vru_lens.finetune.train import TrainConfig, train

    train_items = make_items(args.batch, seed=1, cfg=cfg, split="train")
    for ckpt in (True, False):
        name = "finetune_step" + ("_checkpointed" if ckpt else "")
        deltas = HeadDeltas(model, top, "qkvo")
        with Stage(name, stages), SavedForBackward(model) as saved:
            result = train(model, deltas, train_items, None,
                           TrainConfig(steps=1, batch_size=args.batch, warmup_steps=1, eval_every=0,
                                       activation_checkpointing=ckpt), progress=False)
        stages[name].update(loss=round(result.history[-1]["loss"], 4), trainable_params=result.trainable_params,
                            optimizer_state_bytes=result.optimizer_state_bytes, batch=args.batch,
                            tokens=sum(len(tok(it["prompt"]).input_ids) for it in train_items),
                            saved_for_backward_gb=round(saved.bytes / 1e9, 4))
        save(record, args.out)
        del deltas, result
    print(json.dumps(record, indent=1))
    save(record, args.out)
    return record


def save(record: dict, out: str | None) -> None:
    """Write what is measured so far (a long run that dies later keeps its earlier stages)."""
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
