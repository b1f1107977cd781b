"""Head-delta adapters: trainable deltas for the W_Q/W_K/W_V/W_O slices of chosen heads only.

A ``HeadDeltas`` holds one small parameter per chosen slice and nothing else,
so an optimizer over it keeps state for those slices only. While applied
(``with deltas.applied(model):``) forward hooks on the model's q/k/v/o
projection modules add each slice's contribution to the projection's output;
the model's own weights are never written, so every weight stays bit-identical.
``merge()`` writes the deltas into the weights (keeping an exact copy of the
overwritten slices) and ``unmerge()`` puts those copies back.

Slices, in the transformers ``nn.Linear`` convention (weight ``[out, in]``):

* ``q`` of head h: rows ``h*d_head:(h+1)*d_head`` of the query projection; delta ``[d_head, d_model]``.
* ``o`` of head h: columns ``h*d_head:(h+1)*d_head`` of the output projection; delta ``[d_model, d_head]``.
* ``k``/``v`` of key-value group g (``components="qkvo"``): rows ``g*d_head:(g+1)*d_head`` of the
  key/value projection. Under grouped-query attention a K/V slice is shared by the query heads
  ``g*r .. g*r+r-1`` (r = n_heads / n_kv_heads); ``kv_sharing`` records them.

Supported: any model whose bridge exposes per-layer ``attn.q/k/v/o`` projection modules
(``nn.Linear`` or GPT-2's transposed ``Conv1D``). For GPT-2 the bridge splits the fused
``c_attn`` Conv1D into q/k/v Linear modules that the forward pass uses (today their weights are
transposed views of ``c_attn``'s storage, so writing them writes ``c_attn``); if a bridge ever
holds separate copies, merge mirrors the change into the transposed ``c_attn`` weight.
Biases are not adapted.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..heads import check_heads, geometry, n_heads_of, top_heads

COMPONENTS = ("qo", "qkvo")
SUPPORTED = "Llama/Mistral/Qwen2/Gemma-style attention (q_proj/k_proj/v_proj/o_proj) and GPT-2 (c_attn/c_proj)"


@dataclass(frozen=True)
class Slice:
    """One trainable slice: ``kind`` in q/k/v/o, ``index`` = head (q, o) or KV group (k, v)."""

    layer: int
    kind: str
    index: int

    @property
    def key(self) -> str:
        tag = "g" if self.kind in "kv" else "h"
        return f"l{self.layer}_{tag}{self.index}_{self.kind}"


def _is_conv1d(module) -> bool:
    return type(module).__name__ == "Conv1D"


def projection(model, layer: int, kind: str):
    """The module whose forward computes the q/k/v/o projection of ``layer`` in this model."""
    try:
        attn = model.blocks[layer].attn
        mod = getattr(attn, kind).original_component
    except (AttributeError, IndexError, TypeError) as err:
        raise NotImplementedError(
            f"cannot find the {kind!r} projection of layer {layer} in {type(model).__name__}: "
            f"head deltas support {SUPPORTED}, loaded through vru_lens.models.load_model"
        ) from err
    if mod is None or not hasattr(mod, "weight") or mod.weight.dim() != 2:
        raise NotImplementedError(f"layer {layer} {kind!r} projection is {type(mod).__name__}; supported: {SUPPORTED}")
    return mod


def _fused_qkv(model, layer: int):
    """GPT-2's fused c_attn Conv1D ([d_model, 3*d_model]) when the bridge keeps one, else None."""
    qkv = getattr(model.blocks[layer].attn, "qkv", None)
    mod = getattr(qkv, "original_component", None) if qkv is not None else None
    return mod if mod is not None and _is_conv1d(mod) else None


