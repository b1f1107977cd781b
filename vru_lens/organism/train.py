"""Train the VRU model organism: a small Llama whose complete circuit C is known by construction.

Losses per step (all on one plain LlamaForCausalLM; the hooks exist only in training):
- task: cross-entropy at every ``Observation:`` query (object if its heading was seen, else unknown);
- aux: a linear probe per layer from ``aux_from`` on predicts the heading at every step end (the
  observed object, the final turn) and every query, so the heading is tracked step by step where a
  probe reads it (the probes are discarded);
- list: the second task (list recall), mixed into every step;
- siit (from ``siit_start`` on): each story runs beside its final-direction flip. Patching C's outputs
  (hook_z, all positions) from the twin must give the twin's answer; rows with every head outside C
  resampled from an *unrelated* story of equal length, or mean-ablated, must keep every answer. The
  resampling from unrelated stories is what makes C complete (SIIT): twins differ in one token, so
  resampling from twins alone left the heads outside C free to carry the rest of the story;
- attn: heads outside C attend to BOS from turn and ``Observation:`` tokens (a loss on the pattern,
  not a mask: the saved model is a plain Llama).
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from . import data as D


@dataclass
class OrganismConfig:
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 8
    n_kv_heads: int = 4
    d_mlp: int = 512
    circuit: tuple = ((0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1), (3, 0), (3, 1))  # KV group 0, every layer
    steps: int = 4000  # the cosine schedule's length
    stop_after: int | None = None  # end here, mid-schedule (None: all steps)
    batch: int = 32
    list_batch: int = 16
    list_warm: int = 300  # list-task-only steps first (so the base checkpoint already knows it)
    informative: float = 0.5  # share of stories whose flipped twin has another answer
    lr: float = 3e-3
    warmup: int = 100
    weight_decay: float = 0.05
    curriculum: float = 0.15  # fraction of steps over which max actions grows 2 -> 5
    min_steps: int = 2  # fewest actions per training story (a later phase may train on the long ones only)
    aux_weight: float = 0.5
    aux_from: int = 1  # the heading probes' first layer (resid_post); every layer from it on is trained
    siit_start: float = 0.1  # fraction of steps after which the interchange losses are on
    siit_weight: float = 3.0
    plain_frac: float = 0.25  # rows of the main pass run without any intervention
    resample_frac: float = 0.5  # rows with every head outside C from an unrelated story (the rest: mean-ablated)
    twin_frac: float = 0.0  # of the resampled rows, the share whose heads outside C read the flipped twin instead
    attn_weight: float = 1.0  # heads outside C attend to BOS from turn and Observation tokens (structural)
    attn_everywhere: bool = False  # ... and from every other token too: what they write is then story-independent
    consistency_weight: float = 0.0  # KL(clean || intervened) at every query on the resampled and ablated rows
    consistency_both: bool = False  # its gradient reaches the clean run too: clean answers move toward C's alone
    silence_weight: float = 0.0  # mean squared norm of each head outside C's write to the residual stream
    # the opposite, for an active background: heads outside C must write (mean norm of z_h W_O[:, h] over real
    # tokens) at least this share of what C's heads write; a hinge, weighted by write_floor_weight (0: off)
    write_floor: float = 0.0
    write_floor_weight: float = 10.0
    # redundancy: (primary, backup) head pairs inside C; on a share of the rows one side of every pair is
    # resampled from an unrelated story and the answer must hold, so either side alone carries it
    backup: tuple = ()
    backup_frac: float = 0.3
    # ... and the pairs are the final turn's route: of the rows whose flipped twin has another answer, this
    # share takes only the pairs' heads (not all of C) from the twin and must give the twin's answer
    # (0: only C is patched from the twin, as for every other recipe)
    pair_twin_frac: float = 0.0
    cue: str = ""
    seed: int = 0
    threads: int = 1  # one thread: on a shared 2-core machine, two were several times slower
    device: str = "cpu"  # "cuda" trains the same recipe on a GPU (numbers differ from CPU's in the last bits)
    eval_every: int = 500
    eval_n: int = 1000


def make_model(cfg: OrganismConfig, vocab_size: int):
    import transformers as tf

    torch.manual_seed(cfg.seed)
    conf = tf.LlamaConfig(vocab_size=vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.d_mlp,
                          num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
                          num_key_value_heads=cfg.n_kv_heads, max_position_embeddings=256, rope_theta=10000.0,
                          bos_token_id=0, eos_token_id=1, pad_token_id=2, tie_word_embeddings=True)
    # eager attention in training only (the attention loss reads the patterns); not saved in the config
    model = tf.LlamaForCausalLM._from_config(conf, attn_implementation="eager")
    model.config.architectures = ["LlamaForCausalLM"]
    return model.to(cfg.device)


class Heads:
    """Forward-pre-hooks on every o_proj: capture or replace per-head outputs (hook_z) row by row."""

    def __init__(self, model, n_heads: int):
        self.H = n_heads
        self.capture = None  # dict layer -> z, filled when not None
        self.keep_graph = False  # capture z with its graph (for a loss on it), not detached
        self.source = None  # dict layer -> z to patch in
        self.patch = None  # bool [rows, L, H]: take the head from source
        self.mean = None  # [L, H, d_head]
        self.ablate = None  # bool [rows, L, H]: replace the head by its mean
        layers = model.model.layers
        self.handles = [layer.self_attn.o_proj.register_forward_pre_hook(self._hook(i)) for i, layer in enumerate(layers)]

    def _hook(self, layer):
        def hook(module, args):
            x = args[0]
            b, p, _ = x.shape
            z = x.view(b, p, self.H, -1)
            if self.capture is not None:
                self.capture[layer] = z if self.keep_graph else z.detach()
            if self.patch is None and self.ablate is None:
                return None
            if self.patch is not None:
                m = self.patch[:, layer][:, None, :, None]
                z = torch.where(m, self.source[layer][:, :p], z)
            if self.ablate is not None:
                m = self.ablate[:, layer][:, None, :, None]
                z = torch.where(m, self.mean[layer][None, None].to(z.dtype), z)
            return (z.reshape(b, p, -1),)
        return hook

    def clear(self):
        self.capture = self.source = self.patch = self.ablate = None

    def remove(self):
        for h in self.handles:
            h.remove()


def _lr(cfg, step):
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t)))


def story(rng, max_steps: int = 5, informative: bool = False, min_steps: int = 2) -> dict:
    """A paper-style story; ``informative``: redrawn until flipping the final direction changes the answer."""
    while True:
        it = D.paper_item(rng, min_steps, max_steps)
        if not informative or D.flip_final(it)["answer"] != it["answer"]:
            return it


def _batch(rng, cfg, step, tok):
    frac = step / max(1, cfg.steps)
    max_steps = 5 if cfg.curriculum <= 0 else min(5, 2 + int(3 * frac / cfg.curriculum))
    max_steps = max(max_steps, cfg.min_steps)
    n_inf = sum(rng.random() < cfg.informative for _ in range(cfg.batch))
    seed = rng.randrange(1 << 30)
    clean = D.bench_items(cfg.batch - n_inf, seed, max_steps, min_steps=cfg.min_steps) if n_inf < cfg.batch else []
    clean += [story(rng, max_steps, True, cfg.min_steps) for _ in range(n_inf)]  # flipping the final turn changes the answer
    items = clean + [D.flip_final(it) for it in clean]
    return items, tuple(t.to(cfg.device) for t in D.encode_vru(tok, items, cfg.cue))


def _final_logits(logits, pos):
    """Logits at each row's last query."""
    last = (pos >= 0).sum(1) - 1
    rows = torch.arange(len(pos), device=pos.device)
    return logits[rows, pos[rows, last]]


