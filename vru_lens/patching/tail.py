"""Re-run only what a head patch can change: layers >= l, positions >= the first differing token.

A clean prompt and its corrupted twin share every token before the first one
that differs (``p0``), so with causal attention every activation before ``p0``
is identical in both runs and patching "all positions" only changes positions
``>= p0``. ``TailRunner`` records one run of the *base* prompt (the one patched
into) and can then run any batch of patched variants

- from block ``l`` on, starting from the recorded residual stream there
  (TransformerBridge's own ``start_at_layer`` still executes blocks ``0..l-1``
  internally, so we call the bridge's blocks directly instead);
- on the tail positions ``[p0_i, len_i)`` of each pair only, the keys and
  values of positions ``< p0_i`` coming from the recorded run through a
  stand-in cache object handed to each attention component under the keyword
  it reads the KV cache from (``kv_cache.CACHE_KWARG``). Tails of different
  pairs are left-aligned in one batch with an explicit attention mask, and the
  rotary tables are gathered per row;
- reading only the final residual, so the caller unembeds two answer columns.

Hooks registered on the bridge (``model.hooks(...)``) fire as usual inside
the blocks, so a patch is just a hook on the tail activations.

That hand-off is not an API either library promises, so every runner checks
it on its own batch: replaying the last block for the row with the longest
reused prefix must give the recorded output. If it does not,
``FastPathUnsupported`` is raised and callers fall back to exact paths
(whole-sequence replay, then the plain reference) with one warning
(``warn_fallback``) naming the installed versions.
"""

from __future__ import annotations

import contextlib
import functools
import inspect

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ..models.kv_cache import CACHE_KWARG, attention_modules, versions
from .fallback import FastPathUnsupported, tolerance

try:
    from transformers.cache_utils import Cache as _HFCache
except Exception:  # pragma: no cover
    _HFCache = ()


def _no_model_cache(value):
    """The model's own cache object is dropped: the runner hands attention its stand-in instead."""
    return None if isinstance(value, _HFCache) else value


def sliding_window(model) -> int | None:
    """The attention window of the model's sliding-window layers (Gemma 2/3, Mistral), or None."""
    cfg = getattr(getattr(model, "original_model", None), "config", None)
    cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    window = getattr(cfg, "sliding_window", None)
    if not window or getattr(cfg, "use_sliding_window", True) is False:
        return None
    types = getattr(cfg, "layer_types", None)
    return None if types is not None and "sliding_attention" not in types else int(window)


class _Recorder:
    """Stands in for an HF cache during the base run: keeps each block's keys/values."""

    def __init__(self, store: dict, layer: int):
        self.store, self.layer = store, layer

    def update(self, k, v, *args, **kwargs):
        self.store[self.layer] = (k, v)
        return k, v

    def get_seq_length(self, *args, **kwargs):
        return 0


class _PrefixCache:
    """Stands in for an HF cache during a tail run: prepends the recorded prefix keys/values."""

    def __init__(self, k: Tensor, v: Tensor):
        self.k, self.v = k, v

    def update(self, k, v, *args, **kwargs):
        if self.k.shape[-2] == 0:
            return k, v
        return torch.cat([self.k, k], dim=-2), torch.cat([self.v, v], dim=-2)

    def get_seq_length(self, *args, **kwargs):
        return self.k.shape[-2]


def first_diff(clean: Int[Tensor, "pair pos"], corrupt: Int[Tensor, "pair pos"], lengths: Int[Tensor, "pair"]) -> Int[Tensor, "pair"]:
    """First position where the two prompts of each pair differ (the final position if they never do)."""
    diff = clean != corrupt
    pos = torch.arange(clean.shape[1]).expand_as(diff)
    first = torch.where(diff, pos, clean.shape[1]).min(dim=1).values
    return torch.minimum(first, lengths - 1)


