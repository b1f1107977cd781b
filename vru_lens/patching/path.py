"""Path patching: sender head -> logits, and sender head -> receiver heads' q/k/v.

Definitions (Wang et al. 2022, IOI), for a sender head (l, h) and a pair:

* to the logits: in the clean run, the sender's output (``hook_z``) takes its
  corrupted-run value; every other head's output, at every layer and position,
  is frozen to its clean-run value; MLPs and norms are recomputed. Result: the
  logit difference (clean answer - corrupted answer, first tokens) at the final
  position.
* to receivers' q/k/v: the same patched run, up to the receivers' layer, gives
  a new value for the receiver heads' query/key/value input; then a normal
  clean run in which only that input of only those heads is replaced.

Why the fast path is exact and cheap (to the logits): once every other head is
frozen, no attention is recomputed after the sender, so positions stop
interacting and only the final position matters. At the sender's layer the
residual becomes ``resid_mid + (z_corr - z_clean)[h] @ W_O[h]``; then each later
layer adds its frozen clean attention contribution (``resid_mid - resid_pre`` of
the clean run) and recomputes its MLP on that single vector. All senders of all
layers and all pairs of a chunk go through the MLPs as one batch of
``d_model`` vectors: two cached forwards plus a few MLP evaluations per layer,
instead of one forward per sender. Norms are the bridge's own modules;
Gemma-style sandwich norms (``ln1_post`` on the attention output, ``ln2_post``
on the MLP output) are applied where the block has them. Architectures the
recurrence does not describe (parallel attention/MLP) fall back to the
reference with a warning, and so does any model for which the unpatched
recurrence fails to reproduce the clean run (a self-check run every time).

To receivers the first run is done the same way, at every position (positions
still do not interact while every head is frozen), and the receivers' q/k/v are
computed from it with the block's own ``ln1`` and projection; the second run is
a real forward (attention after the receivers must be recomputed), batched over
(sender, pair) rows. That halves the forwards of the reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Sequence

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from ..heads import Head, group_size, hook_name, n_heads_of, n_kv_heads, top_heads
from ..readout import logit_diff_from_logits, logit_diff_from_resid, normed_rows, record
from ..results import Result, model_name
from .fallback import FastPathUnsupported, tolerance, warn_fallback
from .metrics import batches

COMPONENTS = ("q", "k", "v")


@dataclass
class PathPatchResult(Result):
    """Logit difference with each sender head path-patched: ``effects[pair, layer, head]``.

    ``clean_ld[pair]`` is the unpatched logit difference, so ``clean_ld - effects`` is
    each sender's effect (higher = the path matters more). To receivers, ``receivers``,
    ``component`` and ``receiver_query_heads`` say which inputs were patched (to the
    logits they are empty). NaN entries: senders a reference run was told to skip.
    """

    effects: Tensor  # [pair, layer, head]
    clean_ld: Tensor  # [pair]
    model: str = ""
    receivers: list | None = None  # [(layer, head)]; None: to the logits
    component: str | None = None  # q, k or v for receivers
    receiver_query_heads: list | None = None  # the query heads a k/v receiver patch touches (GQA groups)

    def __post_init__(self):
        self.effects = torch.as_tensor(self.effects, dtype=torch.float32)
        self.clean_ld = torch.as_tensor(self.clean_ld, dtype=torch.float32)
        for name in ("receivers", "receiver_query_heads"):  # JSON gives lists back
            if getattr(self, name) is not None:
                setattr(self, name, [(int(l), int(h)) for l, h in getattr(self, name)])

    @property
    def drop(self) -> Tensor:
        """[layer, head] mean over pairs of clean - patched logit difference (skipped senders NaN)."""
        return (self.clean_ld[:, None, None] - self.effects).nanmean(0)

    @property
    def target(self) -> str:
        return "logits" if self.receivers is None else f"{self.component} of {self.receivers}"

    def top(self, k: int = 10) -> list[tuple[int, int, float]]:
        """The k senders whose path lowers the logit difference most, as (layer, head, drop)."""
        d = self.drop.numpy()
        return [(l, h, float(d[l, h])) for l, h in top_heads(d, k)]

    def summary(self, k: int = 10) -> dict:
        return {"model": self.model, "target": "logits" if self.receivers is None else "receivers",
                "receivers": self.receivers, "component": self.component,
                "receiver_query_heads": self.receiver_query_heads, "n_pairs": int(self.effects.shape[0]),
                "clean_ld": round(float(self.clean_ld.mean()), 4),
                "top": [[l, h, round(d, 4)] for l, h, d in self.top(k)]}

    def to_frame(self):
        """One row per sender head: mean patched logit difference and mean drop from clean."""
        import pandas as pd

        mean, drop = self.effects.nanmean(0), self.drop
        return pd.DataFrame([{"layer": l, "head": h, "patched_ld": float(mean[l, h]), "drop": float(drop[l, h])}
                             for l in range(mean.shape[0]) for h in range(mean.shape[1])])

    def plot(self, title: str | None = None):
        """Heatmap [layer x sender head] of the mean drop of the logit difference."""
        import plotly.graph_objects as go

        d = self.drop.numpy()
        lim = float(self.drop.abs().nan_to_num(0).max()) or 1.0
        fig = go.Figure(go.Heatmap(z=d, colorscale="RdBu", zmid=0, zmin=-lim, zmax=lim,
                                   hovertemplate="layer %{y} head %{x}<br>drop %{z:.4f}<extra></extra>"))
        fig.update_layout(title=title or f"path patching senders -> {self.target} on {self.model}, "
                          f"{self.effects.shape[0]} pairs", xaxis_title="sender head", yaxis_title="layer")
        fig.update_yaxes(autorange="reversed")
        return fig


# ---------------------------------------------------------------- model helpers

_n_kv_heads = n_kv_heads


def _z(l: int) -> str:
    return hook_name(l, "z")


_comp_hook = hook_name  # (layer, component)


def _unsupported_reason(model) -> str | None:
    """Why the fast recurrence cannot describe this model, or None."""
    if getattr(model.cfg, "parallel_attn_mlp", False):
        return "parallel attention/MLP blocks (the MLP reads resid_pre, not resid_mid)"
    blocks = getattr(model, "blocks", None)
    if blocks is None or len(blocks) != model.cfg.n_layers:
        return "no standard 'blocks' stack"
    for name in ("ln1", "ln2", "mlp", "attn"):
        if not hasattr(blocks[0], name):
            return f"blocks have no '{name}' submodule"
    return None


def _rows(fn, x: Tensor) -> Tensor:
    """Apply a [batch, pos, d] module to rows [..., d] (as a one-position batch)."""
    shape = x.shape
    return fn(x.reshape(-1, 1, shape[-1])).reshape(shape)


# The recurrence carries the residual stream in float32 whatever the model's dtype. In bf16 the sum
# ``resid + (resid_mid - resid_pre)`` rounds twice per layer at the residual's own scale (the difference of
# two recorded bf16 residuals is not a bf16 number), and those roundings, not the heads, decided the
# unpatched row on a 1536-wide bf16 model. The modules (norms, MLPs, projections) still get their
# inputs in the model's dtype, so weights stay in half precision and no weight is copied.
_ACC = torch.float32


def _mlp_out(block, x: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
    """What the block's MLP adds to the residual stream, for rows of resid_mid (float32 rows in and out)."""
    dtype = _dtype(block)
    out = _rows(lambda t: block.mlp(block.ln2(t)), x.to(dtype))
    post = getattr(block, "ln2_post", None)  # Gemma 2/3 post-feedforward norm
    return (_rows(post, out) if post is not None else out).to(x.dtype)


