"""The work floor of exact all-position activation patching on VRUBench pairs, counted from the real tokens.

Work is counted in token-layers (one position through one block: at these lengths the block's matrix
products, ~24 d_model^2 FLOPs per token, dwarf attention's ~4 x context x d_model). For a head of layer
l patched at every position, an exact method must recompute blocks l..L-1 (earlier ones cannot change)
at positions >= p0, the first token where the clean and corrupted prompts differ (earlier positions see
identical tokens, so causal attention leaves them unchanged):

    floor = n_heads x sum over pairs of tail_i x sum_l (L - l) = n_heads x L(L+1)/2 x sum_i tail_i

plus what produces the patch source and the unpatched run, which a method needs once: one run of each
prompt (2 x L x sum_i len_i). The fast path (``activation_patch_heads``) does exactly the replays
above, but pads each batch's tails to its longest tail, and records two full runs per batch. The
plain reference (and TransformerLens's ``get_act_patch_attn_head_out_all_pos``) runs every block at
every position once per head. The printout gives all three in token-layers and in forwards of the
whole set of pairs, so a measured time divided by the time of one forward says how close a run is.

    python benchmarks/activation_floor.py --model smollm2-135m-instruct --pairs 16 --batch-size 16
"""

from __future__ import annotations

import argparse
import json


def count(lengths, starts, L: int, H: int, batch_size: int) -> dict:
    """Token-layers of the floor, the fast path and the per-head reference for these pairs."""
    tails = [int(n - p) for n, p in zip(lengths, starts)]
    tri = L * (L + 1) // 2
    floor_replays = H * tri * sum(tails)
    sources = 2 * L * sum(int(n) for n in lengths)
    fast = 0
    for b0 in range(0, len(tails), batch_size):
        ls, ts = lengths[b0:b0 + batch_size], tails[b0:b0 + batch_size]
        fast += 2 * L * len(ls) * int(max(ls))  # the two recorded runs (right-padded to the batch's longest)
        fast += H * tri * len(ts) * max(ts)  # replays, tails left-aligned and padded to the longest
    reference = (H * L + 1) * L * len(tails) * int(max(lengths))  # one full forward per head, plus the cache run
    forward = L * len(tails) * int(max(lengths))  # one forward of every pair (padded)
    return {"pairs": len(tails), "n_layers": L, "n_heads": H, "mean_len": sum(map(int, lengths)) / len(tails),
            "mean_tail": sum(tails) / len(tails), "tail_fraction": sum(tails) / sum(map(int, lengths)),
            "floor_token_layers": floor_replays + sources, "fast_token_layers": fast,
            "reference_token_layers": reference, "forward_token_layers": forward,
            "floor_forwards": (floor_replays + sources) / forward, "fast_forwards": fast / forward,
            "reference_forwards": reference / forward, "fast_over_floor": fast / (floor_replays + sources),
            "reference_over_floor": reference / (floor_replays + sources)}


def config_and_tokenizer(name: str):
    """The model's config and tokenizer, without loading its weights (counting needs only shapes and tokens)."""
    import transformers as tf

    from vru_lens.models.embedded import EMBEDDED, converted_dir
    from vru_lens.models.tiny import TINY_NAMES, tiny_hf_model, tiny_tokenizer

    if name in TINY_NAMES:
        return tiny_hf_model(name).config, tiny_tokenizer()
    source = str(converted_dir(name)) if name in EMBEDDED else name
    cfg = tf.AutoConfig.from_pretrained(source)
    return (cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg), tf.AutoTokenizer.from_pretrained(source)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--pairs", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--items-per-pair", type=int, default=4, help="items drawn per wanted pair (as bench_patching)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--chat", action="store_true")
    args = ap.parse_args()

    from vru_lens.bench import PAIRABLE, make_items
    from vru_lens.patching.tail import first_diff
    from vru_lens.tokens import tokenize_pairs

    cfg, tokenizer = config_and_tokenizer(args.model)
    pt = tokenize_pairs(tokenizer, make_items(args.pairs * args.items_per_pair, args.seed, cfg=PAIRABLE),
                        chat=args.chat, max_pairs=args.pairs)
    starts = first_diff(pt.clean, pt.corrupt, pt.lengths)
    rep = count(pt.lengths.tolist(), starts.tolist(), cfg.num_hidden_layers, cfg.num_attention_heads,
                args.batch_size)
    rep["model"] = args.model
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in rep.items()}))


if __name__ == "__main__":
    main()
