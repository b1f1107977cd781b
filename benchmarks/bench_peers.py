"""The race: exact noising activation patching of every head's z at all positions, vru-lens against its peers.

On the same counterfactual pairs, each implementation patches one head at a time: the clean prompt
runs, and one head's output (its slice of the attention output projection's input, ``o_proj``'s
input on Llama-style models, ``hook_z`` in TransformerLens) takes its value from the corrupted
prompt at every position. The number per head is the mean over pairs of the logit difference
(clean answer - corrupted answer) at the final position.

- ``plain``: PyTorch forward pre-hooks on ``o_proj`` of a plain transformers copy of the model, one
  forward per head (the ground truth every other column is checked against);
- ``vru-lens``: ``activation_patch_heads(model, pt, "z", "noising")``;
- ``transformerlens``: ``transformer_lens.patching.get_act_patch_attn_head_out_all_pos`` with the
  clean tokens as the run and the corrupted run's cache as the source (noising);
- ``nnsight``: one ``trace`` per head on the transformers copy, the corrupted ``o_proj`` inputs
  saved from one trace first (the form its tutorials use for activation patching);
- ``pyvene``: one ``IntervenableModel`` per layer with a ``VanillaIntervention`` on
  ``head_attention_value_output`` (unit ``h.pos``), called once per head with all pairs batched.

The peers are not dependencies of vru-lens: ``make bench-peers`` builds a throwaway environment
with pinned nnsight and pyvene beside the locked set and runs this script; a peer that is not
importable is reported as skipped. Times are CPU seconds of this process (``time.process_time``),
which a shared machine disturbs less than wall time; run it at one thread.

    python benchmarks/bench_peers.py --model smollm2-135m-instruct --pairs 4 --threads 1 --out peers.json
    python benchmarks/bench_peers.py --model tiny-llama --pairs 2          # seconds
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import time

import torch

TOL = 1e-3  # every column against the plain hooks, in logits (fp32 models agree to ~1e-5)


def timed(fn):
    c = time.process_time()
    out = fn()
    return out, time.process_time() - c


def o_projs(hf):
    """Each decoder layer's output projection (Llama-style models: ``model.layers[l].self_attn.o_proj``)."""
    try:
        return [layer.self_attn.o_proj for layer in hf.model.layers]
    except AttributeError as err:
        raise SystemExit(f"bench_peers needs a Llama-style model (model.layers[l].self_attn.o_proj): {err}")


def final_ld(logits, pt, width):
    from vru_lens.readout import logit_diff_from_logits

    return logit_diff_from_logits(logits[:, :width], pt.final_pos, pt.clean_answer, pt.corrupt_answer).float()


@torch.inference_mode()
def plain_hooks(hf, pt, L, H, d_head):
    """Forward pre-hooks on o_proj: record the corrupted input, then patch one head's slice per forward."""
    width = int(pt.final_pos.max()) + 1
    clean, corrupt = pt.clean[:, :width], pt.corrupt[:, :width]
    projs, saved = o_projs(hf), {}
    handles = [p.register_forward_pre_hook(lambda m, args, l=l: saved.__setitem__(l, args[0].clone()))
               for l, p in enumerate(projs)]
    hf(input_ids=corrupt)
    for h_ in handles:
        h_.remove()
    out = torch.empty(L, H)
    for l in range(L):
        for h in range(H):
            cols = slice(h * d_head, (h + 1) * d_head)

            def patch(m, args, l=l, cols=cols):
                x = args[0].clone()
                x[..., cols] = saved[l][..., cols]
                return (x, *args[1:])

            handle = projs[l].register_forward_pre_hook(patch)
            out[l, h] = final_ld(hf(input_ids=clean).logits, pt, width).mean()
            handle.remove()
    return out


def vru_lens_sweep(model, pt):
    from vru_lens.patching import activation_patch_heads

    return activation_patch_heads(model, pt, "z", "noising", batch_size=len(pt), progress=False).mean(0)


@torch.inference_mode()
def transformerlens(model, pt):
    from transformer_lens import patching as tlp

    from vru_lens.readout import logit_diff_from_logits

    width = int(pt.final_pos.max()) + 1
    clean, corrupt = pt.clean[:, :width], pt.corrupt[:, :width]
    metric = lambda logits: logit_diff_from_logits(  # noqa: E731
        logits, pt.final_pos, pt.clean_answer, pt.corrupt_answer).mean()
    _, cache = model.run_with_cache(corrupt, names_filter=lambda name: name.endswith("attn.hook_z"))
    # noising: the run is the clean prompt, the patched-in activations come from the corrupted one
    return tlp.get_act_patch_attn_head_out_all_pos(model, clean, cache, metric).float()


def _value(x):
    """A saved nnsight proxy's value (0.4 keeps it in .value; 0.5 and later hand the tensor back)."""
    return getattr(x, "value", x)


