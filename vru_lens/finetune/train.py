"""The training loop shared by head deltas and the baselines.

``train(model, trainable, train_items, val_items, cfg)`` optimises only
``trainable.trainable_parameters()`` with AdamW on the answer tokens' loss
(prompt tokens carry no loss), with linear warmup then cosine (or linear)
decay, gradient accumulation, gradient clipping, validation accuracy every
``eval_every`` steps with the best state kept, a tqdm bar, checkpoints and
resume. Validation accuracy comes from the caller's ``accuracy`` function,
``(model, items) -> fraction correct`` (``vru_lens.evaluate.accuracy`` with
chat and batch size bound): fine-tuning never imports the evaluation stage. The batch at every step is a function of (seed, step), so a resumed
run sees exactly the batches an uninterrupted one would.

A *trainable* is anything with ``trainable_parameters()``,
``trainable_state()``, ``load_trainable_state(state)`` and ``active(model)``
(a context manager that switches it on): ``HeadDeltas``, and the baselines'
``FullFinetune`` and ``LoraAdapters``.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..readout import pad_rows, rows_logits
from ..results import Accuracy, Result
from ..tokens import answer_ids, chat_for, encode, render


@dataclass
class TrainConfig:
    steps: int = 200
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 20
    schedule: str = "cosine"  # "cosine" | "linear" | "constant" (after warmup)
    min_lr_ratio: float = 0.1
    max_grad_norm: float = 1.0
    eval_every: int = 50  # 0 = only at the end
    seed: int = 0
    chat: bool | None = None  # None: the model's kind (chat for instruction-tuned models, ``tokens.chat_for``)
    checkpoint_every: int = 0  # 0 = no periodic checkpoints
    eval_batch_size: int = 16
    activation_checkpointing: bool = False  # keep one block's activations for backward, recompute the rest

    def __post_init__(self):
        if self.schedule not in ("cosine", "linear", "constant"):
            raise ValueError(f"schedule must be cosine, linear or constant, got {self.schedule!r}")
        if self.steps < 1 or self.batch_size < 1 or self.grad_accum < 1:
            raise ValueError("steps, batch_size and grad_accum must be positive")

    def lr_factor(self, step: int) -> float:
        """Multiplier of ``lr`` for optimizer step ``step`` (0-based)."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.schedule == "constant":
            return 1.0
        t = (step - self.warmup_steps) / max(1, self.steps - self.warmup_steps)
        t = min(1.0, t)
        shape = 0.5 * (1 + math.cos(math.pi * t)) if self.schedule == "cosine" else 1 - t
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * shape


@dataclass
class TrainResult(Result):
    config: dict
    trainable_params: int
    optimizer_state_bytes: int
    history: list = field(default_factory=list)  # {step, loss, lr}
    validation: list = field(default_factory=list)  # {step, accuracy}
    best_step: int = -1
    best_accuracy: float = float("nan")
    seconds: float = 0.0
    step_seconds: float = 0.0  # mean wall time of one optimizer step

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame(self.history)

    def summary(self) -> dict:
        """Size of the run, its last loss and its best validation step."""
        last = self.history[-1]["loss"] if self.history else None
        return {"steps": len(self.history), "trainable_params": self.trainable_params,
                "optimizer_state_bytes": self.optimizer_state_bytes, "final_loss": last,
                "best_step": self.best_step, "best_accuracy": self.best_accuracy, "seconds": self.seconds,
                "step_seconds": self.step_seconds}

    def plot(self, title: str | None = None):
        """Training loss and validation accuracy by step (``viz.finetune_curves``)."""
        from ..viz import finetune_curves

        fig = finetune_curves({"run": self})
        return fig.update_layout(title=title) if title else fig


# ------------------------------------------------------------------ data
def encode_examples(tokenizer, items, chat: bool | None = None) -> list[tuple[list[int], int]]:
    """(prompt + answer ids, index of the first answer token) per item (a PairTokens: its clean answers)."""
    if hasattr(items, "clean_examples"):
        return items.clean_examples()
    out, chat = [], chat_for(tokenizer, chat)
    for it in items:
        prompt = encode(tokenizer, render(it["prompt"], tokenizer, chat), chat)
        out.append((prompt + answer_ids(tokenizer, it["answer"], chat), len(prompt)))
    return out


def batch_indices(n: int, step: int, micro: int, cfg: TrainConfig) -> list[int]:
    """Example indices of micro-batch ``micro`` of optimizer step ``step``: epochs of seeded permutations."""
    start = (step * cfg.grad_accum + micro) * cfg.batch_size
    out = []
    for i in range(start, start + cfg.batch_size):
        epoch, j = divmod(i, n)
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
        out.append(int(torch.randperm(n, generator=g)[j]))
    return out