def _dtype(block) -> torch.dtype:
    """The dtype the block's weights (and so its inputs) are in."""
    return next(block.parameters()).dtype


def _project(block, component: str, x: Float[Tensor, "... d_model"], d_head: int) -> Float[Tensor, "... head d_head"]:
    """The block's q/k/v projection of ln1(x), as hook_q/hook_k/hook_v see it (pre-norm, pre-rotary)."""
    lin = getattr(block.attn, component)
    out = lin(block.ln1(x.reshape(-1, 1, x.shape[-1]).to(_dtype(block))))
    return out.reshape(*x.shape[:-1], -1, d_head)


def _layer_W_O(model) -> list[Tensor]:
    """Each layer's W_O [H, d_head, d_model] as a view of its output projection.

    ``model.W_O`` stacks every layer into a new tensor: a copy of all output projections
    (0.72 GB for a 7B model), which the fast paths never need at once.
    """
    views = [getattr(block.attn, "W_O", None) for block in model.blocks]
    return views if all(v is not None for v in views) else list(model.W_O)


def _sender_resid(cc, cr, l: int, W_O, b_O, block, sandwich: bool) -> Tensor:
    """Residual after layer l's attention with each head of layer l in turn on its corrupted output.

    Returns [H + 1, *batch, d_model] in float32 (``_ACC``): one row per sender head plus an unpatched
    control row (the self-check). ``cc``/``cr`` hold the clean/corrupted caches at any positions ("...").
    """
    zc, zk = cc[_z(l)], cr[_z(l)]  # [..., H, d_head]
    delta = torch.einsum("...he,hed->h...d", (zk - zc).to(W_O[l].dtype), W_O[l])
    delta = torch.cat([delta, torch.zeros_like(delta[:1])])
    if sandwich:  # attention output goes through ln1_post before joining the residual
        raw = torch.einsum("...he,hed->...d", zc.to(W_O[l].dtype), W_O[l])
        if b_O is not None:
            raw = raw + b_O[l]
        return cc[hook_name(l, "resid_pre")].float() + _rows(block.ln1_post, raw + delta).float()
    return cc[hook_name(l, "resid_mid")].float() + delta.float()


