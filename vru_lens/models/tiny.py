"""Tiny randomly initialised models and an offline tokenizer, for tests and quick runs.

The tokenizer is a byte-level BPE trained in-process on VRUBench text, so it
needs no hub and covers every word the benchmark uses. Models are built from a
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
def tiny_tokenizer(vocab_size: int = 512):
    """Byte-level BPE fitted on generated stories; deterministic."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from ..bench import ROOMS, make_items
    from ..bench.templates import CHAT_INSTRUCTION

    texts = [it["prompt"] + "\nAnswer: " + " ".join(it["candidates"]) for it in make_items(400, seed=12345)]
    texts += [" ".join(objs) for objs in ROOMS.values()] + [CHAT_INSTRUCTION, "unknown"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<bos>", "<eos>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    from tokenizers.processors import TemplateProcessing

    tok.post_processor = TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 0)])
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