def answer_loss(model, examples) -> torch.Tensor:
    """Mean cross-entropy over answer tokens only (every answer token weighs the same)."""
    ids, pos = pad_rows(model, [(seq, list(range(start - 1, len(seq) - 1))) for seq, start in examples])
    k = pos.shape[1]
    tgt = torch.tensor([seq[start:] + [-100] * (k - len(seq) + start) for seq, start in examples])
    logits = rows_logits(model, ids, pos).float()
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1).to(logits.device),
                                             ignore_index=-100)


@contextlib.contextmanager
def checkpointed_blocks(model):
    """Activation checkpointing for every block of a bridge: backward recomputes each block's forward.

    The autograd graph then keeps only each block's input, and one block's activations at a time
    during backward, instead of every activation of every layer (a 7B model: ~1 GB per sequence of
    200 tokens). transformers' own ``activation_checkpointing_enable`` does nothing here: the bridge
    replaces its decoder layers, and the training loop runs in eval mode. Forward hooks inside a block
    (head deltas, LoRA, TransformerLens hooks) run again in the recompute, with the same result.
    """
    from torch.utils.checkpoint import checkpoint

    blocks = list(model.blocks)
    for block in blocks:  # object.__setattr__: a bridge component would pass the name on to the wrapped module
        object.__setattr__(block, "forward", functools.partial(checkpoint, block.forward, use_reentrant=False))
    try:
        yield
    finally:
        for block in blocks:
            object.__delattr__(block, "forward")  # back to the class's forward


def optimizer_state_bytes(opt: torch.optim.Optimizer) -> int:
    return sum(v.numel() * v.element_size() for s in opt.state.values() for v in s.values() if torch.is_tensor(v))