_final_ld = logit_diff_from_resid  # the one readout (bias and soft-cap included)


def _self_check(name: str, got: Tensor, want: Tensor, dtype, slack: Tensor | float = 0.0) -> None:
    """``slack``: what ``want`` itself may be off by (a half-precision model's logits are rounded)."""
    atol, rtol = tolerance(dtype)
    err = (got.float() - want.float()).abs()
    bound = atol + rtol * want.float().abs() + slack
    if not bool((err <= bound).all()):
        raise FastPathUnsupported(
            f"self-check failed: the unpatched fast recurrence does not reproduce the clean run's {name} "
            f"(max abs error {float(err.max()):.3g}); this architecture needs the reference"
        )


def _rounding_slack(model, resid_final: Tensor, a: Tensor, b: Tensor) -> Tensor | float:
    """What a half-precision model's own logit difference may be off by against the float32 recurrence.

    The model rounds its residual at every layer (bf16: 0.4% of its norm) and the recurrence does not,
    so the two final residuals differ by a small relative amount in no particular direction. Such a
    change of relative size rtol moves the logit difference by about
    ``rtol * |ln_final(resid)| * |W_U[:, a] - W_U[:, b]| / sqrt(d_model)``; that is the slack. A
    recurrence that does not describe the model is off by tens of percent of the residual, far beyond it.
    (Measured on a 4-layer bf16 Llama: slack 0.53 against a drift of 0.11, on logits of 1.1 and -0.1.)"""
    if resid_final.dtype in (torch.float32, torch.float64):
        return 0.0
    normed = normed_rows(model, resid_final).float()
    W_U = model.W_U
    w = W_U[:, a.to(W_U.device)].float() - W_U[:, b.to(W_U.device)].float()  # [d_model, batch]
    spread = normed.norm(dim=-1) * w.norm(dim=0).to(normed.device) / normed.shape[-1] ** 0.5
    return tolerance(resid_final.dtype)[1] * spread


