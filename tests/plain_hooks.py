"""Plain forward hooks on a transformers Llama, sharing no code with vru_lens: what the organism tests
measure the package against. A head's ``z`` is the input of ``o_proj`` sliced by head; resampling takes
it from another item of the same token length (a derangement within each length group)."""

from __future__ import annotations

import torch


def circuit_of(card) -> set[tuple[int, int]]:
    return {tuple(int(x) for x in k.split(".")) for k in card["circuit"]}


@torch.no_grad()
def choices(model, tok, items, resample=frozenset(), draw=0):
    """Top candidate per item; the heads in ``resample`` take their z from another item of equal length."""
    H = model.config.num_attention_heads
    layers = model.model.layers
    by_len: dict[int, list[int]] = {}
    enc = [tok(it["prompt"])["input_ids"] for it in items]
    for i, e in enumerate(enc):
        by_len.setdefault(len(e), []).append(i)
    out = [None] * len(items)
    gen = torch.Generator().manual_seed(1000 + draw)
    for idx in by_len.values():
        ids = torch.tensor([enc[i] for i in idx])
        n = len(idx)
        perm = torch.randperm(n, generator=gen)
        src = torch.empty(n, dtype=torch.long)
        src[perm] = perm.roll(-1)  # a derangement: every row reads another story (a group of one keeps itself)
        captured: dict[int, torch.Tensor] = {}

        def keep(layer):
            def hook(module, args):
                captured[layer] = args[0].detach().clone()
            return hook

        def swap(layer):
            def hook(module, args):
                z = args[0].view(*args[0].shape[:2], H, -1).clone()
                other = captured[layer].view_as(z)[src]
                for l, h in resample:
                    if l == layer:
                        z[:, :, h] = other[:, :, h]
                return (z.view_as(args[0]),)
            return hook

        handles = []
        if resample:
            handles = [m.self_attn.o_proj.register_forward_pre_hook(keep(l)) for l, m in enumerate(layers)]
            model(ids)
            for h in handles:
                h.remove()
            handles = [m.self_attn.o_proj.register_forward_pre_hook(swap(l)) for l, m in enumerate(layers)]
        logits = model(ids).logits[:, -1]
        for h in handles:
            h.remove()
        for row, i in enumerate(idx):
            cands = items[i]["candidates"]
            cid = [tok(" " + c, add_special_tokens=False)["input_ids"][0] for c in cands]
            out[i] = cands[int(logits[row, cid].argmax())]
    return out


def accuracy(pred, items):
    return sum(p == it["answer"] for p, it in zip(pred, items)) / len(items)
