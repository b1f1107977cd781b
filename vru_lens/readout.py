"""Reading the model: one unembedding, and everything that reads logits through it.

Every stage that turns a residual into logits, a logit difference or
log-probabilities goes through ``unembed`` (``W_U``, the bias ``b_U`` where the
model has one, and the final logit soft-cap ``cfg.output_logits_soft_cap``,
Gemma 2's ``final_logit_softcapping``), so it reads the numbers the model's
own forward gives. ``run_until`` ends a forward as soon as what is needed is
recorded (later blocks and the unembedding at every position are never
computed); ``final_normed`` and ``record`` are built on it. ``rows_logits``
unembeds only the (row, position) pairs read, and ``score_rows`` batches such
requests by length. ``prefix_logits`` / ``score_prefixed`` read tails after a shared
prompt with the prompt run once (its KV cache reused), where ``prefix_cache_ok`` allows
(no hooks on the model: ``has_hooks``).
"""

from __future__ import annotations

from functools import partial
from typing import Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm


class StopForward(Exception):
    """Raised by a hook to end a forward once everything needed is recorded."""


def _stop(x, hook):
    raise StopForward


def run_until(model, ids, fwd_hooks=(), stop_at: str | None = None, **kwargs):
    """``model.run_with_hooks(ids, fwd_hooks)``; with ``stop_at`` the forward ends right after that
    hook point's hooks have run (returns None then: nothing after it is computed)."""
    hooks = [*fwd_hooks, *([(stop_at, _stop)] if stop_at else [])]
    try:
        return model.run_with_hooks(ids, fwd_hooks=hooks, **kwargs)
    except StopForward:
        return None


# ---------------------------------------------------------------- one unembedding

def soft_cap(model, logits: Tensor) -> Tensor:
    """The model's final logit soft-cap, ``cap * tanh(logits / cap)`` (unchanged if it has none)."""
    cap = getattr(model.cfg, "output_logits_soft_cap", None) or 0.0
    return cap * torch.tanh(logits / cap) if cap > 0 else logits


def unembed(model, normed: Float[Tensor, "... d_model"], tokens: Int[Tensor, "..."] | None = None) -> Tensor:
    """Logits of ln_final-normed rows: the full vocabulary ``[..., vocab]``, or with ``tokens``
    (one id per row, same leading shape) only those columns ``[...]``, in float32. Bias and soft-cap included."""
    W_U, b_U = model.W_U, getattr(model, "b_U", None)
    normed = normed.to(W_U.device, W_U.dtype)
    if tokens is None:
        logits = normed @ W_U
        logits = logits + b_U if b_U is not None else logits
    else:  # in float32: half-precision products and sum would round the result to the logits' resolution
        tokens = tokens.to(W_U.device)
        logits = (normed.float() * W_U.T[tokens].float()).sum(-1)
        logits = logits + b_U[tokens].float() if b_U is not None else logits
    return soft_cap(model, logits)


unembed_rows = unembed  # the earlier name