def _projection_slack(block, component: str, resid: Tensor, heads: list[int]) -> Tensor | float:
    """What a half-precision model's own q/k/v of ``heads`` may be off by against the float32 recurrence.

    The same argument as ``_rounding_slack``, one layer earlier: the model's residual at a receiver layer
    carries its own bf16 roundings (up to 0.9% of its norm after three layers of the test model) and the
    recurrence's does not, so a relative change of size rtol in no particular direction moves each
    output of the projection by about ``rtol * |ln1(resid)| * |W[:, e]| / sqrt(d_model)``.
    (Measured on the 4-layer bf16 Llama of test_patching_half_precision.py, q of layer 3: the model's own
    q is 0.148 from a float32 computation, the recurrence's 0.068; slack 0.10 on q of up to 20.)"""
    W = getattr(block.attn, f"W_{component.upper()}", None)  # [heads, d_model, d_head]
    if resid.dtype in (torch.float32, torch.float64) or W is None:  # no W_Q: the strict check (or the reference)
        return 0.0
    normed = _rows(block.ln1, resid).float()  # [..., d_model]
    w = torch.linalg.vector_norm(W[heads], dim=1, dtype=torch.float32)  # [n_recv, d_head]
    spread = normed.norm(dim=-1)[..., None, None] * w.to(normed.device) / normed.shape[-1] ** 0.5
    return tolerance(resid.dtype)[1] * spread


_capture = record  # readout.record: one forward, optionally stopped once everything is recorded


def _check_readout(model, pt, device) -> None:
    """The two-column readout from the last residual must match the model's own logits (one pair, one forward)."""
    last = hook_name(model.cfg.n_layers - 1, "resid_post")
    clean, _, fp, a, b = _chunk(pt, slice(0, 1), device)
    logits, got = _capture(model, clean, [last], fp)
    want = logit_diff_from_logits(logits, fp, a, b)
    # the model's logits are rounded to its dtype (half an ulp each, <= eps * |logit|); the readout is not
    final = logits[torch.arange(len(fp), device=logits.device), fp].float()
    rounding = torch.finfo(logits.dtype).eps * torch.maximum(final.gather(1, a[:, None]), final.gather(1, b[:, None])).abs()[:, 0]
    _self_check("logits (readout from the last residual)", _final_ld(model, got[last], a, b), want, want.dtype,
                rounding)


def _chunk(pt, sl, device):
    fp = pt.final_pos[sl].to(device)
    width = int(fp.max()) + 1
    return (pt.clean[sl, :width].to(device), pt.corrupt[sl, :width].to(device), fp,
            pt.clean_answer[sl].to(device), pt.corrupt_answer[sl].to(device))


def _check_pairs(pt) -> None:
    if len(pt) == 0:
        raise ValueError("no pairs to patch: pt is empty")


# ---------------------------------------------------------------- to the logits

@torch.inference_mode()
def path_patch_logits(model, pt, batch_size: int = 16, progress: bool = True) -> PathPatchResult:
    """Logit difference with each sender head path-patched to the logits (fast, exact).

    ``.effects[p, l, h]``: pair p, clean run, head (l, h)'s output taken from the
    corrupted run, every other head's output frozen to its clean value, MLPs and
    norms recomputed. ``pt`` is a ``tokens.PairTokens``; ``batch_size`` pairs are
    processed per chunk (2 forwards + the MLP recurrence for all senders of the
    chunk). Matches ``path_patch_logits_reference`` (<= 1e-4 in fp32); falls back
    to it, with a warning, where the recurrence does not describe the model.
    Peak extra memory: about ``n_layers * (n_heads + 1) * batch_size`` vectors of
    the MLP's hidden width (SmolLM2, 16 pairs: ~30 MB).
    """
    _check_pairs(pt)
    reason = _unsupported_reason(model)
    if reason is None:
        try:
            return PathPatchResult(*_path_patch_logits_fast(model, pt, batch_size, progress), model_name(model))
        except FastPathUnsupported as err:
            reason = str(err)
    warn_fallback("path patching", reason, "computing the plain reference instead (one forward pass per sender)")
    return path_patch_logits_reference(model, pt, progress=progress, batch_size=batch_size)


