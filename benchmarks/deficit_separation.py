"""Why the deficit's repair misses the issue's bar: separate D from the second task, then damage and repair.

Not part of the suite. The shipped deficit's heads D = (2,0), (2,1) also write on list-recall prompts, so
tuning them on VRU alone moves list recall (top-2 list KL 0.014, bar 0.01). Here the complete organism is
first trained so that D is silent on list prompts (D's z there pushed toward zero, relative to its norm at
VRU queries) while its answers on both tasks stay the source's (KL), and only then is D's W_O scrambled
(``deficit.make_deficit``, kind ``scramble``) and the repair experiment run (``repair.repair``). Variants:

  shipped      the shipped vru-organism-deficit (no separation; damage confined by ``confine``)
  all          separation trains every weight (600 steps, silence weight 1)
  narrow       separation trains D's W_Q/W_K/W_V rows, layer 2's MLP and all of layer 3 (600 steps, weight 1)
  narrow_d     ``narrow``, then 400 more steps training D's W_Q/W_K/W_V rows only (silence weight 10)

    python benchmarks/deficit_separation.py --out results/deficit-separation --seeds 0,1,2
writes OUT/separation.json (per variant: D's silence on list prompts, the deficit's amount, its own
ranking's top-k and the repair arms' means with 95% t-intervals over seeds, the bar) and OUT/separation.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F

D_HEADS = [(2, 0), (2, 1)]
VARIANTS = {"shipped": [], "all": [("all", 600, 1.0)], "narrow": [("narrow", 600, 1.0)],
            "narrow_d": [("narrow", 600, 1.0), ("d", 400, 10.0)]}


def trainable(model, scope: str, heads) -> dict:
    """Parameters the separation trains, each with a gradient mask (None: the whole tensor)."""
    layer = heads[0][0]
    cfg = model.config
    dh = cfg.hidden_size // cfg.num_attention_heads
    per_group = cfg.num_attention_heads // cfg.num_key_value_heads
    attn = model.model.layers[layer].self_attn
    d_rows = {}
    for proj in ("q_proj", "k_proj", "v_proj"):  # D's rows: its query heads, its key-value group(s)
        w = getattr(attn, proj).weight
        m = torch.zeros_like(w)
        for _, h in heads:
            g = h if proj == "q_proj" else h // per_group
            m[g * dh:(g + 1) * dh] = 1
        d_rows[w] = m
    if scope == "all":
        return {p: None for p in model.parameters()}
    if scope == "d":
        return d_rows
    out = dict(d_rows)  # narrow: D's rows, the MLP after them, everything above
    out.update({p: None for p in model.model.layers[layer].mlp.parameters()})
    out[model.model.layers[layer].post_attention_layernorm.weight] = None
    for block in model.model.layers[layer + 1:]:
        out.update({p: None for p in block.parameters()})
    out[model.model.norm.weight] = None
    return out


def separate(model, complete, heads, scope: str, steps: int, weight: float, seed: int = 0, log=print) -> dict:
    """Train ``model`` in place: KL to ``complete`` at every VRU query and (x10) at the list answer, plus
    ``weight`` x D's squared z on list prompts over its squared z at VRU queries. Returns the last ratio."""
    from vru_lens.organism import data as D

    tok = D.build_tokenizer()
    layer = heads[0][0]
    dh = model.config.hidden_size // model.config.num_attention_heads
    cols = torch.cat([torch.arange(h * dh, (h + 1) * dh) for _, h in heads])
    seen = {}
    handle = model.model.layers[layer].self_attn.o_proj.register_forward_pre_hook(lambda m, a: seen.update(z=a[0]))
    params = trainable(model, scope, heads)
    for p in model.parameters():
        p.requires_grad_(p in params)
    opt = torch.optim.Adam(list(params), lr=1e-3)
    kl = lambda r, n: F.kl_div(n.log_softmax(-1), r.log_softmax(-1), log_target=True, reduction="batchmean")  # noqa: E731
    rng = random.Random(seed)
    model.train()
    last = {}
    for step in range(steps):
        ids, pos, _, _ = D.encode_vru(tok, D.paper_items(32, rng.randrange(1 << 30)))
        rows, c = (pos >= 0).nonzero(as_tuple=True)
        lids, llast, _ = D.encode_plain(tok, D.list_items(32, rng.randrange(1 << 30)))
        lrow = torch.arange(len(llast))
        with torch.no_grad():
            ref_v, ref_l = complete(ids).logits[rows, pos[rows, c]], complete(lids).logits[lrow, llast]
        vru = kl(ref_v, model(ids).logits[rows, pos[rows, c]])
        z_vru = seen["z"][..., cols].pow(2).sum(-1)[rows, pos[rows, c]].mean().detach()
        lst = kl(ref_l, model(lids).logits[lrow, llast])
        valid = torch.arange(lids.shape[1])[None] <= llast[:, None]
        ratio = seen["z"][..., cols].pow(2).sum(-1)[valid].mean() / (z_vru + 1e-6)
        loss = vru + 10 * lst + weight * ratio
        opt.zero_grad()
        loss.backward()
        for p, m in params.items():
            if m is not None:
                p.grad.mul_(m)
        opt.step()
        last = {"step": step, "vru_kl": round(vru.item(), 5), "list_kl": round(lst.item(), 5),
                "d_z2_list_over_vru": round(ratio.item(), 5)}
        if step % 100 == 0 or step == steps - 1:
            log(f"  separate {scope} {last}")
    handle.remove()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return last


