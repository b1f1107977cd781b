"""Tiny randomly initialised models and an offline tokenizer, for tests and quick runs.

The tokenizer is a 512-token byte-level BPE shipped as ``tiny_tokenizer.json``: it
needs no hub and no training, and a change to the benchmark's wording cannot change
the tiny models' tokens (bytes cover any text; BenchConfig's words are mostly single
merges, since the file was fitted once on generated VRUBench stories). Models are built from a
config: a Llama-like with grouped-query attention, a GPT-2-like, and a
LLaVA-like vision-language model whose language tower is Llama-like.
"""

from __future__ import annotations

from functools import lru_cache

TINY_NAMES = ("tiny-llama", "tiny-gpt2", "tiny-llava")
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@lru_cache(maxsize=1)
def tiny_tokenizer():
    """The shipped byte-level BPE (<bos>, <eos>, <pad> are ids 0-2) with a minimal chat template."""
    from pathlib import Path

    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer.from_file(str(Path(__file__).with_name("tiny_tokenizer.json")))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")
    fast.chat_template = CHAT_TEMPLATE
    fast.init_kwargs.update(name_or_path="vru-lens-tiny", add_bos_token=True)  # the bridge must not reload it
    return fast


def tiny_hf_model(name: str, seed: int = 0, n_layers: int = 3, vocab_size: int | None = None):
    """A randomly initialised transformers model of a few layers (fp32, eval mode)."""
    import torch
    import transformers as tf

    if name not in TINY_NAMES:
        raise ValueError(f"unknown tiny model {name!r}; known: {', '.join(TINY_NAMES)}")
    vocab = vocab_size or len(tiny_tokenizer())
    torch.manual_seed(seed)
    llama = dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=n_layers,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                 bos_token_id=0, eos_token_id=1, pad_token_id=2, tie_word_embeddings=False)
    if name == "tiny-llama":
        model = tf.LlamaForCausalLM(tf.LlamaConfig(**llama))
    elif name == "tiny-gpt2":
        model = tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=vocab, n_embd=64, n_layer=n_layers, n_head=4,
                                                 n_positions=512, bos_token_id=0, eos_token_id=1))
    else:
        vision = tf.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                     num_attention_heads=2, image_size=32, patch_size=16)
        config = tf.LlavaConfig(vision_config=vision, text_config=tf.LlamaConfig(**llama),
                                image_token_index=vocab - 1)
        model = tf.LlavaForConditionalGeneration(config)
    model.config.architectures = [type(model).__name__]
    return model.eval()