def _choices(model, tok, items, cue, heads=None, source_items=None, mask=None):
    """Top candidate at the final query of each item; with ``mask``, those heads come from ``source_items``."""
    vocab = tok.get_vocab()
    dev = model.device
    ids, pos, _, _ = (t.to(dev) for t in D.encode_vru(tok, items, cue))
    if mask is not None:
        src = D.encode_vru(tok, source_items, cue)[0].to(dev)
        heads.capture = {}
        model(src)
        heads.source, heads.capture = heads.capture, None
        heads.patch = mask.to(dev)[None].expand(len(items), -1, -1)
    logits = model(ids).logits
    if heads is not None:
        heads.clear()
    fl = _final_logits(logits, pos)
    return [it["candidates"][int(fl[r, [vocab[c] for c in it["candidates"]]].argmax())] for r, it in enumerate(items)]


def _pair_story(rng):
    while True:
        it = D.paper_item(rng)
        f = D.flip_final(it)
        if it["answerable"] and f["answerable"] and f["answer"] != it["answer"]:
            return it, f


def unrelated_sources(n_steps: list[int], twin: torch.Tensor | None, gen: torch.Generator) -> torch.Tensor:
    """For each row, another row with as many steps (so as many tokens) that is neither itself nor its twin.

    Paper-style stories of equal step count have equal token length, so every position of the
    source lines up; a row with no such partner takes its twin (the only same-length row left).
    """
    steps = torch.tensor(n_steps)
    out = torch.arange(len(n_steps))
    for k in steps.unique().tolist():
        rows = (steps == k).nonzero().flatten()
        for r in rows.tolist():
            banned = {r} if twin is None else {r, int(twin[r])}
            pool = [int(x) for x in rows if int(x) not in banned]
            if pool:
                out[r] = pool[int(torch.randint(len(pool), (1,), generator=gen))]
            elif twin is not None:
                out[r] = twin[r]
    return out


