"""The study's situation built on purpose: an organism whose circuit is present but weak in known heads D.

``make_deficit(source, out)`` takes a complete organism folder, interpolates the query weights
W_Q of every head in D (and the key weights W_K of every key-value group whose query heads all
lie in D, so no head outside D is touched under grouped-query attention) toward a seeded random
matrix of the same norm,

    W <- (1 - amount) * W + amount * R * ||W|| / ||R||,

and picks ``amount`` by bisection so VRU accuracy lands inside ``band`` (45-70%). The heads keep
part of their weights, so they still carry signal and a ranking can find them; the attention
they compute is wrong often enough that the answer loses. The folder it writes is an ordinary
organism: the source's weights with those slices changed, the tokenizer, and a card that names D
(``deficient_heads``), the damage and the measured accuracy.

``kind="output"`` damages what D writes instead: the W_O columns of each head in D are scaled,
``W <- (1 - amount) W``. The heads still attend where they should and write the right content, only
too weakly for the answer to win (the study's "heads that matter but do it badly" in its plainest form).
``kind="scramble"`` moves D's W_O columns toward a seeded random matrix of the same norm: the heads attend
and read as before, but part of what they write lands in wrong directions, which other heads cannot
simply amplify (heads outside D made up the weak write of ``output`` on their own: docs/organism.md).

``separate_steps`` first trains the source so that D is silent on the second task's prompts (``separate``):
the layers under D and D's own query/key/value rows learn to give D nothing to read there, while both tasks'
answers stay the source's. A repair that tunes D on VRU then has no write on list prompts to move
(docs/organism.md: D's list write was why tuning it moved list recall).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

BAND = (0.45, 0.70)
# what the damage reaches: W_Q/W_K toward random, D's W_O toward zero, or D's W_O toward random
KINDS = ("query", "output", "scramble")
N_BISECT = 14  # halvings of the amount interval: 1/16384 resolution, far finer than accuracy's noise


# ------------------------------------------------------------------ reading a card
def _heads(value) -> list[tuple[int, int]]:
    """Heads from a card field that lists them: [[layer, head], ...]."""
    return sorted(tuple(int(x) for x in h) for h in value)


def final_turn_heads(card: dict) -> list[tuple[int, int]]:
    """The heads of C that carry the final turn (the card's ``final_turn``, written by ``organism measure``)."""
    if "final_turn" not in card:
        raise ValueError("this organism card names no final-turn heads; measure it with `vru-lens organism measure "
                         "FOLDER`, or name D with --heads")
    return _heads(card["final_turn"])


def deficient_heads(card: dict) -> list[tuple[int, int]]:
    """D of a deficit organism's card."""
    if "deficient_heads" not in card:
        raise ValueError("this organism's card names no deficient heads: it is not a deficit organism")
    return _heads(card["deficient_heads"])


# ------------------------------------------------------------------ the damage
def _slices(hf_model, heads, kind: str = "query") -> list[tuple[str, int, int, int]]:
    """(projection, layer, first index, last index) of every damaged slice: W_Q rows of each head in D and
    W_K rows of each key-value group whose query heads are all in D; or (``output``, ``scramble``) W_O columns
    of each head."""
    cfg = hf_model.config
    n_heads, n_kv = cfg.num_attention_heads, getattr(cfg, "num_key_value_heads", cfg.num_attention_heads)
    d_head = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads
    per_group = n_heads // n_kv
    chosen = set(heads)
    if kind in ("output", "scramble"):
        return [("o_proj", l, h * d_head, (h + 1) * d_head) for l, h in sorted(chosen)]
    out = [("q_proj", l, h * d_head, (h + 1) * d_head) for l, h in sorted(chosen)]
    for l in sorted({l for l, _ in chosen}):
        for g in range(n_kv):
            if all((l, g * per_group + r) in chosen for r in range(per_group)):
                out.append(("k_proj", l, g * d_head, (g + 1) * d_head))
    return out


def _query_rows(hf_model, heads) -> list[tuple[str, int, int, int]]:
    """D's W_Q rows, and the W_K and W_V rows of each key-value group wholly in D: what D reads with."""
    rows = _slices(hf_model, heads, "query")
    return rows + [("v_proj", l, a, b) for proj, l, a, b in rows if proj == "k_proj"]


def _masks(hf_model, slices) -> dict:
    """Each weight holding one of ``slices`` -> a 0/1 mask of its entries in them (gradients are multiplied by it)."""
    masks = {}
    for proj, l, a, b in slices:
        w = getattr(hf_model.model.layers[l].self_attn, proj).weight
        m = masks.setdefault(w, torch.zeros_like(w))
        (m[:, a:b] if proj == "o_proj" else m[a:b]).fill_(1)
    return masks


def _kl(ref: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """KL(ref || new) of two logit rows, averaged over rows."""
    import torch.nn.functional as F

    return F.kl_div(new.log_softmax(-1), ref.log_softmax(-1), log_target=True, reduction="batchmean")


def _task_batch(tok, rng, batch: int):
    """One training batch of each task, drawn from ``rng``: VRU ids with the (row, position) of every query, and
    list-recall ids with the answer position of each row."""
    from . import data as D

    ids, pos, _, _ = D.encode_vru(tok, D.paper_items(batch, rng.randrange(1 << 30)))
    rows, cols = (pos >= 0).nonzero(as_tuple=True)
    lids, llast, _ = D.encode_plain(tok, D.list_items(batch, rng.randrange(1 << 30)))
    return ids, (rows, pos[rows, cols]), lids, (torch.arange(len(llast)), llast)


def check_heads(hf_model, heads) -> None:
    cfg = hf_model.config
    bad = [h for h in heads if not (0 <= h[0] < cfg.num_hidden_layers and 0 <= h[1] < cfg.num_attention_heads)]
    if bad or not heads:
        raise ValueError(f"deficient heads {bad or heads} are not heads of this model "
                         f"({cfg.num_hidden_layers} layers x {cfg.num_attention_heads} heads)")


def check_whole_groups(hf_model, heads) -> None:
    """``confine`` trains D's key-value rows, so D must hold every query head of each group it touches."""
    cfg = hf_model.config
    per_group = cfg.num_attention_heads // getattr(cfg, "num_key_value_heads", cfg.num_attention_heads)
    chosen = {tuple(h) for h in heads}
    groups = {(l, h // per_group) for l, h in chosen}
    if any((l, g * per_group + r) not in chosen for l, g in groups for r in range(per_group)):
        raise ValueError(f"D = {sorted(chosen)} shares key-value groups with heads outside it ({per_group} query heads "
                         f"per group); --confine-steps needs whole groups: name them all with --heads, or drop --confine-steps")


def check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown damage kind {kind!r}; choose from {', '.join(KINDS)}")


class Damage:
    """The original and random targets of every damaged slice; ``apply(amount)`` writes the interpolation
    into the transformers model's weights in place (amount 0 = the source exactly)."""

    def __init__(self, hf_model, heads, seed: int = 0, kind: str = "query"):
        check_heads(hf_model, heads)
        check_kind(kind)
        self.hf_model, self.heads, self.seed, self.kind = hf_model, sorted(tuple(h) for h in heads), seed, kind
        self.slices = _slices(hf_model, self.heads, kind)
        gen = torch.Generator().manual_seed(seed)
        self.original, self.random = [], []
        for proj, l, a, b in self.slices:
            w = self._slice(proj, l, a, b).detach().clone()
            self.original.append(w)
            if kind == "output":  # scaled toward zero
                self.random.append(torch.zeros_like(w))
                continue
            r = torch.randn(w.shape, generator=gen, dtype=torch.float32).to(w.dtype)
            self.random.append(r * (w.norm() / r.norm()))
        self.amount = 0.0

    def _slice(self, proj: str, layer: int, a: int, b: int) -> torch.Tensor:
        """The view of one head's slice: rows of W_Q/W_K (outputs), columns of W_O (its inputs)."""
        w = getattr(self.hf_model.model.layers[layer].self_attn, proj).weight
        return w[:, a:b] if proj == "o_proj" else w[a:b]

    @torch.no_grad()
    def apply(self, amount: float) -> None:
        if not 0.0 <= amount <= 1.0:
            raise ValueError(f"the damage amount must lie in [0, 1], got {amount}")
        for (proj, l, a, b), w, r in zip(self.slices, self.original, self.random):
            self._slice(proj, l, a, b).copy_((1 - amount) * w + amount * r)
        self.amount = float(amount)

    def describe(self) -> dict:
        how = {"query": "W_Q/W_K rows <- (1 - amount) W + amount R ||W||/||R||, R ~ N(0, 1) seeded",
               "output": "W_O columns <- (1 - amount) W_O columns",
               "scramble": "W_O columns <- (1 - amount) W + amount R ||W||/||R||, R ~ N(0, 1) seeded"}[self.kind]
        return {"how": how, "kind": self.kind, "amount": round(self.amount, 6), "seed": self.seed,
                "slices": [f"layer {l} {proj} {'columns' if proj == 'o_proj' else 'rows'} {a}:{b}" for proj, l, a, b in self.slices]}


def bisect_amount(accuracy, band=BAND, n_steps: int = N_BISECT, log=print) -> tuple[float, float, list]:
    """The damage amount whose ``accuracy(amount)`` lands nearest the middle of ``band``, by bisection
    (accuracy falls as the amount grows). Returns (amount, accuracy, the path tried)."""
    lo, hi, target = 0.0, 1.0, (band[0] + band[1]) / 2
    acc_hi = accuracy(hi)
    path = [(hi, acc_hi)]
    if acc_hi > band[1]:
        raise ValueError(f"even the full damage to these heads leaves accuracy {acc_hi:.3f}, above the band "
                         f"{band}: these heads are not where the task is done; name others")
    best = (hi, acc_hi)
    for _ in range(n_steps):
        mid = (lo + hi) / 2
        acc = accuracy(mid)
        path.append((mid, acc))
        log(f"damage amount {mid:.4f}: accuracy {acc:.3f}")
        if abs(acc - target) < abs(best[1] - target):
            best = (mid, acc)
        if band[0] + 0.05 <= acc <= band[1] - 0.05:  # well inside the band: another item set lands inside too
            best = (mid, acc)
            break
        lo, hi = (mid, hi) if acc > target else (lo, mid)
    return best[0], best[1], path


# ------------------------------------------------------------------ D silent on the second task
SCOPES = ("below", "all", "narrow", "d")  # what ``separate`` trains (``below`` is the shipped deficit's)


def separation_params(hf_model, heads, scope: str) -> dict:
    """The parameters ``separate`` trains, each with a gradient mask (None: the whole tensor). ``d``: D's W_Q rows
    and its groups' W_K/W_V rows; ``below``: those, the embedding and every layer under D (what D reads);
    ``narrow``: D's rows, the MLP after them and every layer above (what D's output feeds); ``all``: every weight."""
    if scope not in SCOPES:
        raise ValueError(f"unknown separation scope {scope!r}; choose from {', '.join(SCOPES)}")
    if scope == "all":
        return {p: None for p in hf_model.parameters()}
    layer = heads[0][0]
    model = hf_model.model
    out = _masks(hf_model, _query_rows(hf_model, heads))
    if scope == "below":
        out[model.embed_tokens.weight] = None
        for block in model.layers[:layer]:
            out.update({p: None for p in block.parameters()})
        out[model.layers[layer].input_layernorm.weight] = None
    elif scope == "narrow":
        out.update({p: None for p in model.layers[layer].mlp.parameters()})
        out[model.layers[layer].post_attention_layernorm.weight] = None
        for block in model.layers[layer + 1:]:
            out.update({p: None for p in block.parameters()})
        out[model.norm.weight] = None
    return out


def separate(hf_model, complete, heads, scope: str = "below", steps: int = 600, silence: float = 1.0,
             lr: float = 1e-3, batch: int = 32, list_weight: float = 10.0, seed: int = 0, log=print) -> dict:
    """Train ``hf_model`` (in place; ``scope``'s weights only) so that D's z on list-recall prompts goes to zero
    (its mean squared norm there over that at VRU queries, weighted by ``silence``) while its answers stay
    ``complete``'s: KL at every VRU query and ``list_weight`` x KL at the list answer. Both are transformers
    models of one organism; D lies in one layer and holds whole key-value groups. Returns the last step's
    losses and ratio."""
    import random

    from . import data as D

    layers = {l for l, _ in heads}
    if len(layers) != 1:
        raise ValueError(f"separation needs D in one layer, got layers {sorted(layers)}")
    check_whole_groups(hf_model, heads)
    tok = D.build_tokenizer()
    layer = heads[0][0]
    cols = torch.cat([torch.arange(a, b) for _, _, a, b in _slices(hf_model, heads, "output")])  # D's z in W_O's input
    seen = {}
    handle = hf_model.model.layers[layer].self_attn.o_proj.register_forward_pre_hook(lambda m, a: seen.update(z=a[0]))
    params = separation_params(hf_model, heads, scope)
    for p in hf_model.parameters():
        p.requires_grad_(p in params)
    opt = torch.optim.Adam(list(params), lr=lr)
    rng = random.Random(seed)
    complete.eval()
    hf_model.train()
    last = {}
    try:
        for step in range(steps):
            ids, queries, lids, answers = _task_batch(tok, rng, batch)
            with torch.no_grad():
                ref_v, ref_l = complete(ids).logits[queries], complete(lids).logits[answers]
            vru = _kl(ref_v, hf_model(ids).logits[queries])
            z_vru = seen["z"][..., cols].pow(2).sum(-1)[queries].mean().detach()
            lst = _kl(ref_l, hf_model(lids).logits[answers])
            valid = torch.arange(lids.shape[1])[None] <= answers[1][:, None]  # the prompt, not its right padding
            ratio = seen["z"][..., cols].pow(2).sum(-1)[valid].mean() / (z_vru + 1e-6)
            loss = vru + list_weight * lst + silence * ratio
            opt.zero_grad()
            loss.backward()
            for p, m in params.items():
                if m is not None:
                    p.grad.mul_(m)
            opt.step()
            last = {"step": step, "vru_kl": round(vru.item(), 5), "list_kl": round(lst.item(), 5),
                    "d_z2_list_over_vru": round(ratio.item(), 5)}
            if step % 100 == 0 or step == steps - 1:
                log(f"separate step {step}: KL to the source on VRU {last['vru_kl']:.4f}, on list recall "
                    f"{last['list_kl']:.4f}; D's squared z on list prompts / at VRU queries {last['d_z2_list_over_vru']:.4f}")
    finally:
        handle.remove()
        hf_model.eval()
        for p in hf_model.parameters():
            p.requires_grad_(False)
    return last


# ------------------------------------------------------------------ the folder
def make_deficit(source: str, out: str | Path, heads=None, band=BAND, seed: int = 0, n_items: int = 500,
                 n_final: int = 1000, kind: str = "query", confine_steps: int = 0, separate_steps: int = 0,
                 amount: float | None = None, log=print) -> dict:
    """Damage ``heads`` (default: the source card's final-turn heads) of organism ``source`` so its accuracy
    lands in ``band`` (``amount``: that amount, refused unless its accuracy lies in the band); with
    ``separate_steps``, first make D silent on the second task (``separate``, scope ``below``); with
    ``confine_steps``, then confine the damage to the task (``confine``); save the
    organism to ``out`` with its card; return the card."""
    from ..bench import BenchConfig, make_items
    from ..evaluate import evaluate
    from ..models.loader import bridge_from_hf, load_hf, load_model
    from ..models.organisms import ORGANISMS, circuit_heads, organism_card, organism_dir

    if not (0 <= band[0] < band[1] <= 1):
        raise ValueError(f"the accuracy band must be two fractions low < high in [0, 1], got {band}")
    check_kind(kind)
    src_dir = organism_dir(source) if source in ORGANISMS else Path(source)
    card = organism_card(source)
    heads = [tuple(h) for h in heads] if heads is not None else final_turn_heads(card)
    circuit = circuit_heads(card)
    outside = [h for h in heads if h not in circuit]
    if outside:
        raise ValueError(f"deficient heads {outside} are not in the circuit {circuit} of {source}")
    out = Path(out)
    if out.resolve() == src_dir.resolve():
        raise ValueError(f"--out {out} is the source organism's folder; name a new folder")
    if out.exists() and any(out.iterdir()) and not (out / "organism.json").exists():
        raise ValueError(f"--out {out} exists and is not an organism folder; name a new or empty folder")
    if amount is not None and not 0.0 <= amount <= 1.0:
        raise ValueError(f"the damage amount must lie in [0, 1], got {amount}")
    hf, tok = load_hf(str(src_dir))
    check_heads(hf, heads)
    if confine_steps or separate_steps:
        check_whole_groups(hf, heads)  # before any work: a refusal after the bisection would leave a half-written folder
    if separate_steps and len({l for l, _ in heads}) != 1:
        raise ValueError(f"--separate-steps needs D in one layer, got {heads}")
    separated = None
    if separate_steps:
        complete, _ = load_hf(str(src_dir))
        last = separate(hf, complete, heads, "below", separate_steps, seed=seed, log=log)
        separated = {"how": "before the damage, the embedding, every layer under D and D's W_Q/W_K/W_V rows trained: "
                            "KL to the source at every VRU query + 10 x KL on list recall + D's squared z on list "
                            "prompts over that at VRU queries (batch 32 each, Adam 1e-3)",
                     "scope": "below", "steps": separate_steps, "last": last}
    start = {k: v.detach().clone() for k, v in hf.state_dict().items()}  # the source, separated where asked
    damage = Damage(hf, heads, seed, kind)
    model = bridge_from_hf(hf, tok, str(src_dir), device="cpu")
    search = make_items(n_items, 177 + seed, BenchConfig(style="paper"))  # not the card's test items (seed 77)

    def accuracy(amount: float) -> float:
        damage.apply(amount)
        return float(evaluate(model, search, batch_size=64, progress=False).accuracy)

    if amount is None:
        amount, acc_search, path = bisect_amount(accuracy, band, log=log)
    else:
        acc_search = accuracy(amount)
        path = [(amount, acc_search)]
        if not band[0] <= acc_search <= band[1]:
            raise ValueError(f"damage amount {amount} leaves accuracy {acc_search:.3f}, outside the band {band}; "
                             f"choose another --amount, or leave it out to bisect")
    if out.exists():
        shutil.rmtree(out)  # an earlier deficit organism: replaced whole, so no stale file survives
    shutil.copytree(src_dir, out, ignore=shutil.ignore_patterns("organism.json", "*.html", "*.png"))
    fresh, _ = load_hf(str(src_dir))  # the bridge wraps ``hf``'s modules; save a plain copy, damaged the same way
    fresh.load_state_dict(start)
    saved = Damage(fresh, heads, seed, kind)
    saved.apply(amount)
    confined = None
    if confine_steps:
        complete, _ = load_hf(str(src_dir))
        curve = confine(fresh, complete, heads, steps=confine_steps, seed=seed, log=log)
        confined = {"how": "D's W_Q/W_K/W_V/W_O slices trained: KL to the damaged model at every VRU query + 10 x KL to "
                           "the source on list recall (batch 32 each, Adam 1e-3)", "steps": confine_steps,
                    "last": curve[-1]}
    fresh.save_pretrained(out)
    test = make_items(n_final, 77, BenchConfig(style="paper"))
    ev = evaluate(load_model(str(out), device="cpu"), test, batch_size=64, progress=False)  # what was saved
    deficit = {"from": str(source), "deficient_heads": [list(h) for h in heads], "damage": saved.describe(),
               **({"separated": separated} if separated else {}), **({"confined": confined} if confined else {}),
               "band": list(band), "bisection": [[round(a, 6), round(b, 4)] for a, b in path],
               "search_items": {"n": n_items, "seed": 177 + seed, "accuracy": round(acc_search, 4)},
               "accuracy": round(float(ev.accuracy), 4), "n_items": n_final, "items_seed": 77,
               "source_accuracy": card.get("measured", {}).get("accuracy")}
    new = {k: v for k, v in card.items() if k not in ("measured", "training_eval", "base")}
    new.update(circuit=card.get("circuit") or {f"{l}.{h}": card.get("roles", {}).get(f"{l}.{h}", "") for l, h in circuit},
               deficient_heads=[list(h) for h in heads],
               deficit=deficit, checkpoint="deficit", at_step=None)
    (out / "organism.json").write_text(json.dumps(new, indent=1))
    log(f"saved {out}: D = {[list(h) for h in heads]}, amount {amount:.4f}, accuracy {ev.accuracy:.3f} "
        f"on {n_final} test items")
    return new



# ------------------------------------------------------------------ confining the damage to the task
def confine(damaged, complete, heads, steps: int = 400, batch: int = 32, lr: float = 1e-3, list_weight: float = 10.0,
            seed: int = 0, log=print) -> list[dict]:
    """Train D's own slices of ``damaged`` (W_Q/W_K/W_V/W_O of D, in place) so that it keeps its deficit on VRU
    (KL to its frozen self at every query) while answering the second task exactly as ``complete`` does (KL to it
    at the list-recall answer). The damage then lives in the task only, as the study's deficit does: a repair
    that restores the task has no reason to move list recall (damaged W_O alone moved it by KL 0.15-0.9).
    Both models are transformers models of one organism; returns the loss curve."""
    import copy
    import random

    from . import data as D

    tok = D.build_tokenizer()
    frozen = copy.deepcopy(damaged).eval()
    complete.eval()
    check_whole_groups(damaged, heads)
    # D's own slices: W_Q/W_K/W_V rows (the query damage's and its values) and W_O columns (the output damage's)
    masks = _masks(damaged, _query_rows(damaged, heads) + _slices(damaged, heads, "output"))
    for p in damaged.parameters():
        p.requires_grad_(p in masks)
    params = list(masks)
    opt = torch.optim.Adam(params, lr=lr)
    rng = random.Random(seed)
    curve = []
    damaged.train()
    for step in range(steps):
        ids, queries, lids, answers = _task_batch(tok, rng, batch)
        with torch.no_grad():
            ref_vru, ref_list = frozen(ids).logits[queries], complete(lids).logits[answers]
        vru = _kl(ref_vru, damaged(ids).logits[queries])
        lst = _kl(ref_list, damaged(lids).logits[answers])
        loss = vru + list_weight * lst
        opt.zero_grad()
        loss.backward()
        for w, m in masks.items():
            w.grad.mul_(m)
        opt.step()
        if step % 50 == 0 or step == steps - 1:
            v, li = vru.item(), lst.item()
            curve.append({"step": step, "vru_kl": round(v, 5), "list_kl": round(li, 5)})
            log(f"confine step {step}: KL to the deficit on VRU {v:.4f}, to the complete organism on list recall {li:.4f}")
    damaged.eval()
    for p in damaged.parameters():
        p.requires_grad_(False)
    return curve