class HeadDeltas(nn.Module):
    """Trainable deltas for the W_Q/W_O (and optionally W_K/W_V) slices of chosen heads."""

    def __init__(self, model=None, heads=(), components: str = "qo", *, geom: dict | None = None,
                 model_name: str | None = None, dtype=None, device=None):
        super().__init__()
        if components not in COMPONENTS:
            raise ValueError(f"components must be one of {COMPONENTS}, got {components!r}")
        if model is None and geom is None:
            raise ValueError("pass the model (or its geometry) the deltas are for")
        self.geom = dict(geom or geometry(model))
        self.components = components
        self.model_name = model_name if model_name is not None else getattr(model, "vru_name", None)
        g = self.geom
        heads = sorted(check_heads(heads, g["n_layers"], g["n_heads"]))
        if not heads:
            raise ValueError("choose at least one head (layer, head)")
        self.heads = heads
        if model is not None:
            w = projection(model, 0, "q").weight
            dtype, device = dtype or w.dtype, device or w.device
            for l in sorted({l for l, _ in heads}):
                for kind in self.kinds:
                    projection(model, l, kind)  # fail early on unsupported architectures
        self.slices = self._make_slices()
        d, dh = g["d_model"], g["d_head"]
        self.deltas = nn.ParameterDict({
            s.key: nn.Parameter(torch.zeros((d, dh) if s.kind == "o" else (dh, d), dtype=dtype or torch.float32,
                                            device=device))
            for s in self.slices
        })
        self._handles: list = []
        self._backup: dict | None = None  # exact copies of the slices merge() overwrote

    # ---------------------------------------------------------------- description
    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(self.components)

    @property
    def group_size(self) -> int:
        return self.geom["n_heads"] // self.geom["n_kv_heads"]

    def kv_group(self, head: int) -> int:
        return head // self.group_size

    def _make_slices(self) -> list[Slice]:
        out = []
        for l, h in self.heads:
            out += [Slice(l, "q", h), Slice(l, "o", h)]
        if "k" in self.components:
            for l, g in sorted({(l, self.kv_group(h)) for l, h in self.heads}):
                out += [Slice(l, "k", g), Slice(l, "v", g)]
        return out

    @property
    def kv_sharing(self) -> list[dict]:
        """For each trained K/V slice: the query heads that read it, and which of them were chosen."""
        if "k" not in self.components:
            return []
        r = self.group_size
        out = []
        for l, g in sorted({(s.layer, s.index) for s in self.slices if s.kind == "k"}):
            sharing = list(range(g * r, (g + 1) * r))
            out.append({"layer": l, "kv_group": g, "query_heads": sharing,
                        "chosen": [h for h in sharing if (l, h) in self.heads]})
        return out

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.deltas.values())

    def describe(self) -> dict:
        return {"model": self.model_name, "heads": [list(h) for h in self.heads], "components": self.components,
                "geometry": self.geom, "kv_sharing": self.kv_sharing, "trainable_params": self.num_parameters()}

    # ---------------------------------------------------------------- trainable protocol (shared with baselines)
    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self.deltas.values())

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.deltas.items()}

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        missing = set(self.deltas) ^ set(state)
        if missing:
            raise KeyError(f"delta state does not match these slices: {sorted(missing)[:6]}")
        with torch.no_grad():
            for k, p in self.deltas.items():
                p.copy_(state[k])

    def active(self, model):
        return self.applied(model)

    # ---------------------------------------------------------------- hooks
    def _by_module(self) -> dict[tuple[int, str], list[Slice]]:
        groups: dict[tuple[int, str], list[Slice]] = {}
        for s in self.slices:
            groups.setdefault((s.layer, s.kind), []).append(s)
        return groups

    def _hook(self, kind: str, slices: list[Slice], conv: bool):
        dh = self.geom["d_head"]
        idx = torch.cat([torch.arange(s.index * dh, (s.index + 1) * dh) for s in slices])
        keys = [s.key for s in slices]

        def hook(module, inputs, output):
            x = inputs[0]
            index = idx.to(x.device)
            if kind == "o":
                delta = torch.cat([self.deltas[k] for k in keys], dim=1)  # [d_model, n*dh]
                return output + x.index_select(-1, index) @ delta.T.to(x.dtype)
            delta = torch.cat([self.deltas[k] for k in keys], dim=0)  # [n*dh, d_model]
            return output.index_add(output.dim() - 1, index, x @ delta.T.to(x.dtype))

        return hook

    def attach(self, model) -> "HeadDeltas":
        if self._handles:
            raise RuntimeError("these deltas are already applied; detach() first")
        if self._backup is not None:
            raise RuntimeError("these deltas are merged into the weights; unmerge() before applying them as hooks")
        for (l, kind), slices in self._by_module().items():
            mod = projection(model, l, kind)
            self._handles.append(mod.register_forward_hook(self._hook(kind, slices, _is_conv1d(mod))))
        return self

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    @contextlib.contextmanager
    def applied(self, model):
        """Deltas on (as forward hooks) inside the block; always removed on exit."""
        self.attach(model)
        try:
            yield self
        finally:
            self.detach()

    # ---------------------------------------------------------------- merge / unmerge
    def _targets(self, model, s: Slice):
        """(weight, index expression) pairs this slice writes, with the delta laid out for each."""
        dh, d = self.geom["d_head"], self.geom["d_model"]
        rows = slice(s.index * dh, (s.index + 1) * dh)
        mod = projection(model, s.layer, s.kind)
        delta = self.deltas[s.key].detach()
        conv = _is_conv1d(mod)
        if s.kind == "o":  # Linear: W[:, cols]; Conv1D (transposed): W[rows, :]
            out = [(mod.weight, (rows, slice(None)) if conv else (slice(None), rows), delta.T if conv else delta)]
        else:  # Linear: W[rows, :]; Conv1D: W[:, cols]
            out = [(mod.weight, (slice(None), rows) if conv else (rows, slice(None)), delta.T if conv else delta)]
            fused = _fused_qkv(model, s.layer)
            shared = fused is not None and fused.weight.untyped_storage().data_ptr() == mod.weight.untyped_storage().data_ptr()
            if fused is not None and not shared:  # GPT-2: mirror into c_attn, [d_model, 3*d_model] q|k|v blocks
                off = "qkv".index(s.kind) * d
                out.append((fused.weight, (slice(None), slice(off + rows.start, off + rows.stop)), delta.T))
        return out

    @torch.no_grad()
    def merge(self, model) -> None:
        """Write the deltas into the model's weights (exactly undone by ``unmerge``)."""
        if self._handles:
            raise RuntimeError("detach the hooks before merging, or the deltas would count twice")
        if self._backup is not None:
            raise RuntimeError("already merged")
        backup = []
        for s in self.slices:
            for weight, index, delta in self._targets(model, s):
                backup.append((weight, index, weight[index].clone()))
                weight[index] += delta.to(weight.dtype)
        self._backup = backup

    @torch.no_grad()
    def unmerge(self, model=None) -> None:
        """Restore the exact weights ``merge`` overwrote."""
        if self._backup is None:
            raise RuntimeError("not merged")
        for weight, index, original in reversed(self._backup):
            weight[index] = original
        self._backup = None

    # ---------------------------------------------------------------- save / load
    def save(self, path: str | Path, train_config: dict | None = None, extra: dict | None = None) -> Path:
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"format": "vru-lens-head-deltas/1", "model": self.model_name or "", "heads": json.dumps(self.heads),
                "components": self.components, "geometry": json.dumps(self.geom),
                "kv_sharing": json.dumps(self.kv_sharing), "train_config": json.dumps(train_config or {}),
                "extra": json.dumps(extra or {}, default=str)}
        tmp = path.with_name(f".{path.name}.tmp")
        save_file({k: v.detach().contiguous().cpu() for k, v in self.deltas.items()}, str(tmp), metadata=meta)
        tmp.replace(path)
        return path

    @staticmethod
    def read_metadata(path: str | Path) -> dict:
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
        except Exception as err:  # safetensors' own error type (a truncated or foreign file)
            raise ValueError(f"{path} is not a readable safetensors file ({str(err).strip() or type(err).__name__}); "
                             "was it copied completely? write it again with `vru-lens finetune --out DIR`") from None
        if meta.get("format") != "vru-lens-head-deltas/1":
            raise ValueError(f"{path} is not a vru-lens head-delta file")
        return {"model": meta["model"] or None, "heads": [tuple(h) for h in json.loads(meta["heads"])],
                "components": meta["components"], "geometry": json.loads(meta["geometry"]),
                "kv_sharing": json.loads(meta["kv_sharing"]), "train_config": json.loads(meta["train_config"]),
                "extra": json.loads(meta.get("extra", "{}"))}

    @classmethod
    def load(cls, path: str | Path, model=None) -> "HeadDeltas":
        """Deltas saved by ``save``; with ``model`` the geometry is checked against it."""
        from safetensors.torch import load_file

        meta = cls.read_metadata(path)
        if model is not None and geometry(model) != meta["geometry"]:
            raise ValueError(f"{path} was trained for geometry {meta['geometry']}, this model has {geometry(model)}")
        out = cls(model, meta["heads"], meta["components"], geom=meta["geometry"], model_name=meta["model"])
        out.load_trainable_state(load_file(str(path)))
        out.metadata = meta
        return out


