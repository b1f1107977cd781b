"""Reading the model: one unembedding, and everything that reads logits through it.

Every stage that turns a residual into logits, a logit difference or
log-probabilities goes through ``unembed`` (``W_U``, the bias ``b_U`` where the
model has one, and the final logit soft-cap ``cfg.output_logits_soft_cap``,
Gemma 2's ``final_logit_softcapping``), so it reads the numbers the model's
own forward gives. ``run_until`` ends a forward as soon as what is needed is
recorded (later blocks and the unembedding at every position are never
computed); ``final_normed`` and ``record`` are built on it. ``rows_logits``
unembeds only the (row, position) pairs read, and ``score_rows`` batches such
requests by length.
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
    hf = getattr(model, "original_model", None)
    base = getattr(hf, "base_model", None)
    head = hf.get_output_embeddings() if base is not None and base is not hf else None
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