def _path_patch_logits_fast(model, pt, batch_size, progress):
    device = model.cfg.device
    L, H = model.cfg.n_layers, model.cfg.n_heads
    W_O = _layer_W_O(model)  # per layer [H, d_head, d_model], views of the weights
    b_O = getattr(model, "b_O", None)
    blocks = model.blocks
    sandwich = getattr(blocks[0], "ln1_post", None) is not None
    pre_names = [hook_name(l, "resid_pre") for l in range(L)]
    mid_names = [hook_name(l, "resid_mid") for l in range(L)]
    z_names = [_z(l) for l in range(L)]
    last = hook_name(L - 1, "resid_post")
    _check_readout(model, pt, device)
    out, clean_lds = [], []
    bar = tqdm(total=len(pt), desc="path patching to logits (fast)", disable=not progress, unit="pair")
    for sl in batches(len(pt), batch_size):
        clean, corrupt, fp, a, b = _chunk(pt, sl, device)
        B = clean.shape[0]
        # final position only; neither forward computes the full-vocabulary logits
        _, cc = _capture(model, clean, pre_names + mid_names + z_names + [last], fp, stop_after=last)
        _, cr = _capture(model, corrupt, z_names, fp, stop_after=z_names[-1])
        clean_ld = _final_ld(model, cc[last], a, b)
        d = cc[mid_names[0]].shape[-1]
        # rows: [layer, head (+1 unpatched control row), pair]; senders of layer l occupy block l
        per = (H + 1) * B
        x = torch.empty(L * per, d, dtype=_ACC, device=device)
        for l in range(L):
            start = l * per
            if l > 0:  # earlier senders' rows: add layer l's frozen clean attention contribution
                contrib = cc[mid_names[l]].to(_ACC) - cc[pre_names[l]].to(_ACC)
                x[:start].view(-1, B, d).add_(contrib)
            new = _sender_resid(cc, cr, l, W_O, b_O, blocks[l], sandwich)  # [H + 1, B, d]
            x[start:start + per] = new.reshape(per, d)
            active = x[:start + per]
            active.add_(_mlp_out(blocks[l], active))
        pair_idx = torch.arange(B, device=device).repeat(L * (H + 1))
        ld = _final_ld(model, x, a[pair_idx], b[pair_idx]).view(L, H + 1, B)
        _self_check("logit difference", ld[:, H, :], clean_ld.expand(L, B), cc[last].dtype,
                    _rounding_slack(model, cc[last], a, b))
        out.append(ld[:, :H, :].permute(2, 0, 1).float().cpu())
        clean_lds.append(clean_ld.float().cpu())
        bar.update(B)
    bar.close()
    return torch.cat(out), torch.cat(clean_lds)


def _senders(model, senders, max_layer: int | None = None) -> list[Head]:
    L, H = model.cfg.n_layers, model.cfg.n_heads
    top = L if max_layer is None else max_layer
    if senders is None:
        return [(l, h) for l in range(top) for h in range(H)]
    senders = [(int(l), int(h)) for l, h in senders]
    for l, h in senders:
        if not (0 <= l < L and 0 <= h < H):
            raise ValueError(f"sender {(l, h)} is out of range: layers 0..{L - 1}, heads 0..{H - 1}")
    return senders