def normed_rows(model, resid: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
    """``ln_final`` of residual rows of any leading shape (run as a batch of one-position sequences)."""
    W_U = model.W_U
    x = resid.to(W_U.device, W_U.dtype)
    return model.ln_final(x.reshape(-1, 1, x.shape[-1])).reshape(x.shape)


def resid_logits(model, resid: Float[Tensor, "... d_model"], tokens: Int[Tensor, "..."] | None = None) -> Tensor:
    """Logits read from residual rows through ``ln_final`` and ``unembed`` (full vocabulary or ``tokens``)."""
    return unembed(model, normed_rows(model, resid), tokens)


def resid_log_probs(model, resid: Float[Tensor, "... d_model"]) -> Float[Tensor, "... vocab"]:
    """Full-vocabulary log-probabilities (fp32) from residual rows."""
    return torch.log_softmax(resid_logits(model, resid).float(), dim=-1)


def gather_final(x: Float[Tensor, "batch pos ..."], final_pos: Int[Tensor, "batch"]) -> Float[Tensor, "batch ..."]:
    """x at each row's own final position (batches are right-padded)."""
    return x[torch.arange(x.shape[0], device=x.device), final_pos.to(x.device)]


def logit_diff_from_logits(
    logits: Float[Tensor, "batch pos vocab"], final_pos: Int[Tensor, "batch"],
    clean_answer: Int[Tensor, "batch"], corrupt_answer: Int[Tensor, "batch"],
) -> Float[Tensor, "batch"]:
    """logit(clean answer) - logit(corrupted answer) at the final position."""
    final = gather_final(logits, final_pos)
    rows = torch.arange(final.shape[0], device=final.device)
    return final[rows, clean_answer.to(final.device)] - final[rows, corrupt_answer.to(final.device)]


def logit_diff_from_resid(
    model, resid_final: Float[Tensor, "batch d_model"],
    clean_answer: Int[Tensor, "batch"], corrupt_answer: Int[Tensor, "batch"],
) -> Float[Tensor, "batch"]:
    """Logit difference read from final residuals through ln_final and two unembedding columns."""
    normed = normed_rows(model, resid_final)
    return unembed(model, normed, clean_answer) - unembed(model, normed, corrupt_answer)


@torch.inference_mode()
def baseline_logit_diffs(model, pt, batch_size: int = 16) -> tuple[Float[Tensor, "pair"], Float[Tensor, "pair"]]:
    """Unpatched logit differences of the clean and corrupted runs (pt: tokens.PairTokens)."""
    from .tokens import batches

    device = model.cfg.device
    clean, corrupt = [], []
    for sl in batches(len(pt), batch_size):
        fp, a, b = pt.final_pos[sl], pt.clean_answer[sl], pt.corrupt_answer[sl]
        for ids, out in ((pt.clean[sl], clean), (pt.corrupt[sl], corrupt)):
            width = int(fp.max()) + 1
            out.append(logit_diff_from_logits(model(ids[:, :width].to(device)), fp, a, b).float().cpu())
    return torch.cat(clean), torch.cat(corrupt)



# ---------------------------------------------------------------- stopping early

def final_normed(model, ids: Int[Tensor, "batch pos"], positions: Int[Tensor, "batch k"]) -> Float[Tensor, "batch k d_model"]:
    """ln_final output at the given positions (per row), without computing logits."""
    grabbed = {}

    def grab(x, hook):
        rows = torch.arange(x.shape[0], device=x.device)[:, None]
        grabbed["x"] = x[rows, positions.to(x.device)]

    run_until(model, ids.to(model.cfg.device), [("ln_final.hook_out", grab)], stop_at="ln_final.hook_out")
    if "x" not in grabbed:
        raise RuntimeError("the model never reached ln_final; is this a decoder-only language model?")
    return grabbed["x"]


def record(model, ids: Tensor, names: Sequence[str], final_pos: Tensor | None = None, fwd_hooks=(),
           stop_after: str | None = None):
    """(logits, {hook name: activation}) from one forward; at the final position only if final_pos is given.

    With ``stop_after`` the forward ends right after that hook has been recorded
    (logits are then None): the rest of the model, and the full-vocabulary
    unembedding at every position, are not computed.
    """
    store: dict[str, Tensor] = {}

    def save(t, hook, name):
        store[name] = (gather_final(t, final_pos) if final_pos is not None else t).detach().clone()

    hooks = [*fwd_hooks, *[(n, partial(save, name=n)) for n in names]]
    return run_until(model, ids, hooks, stop_at=stop_after), store


# ---------------------------------------------------------------- a few rows of logits

def rows_logits(model, ids: Int[Tensor, "batch pos"], positions: Int[Tensor, "batch k"]) -> Float[Tensor, "batch k vocab"]:
    """Full-vocabulary logits at ``positions`` only.

    Runs the bridge's wrapped transformers body (``original_model.base_model``) to its final
    hidden states and applies the output head to the rows read. The bridge has rewired that
    body with its own components, so TransformerLens hooks, head deltas and LoRA all apply;
    it skips the bridge's top-level bookkeeping (about half the CPU time on SmolLM2). Models
    without that structure fall back to ``final_normed`` + ``unembed``.
    """
    base, head = _body_and_head(model)
    if head is None:
        return unembed(model, final_normed(model, ids, positions))
    device = head.weight.device
    hidden = base(input_ids=ids.to(device), use_cache=False).last_hidden_state
    rows = torch.arange(hidden.shape[0], device=device)[:, None]
    return soft_cap(model, head(hidden[rows, positions.to(device)]))


def pad_rows(model, rows: Sequence[tuple[list[int], list[int]]]) -> tuple[Tensor, Tensor]:
    """(ids [b, pos], positions [b, k]) for (token ids, positions read) rows: right-padded ids, and
    each row's positions padded by repeating its last one (read and ignored)."""
    from .tokens import pad_id, pad_right

    ids, _ = pad_right([r[0] for r in rows], pad_id(model.tokenizer))
    k = max(len(r[1]) for r in rows)
    pos = torch.tensor([list(r[1]) + [r[1][-1]] * (k - len(r[1])) for r in rows])
    return ids, pos


def score_rows(model, rows: Sequence[tuple[list[int], list[int]]], batch_size: int = 16, progress: bool = False,
               desc: str = "scoring"):
    """Yield (row index, log-probs [len(positions), vocab]) for every (token ids, positions) row.

    Rows run in batches of similar length (stable sort, right-padded); only the positions
    read are unembedded (``rows_logits``), so hooks and adapters on the model apply.
    """
    order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]))
    for start in tqdm(range(0, len(order), batch_size), desc=desc, disable=not progress, leave=False):
        chunk = order[start:start + batch_size]
        ids, pos = pad_rows(model, [rows[i] for i in chunk])
        logp = rows_logits(model, ids, pos).float().log_softmax(-1)
        for j, i in enumerate(chunk):
            yield i, logp[j, : len(rows[i][1])]