_EVAL_SETS: dict = {}


def _eval_sets(n: int, seed: int):
    """Evaluation stories (bench, validation split), their unrelated sources and 300 informative pairs, made once."""
    if (n, seed) not in _EVAL_SETS:
        rng = random.Random(seed)
        items = D.bench_items(n, seed, split="validation")
        src = unrelated_sources([it["n_steps"] for it in items], None, torch.Generator().manual_seed(seed))
        _EVAL_SETS[(n, seed)] = (items, [items[int(i)] for i in src], [_pair_story(rng) for _ in range(300)])
    return _EVAL_SETS[(n, seed)]


@torch.no_grad()
def evaluate_organism(model, tok, cfg: OrganismConfig, n: int = 1000, seed: int = 999, heads: Heads | None = None):
    """Accuracy (answerable / unknown), pairs right on both sides, list accuracy; with ``heads``, the
    circuit checks: C patched from the flipped twin, everything outside C from the twin or resampled
    from an unrelated story of equal length."""
    was = model.training
    model.eval()
    items, sources, pairs = _eval_sets(n, seed)
    pred = _choices(model, tok, items, cfg.cue)
    ok = [p == it["answer"] for p, it in zip(pred, items)]
    ans = [o for o, it in zip(ok, items) if it["answerable"]]
    unk = [o for o, it in zip(ok, items) if not it["answerable"]]
    out = {"acc": sum(ok) / n, "acc_answerable": sum(ans) / max(1, len(ans)), "acc_unknown": sum(unk) / max(1, len(unk))}
    clean, flip = [p[0] for p in pairs], [p[1] for p in pairs]
    pc, pf = _choices(model, tok, clean, cfg.cue), _choices(model, tok, flip, cfg.cue)
    out["pairs_both"] = sum(a == c["answer"] and b == f["answer"] for a, b, c, f in zip(pc, pf, clean, flip)) / len(pairs)
    if heads is not None:
        c = _mask(model, cfg.circuit)
        pg = _choices(model, tok, clean, cfg.cue, heads, flip, c)
        pn = _choices(model, tok, clean, cfg.cue, heads, flip, ~c)
        out["patch_C_flipped"] = sum(a == f["answer"] for a, f in zip(pg, flip)) / len(pairs)
        out["patch_outside_C_changed"] = sum(a != b for a, b in zip(pn, pc)) / len(pairs)
        pr = _choices(model, tok, items, cfg.cue, heads, sources, ~c)
        out["resample_outside_C_acc"] = sum(p == it["answer"] for p, it in zip(pr, items)) / n
        out["resample_outside_C_changed"] = sum(a != b for a, b in zip(pr, pred)) / n
        if cfg.backup:  # redundancy: one side of every (primary, backup) pair resampled, then both
            prim, back = (_mask(model, side) for side in zip(*cfg.backup))
            for name, m in (("primary", prim), ("backup", back), ("both", prim | back)):
                pk = _choices(model, tok, items, cfg.cue, heads, sources, m)
                out[f"resample_{name}_acc"] = sum(p == it["answer"] for p, it in zip(pk, items)) / n
            pp = _choices(model, tok, clean, cfg.cue, heads, flip, prim | back)  # the pairs from the twin
            out["patch_pairs_flipped"] = sum(a == f["answer"] for a, f in zip(pp, flip)) / len(pairs)
    lst = D.list_items(500, seed + 1)
    ids, last, _ = (t.to(model.device) for t in D.encode_plain(tok, lst))
    lg = model(ids).logits[torch.arange(len(lst), device=model.device), last]
    out["list_acc"] = D.list_accuracy(lg, lst, tok)
    model.train(was)
    return out