@torch.inference_mode()
def path_patch_logits_reference(model, pt, progress: bool = True, batch_size: int = 16,
                                senders: Sequence[Head] | None = None) -> PathPatchResult:
    """The plain way: per sender, one clean forward with hooks on every layer's ``hook_z``.

    The hooks set every head's ``z`` to its clean value except the sender's,
    which gets its corrupted value; MLPs recompute. Clean and corrupted ``z``
    caches are computed once per chunk of ``batch_size`` pairs. ``senders``
    restricts the work to some heads (the other entries are NaN), for timing.
    """
    _check_pairs(pt)
    device = model.cfg.device
    L, H = model.cfg.n_layers, model.cfg.n_heads
    todo = _senders(model, senders)
    out = torch.full((len(pt), L, H), float("nan"))
    clean_ld = torch.empty(len(pt))
    z_names = [_z(l) for l in range(L)]
    bar = tqdm(total=len(todo) * len(pt), desc="path patching to logits (reference)", disable=not progress,
               unit="pair")
    for sl in batches(len(pt), batch_size):
        clean, corrupt, fp, a, b = _chunk(pt, sl, device)
        logits, cz = _capture(model, clean, z_names)
        clean_ld[sl] = logit_diff_from_logits(logits, fp, a, b).float().cpu()
        _, kz = _capture(model, corrupt, z_names)
        for sender in todo:
            hooks = _frozen_z_hooks(L, cz, kz, sender)
            logits = model.run_with_hooks(clean, fwd_hooks=hooks)
            out[sl, sender[0], sender[1]] = logit_diff_from_logits(logits, fp, a, b).float().cpu()
            bar.update(clean.shape[0])
    bar.close()
    return PathPatchResult(out, clean_ld, model_name(model))


def _frozen_z_hooks(L, cz, kz, sender):
    """hook_z of every head set to its clean value, except the sender's (corrupted)."""
    sl_, sh = sender

    def set_z(t, hook, layer):
        new = cz[_z(layer)].clone()
        if layer == sl_:
            new[:, :, sh] = kz[_z(layer)][:, :, sh]
        return new

    return [(_z(l), partial(set_z, layer=l)) for l in range(L)]


# ---------------------------------------------------------------- to receivers' q/k/v

def _check_receivers(model, receivers, component) -> dict[int, list[int]]:
    """{receiver layer: [head indices]}; validates component and index ranges."""
    if component not in COMPONENTS:
        raise ValueError(f"component must be one of {COMPONENTS}, got {component!r}")
    receivers = [(int(l), int(h)) for l, h in receivers]
    if not receivers:
        raise ValueError("receivers is empty: pass a list of (layer, head)")
    L = model.cfg.n_layers
    n = n_heads_of(model, component)
    by_layer: dict[int, list[int]] = {}
    for l, h in receivers:
        if not 0 <= l < L:
            raise ValueError(f"receiver {(l, h)}: layer out of range 0..{L - 1}")
        if not 0 <= h < n:
            kind = "query heads" if component == "q" else "key/value heads"
            hint = "" if component == "q" else (
                f" (for '{component}' a receiver is a key/value head; query head q reads key/value head "
                f"q // {group_size(model)})")
            raise ValueError(f"receiver {(l, h)}: this model has {n} {kind}, 0..{n - 1}{hint}")
        by_layer.setdefault(l, [])
        if h not in by_layer[l]:
            by_layer[l].append(h)
    if max(by_layer) == 0:
        raise ValueError("receivers are all in layer 0: no sender head comes before them")
    return dict(sorted(by_layer.items()))


def receiver_query_heads(model, receivers: Sequence[Head], component: str) -> list[Head]:
    """The query heads whose computation a receiver patch touches.

    For ``q`` that is the receivers themselves. For ``k``/``v`` a receiver is a
    key/value head; under grouped-query attention it is shared by
    ``n_heads // n_key_value_heads`` query heads, and patching it changes all of them.
    """
    by_layer = _check_receivers(model, receivers, component)
    if component == "q":
        return [(l, h) for l, hs in by_layer.items() for h in hs]
    group = group_size(model)
    return [(l, g * group + i) for l, hs in by_layer.items() for g in hs for i in range(group)]


def _to_receivers(effects: Tensor, clean_ld: Tensor, model, receivers, component) -> "PathPatchResult":
    return PathPatchResult(effects, clean_ld, model_name(model),
                           [(int(l), int(h)) for l, h in receivers], component,
                           receiver_query_heads(model, receivers, component))


