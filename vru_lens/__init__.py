"""vru-lens: viewpoint-rotation understanding in language models, on TransformerLens.

Heavy modules load on first use, so `import vru_lens` and the CLI's --help stay fast.
Each stage is a module named for what it does: `vru_lens.evaluate.evaluate`, `vru_lens.probe`, ...
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "load_model": ("vru_lens.models", "load_model"),
    "tokenize_pairs": ("vru_lens.tokens", "tokenize_pairs"),
}


def __getattr__(name):
    if name in _LAZY:
        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'vru_lens' has no attribute {name!r}")


__all__ = [*_LAZY]