# ---------------------------------------------------------------- a shared prompt, read once

HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
GLOBAL_HOOK_DICTS = ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
                     "_global_backward_pre_hooks")


# Hooks libraries install for their own bookkeeping: the bridge's wiring (it feeds the bridge's hook points,
# whose own hooks are checked) and the transformers hooks that record outputs when a caller asks for
# attentions or hidden states (installed on a model's first such call and kept; they only copy outputs).
WIRING_MODULES = ("transformer_lens.model_bridge.", "transformers.utils.output_capturing")


def _wiring(fn) -> bool:
    """A hook of ``WIRING_MODULES`` or ``models.kv_cache``'s forwarding of the cache keyword: none changes what
    a position computes. A hook of any other origin counts (an unknown origin keeps the reference schedule)."""
    from .models import kv_cache

    fn = getattr(fn, "__func__", fn)
    return fn is kv_cache.forward_renamed or (getattr(fn, "__module__", None) or "").startswith(WIRING_MODULES)


def has_hooks(model) -> bool:
    """Whether any forward or backward hook is registered on the bridge, its wrapped transformers model, or
    globally in torch: TransformerLens hooks (``model.hooks``, ``add_hook``), mean-ablation hooks, attached
    head deltas and LoRA adapters all register torch hooks. The bridge's own wiring does not count. True
    when it cannot tell (a torch without these registries)."""
    import torch.nn.modules.module as torch_module

    for name in GLOBAL_HOOK_DICTS:
        hooks = getattr(torch_module, name, None)
        if not isinstance(hooks, dict) or hooks:
            return True
    hf = getattr(model, "original_model", None)
    seen = set()
    for root in (model, hf) if isinstance(hf, torch.nn.Module) else (model,):
        for module in root.modules():
            if id(module) in seen:
                continue
            seen.add(id(module))
            for name in HOOK_DICTS:
                hooks = getattr(module, name, None)
                if not isinstance(hooks, dict) or any(not _wiring(fn) for fn in hooks.values()):
                    return True
    return False