def _patch_comp_hooks(values: dict[int, Tensor], by_layer, component):
    """Hooks replacing only the receiver heads' q/k/v at each receiver layer (values [B, pos, n_recv, d_head])."""

    def set_comp(t, hook, layer):
        t = t.clone()
        t[:, :, by_layer[layer]] = values[layer].to(t.dtype)
        return t

    return [(_comp_hook(l, component), partial(set_comp, layer=l)) for l in values]


@torch.inference_mode()
def path_patch_receivers(model, pt, receivers: Sequence[Head], component: str, batch_size: int = 8,
                         progress: bool = True) -> PathPatchResult:
    """Path patching sender -> receivers' q, k or v input (Wang et al.), for every sender head.

    ``receivers``: (layer, head) pairs, all patched together. For ``"q"`` the
    head is a query head; for ``"k"``/``"v"`` it is a key/value head (index of
    ``hook_k``/``hook_v``): under GQA one key/value head is shared by a group of
    query heads, and patching it changes the attention of the whole group (see
    ``receiver_query_heads``; the ``PathPatchResult`` carries ``.receivers``,
    ``.component`` and ``.receiver_query_heads``).

    For sender (l, h): run 1 = clean run, the sender's z corrupted, every other
    head frozen clean, MLPs recomputed, up to each receiver layer r > l; run 2 =
    a normal clean run in which only the receivers' chosen input at layer r takes
    its run-1 value (all positions). ``out[p, l, h]`` is run 2's logit
    difference (``.effects``). A sender at or after the last receiver layer reaches no
    receiver: its entries are the clean logit difference (no effect).
    Run 1 is the fast recurrence (all positions, no attention; memory about
    ``(n_heads + 1) * batch_size * pos`` MLP-hidden vectors), run 2 real
    forwards of ``batch_size`` (sender, pair) rows: about half the reference's work.
    """
    _check_pairs(pt)
    by_layer = _check_receivers(model, receivers, component)
    reason = _unsupported_reason(model)
    if reason is None:
        try:
            out = _path_patch_receivers_fast(model, pt, by_layer, component, batch_size, progress)
            return _to_receivers(*out, model, receivers, component)
        except FastPathUnsupported as err:
            reason = str(err)
    warn_fallback("path patching", reason, "computing the plain reference instead (one forward pass per sender)")
    return path_patch_receivers_reference(model, pt, receivers, component, progress=progress, batch_size=batch_size)


def _path_patch_receivers_fast(model, pt, by_layer, component, batch_size, progress):
    device = model.cfg.device
    L, H, d_head = model.cfg.n_layers, model.cfg.n_heads, model.cfg.d_head
    W_O = _layer_W_O(model)
    b_O = getattr(model, "b_O", None)
    blocks = model.blocks
    sandwich = getattr(blocks[0], "ln1_post", None) is not None
    top = max(by_layer)  # senders are the heads of layers < top
    pre_names = [hook_name(l, "resid_pre") for l in range(top + 1)]
    mid_names = [hook_name(l, "resid_mid") for l in range(top)]
    z_names = [_z(l) for l in range(top)]
    comp_names = [_comp_hook(r, component) for r in by_layer]
    out, clean_lds = torch.empty(len(pt), L, H), torch.empty(len(pt))
    bar = tqdm(total=len(pt) * top, desc=f"path patching to receivers' {component} (fast)", disable=not progress,
               unit="pair-layer")
    for sl in batches(len(pt), batch_size):
        clean, corrupt, fp, a, b = _chunk(pt, sl, device)
        B, P = clean.shape
        logits, cc = _capture(model, clean, pre_names + mid_names + z_names + comp_names)
        _, cr = _capture(model, corrupt, z_names, stop_after=z_names[-1])
        clean_ld = clean_lds[sl] = logit_diff_from_logits(logits, fp, a, b).float().cpu()
        out[sl] = clean_ld[:, None, None]  # senders that reach no receiver
        for l in range(top):
            x = _sender_resid(cc, cr, l, W_O, b_O, blocks[l], sandwich)  # [H + 1, B, P, d]
            values: dict[int, Tensor] = {}
            for j in range(l, top):
                x = x + _mlp_out(blocks[j], x)  # x: resid_pre of layer j + 1
                r = j + 1
                if r in by_layer:
                    heads = by_layer[r]
                    v = _project(blocks[r], component, x, d_head)[..., heads, :]  # [H+1, B, P, n_recv, d_head]
                    _self_check(f"{component} at layer {r}", v[H], cc[_comp_hook(r, component)][:, :, heads], v.dtype,
                                _projection_slack(blocks[r], component, cc[pre_names[r]], heads))
                    values[r] = v[:H].reshape(H * B, P, len(heads), d_head)
                if r < top:
                    x = x + (cc[mid_names[r]].to(_ACC) - cc[pre_names[r]].to(_ACC))
            # run 2: clean forwards with the receivers' input patched, rows (head, pair)
            rows_ld = []
            for rs in batches(H * B, batch_size):
                idx = torch.arange(rs.start, rs.stop, device=device) % B
                hooks = _patch_comp_hooks({r: v[rs] for r, v in values.items()}, by_layer, component)
                lg = model.run_with_hooks(clean[idx], fwd_hooks=hooks)
                rows_ld.append(logit_diff_from_logits(lg, fp[idx], a[idx], b[idx]).float().cpu())
            out[sl, l, :] = torch.cat(rows_ld).view(H, B).T
            bar.update(B)
    bar.close()
    return out, clean_lds


