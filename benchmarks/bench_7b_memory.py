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
Qwen2.5-Coder-0.5B's (same vocabulary) when it is cached (or ``--tokenizer FOLDER``), else the
tiny test tokenizer.

With ``--device cuda`` every stage runs on the GPU and records the peak GPU memory allocated by
torch (``torch.cuda.max_memory_allocated``, reset per stage) beside the process's RSS; ``--steps``
times that many optimizer steps after a warm-up step, ``--full`` adds full fine-tuning (all
weights, AdamW) for the study's other baseline, and ``--study-items`` trains on the study's
items (paper style, 2-5 turns, chat template) instead of short 3-turn prompts.

    python benchmarks/bench_7b_memory.py --out results/bench_7b.json       # ~15 GB, minutes on 2 cores
    python benchmarks/bench_7b_memory.py --tiny                             # the same code on a tiny shape
    python benchmarks/bench_7b_memory.py --device cuda --batch 32 --steps 3 --study-items --full --pairs 16 --chunk 8
"""

from __future__ import annotations

import argparse
import json
import math
import time
import warnings
from dataclasses import replace
from pathlib import Path

import torch

from vru_lens.results import write_json_atomic

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

    def __init__(self, name: str, record: dict, device: str = "cpu"):
        self.name, self.record, self.cuda = name, record, str(device).startswith("cuda")

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.gpu_before = torch.cuda.memory_allocated() / 1e9
        self.exact = reset_peak()
        self.before = rss_gb()[0]
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        now, peak = rss_gb()
        self.elapsed = time.perf_counter() - self.t0  # unrounded, for rates
        self.record[self.name] = {"seconds": round(self.elapsed, 1), "rss_before_gb": round(self.before, 2),
                                  "peak_gb": round(peak, 2), "rss_after_gb": round(now, 2), "peak_exact": self.exact}
        if self.cuda:
            torch.cuda.synchronize()
            self.elapsed = time.perf_counter() - self.t0
            self.record[self.name].update(
                seconds=round(self.elapsed, 2), gpu_before_gb=round(self.gpu_before, 2),
                gpu_peak_gb=round(torch.cuda.max_memory_allocated() / 1e9, 2),
                gpu_reserved_peak_gb=round(torch.cuda.max_memory_reserved() / 1e9, 2))
        print(self.name, self.record[self.name], flush=True)


def build_model(shape: dict, dtype=torch.bfloat16, device: str = "cpu"):
    """A randomly initialised Qwen2 causal LM of this shape, materialised once in ``dtype``."""
    from transformers import Qwen2Config, Qwen2ForCausalLM
    from transformers.models.qwen2.modeling_qwen2 import Qwen2RotaryEmbedding

    config = Qwen2Config(**shape, dtype=dtype)
    with torch.device("meta"):
        model = Qwen2ForCausalLM(config).to(dtype)
    model.to_empty(device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    bound = 0.02 * math.sqrt(3)  # uniform with std 0.02, transformers' init scale
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            elif name.endswith("bias"):
                p.zero_()
            else:
                p.uniform_(-bound, bound, generator=gen)
        model.model.rotary_emb = Qwen2RotaryEmbedding(config).to(device)  # buffers, not parameters: recompute
    model.config.architectures = ["Qwen2ForCausalLM"]
    return model.eval()


def tokenizer(folder: str | None = None):
    from vru_lens.models import cache_dir, tiny_tokenizer

    folder = Path(folder) if folder else cache_dir() / "qwen2.5-coder-0.5b-instruct"
    if (folder / "tokenizer.json").exists():
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(folder), f"qwen2.5 (the 0.5B model's, {folder.name})"
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
    ap.add_argument("--device", default="cpu", help="cpu or cuda: on cuda each stage records peak GPU memory")
    ap.add_argument("--tokenizer", default=None, help="a folder with Qwen2.5's tokenizer (default: the cached 0.5B)")
    ap.add_argument("--steps", type=int, default=1, help="optimizer steps timed per fine-tuning variant "
                                                         "(after one warm-up step when above 1)")
    ap.add_argument("--check-reference", action="store_true", help="compare the fast path-patching path with the "
                                                                   "one-forward-per-sender reference on one chunk")
    ap.add_argument("--full", action="store_true", help="also one full fine-tuning step (every weight, AdamW)")
    ap.add_argument("--study-items", action="store_true", help="fine-tune on the study's items (paper style, "
                                                               "2-5 turns, chat template) instead of 3-turn prompts")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from vru_lens.bench import PAIRABLE, make_items
    from vru_lens.models.loader import bridge_from_hf
    from vru_lens.patching import rank_heads
    from vru_lens.tokens import tokenize_pairs

    shape = TINY if args.tiny else QWEN_7B
    if args.layers:
        shape = dict(shape, num_hidden_layers=args.layers)
    record: dict = {"shape": shape, "dtype": "bfloat16", "threads": args.threads, "device": args.device, "stages": {}}
    if args.device.startswith("cuda"):
        record["gpu"] = torch.cuda.get_device_name()
    stages = record["stages"]
    print("resident before loading:", rss_gb(), flush=True)
    tok, record["tokenizer"] = tokenizer(args.tokenizer)
    with Stage("load", stages, args.device):
        hf = build_model(shape, device=args.device)
        model = bridge_from_hf(hf, tok, "qwen2.5-7b-shaped-random", device=args.device, dtype=torch.bfloat16)
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

    n_run = len(pt) if not args.max_chunks else min(len(pt), args.max_chunks * args.chunk)
    L, H = shape["num_hidden_layers"], shape["num_attention_heads"]
    if args.skip_path:
        top = sorted({(i % L, (5 * i) % H) for i in range(args.heads)})
    else:
        with Stage("path_patching", stages, args.device), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            scores = rank_heads(model, pt[:n_run], method="path", batch_size=args.chunk, n_boot=0,
                                progress=False)
        fallback = [str(w.message) for w in caught if "fast path unavailable" in str(w.message)]
        stages["path_patching"]["fast_path"] = not fallback
        if fallback:
            stages["path_patching"]["fallback_reason"] = fallback[0]
        if args.check_reference:
            stages["fast_vs_reference"] = compare_with_reference(model, pt[:args.chunk], args.chunk)
            print("fast_vs_reference", stages["fast_vs_reference"], flush=True)
        stages["path_patching"].update(pairs=n_run, chunk=args.chunk, senders=len(scores.top(10**6)),
                                       seconds_per_pair=round(stages["path_patching"]["seconds"] / n_run, 1))
        assert isinstance(pt, PairTokens)
        top = [(l, h) for l, h, _ in scores.top(args.heads)]
    record["finetuned_heads"] = top

    save(record, args.out)
    from vru_lens.finetune.adapters import HeadDeltas  # imported here so that a long run picks up the latest code
    from vru_lens.finetune.train import TrainConfig, train

    chat = bool(args.study_items and getattr(tok, "chat_template", None))
    train_cfg = None if args.study_items else cfg  # None: make_items' default, the study's paper style
    train_items = make_items(args.batch * args.steps, seed=1, **({"cfg": train_cfg} if train_cfg else {}), split="train")
    record["train_items"] = {"study_items": args.study_items, "chat": chat}
    from vru_lens.finetune.baselines import FullFinetune
    from vru_lens.finetune.train import encode_examples

    tokens = [len(ids) for ids, _ in encode_examples(tok, train_items, chat)]
    variants = [("finetune_step_checkpointed", True, False), ("finetune_step", False, False)]
    if args.full:
        variants += [("full_finetune_step_checkpointed", True, True), ("full_finetune_step", False, True)]
    for name, ckpt, full in variants:
        trainable = FullFinetune(model) if full else HeadDeltas(model, top, "qkvo")
        make_cfg = lambda steps: TrainConfig(steps=steps, batch_size=args.batch, warmup_steps=1, eval_every=0,  # noqa: E731
                                             activation_checkpointing=ckpt, chat=chat, lr=1e-6 if full else 1e-3)
        try:
            if args.steps > 1:  # warm-up: the first step pays for kernel selection and allocator growth
                train(model, trainable, train_items[:args.batch], None, make_cfg(1), progress=False)
            with Stage(name, stages, args.device) as stage, SavedForBackward(model) as saved:
                result = train(model, trainable, train_items, None, make_cfg(args.steps), progress=False)
        except torch.OutOfMemoryError as err:
            stages[name] = {"error": f"out of memory: {str(err).splitlines()[0]}"}
            save(record, args.out)
            torch.cuda.empty_cache()
            continue
        step_s = stage.elapsed / args.steps
        stages[name].update(loss=round(result.history[-1]["loss"], 4), trainable_params=result.trainable_params,
                            optimizer_state_bytes=result.optimizer_state_bytes, batch=args.batch, steps=args.steps,
                            seconds_per_step=round(step_s, 3), samples_per_second=round(args.batch / step_s, 2),
                            tokens_mean=round(sum(tokens) / len(tokens), 1), tokens_max=max(tokens),
                            saved_for_backward_gb=round(saved.bytes / 1e9, 4))
        print(name, stages[name], flush=True)
        save(record, args.out)
        del trainable, result
    print(json.dumps(record, indent=1))
    save(record, args.out)
    return record


def compare_with_reference(model, pt, chunk: int) -> dict:
    """Fast path-patching effects against the one-forward-per-sender reference on the same pairs."""
    from vru_lens.patching.path import path_patch_logits, path_patch_logits_reference

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t0 = time.perf_counter()
        fast = path_patch_logits(model, pt, batch_size=chunk, progress=False)
        t_fast = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref = path_patch_logits_reference(model, pt, batch_size=chunk, progress=False)
    t_ref = time.perf_counter() - t0
    effect_ref, effect_fast = ref.drop.flatten(), fast.drop.flatten()  # mean over pairs of clean - patched
    top_ref = set(effect_ref.abs().topk(10).indices.tolist())
    top_fast = set(effect_fast.abs().topk(10).indices.tolist())
    return {"pairs": len(pt), "fast_path": not any("fast path unavailable" in str(w.message) for w in caught),
            "max_abs_diff": float((fast.effects - ref.effects).abs().max()), "effect_std": float(effect_ref.std()),
            "effect_max_abs": float(effect_ref.abs().max()), "top10_overlap": len(top_ref & top_fast),
            "seconds_fast": round(t_fast, 2), "seconds_reference": round(t_ref, 2)}


def save(record: dict, out: str | None) -> None:
    """Write what is measured so far (a long run that dies later keeps its earlier stages)."""
    if out:
        write_json_atomic(out, record)


if __name__ == "__main__":
    main()