def _body_and_head(model):
    """(the wrapped transformers body, its output head), or (None, None) where the bridge has no such pair."""
    hf = getattr(model, "original_model", None)
    base = getattr(hf, "base_model", None)
    head = hf.get_output_embeddings() if base is not None and base is not hf else None
    return (base, head) if head is not None else (None, None)


def _sliding_windows(model) -> list[int]:
    """Every attention window the transformers config names (Gemma 2/3, Mistral-style configs)."""
    config = getattr(getattr(model, "original_model", None), "config", None)
    found = []
    for cfg in (config, getattr(config, "text_config", None)):
        window = getattr(cfg, "sliding_window", None)
        if isinstance(window, int) and window > 0:
            found.append(window)
    return found


def prefix_logits(model, prompts: Sequence[list[int]], tails: Sequence[tuple[int, list[int]]]):
    """Logits after each prompt and along each tail, with every prompt run once.

    ``tails``: (prompt index, token ids) pairs. Returns (``[len(prompts), vocab]`` logits at each prompt's
    last token, a list of ``[len(tail), vocab]`` logits at each tail's tokens): the logits ``rows_logits``
    reads on prompt + tail, computed from one cached pass of the right-padded prompts (the tails attend to
    the cache's rows of their own prompt through a 2D mask that hides its padding; their position ids
    continue from the prompt's true length). Runs the wrapped transformers body as ``rows_logits`` does;
    callers check ``prefix_cache_ok`` first (it needs the KV-cache hand-off of ``models.kv_cache``).
    """
    from .models import kv_cache
    from .tokens import pad_id, pad_right

    base, head = _body_and_head(model)
    device = head.weight.device
    ids, lengths = pad_right([list(p) for p in prompts], pad_id(model.tokenizer))
    lengths = lengths.to(device)
    out = base(input_ids=ids.to(device), use_cache=bool(tails))
    rows = torch.arange(len(prompts), device=device)
    first = soft_cap(model, head(out.last_hidden_state[rows, lengths - 1]))
    if not tails:
        return first, []
    cache = getattr(out, "past_key_values", None) or getattr(out, kv_cache.RENAMED, None)
    owner = torch.tensor([j for j, _ in tails], device=device)
    cache.batch_select_indices(owner)  # one cache row per tail (a prompt with two tails: its row twice)
    tail_ids, tail_lengths = pad_right([list(t) for _, t in tails], pad_id(model.tokenizer))
    width, T = ids.shape[1], tail_ids.shape[1]
    prompt_mask = torch.arange(width, device=device)[None] < lengths[owner][:, None]
    tail_mask = torch.arange(T, device=device)[None] < tail_lengths.to(device)[:, None]
    mask = torch.cat([prompt_mask, tail_mask], 1).long()
    positions = lengths[owner][:, None] + torch.arange(T, device=device)[None]
    hidden = base(input_ids=tail_ids.to(device), attention_mask=mask, position_ids=positions,
                  use_cache=True, **{kv_cache.cache_keyword(base): cache}).last_hidden_state
    logits = soft_cap(model, head(hidden))
    return first, [logits[r, : len(t)] for r, (_, t) in enumerate(tails)]