# ------------------------------------------------------------------ checkpoints
def _save_checkpoint(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


# ------------------------------------------------------------------ loop
_CARRIED = ("history", "validation", "best_step", "best_accuracy", "seconds")  # result fields a checkpoint keeps


@dataclass
class _Run:
    """What a run carries from step to step: what a checkpoint saves and a resume restores."""

    cfg: TrainConfig
    trainable: object
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    result: TrainResult
    step: int = 0
    best_state: dict | None = None

    def save(self, ckpt: Path) -> None:
        """Write all a resumed run needs to go on exactly as this one would have."""
        _save_checkpoint(ckpt, {"config": asdict(self.cfg), "trainable": self.trainable.trainable_state(),
                                "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
                                "step": self.step, "best_state": self.best_state,
                                "result": {k: getattr(self.result, k) for k in _CARRIED}})

    def resume(self, ckpt: Path | None) -> None:
        """Continue from ``ckpt``; refuse another kind of file or another config (a resume never mixes two runs)."""
        if ckpt is None or not ckpt.exists():
            raise FileNotFoundError(f"nothing to resume: checkpoint {ckpt} does not exist")
        from ..results import load_tensors

        saved = load_tensors(ckpt, "fine-tuning checkpoint")
        if not isinstance(saved, dict) or not {"config", "trainable", "optimizer", "scheduler", "step"} <= set(saved):
            raise ValueError(f"{ckpt} is not a fine-tuning checkpoint that vru-lens wrote; delete it to start afresh")
        if saved["config"] != asdict(self.cfg):
            raise ValueError("the checkpoint was written with another TrainConfig; resume with the same one")
        self.trainable.load_trainable_state(saved["trainable"])
        self.opt.load_state_dict(saved["optimizer"])
        self.sched.load_state_dict(saved["scheduler"])
        self.step, self.best_state = saved["step"], saved["best_state"]
        for k in _CARRIED:
            setattr(self.result, k, saved["result"][k])

    def validate(self, model, accuracy: Accuracy, items) -> None:
        """Score ``items`` at this step and keep the trainable's state if it is the best yet (the run returns it)."""
        acc = float(accuracy(model, items))
        self.result.validation.append({"step": self.step, "accuracy": acc})
        if not acc <= self.result.best_accuracy:  # first, or better (nan-safe)
            self.result.best_accuracy, self.result.best_step = acc, self.step
            self.best_state = self.trainable.trainable_state()

    def optimizer_step(self, model, params, examples) -> None:
        """One optimizer step over ``grad_accum`` micro-batches, recorded in the history.

        The batches are a function of (seed, step), so a resumed run sees the ones an uninterrupted run would.
        """
        cfg, t0 = self.cfg, time.perf_counter()
        self.opt.zero_grad(set_to_none=True)
        total = 0.0
        for micro in range(cfg.grad_accum):
            batch = [examples[i] for i in batch_indices(len(examples), self.step, micro, cfg)]
            with checkpointed_blocks(model) if cfg.activation_checkpointing else contextlib.nullcontext():
                loss = answer_loss(model, batch) / cfg.grad_accum
                loss.backward()
            total += loss.item()
        if cfg.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        lr = self.opt.param_groups[0]["lr"]
        self.opt.step()
        self.sched.step()
        self.step += 1
        self.result.history.append({"step": self.step, "loss": total, "lr": lr, "seconds": time.perf_counter() - t0})


@contextlib.contextmanager
def _only_trainable(model, params):
    """Inside the block only ``params`` take gradients (no memory for the rest); every flag comes back after."""
    ids = {id(p) for p in params}
    flags = {id(p): p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        if p.requires_grad and id(p) not in ids:
            p.requires_grad_(False)
    try:
        yield
    finally:
        for p in model.parameters():
            p.requires_grad_(flags.get(id(p), p.requires_grad))


def train(model, trainable, train_items, val_items=None, cfg: TrainConfig = TrainConfig(),
          checkpoint: str | Path | None = None, resume: bool = False, progress: bool = True,
          stop_after: int | None = None, accuracy: Accuracy | None = None) -> TrainResult:
    """Train ``trainable`` on VRU items; on return it holds the best-on-validation state (or the last).

    ``accuracy(model, items) -> fraction``: how validation is scored (needed with ``val_items``), e.g.
    ``functools.partial(vru_lens.evaluate.accuracy, chat=cfg.chat, batch_size=cfg.eval_batch_size)``.

    ``checkpoint``: file written every ``cfg.checkpoint_every`` steps and at the end (and on
    KeyboardInterrupt); with ``resume=True`` training continues from it. ``stop_after``
    (for tests and budgets) ends the run after that many optimizer steps in total, still
    writing the checkpoint, without the final best-state restore.
    """
    if val_items and accuracy is None:
        raise ValueError("validation needs accuracy=: a function (model, items) -> fraction correct, e.g. "
                         "functools.partial(vru_lens.evaluate.accuracy, chat=cfg.chat, batch_size=cfg.eval_batch_size)")
    cfg = replace(cfg, chat=chat_for(model, cfg.chat))  # recorded and checked on resume as resolved
    torch.manual_seed(cfg.seed)
    examples = encode_examples(model.tokenizer, train_items, cfg.chat)
    if not examples:
        raise ValueError("no training items")
    params = trainable.trainable_parameters()
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.999))
    run = _Run(cfg, trainable, opt, torch.optim.lr_scheduler.LambdaLR(opt, cfg.lr_factor),
               TrainResult(asdict(cfg), sum(p.numel() for p in params), 0))
    result = run.result
    ckpt = Path(checkpoint) if checkpoint else None
    if resume:
        run.resume(ckpt)
    end = cfg.steps if stop_after is None else min(cfg.steps, stop_after)
    bar = tqdm(total=cfg.steps, initial=run.step, desc="fine-tune", disable=not progress)
    t_loop = time.perf_counter()
    try:
        with _only_trainable(model, params), trainable.active(model):
            model.train(False)  # no dropout in these models; eval mode keeps runs deterministic
            if val_items and run.step == 0 and not result.validation:
                run.validate(model, accuracy, val_items)
            while run.step < end:
                run.optimizer_step(model, params, examples)
                bar.update(1)
                bar.set_postfix(loss=f"{result.history[-1]['loss']:.3f}", best=f"{result.best_accuracy:.3f}")
                if val_items and cfg.eval_every and run.step % cfg.eval_every == 0 and run.step < cfg.steps:
                    run.validate(model, accuracy, val_items)
                if ckpt and cfg.checkpoint_every and run.step % cfg.checkpoint_every == 0:
                    run.save(ckpt)
            done = run.step >= cfg.steps
            if done and val_items and (not result.validation or result.validation[-1]["step"] != run.step):
                run.validate(model, accuracy, val_items)
    except KeyboardInterrupt:
        if ckpt:
            run.save(ckpt)
        raise
    finally:
        bar.close()
        opt.zero_grad(set_to_none=True)
        result.seconds += time.perf_counter() - t_loop
    result.optimizer_state_bytes = optimizer_state_bytes(opt)
    times = [h["seconds"] for h in result.history]
    result.step_seconds = sum(times) / len(times) if times else 0.0
    if ckpt:
        run.save(ckpt)
    if run.step >= cfg.steps and run.best_state is not None:
        trainable.load_trainable_state(run.best_state)
    return result