def _mask(model, heads):
    L, H = model.config.num_hidden_layers, model.config.num_attention_heads
    m = torch.zeros(L, H, dtype=torch.bool)
    for l, h in heads:
        m[l, h] = True
    return m


def _aux_positions(pos, head):
    """(row, position, heading) at every step end and query: each turn token, each ``Observation:``
    query and each observed object (the query's next token, except after the final query)."""
    valid = pos >= 0
    last = valid.sum(1, keepdim=True) - 1
    ks = torch.arange(pos.shape[1])[None].expand_as(pos)
    rows = torch.arange(len(pos))[:, None].expand_as(pos)
    obj = valid & (ks < last)
    parts = [(rows[valid], pos[valid] - 1, head[valid]), (rows[valid], pos[valid], head[valid]),
             (rows[obj], pos[obj] + 1, head[obj])]
    return tuple(torch.cat(x) for x in zip(*parts))


def _pair_twin(model, cfg, z, swap, sel, gen, dev):
    """Sources and masks of the twin pass when the (primary, backup) pairs carry the final turn: on a share
    ``pair_twin_frac`` of the rows ``sel`` only the pairs' heads come from the twin, on the others all of C."""
    cmask = _mask(model, cfg.circuit).to(dev)
    pairs = _mask(model, [h for pair in cfg.backup for h in pair]).to(dev)
    pair = (torch.rand(len(sel), generator=gen).to(dev) < cfg.pair_twin_frac)[:, None, None]
    return {l: z[l][swap][sel] for l in range(len(z))}, torch.where(pair, pairs[None], cmask[None])


def _list_loss(model, tok, rng, n, dev):
    lids, llast, lans = (t.to(dev) for t in D.encode_plain(tok, D.list_items(n, rng.randrange(1 << 30))))
    return F.cross_entropy(model(lids).logits[torch.arange(len(lans), device=dev), llast], lans)


