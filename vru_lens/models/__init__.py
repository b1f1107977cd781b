"""Loading models: embedded offline models, hub ids and folders, tiny test models."""

from .embedded import EMBEDDED, cache_dir, converted_dir
from .loader import DEFAULT_MODEL, known_models, load_hf, load_model, pick_device
from .tiny import TINY_NAMES, tiny_hf_model, tiny_tokenizer

__all__ = ["EMBEDDED", "cache_dir", "converted_dir", "DEFAULT_MODEL", "known_models", "load_hf", "load_model",
           "pick_device", "TINY_NAMES", "tiny_hf_model", "tiny_tokenizer"]