@torch.inference_mode()
def nnsight_traces(hf, pt, L, H, d_head):
    from nnsight import NNsight

    width = int(pt.final_pos.max()) + 1
    clean, corrupt = pt.clean[:, :width], pt.corrupt[:, :width]
    lm = NNsight(hf)
    layers = lm.model.layers
    with lm.trace(corrupt):
        saved = [layers[l].self_attn.o_proj.input.save() for l in range(L)]
    saved = [_value(s) for s in saved]
    out = torch.empty(L, H)
    for l in range(L):
        for h in range(H):
            cols = slice(h * d_head, (h + 1) * d_head)
            with lm.trace(clean):
                layers[l].self_attn.o_proj.input[..., cols] = saved[l][..., cols]
                logits = lm.output.logits.save()
            out[l, h] = final_ld(_value(logits), pt, width).mean()
    return out


@torch.inference_mode()
def pyvene_heads(hf, pt, L, H):
    import pyvene as pv

    width = int(pt.final_pos.max()) + 1
    clean, corrupt = pt.clean[:, :width], pt.corrupt[:, :width]
    B, pos = len(pt), list(range(width))
    out = torch.empty(L, H)
    for l in range(L):
        config = pv.IntervenableConfig([{"layer": l, "component": "head_attention_value_output", "unit": "h.pos"}],
                                       intervention_types=pv.VanillaIntervention)
        im = pv.IntervenableModel(config, model=hf)
        im.disable_model_gradients()
        for h in range(H):
            where = [[[h]] * B, [pos] * B]
            _, patched = im({"input_ids": clean}, [{"input_ids": corrupt}], {"sources->base": (where, where)})
            out[l, h] = final_ld(patched.logits, pt, width).mean()
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--peers", default="transformerlens,nnsight,pyvene")
    ap.add_argument("--out", default=None, help="write the numbers as JSON here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import warnings

    from vru_lens.bench import PAIRABLE, make_items
    from vru_lens.models import load_model
    from vru_lens.models.loader import load_hf
    from vru_lens.tokens import tokenize_pairs

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = load_model(args.model, device="cpu", dtype=torch.float32)
        hf, _ = load_hf(args.model, dtype=torch.float32)  # a plain copy: the bridge wraps the other one's modules
    pt = tokenize_pairs(model.tokenizer, make_items(4 * args.pairs, seed=args.seed, cfg=PAIRABLE),
                        max_pairs=args.pairs)
    if len(pt) == 0:
        raise SystemExit(f"no counterfactual pairs matched {args.model}'s tokenizer; raise --pairs")
    L, H, d_head = model.cfg.n_layers, model.cfg.n_heads, model.cfg.d_head

    runners = {
        "plain": lambda: plain_hooks(hf, pt, L, H, d_head),
        "vru-lens": lambda: vru_lens_sweep(model, pt),
        "transformerlens": lambda: transformerlens(model, pt),
        "nnsight": lambda: nnsight_traces(hf, pt, L, H, d_head),
        "pyvene": lambda: pyvene_heads(hf, pt, L, H),
    }
    modules = {"transformerlens": "transformer_lens", "nnsight": "nnsight", "pyvene": "pyvene"}
    dists = {"transformerlens": "transformer-lens", "nnsight": "nnsight", "pyvene": "pyvene"}
    rows, versions = {}, {"torch": torch.__version__}
    for name in ["plain", "vru-lens", *[p for p in args.peers.split(",") if p]]:
        if name in modules:
            try:
                importlib.import_module(modules[name])
                versions[name] = importlib.metadata.version(dists[name])
            except ImportError as err:
                rows[name] = {"skipped": f"not importable ({err}); `make bench-peers` installs it"}
                continue
        result, seconds = timed(runners[name])
        rows[name] = {"cpu_s": round(seconds, 2), "result": result}
    versions["vru-lens"] = importlib.metadata.version("vru-lens")

    truth = rows["plain"]["result"]
    effect = float((truth - truth.mean()).abs().max())
    base = rows["vru-lens"]["cpu_s"]
    print(f"{args.model}, {len(pt)} pairs of {int(pt.lengths.max())} tokens, {L * H} heads, "
          f"{args.threads} thread(s); heads' effects span {effect:.3g} logits")
    print(f"{'implementation':<18}{'CPU s':>10}{'vs vru-lens':>14}{'max |diff| vs plain hooks':>28}")
    for name, row in rows.items():
        if "skipped" in row:
            print(f"{name:<18}  skipped: {row['skipped']}")
            continue
        row["max_abs_diff_vs_plain"] = float((row.pop("result") - truth).abs().max())
        row["agrees"] = row["max_abs_diff_vs_plain"] <= TOL
        row["vs_vru_lens"] = round(row["cpu_s"] / base, 1) if base > 0 else None
        print(f"{name:<18}{row['cpu_s']:>10.2f}{row['vs_vru_lens']:>13}x{row['max_abs_diff_vs_plain']:>28.2g}")
    report = {"model": args.model, "pairs": len(pt), "max_tokens": int(pt.lengths.max()), "heads": L * H,
              "threads": args.threads, "effect_span": effect, "tolerance": TOL, "versions": versions,
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rows": rows}
    if args.out:
        from vru_lens.results import write_json_atomic

        write_json_atomic(args.out, report)
    bad = [n for n, r in rows.items() if "skipped" not in r and not r["agrees"]]
    if bad:
        raise SystemExit(f"disagree with plain hooks by more than {TOL}: {', '.join(bad)}")


if __name__ == "__main__":
    main()