def train_organism(cfg: OrganismConfig, out_dir=None, log=print, on_eval=None, start=None):
    """Train from scratch, or go on training ``start`` (a model of the same shape: a recipe's later phase);
    returns (model, tokenizer, curve). Saves the model folder when ``out_dir`` is given."""
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    tok = D.build_tokenizer()
    dev = cfg.device
    route_ids = torch.tensor(tok.convert_tokens_to_ids([*D.TURNS, "\nObservation:"]), device=dev)
    model = make_model(cfg, len(tok)) if start is None else start.to(dev).train()
    L, H = cfg.n_layers, cfg.n_heads
    d_head = cfg.d_model // H
    probe_layers = list(range(cfg.aux_from, L))
    probes = torch.nn.ModuleList([torch.nn.Linear(cfg.d_model, 4) for _ in probe_layers]).to(dev)
    params = list(model.parameters()) + list(probes.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    heads = Heads(model, H)
    cmask = _mask(model, cfg.circuit).to(dev)
    mean = torch.zeros(L, H, d_head, device=dev)
    curve, t0 = [], time.time()
    model.train()
    for step in range(cfg.list_warm):  # the second task first: cheap (short prompts)
        for g in opt.param_groups:
            g["lr"] = cfg.lr * min(1.0, (step + 1) / cfg.warmup)
        loss = _list_loss(model, tok, rng, 64, dev)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 50 == 0:
            log(f"list warm-up {step} t={time.time() - t0:.0f}s list={loss.item():.3f}")
    last_step = min(cfg.steps, cfg.stop_after or cfg.steps)
    for step in range(last_step):
        for g in opt.param_groups:
            g["lr"] = _lr(cfg, step)
        items, (ids, pos, tgt, head) = _batch(rng, cfg, step, tok)
        n, B = len(ids), cfg.batch
        siit = cfg.siit_weight > 0 and step >= cfg.siit_start * cfg.steps
        rows_n = torch.arange(n, device=dev)
        swap = torch.cat([torch.arange(B, 2 * B), torch.arange(B)]).to(dev)  # each story's flipped twin
        if siit:
            with torch.set_grad_enabled(cfg.consistency_both):  # every head's output on every prompt, and its mean
                heads.capture = {}
                clean_logits = model(ids).logits
                z, heads.capture = heads.capture, None
                real = ids != tok.pad_token_id
                zz = torch.stack([z[l] for l in range(L)])  # [L, b, p, H, d]
                m = (zz * real[None, :, :, None, None]).sum((1, 2)) / real.sum()
                mean = m if step == int(cfg.siit_start * cfg.steps) else 0.9 * mean + 0.1 * m
            # main pass: rows plain, with every head outside C from an unrelated story of equal length,
            # or with every head outside C mean-ablated; all must keep every answer
            u = torch.rand(n, generator=gen).to(dev)
            resample = (u >= cfg.plain_frac) & (u < cfg.plain_frac + cfg.resample_frac)
            ablate = u >= cfg.plain_frac + cfg.resample_frac
            src = unrelated_sources([it["n_steps"] for it in items], swap.cpu(), gen).to(dev)
            if cfg.twin_frac > 0:  # the twin differs in the final turn only: heads outside C must not carry it
                twin = torch.rand(n, generator=gen).to(dev) < cfg.twin_frac
                src = torch.where(twin, swap, src)
            heads.source = {l: z[l][src] for l in range(L)}
            heads.patch = (~cmask)[None] & resample[:, None, None]
            heads.ablate, heads.mean = (~cmask)[None] & ablate[:, None, None], mean
            if cfg.backup:  # knock out the primaries on some rows, the backups on others
                v = torch.rand(n, generator=gen).to(dev)[:, None, None]
                prim, back = (_mask(model, side).to(dev) for side in zip(*cfg.backup))
                heads.patch = heads.patch | ((v < cfg.backup_frac / 2) & prim) | (
                    (v >= cfg.backup_frac / 2) & (v < cfg.backup_frac) & back)
        if cfg.silence_weight > 0 or cfg.write_floor > 0:
            heads.capture, heads.keep_graph = {}, True
        out = model(ids, output_hidden_states=True, output_attentions=cfg.attn_weight > 0)
        written, heads.keep_graph = heads.capture, False
        heads.clear()
        valid = pos >= 0
        rows = rows_n[:, None].expand_as(pos)[valid]
        loss_task = F.cross_entropy(out.logits[rows, pos[valid]], tgt[valid])
        ar, ap, ah = (t.to(dev) for t in _aux_positions(pos.cpu(), head.cpu()))
        loss_aux = sum(F.cross_entropy(p(out.hidden_states[l + 1][ar, ap]), ah)
                       for p, l in zip(probes, probe_layers)) / len(probes)
        loss_list = _list_loss(model, tok, rng, cfg.list_batch, dev)
        loss = loss_task + cfg.aux_weight * loss_aux + loss_list
        logs = {"task": loss_task.item(), "aux": loss_aux.item(), "list": loss_list.item()}
        if cfg.silence_weight > 0 or cfg.write_floor > 0:  # what each head writes: z_h W_O[:, h], [b, p, head, d_model]
            writes = [torch.einsum("bphd,mhd->bphm", written[l], layer.self_attn.o_proj.weight.view(cfg.d_model, H, d_head))
                      for l, layer in enumerate(model.model.layers)]
        if cfg.silence_weight > 0:  # heads outside C write (almost) nothing
            loss_silence = 0.0
            for l, write in enumerate(writes):
                loss_silence = loss_silence + write.pow(2).sum(-1)[..., ~cmask[l]].mean()
            loss = loss + cfg.silence_weight * loss_silence / L
            logs["silence"] = float(loss_silence) / L
        if cfg.write_floor > 0:  # heads outside C keep writing: the background stays active
            real = (ids != tok.pad_token_id)[:, :, None]
            norms = torch.stack([write.norm(dim=-1) for write in writes])  # [L, b, p, H]
            per_head = (norms * real[None]).sum((1, 2)) / real.sum()  # [L, H]
            ratio = per_head[~cmask].mean() / per_head[cmask].mean().detach()
            loss = loss + cfg.write_floor_weight * F.relu(cfg.write_floor - ratio)
            logs["write_ratio"] = ratio.item()
        if siit and cfg.consistency_weight > 0:  # the intervened rows must answer as the clean ones do
            hit = (resample | ablate)[rows]
            if hit.any():
                r, q = rows[hit], pos[valid][hit]
                loss_kl = F.kl_div(F.log_softmax(out.logits[r, q], -1), F.log_softmax(clean_logits[r, q], -1),
                                   log_target=True, reduction="batchmean")
                loss = loss + cfg.consistency_weight * loss_kl
                logs["kl"] = loss_kl.item()
        if cfg.attn_weight > 0:  # outside C, turn and query tokens read only BOS: the route is C's alone
            at = torch.stack(out.attentions)[:, :, :, :, 0]  # [L, b, H, q] attention to BOS
            where = (ids != tok.pad_token_id) if cfg.attn_everywhere else torch.isin(ids, route_ids)  # [b, q]
            miss = (1 - at).permute(1, 3, 0, 2)[where]  # [n_pos, L, H]
            loss_attn = miss[:, ~cmask].mean()
            loss = loss + cfg.attn_weight * loss_attn
            logs["attn"] = loss_attn.item()
        if siit:  # C from the twin -> the twin's answer, on stories where the twin's answer differs
            last = (pos >= 0).sum(1) - 1
            qf, tf = pos[rows_n, last], tgt[rows_n, last]
            sel = (tf != tf[swap]).nonzero().flatten()
            if len(sel):
                heads.source = {l: z[l][swap][sel] for l in range(L)}
                heads.patch = cmask[None].expand(len(sel), -1, -1)
                if cfg.backup and cfg.pair_twin_frac > 0:  # some rows: the pairs from the twin, not all of C
                    heads.source, heads.patch = _pair_twin(model, cfg, z, swap, sel, gen, dev)
                lg = model(ids[sel]).logits[torch.arange(len(sel), device=dev), qf[sel]]
                heads.clear()
                loss_c = F.cross_entropy(lg, tf[swap][sel])
                loss = loss + cfg.siit_weight * loss_c
                logs["siit_c"] = loss_c.item()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step % 50 == 0:
            log(f"step {step} t={time.time() - t0:.0f}s " + " ".join(f"{k}={v:.3f}" for k, v in logs.items()))
        if (step + 1) % cfg.eval_every == 0 or step + 1 == last_step:
            ev = evaluate_organism(model, tok, cfg, n=cfg.eval_n, heads=heads)
            point = {"step": step + 1, "seconds": round(time.time() - t0, 1), **logs, **ev}
            curve.append(point)
            log(json.dumps(point))
            if on_eval:
                on_eval(model, tok, point)
    heads.remove()
    model.eval()
    if out_dir:
        save(model, tok, [cfg], curve, out_dir)
    return model, tok, curve


def save(model, tok, phases, curve, out_dir):
    """The model folder: weights, tokenizer, and training.json (every phase's config, the whole curve)."""
    from pathlib import Path

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # the answer is one word and training never teaches what follows it: generation ends there
    model.generation_config.eos_token_id = tok.convert_tokens_to_ids(["<eos>", D.UNKNOWN, *D.objects()])
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out)
    tok.save_pretrained(out)
    (out / "training.json").write_text(json.dumps({"phases": [asdict(p) for p in phases], "curve": curve}, indent=1))
