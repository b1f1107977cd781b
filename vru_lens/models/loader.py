"""``load_model``: one call from a name, hub id or folder to a hooked TransformerBridge.

The bridge runs in TransformerLens compatibility mode (HookedTransformer hook
names, W_Q/W_K/W_V/W_O views) without weight processing by default, so its
logits equal the transformers model's and its weights are the checkpoint's own
(head deltas merge into real weights). Pass ``processing=True`` for folded
LayerNorm and centred weights, as HookedTransformer had.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path

from .embedded import EMBEDDED, converted_dir
from .organisms import ORGANISMS, organism_dir
from .kv_cache import attach_kv_cache
from .tiny import TINY_NAMES, tiny_hf_model, tiny_tokenizer

DEFAULT_MODEL = "smollm2-135m-instruct"


def known_models() -> list[str]:
    return [*EMBEDDED, *ORGANISMS, *TINY_NAMES]


def pick_device(device=None) -> str:
    import torch

    if device is not None:
        return str(device)
    return "cuda" if torch.cuda.is_available() else "cpu"


def _resolve_dtype(dtype):
    import torch

    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype or torch.float32
    names = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
             "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if dtype not in names:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {', '.join(names)}")
    return names[dtype]


def _hf_model_class(config):
    """Causal LM for text models; the image-text class for VLMs (used text-only)."""
    import transformers as tf

    if hasattr(config, "vision_config"):
        return tf.AutoModelForImageTextToText
    return tf.AutoModelForCausalLM


def load_hf(name: str, dtype=None, trust_remote_code: bool = False):
    """(transformers model, tokenizer) for any name ``load_model`` accepts."""
    import transformers as tf

    dtype = _resolve_dtype(dtype)
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"the model name is empty ({name!r}); Known names: {', '.join(known_models())}, "
                         "or a Hugging Face id (org/name) or a local folder")
    if name in TINY_NAMES:
        return tiny_hf_model(name).to(dtype), tiny_tokenizer()
    if name in EMBEDDED:
        source = str(converted_dir(name))
    elif name in ORGANISMS:
        source = str(organism_dir(name))
    elif Path(name).expanduser().is_dir():
        source = str(Path(name).expanduser())
    elif name.startswith((".", "/", "~")) or name.count("/") > 1 or Path(name).exists():
        raise ValueError(f"no model folder at {name} ({Path(name).expanduser().resolve()}); pass a folder with "
                         "config.json and weights, a Hugging Face id (org/name) or a known name")
    elif "/" in name:
        source = name  # a hub id: loads wherever the weights are cached or reachable
    else:
        raise ValueError(
            f"unknown model {name!r}. Known names: {', '.join(known_models())}. "
            "Or pass a Hugging Face id (org/name) or a local folder with config.json and weights."
        )
    try:
        config = tf.AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
        cls = _hf_model_class(config)
        model = cls.from_pretrained(source, dtype=dtype, trust_remote_code=trust_remote_code)
        tokenizer = tf.AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except OSError as err:
        raise OSError(f"could not load {name!r}: {err}\nThis machine may have no copy of it; pass a local folder instead.") from err
    if not getattr(model.config, "architectures", None):
        model.config.architectures = [type(model).__name__]
    return model.eval(), tokenizer


@contextlib.contextmanager
def _quiet_text_only_boot():
    """Boot without the bridge's image/audio processor step.

    vru-lens uses vision-language models text-only; that step would fetch a
    processor from the hub and, failing, pip-install torchvision (which drags
    in another torch build). Warnings and INFO logs are silenced too.
    ``load_modality_processor`` is TransformerLens's module-level step (4.x); where a version lacks it,
    nothing is replaced and the boot runs as that version does (for a text-only model the same).
    """
    from transformer_lens.model_bridge.sources.transformers import source

    original = getattr(source, "load_modality_processor", None)
    if callable(original):
        source.load_modality_processor = lambda *args, **kwargs: None
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        if callable(original):
            source.load_modality_processor = original
        root.setLevel(level)


def load_model(name: str = DEFAULT_MODEL, device=None, dtype=None, processing: bool = False,
               trust_remote_code: bool = False, deltas=None):
    """A TransformerBridge in compatibility mode, its tokenizer at ``.tokenizer``.

    ``name``: an embedded model (``smollm2-135m-instruct``, ``gemma-3-270m``, the Qwen2.5-Coder
    0.5B/1.5B instruct models, downloaded on first use),
    a tiny test model (``tiny-llama``, ``tiny-gpt2``, ``tiny-llava``), a
    Hugging Face id or a local folder. Runs on CUDA when available.
    ``deltas``: a head-delta file from ``vru-lens finetune --out``, merged into the
    weights (the fine-tuned model, for every tool; ``bridge.vru_deltas.unmerge(bridge)``
    gives the base model back).
    """
    dtype = _resolve_dtype(dtype)
    hf_model, tokenizer = load_hf(name, dtype, trust_remote_code)
    bridge = bridge_from_hf(hf_model, tokenizer, name, device, dtype, processing, trust_remote_code)
    if deltas:
        from ..finetune.adapters import merge_deltas  # the file format lives with the adapters

        bridge.vru_deltas = merge_deltas(bridge, deltas)
    return bridge


def bridge_from_hf(hf_model, tokenizer, name: str, device=None, dtype=None, processing: bool = False,
                   trust_remote_code: bool = False):
    """Boot the bridge around a transformers model already in memory (its weights are wrapped, not copied)."""
    from transformer_lens.model_bridge import TransformerBridge

    dtype = _resolve_dtype(dtype)
    device = pick_device(device)
    hf_model.to(device)  # boot_transformers records a given model's device in cfg but does not move it
    if not getattr(hf_model.config, "architectures", None):
        hf_model.config.architectures = [type(hf_model).__name__]
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    with _quiet_text_only_boot():
        bridge = TransformerBridge.boot_transformers(
            name, hf_model=hf_model, tokenizer=tokenizer, device=device, dtype=dtype,
            trust_remote_code=trust_remote_code,
        )
        bridge.enable_compatibility_mode(disable_warnings=True, no_processing=not processing)
    bridge.eval()
    # The bridge configures the tokenizer as TransformerLens does: it prepends BOS to every
    # plain prompt (chat prompts bring their own special tokens). All stages tokenize with it.
    bridge.tokenizer = tokenizer
    bridge.vru_name = name
    attach_kv_cache(bridge)  # cached generation checked exact on these library versions (see kv_cache.py)
    return bridge
