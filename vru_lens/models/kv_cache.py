"""The KV-cache hand-off from transformers' decoder layers to the bridge's attention, checked at run time.

TransformerLens 4.3's attention components read the cache from the
``past_key_values`` keyword (``CACHE_KWARG``). transformers 5.24 renamed the
keyword its decoder layers pass on to ``cache``, so with that pair the
bridge's attention never sees the cache: cached generation attends to the
newest token only and silently produces other text. ``attach_kv_cache``
forwards ``cache`` to ``CACHE_KWARG`` on every attention component, then
checks on a short prompt that one cached decoding step gives the uncached
logits. If it does not, the forwarding is removed, one warning names the
installed versions, and ``kv_cache_ok(model)`` is False: callers then
generate without a cache (slower, same numbers).
"""

from __future__ import annotations

import inspect
import warnings
from importlib import metadata

import torch

CACHE_KWARG = "past_key_values"  # what the bridge's attention components read
RENAMED = "cache"  # what transformers >= 5.24 decoder layers pass


def versions() -> str:
    """Installed versions of the two libraries whose internals meet here."""
    found = []
    for dist in ("transformers", "transformer-lens", "torch"):
        try:
            found.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:  # pragma: no cover
            found.append(f"{dist} (not installed)")
    return ", ".join(found)


def attention_modules(model) -> list[torch.nn.Module]:
    """The bridge's attention component of every block."""
    return [block.attn for block in model.blocks]


def forward_renamed(module, args, kwargs):
    if kwargs.get(CACHE_KWARG) is None and kwargs.get(RENAMED) is not None:
        kwargs = {**kwargs, CACHE_KWARG: kwargs[RENAMED]}
    return args, kwargs


def cache_keyword(hf_model) -> str:
    params = inspect.signature(hf_model.forward).parameters
    return RENAMED if RENAMED in params else CACHE_KWARG


@torch.inference_mode()
def cached_step_matches(model, n_tokens: int = 6) -> bool:
    """One cached decoding step of the wrapped transformers model equals its uncached forward."""
    hf = model.original_model
    vocab = int(model.cfg.d_vocab)
    ids = (torch.arange(n_tokens) * 7919 % max(vocab - 1, 1) + 1)[None].to(model.cfg.device)
    full = hf(input_ids=ids).logits[:, -1].float()
    first = hf(input_ids=ids[:, :-1], use_cache=True)
    cache = getattr(first, "past_key_values", None) or getattr(first, RENAMED, None)
    if cache is None:
        return False
    step = hf(input_ids=ids[:, -1:], use_cache=True, **{cache_keyword(hf): cache}).logits[:, -1].float()
    if model.cfg.dtype in (torch.float32, torch.float64):
        return bool(torch.allclose(step, full, atol=1e-3, rtol=1e-3))
    return within_rounding(float((step - full).abs().max()), float(full.abs().max()))


def within_rounding(worst: float, scale: float) -> bool:
    """Whether a half-precision cached pass that is off by ``worst`` from the uncached one (logits up to
    ``scale``) differs by rounding only. The cached pass sums in another order, so every logit moves by
    rounding that grows with the logits' range (Qwen2.5-1.5B in bf16: 0.19 at a range of 12); a cache the
    attention ignores moves them by about the whole range (17 there), so 5% of the range separates the two."""
    return worst <= 5e-2 * (1 + scale)


def attach_kv_cache(model) -> bool:
    """Make cached generation correct on this bridge, or say it cannot be (see module doc)."""
    if getattr(model, "_vru_kv_handles", None) is None:
        model._vru_kv_handles = [m.register_forward_pre_hook(forward_renamed, with_kwargs=True)
                                 for m in attention_modules(model)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the deprecated-keyword notice of transformers
        ok = cached_step_matches(model)
    if not ok:
        for handle in model._vru_kv_handles:
            handle.remove()
        model._vru_kv_handles = []
        warnings.warn(f"the bridge's attention does not use the transformers KV cache with {versions()}; "
                      "generation runs without a cache (slower, same results). Upgrade or pin these "
                      "libraries to a pair `make test` passes with.", RuntimeWarning, stacklevel=2)
    model.vru_kv_cache_ok = ok
    return ok


def kv_cache_ok(model) -> bool:
    """Whether cached generation is known to be exact on this model (checked once, then remembered)."""
    if not hasattr(model, "vru_kv_cache_ok"):
        attach_kv_cache(model)
    return model.vru_kv_cache_ok