def _check_ranking(ranked_on: str | None, shape: tuple, component: str, model, allow_other_model: bool,
                   source: str) -> None:
    """Refuse a ranking of another model (by name) or another geometry, naming both, unless allowed."""
    here = getattr(model, "vru_name", None)
    want = (model.cfg.n_layers, n_heads_of(model, component))
    problems = []
    if ranked_on and here and ranked_on != here:
        problems.append(f"was made on {ranked_on}, not on {here}")
    if tuple(shape) != want:
        problems.append(f"scores {shape[0]} layers x {shape[1]} heads, and this model has {want[0]} x {want[1]}")
    if problems and not allow_other_model:
        raise ValueError(f"the ranking {source} {' and '.join(problems)}: rank this model's heads (`vru-lens "
                         f"rank-heads --model {here or 'NAME'} --out DIR`), or pass --allow-other-model "
                         "(allow_other_model=True) to use it anyway")


def resolve_heads(heads, top_k: int | None = None, model=None, allow_other_model: bool = False
                  ) -> list[tuple[int, int]]:
    """Heads from a list of (layer, head), a HeadScores, or a path to a saved ranking JSON (a HeadScores,
    a gradient ranking, or a plain list [[layer, head], ...] best first).

    With ``model``, a ranking made on another model or for another geometry is refused (naming both)
    unless ``allow_other_model``, and every head must lie inside the model. A head given as a
    non-integer, twice, or a ``top_k`` beyond the heads there is refused, never coerced."""
    source = f"in {heads}" if isinstance(heads, (str, Path)) else "given"
    if isinstance(heads, (str, Path)):
        from ..jsonio import load_json

        data = load_json(heads)
        if isinstance(data, list):
            try:
                return resolve_heads(data, top_k, model, allow_other_model)
            except ValueError as err:
                raise ValueError(f"{heads}: {err}") from None
        kind = data.get("type") if isinstance(data, dict) else None
        if kind not in ("HeadScores", "GradientHeadScores"):
            raise ValueError(f"{heads} is not a ranking (a JSON {type(data).__name__}"
                             f"{' of type ' + repr(kind) if kind else ''}): expected a saved HeadScores (`vru-lens "
                             "rank-heads --out DIR` writes DIR/ranking.json) or a JSON list [[layer, head], ...] best first")
        if kind == "GradientHeadScores":  # the stand-in ranking's earlier format (now a HeadScores)
            if top_k is None:
                raise ValueError("a ranking needs top_k")
            scores = np.asarray(data["scores"], dtype=float)
            if model is not None:
                _check_ranking(data.get("model"), scores.shape, "z", model, allow_other_model, source)
            heads = scores
        else:
            from ..patching import HeadScores  # the patching module's ranking

            try:
                heads = HeadScores.load(heads)
            except (TypeError, KeyError) as err:
                raise ValueError(f"{heads} is not a complete saved ranking ({err}); write it again with "
                                 "`vru-lens rank-heads --out DIR`") from None
    if hasattr(heads, "top") or isinstance(heads, np.ndarray):
        if top_k is None:
            raise ValueError("a ranking needs top_k")
        if model is not None and hasattr(heads, "top"):
            _check_ranking(heads.model, heads.shape, heads.component, model, allow_other_model, source)
        size = int(np.asarray(getattr(heads, "scores", heads)).size)
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= size:
            raise ValueError(f"top_k must be a whole number from 1 to the ranking's {size} heads, got {top_k!r}")
        chosen = top_heads(heads, top_k)
    else:
        chosen = check_heads(heads)
        if top_k is not None:
            if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= len(chosen):
                raise ValueError(f"top_k must be a whole number from 1 to the {len(chosen)} heads listed, got {top_k!r}")
            chosen = chosen[:top_k]
    if model is not None:
        check_heads(chosen, model.cfg.n_layers, model.cfg.n_heads)
    return chosen


DELTAS_FILE = "deltas.safetensors"  # the name `vru-lens finetune --out DIR` gives the head deltas


def merge_deltas(model, path: str | Path) -> "HeadDeltas":
    """Write a saved head-delta file (or a ``vru-lens finetune --out`` folder holding one) into ``model``
    (undo with the returned object's ``unmerge``).

    The way to study a fine-tuned model with every other tool (eval, probes, head rankings):
    the weights change, hooks and caches stay the bridge's own.
    """
    path = Path(path)
    if path.is_dir():  # a `vru-lens finetune --out` folder
        path = path / DELTAS_FILE
    if not path.exists():
        raise FileNotFoundError(f"no head-delta file at {path}; write one with `vru-lens finetune --out DIR` "
                                f"(it writes DIR/{DELTAS_FILE})")
    trained_on, here = HeadDeltas.read_metadata(path)["model"], getattr(model, "vru_name", None)
    if trained_on and here and trained_on != here:
        raise ValueError(f"{path} was trained on {trained_on}, not {here}; pass --model {trained_on}")
    deltas = HeadDeltas.load(path, model)
    deltas.merge(model)
    return deltas