@torch.inference_mode()
def path_patch_receivers_reference(model, pt, receivers: Sequence[Head], component: str, progress: bool = True,
                                   batch_size: int = 8, senders: Sequence[Head] | None = None
                                   ) -> PathPatchResult:
    """The plain way: two forwards per sender.

    Run 1: clean tokens, hooks set every head's z to clean except the sender's
    (corrupted); the receivers' ``hook_{component}`` values are recorded. Run 2:
    clean tokens, hooks replace only the receiver heads' ``hook_{component}``
    with those values. Senders at or after the last receiver layer get the clean
    logit difference (no effect); ``senders`` restricts the work (others NaN).
    """
    _check_pairs(pt)
    by_layer = _check_receivers(model, receivers, component)
    device = model.cfg.device
    L, H = model.cfg.n_layers, model.cfg.n_heads
    top = max(by_layer)
    todo = _senders(model, senders, max_layer=top if senders is None else None)
    out, clean_ld = torch.full((len(pt), L, H), float("nan")), torch.empty(len(pt))
    z_names = [_z(l) for l in range(L)]
    comp_names = [_comp_hook(r, component) for r in by_layer]
    bar = tqdm(total=len(todo) * len(pt), desc=f"path patching to receivers' {component} (reference)",
               disable=not progress, unit="pair")
    for sl in batches(len(pt), batch_size):
        clean, corrupt, fp, a, b = _chunk(pt, sl, device)
        logits, cz = _capture(model, clean, z_names)
        _, kz = _capture(model, corrupt, z_names)
        clean_ld[sl] = logit_diff_from_logits(logits, fp, a, b).float().cpu()
        if senders is None:
            out[sl] = clean_ld[sl, None, None]
        for sender in todo:
            _, got = _capture(model, clean, comp_names, fwd_hooks=_frozen_z_hooks(L, cz, kz, sender))
            values = {r: got[_comp_hook(r, component)][:, :, hs] for r, hs in by_layer.items()}
            lg = model.run_with_hooks(clean, fwd_hooks=_patch_comp_hooks(values, by_layer, component))
            out[sl, sender[0], sender[1]] = logit_diff_from_logits(lg, fp, a, b).float().cpu()
            bar.update(clean.shape[0])
    bar.close()
    return _to_receivers(out, clean_ld, model, receivers, component)


__all__ = [
    "Head", "COMPONENTS", "FastPathUnsupported", "PathPatchResult", "path_patch_logits", "path_patch_logits_reference",
    "path_patch_receivers", "path_patch_receivers_reference", "receiver_query_heads",
]