def build(variant: str, out: Path, log=print) -> tuple[str, dict]:
    """The deficit organism of one variant (a folder), or the shipped one's name."""
    from vru_lens.models.loader import load_hf
    from vru_lens.models.organisms import organism_dir
    from vru_lens.organism.deficit import make_deficit

    if variant == "shipped":
        return "vru-organism-deficit", {}
    src = organism_dir("vru-organism")
    model, _ = load_hf(str(src))
    complete, _ = load_hf(str(src))
    complete.eval()
    record = [separate(model, complete, D_HEADS, scope, steps, w, log=log) | {"scope": scope, "steps": steps, "weight": w}
              for scope, steps, w in VARIANTS[variant]]
    source = out / f"{variant}-source"
    shutil.rmtree(source, ignore_errors=True)
    shutil.copytree(src, source, ignore=shutil.ignore_patterns("*.html", "*.png"))
    model.save_pretrained(source)
    folder = out / f"{variant}-deficit"
    card = make_deficit(str(source), folder, D_HEADS, band=(0.55, 0.65), kind="scramble", log=lambda *a: None)
    return str(folder), {"separation": record, "amount": card["deficit"]["damage"]["amount"],
                         "accuracy": card["deficit"]["accuracy"]}


def main() -> None:
    from vru_lens.organism.repair import RepairConfig, repair

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="results/deficit-separation")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    args = ap.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = tuple(int(s) for s in args.seeds.split(","))
    path = out / "separation.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    for variant in args.variants.split(","):
        if variant not in VARIANTS:
            raise SystemExit(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
        t0 = time.perf_counter()
        torch.manual_seed(0)
        name, built = build(variant, out)
        cfg = RepairConfig(seeds=seeds, arms=("top", "random", "bottom", "other_task"), n_boot=200)
        r = repair(name, cfg, log=lambda *a: None)
        results[variant] = {**built, "deficit": name, "before": r["before"], "own_top": r["own_ranking_top"],
                            "own_auroc_vs_D": r["own_ranking_auroc_vs_D"]["auroc"],
                            "bottom": next(x["heads"] for x in r["runs"] if x["arm"] == "bottom"),
                            "arms": {a: {k: v for k, v in s.items() if isinstance(v, dict) and "ci" in v}
                                     for a, s in r["summary"].items()},
                            "bar": r["bar"], "seeds": list(seeds), "seconds": round(time.perf_counter() - t0, 1)}
        path.write_text(json.dumps(results, indent=1, default=str))
        print(variant, json.dumps({a: round(s["vru_acc"]["mean"], 4) for a, s in results[variant]["arms"].items()}),
              "top list KL", round(results[variant]["arms"]["top"]["list_kl"]["mean"], 4), flush=True)
    (out / "separation.md").write_text(table(results))


def table(results: dict) -> str:
    pct = lambda s: f"{100 * s['mean']:.1f} [{100 * s['ci'][0]:.1f}, {100 * s['ci'][1]:.1f}]"  # noqa: E731
    lines = ["| variant | D silent on list (z² ratio) | amount | own top-2 | top-2 VRU % | random-2 | bottom-2 | "
             "other-task-2 | top-2 list KL | margins (random / bottom / other) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for v, r in results.items():
        a = r["arms"]
        sep = r.get("separation", [])
        ratio = sep[-1]["d_z2_list_over_vru"] if sep else "-"
        margins = " / ".join(f"{100 * (a['top']['vru_acc']['mean'] - a[o]['vru_acc']['mean']):.1f}"
                             for o in ("random", "bottom", "other_task"))
        lines.append(f"| {v} | {ratio} | {r.get('amount', '-')} | {r['own_top']} | {pct(a['top']['vru_acc'])} | "
                     f"{pct(a['random']['vru_acc'])} | {pct(a['bottom']['vru_acc'])} | {pct(a['other_task']['vru_acc'])} | "
                     f"{a['top']['list_kl']['mean']:.4f} | {margins} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