@torch.inference_mode()
def _prefix_matches(model) -> bool:
    """``prefix_logits`` gives ``rows_logits``' log-probabilities on a small batch of unequal prompts."""
    vocab = int(model.cfg.d_vocab)
    token = lambda k: int(k * 7919 % max(vocab - 1, 1) + 1)  # noqa: E731
    prompts = [[token(k) for k in range(5)], [token(k + 11) for k in range(8)]]
    tails = [(0, [token(40), token(41)]), (1, [token(50), token(51), token(52)]), (0, [token(60)])]
    first, along = prefix_logits(model, prompts, tails)
    ref_rows = [(p, [len(p) - 1]) for p in prompts]
    ref_rows += [(prompts[j] + t, list(range(len(prompts[j]), len(prompts[j]) + len(t)))) for j, t in tails]
    ids, pos = pad_rows(model, ref_rows)
    ref = rows_logits(model, ids, pos).float().log_softmax(-1)
    fast = [f[None] for f in first] + list(along)
    worst, scale = 0.0, 0.0
    for r, (got, (_, read)) in enumerate(zip(fast, ref_rows)):
        want = ref[r, : len(read)]
        worst = max(worst, float((got.float().log_softmax(-1) - want).abs().max()))
        scale = max(scale, float(want.abs().max()))
    if model.cfg.dtype in (torch.float32, torch.float64):
        return worst <= 1e-3
    from .models.kv_cache import within_rounding

    return within_rounding(worst, scale)


def prefix_cache_ok(model, longest: int = 0) -> bool:
    """Whether ``prefix_logits`` may replace ``rows_logits`` on rows up to ``longest`` tokens: no hooks on the
    model (``has_hooks``: a hook would see the prompt and the tails in two passes, not in one), the wrapped
    body and head ``rows_logits`` runs, a KV cache the bridge's attention reads (``kv_cache_ok``), no
    sliding window shorter than the rows, and a check, once per model, that both give the same
    log-probabilities on a small batch (warns if not)."""
    import warnings

    from .models.kv_cache import kv_cache_ok, versions

    if has_hooks(model) or _body_and_head(model)[0] is None:
        return False
    if any(longest >= w for w in _sliding_windows(model)):
        return False
    ok = getattr(model, "vru_prefix_cache_ok", None)
    if ok is None:
        try:
            ok = kv_cache_ok(model) and _prefix_matches(model)
        except Exception as err:  # noqa: BLE001  (a body or cache without this interface)
            ok, why = False, f"{type(err).__name__}: {err}"
        else:
            why = "the scores differ"
        if not ok and getattr(model, "vru_kv_cache_ok", False):
            warnings.warn(f"scoring with a cached prompt is not exact on this model with {versions()} ({why}); "
                          "candidates are scored with the prompt recomputed (slower, same results).",
                          RuntimeWarning, stacklevel=3)
        model.vru_prefix_cache_ok = ok
    return ok


def score_prefixed(model, prompts: Sequence[list[int]], tails: Sequence[tuple[int, list[int]]], batch_size: int = 16,
                   progress: bool = False, desc: str = "scoring"):
    """Yield (prompt index, log-probs [vocab] after the prompt, {tail index: log-probs [len(tail), vocab]}).

    Prompts run in batches of ``batch_size`` of similar length (stable sort), each batch once, and the
    tails of its prompts in one more forward against its KV cache (``prefix_logits``). Only when
    ``prefix_cache_ok(model, ...)``; ``score_rows`` is the general route.
    """
    by_prompt: dict[int, list[int]] = {}
    for t, (j, _) in enumerate(tails):
        by_prompt.setdefault(j, []).append(t)
    order = sorted(range(len(prompts)), key=lambda j: len(prompts[j]))
    for start in tqdm(range(0, len(order), batch_size), desc=desc, disable=not progress, leave=False):
        chunk = order[start:start + batch_size]
        mine = [(k, t) for k, j in enumerate(chunk) for t in by_prompt.get(j, [])]
        first, along = prefix_logits(model, [prompts[j] for j in chunk], [(k, tails[t][1]) for k, t in mine])
        first = first.float().log_softmax(-1)
        got = {t: a.float().log_softmax(-1) for (_, t), a in zip(mine, along)}
        for k, j in enumerate(chunk):
            yield j, first[k], {t: got[t] for t in by_prompt.get(j, [])}
