"""Baselines trained by the same loop on the same data: full fine-tuning, other heads, LoRA.

* ``FullFinetune(model)``: every weight of the wrapped transformers model.
* other heads for a ``HeadDeltas`` (``vru_lens.heads.random_heads`` / ``bottom_heads``) with the same
  components: exactly the same number of trainable parameters as the top-k run.
* ``LoraAdapters(model, budget=...)``: PEFT LoRA on the q/k/v/o projections of every
  layer, its rank chosen so that its parameter count is as close as possible to ``budget``.
"""

from __future__ import annotations

import contextlib

import torch

from .adapters import projection


class _NamedParameters:
    """The trainable-set interface of ``train`` over a list of named parameters."""

    named: list

    def trainable_parameters(self):
        return [p for _, p in self.named]

    def trainable_state(self):
        return {n: p.detach().clone() for n, p in self.named}

    def load_trainable_state(self, state):
        with torch.no_grad():
            for n, p in self.named:
                p.copy_(state[n])

    def num_parameters(self) -> int:
        return sum(p.numel() for _, p in self.named)


class FullFinetune(_NamedParameters):
    """All weights trainable (the reference for memory and forgetting).

    Like ``HeadDeltas.applied``, the tuned weights are in the model only inside
    ``with full.active(model):``; on exit the model's own weights are copied back
    (exactly) and the tuned ones kept here. The price: one copy of the weights
    while active.
    """

    def __init__(self, model):
        self.module = model.original_model
        self.named = [(n, p) for n, p in self.module.named_parameters()]
        self._tuned: dict | None = None  # the tuned weights while not active (None: not tuned yet)
        self._own: dict | None = None  # the model's own weights while active

    def trainable_state(self):
        if self._own is None and self._tuned is not None:
            return {n: t.clone() for n, t in self._tuned.items()}
        return super().trainable_state()

    def load_trainable_state(self, state):
        if self._own is None:  # not active: keep it for the next activation
            self._tuned = {n: state[n].detach().clone() for n, _ in self.named}
        else:
            super().load_trainable_state(state)

    @contextlib.contextmanager
    def active(self, model):
        """The tuned weights in the model inside the block; its own weights back, bit for bit, on exit."""
        if self._own is not None:
            raise RuntimeError("already active")
        self._own = {n: p.detach().clone() for n, p in self.named}
        if self._tuned is not None:
            super().load_trainable_state(self._tuned)
        self._tuned = None
        try:
            yield self
        finally:
            tuned = {}
            with torch.no_grad():
                for n, p in self.named:  # one weight at a time: at most one extra copy of the model
                    tuned[n] = p.detach().clone()
                    p.copy_(self._own.pop(n))
            self._tuned, self._own = tuned, None

    def describe(self) -> dict:
        return {"method": "full", "trainable_params": self.num_parameters()}




class LoraAdapters(_NamedParameters):
    """PEFT LoRA on q/k/v/o of every layer of the bridge's wrapped model, in it only while ``active``."""

    def __init__(self, model, rank: int | None = None, budget: int | None = None, alpha: float | None = None,
                 kinds: str = "qkvo", seed: int = 0):
        from peft import LoraConfig, inject_adapter_in_model

        hf = model.original_model
        names = {id(m): n for n, m in hf.named_modules()}
        targets = [names[id(projection(model, l, kind))] for l in range(model.cfg.n_layers) for kind in kinds]
        per_rank = 0
        for l in range(model.cfg.n_layers):
            for kind in kinds:
                w = projection(model, l, kind).weight
                per_rank += w.shape[0] + w.shape[1]
        if rank is None:
            if budget is None:
                raise ValueError("give rank or budget")
            rank = max(1, round(budget / per_rank))
        self.rank, self.alpha = rank, alpha if alpha is not None else 2.0 * rank
        torch.manual_seed(seed)
        config = LoraConfig(r=rank, lora_alpha=self.alpha, lora_dropout=0.0, target_modules=targets, bias="none")
        flags = [(p, p.requires_grad) for p in hf.parameters()]
        inject_adapter_in_model(config, hf)
        for p, flag in flags:  # PEFT freezes every other weight of the model: a later full fine-tuning would
            p.requires_grad_(flag)  # find nothing to train. The adapters are the only change it may make.
        self.hf = hf
        self.named = [(n, p) for n, p in hf.named_parameters() if "lora_" in n]
        for _, p in self.named:
            p.requires_grad_(True)
        # (parent module, attribute, LoRA layer): the layers are swapped in only while active
        self._swaps = []
        for name in targets:
            parent, _, attr = name.rpartition(".")
            parent = hf.get_submodule(parent)
            self._swaps.append((parent, attr, getattr(parent, attr)))
        self._on = True
        self._swap(False)

    def _swap(self, on: bool) -> None:
        for parent, attr, lora in self._swaps:
            setattr(parent, attr, lora if on else lora.get_base_layer())
        self._on = on

    @contextlib.contextmanager
    def active(self, model):
        """The LoRA layers in the model inside the block; the model's own projections back on exit."""
        if self._on:
            raise RuntimeError("already active")
        self._swap(True)
        try:
            yield self
        finally:
            self._swap(False)

    def describe(self) -> dict:
        return {"method": "lora", "rank": self.rank, "alpha": self.alpha, "trainable_params": self.num_parameters()}
