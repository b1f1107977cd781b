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
  saved from one trace first, one head's columns of the clean run's ``o_proj`` input overwritten;
- ``nnsight-skip``: the same, and every layer before the patched one ``skip``ped, its output taken
  from one saved clean trace (nnsight's fastest exact form: those layers are not recomputed);
- ``pyvene``: one ``IntervenableModel`` per layer with a ``VanillaIntervention`` on
  ``head_attention_value_output`` (unit ``h.pos``, every position), one call per head with the
  corrupted prompts as its source (the tutorials' form: the source reruns on every call);
- ``pyvene-batched``: the same model per layer, one call per layer with every head a block of rows
  (heads x pairs), the source given as ``source_representations`` collected once from the
  corrupted run (``CollectIntervention``).

Every transformers-based run passes ``use_cache=False``; the nnsight traces and pyvene-batched also
pass ``logits_to_keep`` (only the final positions are unembedded). The plain hooks, the tutorials'
pyvene and TransformerLens's call unembed every position (its API has no such option).

The peers are not dependencies of vru-lens: ``make bench-peers`` builds a throwaway environment
with pinned nnsight and pyvene, every package the lock pins at its locked version, and runs this script; a peer that is not
importable is reported as skipped. Times are CPU seconds of this process (``time.process_time``),
which a shared machine disturbs less than wall time; run it at one thread.

    make bench-peers                                              # SmolLM2-135M-Instruct, 1 pair, 1 thread
    make bench-peers PEERS_ARGS="--pairs 4 --threads 1 --out peers.json"
    python benchmarks/bench_peers.py --model vru-organism --pairs 2        # seconds
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import time

import torch

TOL = 1e-3  # every column against the plain hooks, in logits (fp32 models agree to ~1e-5) ...
REL = 0.01  # ... and within 1% of the span of the heads' effects, so a patch that did nothing cannot pass


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
def plain_hooks(hf, pt, L, H, d_head, layers):
    """Forward pre-hooks on o_proj: record the corrupted input, then patch one head's slice per forward."""
    width = int(pt.final_pos.max()) + 1
    clean, corrupt = pt.clean[:, :width], pt.corrupt[:, :width]
    projs, saved = o_projs(hf), {}
    handles = [p.register_forward_pre_hook(lambda m, args, l=l: saved.__setitem__(l, args[0].clone()))
               for l, p in enumerate(projs)]
    hf(input_ids=corrupt, use_cache=False)
    for h_ in handles:
        h_.remove()
    out = torch.full((L, H), float("nan"))
    for l in layers:
        for h in range(H):
            cols = slice(h * d_head, (h + 1) * d_head)

            def patch(m, args, l=l, cols=cols):
                x = args[0].clone()
                x[..., cols] = saved[l][..., cols]
                return (x, *args[1:])

            handle = projs[l].register_forward_pre_hook(patch)
            out[l, h] = final_ld(hf(input_ids=clean, use_cache=False).logits, pt, width).mean()
            handle.remove()
    return out


def vru_lens_sweep(model, pt, layers):
    from vru_lens.patching import activation_patch_heads

    return activation_patch_heads(model, pt, "z", "noising", batch_size=len(pt), progress=False,
                                  layers=layers).mean(0)


@torch.inference_mode()
def transformerlens(model, pt, layers):
    import itertools

    import pandas as pd
    from transformer_lens import patching as tlp

    from vru_lens.readout import logit_diff_from_logits

    width = int(pt.final_pos.max()) + 1
    clean, corrupt = pt.clean[:, :width], pt.corrupt[:, :width]
    metric = lambda logits: logit_diff_from_logits(  # noqa: E731
        logits, pt.final_pos, pt.clean_answer, pt.corrupt_answer).mean()
    _, cache = model.run_with_cache(corrupt, names_filter=lambda name: name.endswith("attn.hook_z"))
    # noising: the run is the clean prompt, the patched-in activations come from the corrupted one
    L, H = model.cfg.n_layers, model.cfg.n_heads
    if list(layers) == list(range(L)):
        return tlp.get_act_patch_attn_head_out_all_pos(model, clean, cache, metric).float()
    # some layers: the same function's own code path (generic_activation_patch) with its index_df cut down
    index_df = pd.DataFrame(list(itertools.product(layers, range(H))), columns=["layer", "head"])
    flat = tlp.generic_activation_patch(model, clean, cache, metric, patch_setter=tlp.layer_head_vector_patch_setter,
                                        activation_name="z", index_df=index_df)
    out = torch.full((L, H), float("nan"))
    for (layer, h), v in zip(index_df.itertuples(index=False), flat.float()):
        out[layer, h] = v
    return out


def _keep(pt):
    """The final positions' indices for transformers' ``logits_to_keep`` (only those rows are unembedded)."""
    return torch.unique(pt.final_pos)


def _final_ld_kept(logits, pt, keep, reps=1):
    """The logit difference from logits computed at the positions ``keep`` only (``reps`` copies of the pairs)."""
    from vru_lens.readout import logit_diff_from_logits

    rel = torch.searchsorted(keep, pt.final_pos).repeat(reps)
    return logit_diff_from_logits(logits, rel, pt.clean_answer.repeat(reps), pt.corrupt_answer.repeat(reps)).float()


@torch.inference_mode()
def nnsight_traces(hf, pt, L, H, d_head, layers, skip_earlier=False):
    """One ``trace`` per head: the corrupted ``o_proj`` inputs saved from one trace, one head's slice of the
    clean run's ``o_proj`` input overwritten in place. ``skip_earlier``: the clean run's layer outputs are saved
    from one more trace and, in each head's trace, layers before the patched one are ``skip``ped with them."""
    import nnsight
    from nnsight import NNsight

    width = int(pt.final_pos.max()) + 1
    clean, corrupt = pt.clean[:, :width], pt.corrupt[:, :width]
    keep = _keep(pt)
    lm = NNsight(hf)
    blocks = lm.model.layers
    with lm.trace(corrupt, use_cache=False):
        saved = nnsight.save([])  # 0.8: a trace body runs in its own frame, only saved objects come back
        for l in range(L):
            saved.append(blocks[l].self_attn.o_proj.input.clone())
    if skip_earlier:
        with lm.trace(clean, use_cache=False):
            clean_out = nnsight.save([])
            for l in range(L):
                clean_out.append(blocks[l].output.clone())
    out = torch.full((L, H), float("nan"))
    for l in layers:
        for h in range(H):
            cols = slice(h * d_head, (h + 1) * d_head)
            with lm.trace(clean, use_cache=False, logits_to_keep=keep):
                if skip_earlier:
                    for j in range(l):
                        blocks[j].skip(clean_out[j])
                blocks[l].self_attn.o_proj.input[..., cols] = saved[l][..., cols]
                logits = lm.output.logits.save()
            out[l, h] = _final_ld_kept(logits, pt, keep).mean()
    return out


def _pyvene_where(heads, width):
    """pyvene's unit locations for one ``h.pos`` intervention: [heads per row, positions per row]."""
    return [[[h] for h in heads], [list(range(width))] * len(heads)]


@torch.inference_mode()
def pyvene_heads(hf, pt, L, H, layers, batched=True):
    """One ``IntervenableModel`` per layer with a ``VanillaIntervention`` on ``head_attention_value_output``
    (``o_proj``'s input split into heads, unit ``h.pos``, every position). ``batched=False``: one call per head
    with the corrupted prompts as the source (the tutorials' form). ``batched``: one call per layer, every head
    of the layer a block of rows (H x pairs), the source given as ``source_representations`` gathered from one
    corrupted run with pyvene's ``CollectIntervention`` (so the source is not rerun per call)."""
    import pyvene as pv

    width = int(pt.final_pos.max()) + 1
    clean, corrupt = pt.clean[:, :width], pt.corrupt[:, :width]
    B, keep = len(pt), _keep(pt)
    out = torch.full((L, H), float("nan"))
    if batched:
        # every layer's every head at every position of the corrupted run, collected in one forward
        # keep_last_dim: collect (pairs, H, positions, d_head) as is (flattened, the collect keeps only d_head
        # of the H x d_head columns)
        config = pv.IntervenableConfig(
            [{"layer": l, "component": "head_attention_value_output", "unit": "h.pos",
              "intervention": pv.CollectIntervention(keep_last_dim=True)} for l in layers])
        collector = pv.IntervenableModel(config, model=hf)
        collector.disable_model_gradients()
        all_heads = [[list(range(H))] * B, [list(range(width))] * B]
        (_, collected), _ = collector({"input_ids": corrupt, "use_cache": False},
                                      unit_locations={"base": [all_heads] * len(layers)})
        collected = dict(zip(layers, collected))
        base = {"input_ids": clean.repeat(H, 1), "use_cache": False, "logits_to_keep": keep}
        rows = [h for h in range(H) for _ in range(B)]
        where = _pyvene_where(rows, width)
    for l in layers:
        config = pv.IntervenableConfig([{"layer": l, "component": "head_attention_value_output", "unit": "h.pos"}],
                                       intervention_types=pv.VanillaIntervention)
        im = pv.IntervenableModel(config, model=hf)
        im.disable_model_gradients()
        if batched:
            src = collected[l]  # (pairs, H, positions, d_head)
            rep = src.permute(1, 0, 2, 3).reshape(H * B, 1, *src.shape[2:])  # row h*B+b: pair b's head h
            _, patched = im(base, unit_locations={"sources->base": ([where], [where])},
                            source_representations={im.sorted_keys[0]: rep})
            out[l] = _final_ld_kept(patched.logits, pt, keep, reps=H).view(H, B).mean(1)
        else:
            for h in range(H):
                w = _pyvene_where([h] * B, width)
                _, patched = im({"input_ids": clean, "use_cache": False}, [{"input_ids": corrupt}],
                                {"sources->base": ([w], [w])})
                out[l, h] = final_ld(patched.logits, pt, width).mean()
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--peers", default="transformerlens,nnsight-skip,nnsight,pyvene-batched,pyvene")
    ap.add_argument("--layers", default=None,
                    help="patch the heads of these layers only (comma-separated; default every layer)")
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
    layers = list(range(L)) if args.layers is None else [int(x) for x in args.layers.split(",")]

    runners = {
        "plain": lambda: plain_hooks(hf, pt, L, H, d_head, layers),
        "vru-lens": lambda: vru_lens_sweep(model, pt, layers),
        "transformerlens": lambda: transformerlens(model, pt, layers),
        "nnsight-skip": lambda: nnsight_traces(hf, pt, L, H, d_head, layers, skip_earlier=True),
        "nnsight": lambda: nnsight_traces(hf, pt, L, H, d_head, layers),
        "pyvene-batched": lambda: pyvene_heads(hf, pt, L, H, layers, batched=True),
        "pyvene": lambda: pyvene_heads(hf, pt, L, H, layers, batched=False),
    }
    modules = {"transformerlens": "transformer_lens", "nnsight": "nnsight", "nnsight-skip": "nnsight",
               "pyvene": "pyvene", "pyvene-batched": "pyvene"}
    dists = {"transformer_lens": "transformer-lens", "nnsight": "nnsight", "pyvene": "pyvene"}
    import transformers

    rows, versions = {}, {"torch": torch.__version__, "transformers": transformers.__version__}
    for name in ["plain", "vru-lens", *[p for p in args.peers.split(",") if p]]:
        if name in modules:
            try:
                importlib.import_module(modules[name])
                versions[modules[name]] = importlib.metadata.version(dists[modules[name]])
            except ImportError as err:
                rows[name] = {"skipped": f"not importable ({err}); `make bench-peers` installs it"}
                continue
        result, seconds = timed(runners[name])
        rows[name] = {"cpu_s": round(seconds, 2), "result": result[layers]}
        print(f"  {name}: {seconds:.1f} CPU s", flush=True)
    versions["vru-lens"] = importlib.metadata.version("vru-lens")

    truth = rows["plain"]["result"]
    effect = float((truth - truth.mean()).abs().max())
    tol = min(TOL, REL * effect) if effect > 0 else TOL
    base = rows["vru-lens"]["cpu_s"]
    print(f"{args.model}, {len(pt)} pairs of {int(pt.lengths.max())} tokens, {len(layers) * H} heads (layers {args.layers or 'all'}), "
          f"{args.threads} thread(s); heads' effects span {effect:.3g} logits, tolerance {tol:.2g}")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    print(f"{'implementation':<18}{'CPU s':>10}{'vs vru-lens':>14}{'max |diff| vs plain hooks':>28}")
    for name, row in rows.items():
        if "skipped" in row:
            print(f"{name:<18}  skipped: {row['skipped']}")
            continue
        row["max_abs_diff_vs_plain"] = float((row.pop("result") - truth).abs().max())
        row["agrees"] = row["max_abs_diff_vs_plain"] <= tol
        row["vs_vru_lens"] = round(row["cpu_s"] / base, 1) if base > 0 else None
        print(f"{name:<18}{row['cpu_s']:>10.2f}{row['vs_vru_lens']:>13}x{row['max_abs_diff_vs_plain']:>28.2g}")
    report = {"model": args.model, "pairs": len(pt), "max_tokens": int(pt.lengths.max()), "heads": len(layers) * H, "layers": layers,
              "threads": args.threads, "effect_span": effect, "tolerance": tol, "versions": versions,
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rows": rows}
    if args.out:
        from vru_lens.results import write_json_atomic

        write_json_atomic(args.out, report)
    bad = [n for n, r in rows.items() if "skipped" not in r and not r["agrees"]]
    if bad:
        raise SystemExit(f"disagree with plain hooks by more than {tol:.2g}: {', '.join(bad)}")


if __name__ == "__main__":
    main()