class TailRunner:
    """One recorded run of ``ids`` (a batch of pairs) that can replay its tail with patches.

    ``starts[i]`` is the first position that may change in row ``i`` (``p0``);
    ``lengths[i]`` its true length. ``record`` lists hook names whose tail
    activations to keep from this run (used as patch *sources*).
    """

    def __init__(self, model, ids: Int[Tensor, "b pos"], lengths: Int[Tensor, "b"], starts: Int[Tensor, "b"],
                 record: tuple[str, ...] = ()):
        self.model = model
        device = model.cfg.device
        self.L = model.cfg.n_layers
        lengths, starts = lengths.cpu(), starts.cpu()
        S = int(lengths.max())
        window = sliding_window(model)
        if window is not None and S > window:  # the replay's mask is full causal; the last-block check may not see it
            raise FastPathUnsupported(f"sliding-window attention ({window} tokens) over sequences of {S} tokens is not "
                                  "replayed")
        ids = ids[:, :S].to(device)
        b = ids.shape[0]
        self.b = b
        self.P = int(starts.max())
        self.T = int((lengths - starts).max())
        t = torch.arange(self.T)
        self.index = torch.clamp(starts[:, None] + t[None], max=S - 1).to(device)  # [b, T] absolute positions
        self.final_rel = (lengths - 1 - starts).to(device)
        self.starts, self.lengths = starts.to(device), lengths.to(device)
        # tail mask [b, 1, T, P + T]: prefix slot k < p0_i, then causal within the tail
        k = torch.arange(self.P + self.T)
        prefix_ok = k[None, None, :] < starts[:, None, None]
        tail_ok = (k[None, None, :] >= self.P) & ((k[None, None, :] - self.P) <= t[None, :, None])
        self.mask = (prefix_ok | tail_ok)[:, None].to(device)

        self.resid: dict[int, Tensor] = {}
        self.calls: dict[int, dict] = {}
        kv: dict[int, tuple] = {}
        self.acts: dict[str, Tensor] = {}
        handles = []
        for layer, block in enumerate(model.blocks):
            sig = inspect.signature(block.original_component.forward)

            def pre(mod, args, kwargs, layer=layer, sig=sig):
                call = dict(sig.bind_partial(*args, **kwargs).arguments)
                for pname, param in sig.parameters.items():
                    if param.kind is inspect.Parameter.VAR_KEYWORD:
                        call.update(call.pop(pname, None) or {})
                first = next(iter(sig.parameters))
                self.resid[layer] = self._gather(call.pop(first))
                self.calls[layer] = {k: _no_model_cache(v) for k, v in call.items()}
                return tuple(map(_no_model_cache, args)), {k: _no_model_cache(v) for k, v in kwargs.items()}

            handles.append(block.register_forward_pre_hook(pre, with_kwargs=True))
        last = model.blocks[self.L - 1]
        handles.append(last.register_forward_hook(self._keep_last_out))
        fwd = [(name, self._keep(name)) for name in record]
        try:
            with self._caches({layer: _Recorder(kv, layer) for layer in range(self.L)}), model.hooks(fwd_hooks=fwd):
                logits = model(ids)
        finally:
            for h in handles:
                h.remove()
        self.final_logits = logits[torch.arange(b, device=device), self.lengths - 1]
        self.first_arg = {layer: next(iter(inspect.signature(block.original_component.forward).parameters))
                          for layer, block in enumerate(model.blocks)}
        self.prefix = {}
        for layer, (k_, v_) in kv.items():
            self.prefix[layer] = (self._prefix(k_), self._prefix(v_))
        self._check_seam()

    # -- recording helpers -------------------------------------------------
    def _gather(self, x: Tensor) -> Tensor:
        """Tail rows of a [b, pos, ...] activation: [b, T, ...]."""
        idx = self.index.view(self.b, self.T, *([1] * (x.ndim - 2))).expand(self.b, self.T, *x.shape[2:])
        return x.gather(1, idx)

    def _prefix(self, x: Tensor) -> Tensor:
        """Prefix keys/values [b, kv, P, d], zero past each row's p0 (masked anyway)."""
        x = x[..., : self.P, :]
        if x.shape[-2] < self.P:
            x = torch.nn.functional.pad(x, (0, 0, 0, self.P - x.shape[-2]))
        keep = torch.arange(self.P, device=x.device)[None, :] < self.starts[:, None]
        return x * keep[:, None, :, None].to(x.dtype)

    def _keep_last_out(self, module, args, out):
        out = out[0] if isinstance(out, (tuple, list)) else out
        self.last_out = self._gather(out.detach())

    def _check_seam(self) -> None:
        """Replay the last block for the row reusing the longest prefix; it must match the recorded run.

        Costs one block on one row. Catches both a cache hand-off that is
        ignored and block inputs (mask, rotary tables) that no longer replay.
        """
        row = self.starts.argmax().view(1)
        if self.P == 0 or len(self.prefix) == self.L:
            got = self.run(self.L - 1, row)
            want = self.last_out[row, self.final_rel[row]]
            atol, rtol = tolerance(got.dtype)
            if torch.allclose(got.float(), want.float(), atol=atol, rtol=rtol):
                return
        raise FastPathUnsupported(f"replaying a block with reused prefix keys/values does not reproduce the "
                              f"recorded run with {versions()}")

    @contextlib.contextmanager
    def _caches(self, caches: dict):
        """Hand each attention component its stand-in cache under the keyword it reads."""
        def inject(module, args, kwargs, layer):
            if layer in caches:
                kwargs = {**kwargs, CACHE_KWARG: caches[layer]}
            return args, kwargs

        handles = [m.register_forward_pre_hook(functools.partial(inject, layer=layer), with_kwargs=True)
                   for layer, m in enumerate(attention_modules(self.model))]
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def _keep(self, name):
        def hook(act, hook):
            self.acts[name] = self._gather(act.detach())
            return act
        return hook

    # -- replay --------------------------------------------------------------
    def _call(self, layer: int, resid: Tensor, rows: Tensor) -> dict:
        call = {}
        for name, value in self.calls[layer].items():
            if name == "attention_mask":
                call[name] = self.mask[rows]
            elif name == "position_embeddings" and value is not None:
                call[name] = tuple(self._rows_gather(x, rows) for x in value)
            elif name == "position_ids" and value is not None:
                call[name] = self.index[rows]
            elif name == "cache_position":
                continue
            else:
                call[name] = value
        call[self.first_arg[layer]] = resid
        return call

    def _rows_gather(self, x: Tensor, rows: Tensor) -> Tensor:
        """Per-row tail slice of a [1 or b, pos, d] table (rotary cos/sin)."""
        x = x.expand(self.b, *x.shape[1:]) if x.shape[0] == 1 else x
        return self._gather(x)[rows]

    def run(self, start: int, rows: Int[Tensor, "n"], resid: Float[Tensor, "n T d_model"] | None = None,
            fwd_hooks=()) -> Float[Tensor, "n d_model"]:
        """Final-position residual after blocks ``start..L-1`` for rows ``rows`` of the batch.

        ``resid`` defaults to the recorded residual entering block ``start``.
        ``fwd_hooks`` are (hook name, fn) pairs active during the replay; they see
        tail-shaped activations [n, T, ...].
        """
        rows = rows.to(self.index.device)
        if resid is None:
            resid = self.resid[start][rows]
        caches = {layer: _PrefixCache(k[rows], v[rows]) for layer, (k, v) in self.prefix.items()}
        with self._caches(caches), self.model.hooks(fwd_hooks=list(fwd_hooks)):
            for layer in range(start, self.L):
                out = self.model.blocks[layer](**self._call(layer, resid, rows))
                resid = out[0] if isinstance(out, (tuple, list)) else out
        return resid[torch.arange(resid.shape[0], device=resid.device), self.final_rel[rows]]
