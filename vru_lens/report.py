"""One self-contained HTML page from results: the summary tables first, then the figures.

``build_report(out)`` reads every ``<model>/study.json`` under the folder ``out`` (written by
``vru_lens.study``) in the order the models were run, loads the results they list and lays
them out; ``build_report([...], path)`` does the same for results (or studies) in memory.
The page reads results only through the result contract (``vru_lens.results.Result``:
``summary()``, ``to_frame()``, ``plot()``), apart from the figures that overlay several
results (``vru_lens.viz``). A faithfulness result (``patching.faithfulness.FaithfulnessResult``) saved in a
model's folder as ``faithfulness*.json`` is shown too (a CPR/CMD table and its curves), listed in the
manifest or not: a study does not compute one, ``faithfulness_curve(...).save(OUT/<model>/faithfulness.json)``
adds it. plotly.js and circuitsvis's JavaScript are inlined once each, so
the page opens with no network.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

from .results import wilson_interval
from .study import PROBE_STAGES

_CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:auto;padding:0 16px;color:#222}
table{border-collapse:collapse;margin:8px 0 18px}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f0f0f0}td:first-child,th:first-child{text-align:left}.note{color:#555;font-size:0.92em}
h2{border-bottom:2px solid #ddd;margin-top:36px}.fig{margin:8px 0 24px}"""


def _e(x) -> str:
    return html.escape(str(x))


def _pct(x) -> str:
    return "n/a" if x is None else f"{x:.1%}"


def _table(header: list, rows: list) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


# the stage each kind of result fills in a study (vru_lens.study's names); a result of another kind
# is shown by its own plot() under "Other results"
STAGE = {"EvalResult": "eval", "ProbeResult": "probe", "LogitLensResult": "lens", "HeadScores": "rank",
         "KnockoutCurve": "knockout", "AttentionPatterns": "attention", "FinetuneResult": "finetune",
         "FaithfulnessResult": "faithfulness"}


def load_study(folder: Path) -> dict:
    """A model's manifest with its results loaded: {"model", "config", "circuit", "base", "results": {stage: obj}}."""
    from .results import load_result

    manifest = json.loads((folder / "study.json").read_text())
    results = {stage: load_result(folder / name) for stage, name in manifest["files"].items()
               if name.endswith(".json") and (folder / name).exists()}
    listed = set(manifest["files"].values())
    for path in sorted(folder.glob("faithfulness*.json")):  # saved beside the study by hand (a study makes none)
        if path.name not in listed:
            res = load_result(path)
            if type(res).__name__ != "FaithfulnessResult":
                raise ValueError(f"{path} holds a {type(res).__name__}; a faithfulness*.json file in a study folder "
                                 "is read as a FaithfulnessResult")
            results[path.stem] = res
    return {**manifest, "results": results}


def study_of(results: list, model: str | None = None, circuit=None) -> dict:
    """A study made of results in memory, each under its stage's name (``STAGE``; rankings and fine-tuning
    runs by their method), so ``build_report`` lays them out as it does a study folder."""
    if not results:
        raise ValueError("no results to report: pass a list of result objects (or a study folder)")
    named = {}
    for i, res in enumerate(results):
        s = res.summary()
        stage = STAGE.get(type(res).__name__, f"other_{i}")
        if stage in ("rank", "finetune"):
            stage = f"{stage}_{s['method']}"
        elif stage == "probe":
            stage = PROBE_STAGES.get(s["target"], f"probe_{s['target']}")
        if stage in named:
            raise ValueError(f"two results for stage {stage!r}: pass one study per model, as studies "
                             "({'model', 'results': {stage: result}})")
        named[stage] = res
    first = next((r.summary().get("model") for r in results if r.summary().get("model")), "results")
    return {"model": model or first, "config": {}, "circuit": circuit, "base": None, "results": named}


def _heads_text(top: list, circuit) -> str:
    """Top heads (``HeadScores.summary()["top"]`` rows), heads of the known circuit starred, CIs where bootstrapped."""
    marks = {tuple(h) for h in circuit or ()}
    out = []
    for r in top:
        ci = f" [{r['ci_low']:.2f}, {r['ci_high']:.2f}]" if "ci_low" in r else ""
        out.append(f"L{r['layer']}H{r['head']}{'&#9733;' if (r['layer'], r['head']) in marks else ''} "
                   f"{r['score']:.2f}{_e(ci)}")
    return "<br>".join(out)


def _graded(st: dict, side: str, known) -> dict:
    """{rank stage: auroc_ci against the known heads} for ``st[side]``, bootstrapped once per study and side
    (the summary and the comparison with the full run show the same intervals)."""
    if not known:
        return {}
    memo = st.setdefault("_graded", {})
    if side not in memo:
        from .organism.verify import auroc_ci

        memo[side] = {stage: auroc_ci(sc, known, n_boot=200) for stage, sc in st.get(side, {}).items()
                      if stage.startswith("rank_")}
    return memo[side]


def summary(studies: list) -> str:
    """The tables a reader needs first: accuracy against its floors, heads, knockout, fine-tuning, forgetting."""
    sections = (_accuracy_section, _probe_section, _heads_section, _knockout_section, _finetune_section,
                _finetune_seeds_section, _faithfulness_section)
    return "<h2>Summary</h2>" + "".join(section(studies) for section in sections) + against_full_run(studies)


def _section(title: str, header: list, rows: list, note: str = "") -> str:
    """One summary table under its heading, with its note; nothing where no study has a row for it."""
    if not rows:
        return ""
    return f"<h3>{title}</h3>" + _table(header, rows) + (f"<p class='note'>{note}</p>" if note else "")


def _accuracy_section(studies: list) -> str:
    """Each model's VRUBench accuracy (its base checkpoint's and the tuned model's beside it) against its floors."""
    rows = []
    for st in studies:
        tuned = next((r for stage, r in st["results"].items() if stage.startswith("finetune_heads")), None)
        after = (f"{st.get('base') or st['model']} + top-{len(tuned.summary()['heads'])} head deltas" if tuned
                 else "tuned")
        for name, ev in ((st["model"], st["results"].get("eval")),
                         (f"{st.get('base')} (base checkpoint)", st.get("base_results", {}).get("eval")),
                         (after, st["results"].get("after_eval"))):
            if ev is None:
                continue
            s = ev.summary()
            rule = s["best_rule"]
            rows.append([_e(name), s["n"], _pct(s["candidate_accuracy"]), _pct(s["generation_accuracy"]),
                         _pct(s["chance"]), f"{_pct(rule[1])} ({_e(rule[0])})" if rule else "n/a"])
    return _section("VRUBench accuracy against chance and the best rotation-blind rule",
                    ["model", "items", "candidate log-prob", "generation (study's scoring)", "chance",
                     "best rotation-blind rule"], rows,
                    "Accuracy above the best rotation-blind rule (a guess that ignores every turn) "
                    "is evidence that the model tracks the viewpoint.")


def _probe_section(studies: list) -> str:
    """Each probe's best layer against its control task (model, base checkpoint and tuned model)."""
    rows = []
    for st in studies:
        for name, pr in [kv for stage in PROBE_STAGES.values() for kv in _model_base_tuned(st, stage).items()]:
            s = pr.summary()
            b = s["layers"].index(s["best_layer"])
            rows.append([_e(name), _e(s["target"]), s["best_layer"], _pct(s["accuracy"][b]),
                         f"{_pct(s['control_accuracy'][b])} ({_e(s['control_by'])})", f"{s['selectivity'][b]:+.2f}",
                         _pct(s["question_accuracy"][b]), _pct(s["chance"]), s["n_test_rows"]])
    return _section("Probes: are the heading and the object seen at it in the residual stream?",
                    ["model", "target", "best layer", "probe accuracy (step ends and queries)",
                     "control task", "selectivity", "at the final question", "chance", "test rows"], rows,
                    "Selectivity is accuracy minus the control task's (labels reassigned by a "
                    "feature the probe could read without the heading); a probe that decodes the heading where the "
                    "answer still fails is the study's 'encoded but not bound'.")


def _heads_section(studies: list) -> str:
    """Each ranking's top heads, graded against the known answer where the model has one."""
    rows = []
    for st in studies:
        # the model graded against its circuit C; its base checkpoint (a deficit organism) against its damaged heads D
        for label, side, known, which in ((st["model"], "results", st.get("circuit"), "C"),
                                          (f"{st.get('base')} (base checkpoint)", "base_results",
                                           st.get("base_deficient"), "D")):
            graded = _graded(st, side, known)
            for stage, sc in st.get(side, {}).items():
                if stage.startswith("rank_"):
                    s = sc.summary(k=len(known) if known else 5)
                    auroc = "n/a"
                    if stage in graded:
                        g = graded[stage]
                        auroc = f"{g['auroc']:.2f} [{g['low']:.2f}, {g['high']:.2f}] vs {which}"
                    rows.append([_e(label), _e(s["method"]), s["n_pairs"], _heads_text(s["top"], known), auroc])
    return _section("Top heads (score [95% bootstrap CI over pairs])",
                    ["model", "method", "pairs", "top heads", "AUROC vs the known answer [95% CI over pairs]"], rows,
                    "&#9733; marks a head of the known answer: the organism's complete circuit C, or "
                    "for a deficit checkpoint its damaged heads D. Scores are "
                    "normalised: 1 = the head alone carries the clean-corrupted difference.")


def _knockout_section(studies: list) -> str:
    """Accuracy with each ranking's top k ablated against random k-sets, at the circuit's size and the largest k."""
    rows = []
    for st in studies:
        kc = st["results"].get("knockout")
        if kc is not None:
            s, ev = kc.summary(), st["results"].get("eval")
            blind = _pct(ev.summary()["blind_baseline"]) if ev is not None else "n/a"
            ks = s["ks"]
            for k in sorted({len(st.get("circuit") or ()) or ks[-1], ks[-1]} & set(ks)):
                for name, accs in s["curves"].items():
                    r = s["random"][name][str(k)]
                    rows.append([_e(st["model"]), _e(name), k, _pct(s["base_accuracy"]), _pct(accs[ks.index(k)]),
                                 f"{_pct(r['mean'])} (5-95%: {_pct(r['low'])}-{_pct(r['high'])}, "
                                 f"{r['n_draws']} draws)", blind])
    return _section("Knockout: the top-k heads mean-ablated together, against k random heads drawn outside "
                    "that top k",
                    ["model", "ranking", "k", "no ablation", "top-k ablated", "random k outside it ablated",
                     "best rotation-blind rule"], rows)


def _finetune_section(studies: list) -> str:
    """Each fine-tuning run before and after: VRU accuracy, pairs, transfer and forgetting."""
    rows = []
    for st in studies:
        for stage, ft in st["results"].items():
            if not stage.startswith("finetune_"):
                continue
            s = ft.summary()
            vb, va, gb, ga = s["vru_before"], s["vru_after"], s["general_before"], s["general_after"]
            pb, pa = (vb.get("pairs") or {}).get("both_right"), (va.get("pairs") or {}).get("both_right")
            forget = "; ".join(f"{_e(k)} {gb.get(k, 0):.3g} &rarr; {ga.get(k, float('nan')):.3g}"
                               for k in gb) or "not measured"
            transfer = "; ".join(f"{_e(k.removeprefix('transfer_'))} {_pct(v)} &rarr; {_pct(va.get(k))}"
                                 for k, v in vb.items() if k.startswith("transfer_")) or "not measured"
            rows.append([_e(s["model"]), _e(s["method"]), f"{s['trainable_params']:,}",
                         f"{_pct(vb['test'])} &rarr; {_pct(va['test'])}",
                         f"{_pct(pb)} &rarr; {_pct(pa)}", transfer,
                         _pct(vb.get("blind_baseline")), forget])
    return _section("Selective fine-tuning: before &rarr; after, against baselines; forgetting",
                    ["tuned checkpoint", "method", "trainable parameters", "VRU accuracy",
                     "pairs right on both sides", "transfer (other phrasing, longer stories)",
                     "best rotation-blind rule", "forgetting check"], rows,
                    "heads: the top-k heads of the ranking on the tuned checkpoint (W_Q/W_K/W_V/W_O "
                    "slices); random: as many random heads; lora: LoRA at the same parameter budget. Forgetting: "
                    "the second task (list recall, a fraction) and KL(before || after) for an organism, general "
                    "benchmarks otherwise.")


def _interval(t: dict, fmt=_pct) -> str:
    """A ``results.t_interval`` as 'mean [low, high]' (n = 1: the mean alone)."""
    return fmt(t["mean"]) + (f" [{fmt(t['ci'][0])}, {fmt(t['ci'][1])}]" if t["n"] > 1 else "")


def _finetune_seeds_section(studies: list) -> str:
    """Each fine-tuning arm run over several seeds: mean and 95% Student-t interval over seeds of what it reaches
    (``finetune.run.seed_summary``), beside the base before tuning and the best rotation-blind rule."""
    from .finetune.run import seed_summary

    num = lambda x: f"{x:.3g}"  # noqa: E731
    titles = {"vru_test": ("VRU accuracy", _pct), "pairs_both_right": ("pairs right on both sides", _pct),
              "transfer_story": ("story phrasing", _pct), "transfer_six_actions": ("6-action stories", _pct),
              "general_average": ("general average", _pct), "wiki_ppl": ("Wikipedia ppl", num),
              "wiki_kl": ("KL (Wikipedia)", num), "list_acc": ("list recall", _pct), "list_kl": ("KL (list recall)", num)}
    summaries = []
    for st in studies:
        runs = [r for stage, r in st["results"].items() if stage.startswith("finetune_")]
        arms = seed_summary(runs) if runs else {}
        if any(a["n"] > 1 for a in arms.values()):
            summaries.append((st, runs, arms))
    # the columns some arm measured (a language model has no list recall, an organism no Wikipedia)
    cols = [(k, fmt) for k, (_, fmt) in titles.items() if any(k in a for _, _, arms in summaries for a in arms.values())]
    rows = []
    for st, runs, arms in summaries:
        blind = next((r.summary()["vru_before"].get("blind_baseline") for r in runs), None)
        first = next(iter(arms.values()))
        rows.append([_e(st["model"]), "base (before tuning)", "", *[
            (fmt(first["before"][k]) if first["before"].get(k) is not None else "") for k, fmt in cols], _pct(blind)])
        for name, a in arms.items():
            rows.append([_e(st["model"]), _e(name), f"{a['n']} ({', '.join(map(str, a['seeds']))})",
                         *[(_interval(a[k], fmt) if k in a else "") for k, fmt in cols], _pct(blind)])
    return _section("Selective fine-tuning over seeds: mean [95% t-interval]",
                    ["model", "arm", "seeds (n)", *[titles[k][0] for k, _ in cols], "best rotation-blind rule"], rows,
                    "After tuning, each arm's mean over its fine-tuning seeds with a 95% Student-t interval (the items, "
                    "pairs and ranking fixed; the seeds change batch order, the random-k draw and LoRA's init). "
                    "Runs with other settings are never averaged together; a column a model does not measure is empty.")


def _faithfulness_section(studies: list) -> str:
    """Each faithfulness result's CPR and CMD per ranking beside the random orderings' band."""
    rows = []
    for st in studies:
        for stage, fr in st["results"].items():
            if not stage.startswith("faithfulness"):
                continue
            s = fr.summary(n_boot=500)
            rnd = s["random"]
            for name, r in s["rankings"].items():
                rows.append([_e(st["model"]), _e(name), _e(s["ablation"]), s["n_pairs"],
                             f"{r['cpr']:.2f} [{r['cpr_ci'][0]:.2f}, {r['cpr_ci'][1]:.2f}]",
                             f"{r['cmd']:.2f} [{r['cmd_ci'][0]:.2f}, {r['cmd_ci'][1]:.2f}]",
                             f"{rnd['cpr_mean']:.2f} (5-95%: {rnd['cpr_5_95'][0]:.2f}-{rnd['cpr_5_95'][1]:.2f})",
                             f"{rnd['cmd_mean']:.2f} (5-95%: {rnd['cmd_5_95'][0]:.2f}-{rnd['cmd_5_95'][1]:.2f})"])
    return _section("Faithfulness: the top-k heads of each ranking kept clean, the others replaced",
                    ["model", "ranking", "other heads", "pairs", "CPR [95% CI over pairs]",
                     "CMD [95% CI over pairs]", "random orderings: CPR", "random orderings: CMD"], rows,
                    "CPR: the area under the fraction of the clean-minus-corrupt logit difference "
                    "recovered, over the fraction of heads kept (higher is better); CMD: the area of its distance "
                    "to 1 (lower is better). A ranking is worth its CPR/CMD only outside the random band.")


def _cmp_row(what, quick, quick_ci, full, full_ci, differs: str, fmt=_pct) -> list:
    """One comparison: the quick value [interval] beside the full run's; agreeing = the intervals overlap
    (a point where there is no interval); where they do not, the settings that differ are the row's reason."""
    lo, hi = quick_ci if quick_ci else (quick, quick)
    flo, fhi = full_ci if full_ci else (full, full)
    agree = lo <= fhi and flo <= hi
    cell = lambda v, ci: fmt(v) + (f" [{fmt(ci[0])}, {fmt(ci[1])}]" if ci else "")  # noqa: E731
    return [_e(what), cell(quick, quick_ci), cell(full, full_ci), "yes" if agree else "<b>no</b>",
            "" if agree else _e(differs)]


ARM_OF_METHOD = {"heads": "top", "random": "random", "bottom": "bottom", "lora": "lora", "full": "full"}


def against_full_run(studies: list) -> str:
    """The organisms' quick numbers beside the full measurement their cards keep (``vru-lens organism
    measure``; a deficit's ``full_run`` from ``vru-lens organism deficit-study --into-card``; both in
    docs/organism.md): does each agree within its interval, and if not, which settings differ."""
    from .models.organisms import ORGANISMS, organism_card

    rows = []
    for st in studies:
        for name, side, known in ((st["model"], "results", st.get("circuit")),
                                  (st.get("base"), "base_results", st.get("base_deficient"))):
            if name not in ORGANISMS:
                continue
            results = st.get(side, {})
            card = organism_card(name)
            full = card.get("full_run", {})
            deficit = card.get("deficit")
            measured = deficit or card.get("measured") or {}
            ev = results.get("eval")
            if ev is not None and "accuracy" in measured:
                n, N = ev.summary()["n"], measured["n_items"]
                q, f = ev.summary()["candidate_accuracy"], measured["accuracy"]
                rows.append(_cmp_row(f"{name}: VRU accuracy", q, wilson_interval(q, n), f, wilson_interval(f, N),
                                     f"{n} items here, {N} in the full run"))
            pr = results.get("probe")
            heading = full.get("probe_heading") or (None if deficit else card.get("heading_probe"))
            if pr is not None and heading:
                s = pr.summary()
                b = s["layers"].index(s["best_layer"])
                q, f = s["accuracy"][b], heading["accuracy"][s["best_layer"]]
                full_ci = wilson_interval(f, heading["n_test_rows"]) if "n_test_rows" in heading else None
                rows.append(_cmp_row(f"{name}: heading probe at layer {s['best_layer']}", q, wilson_interval(q, s["n_test_rows"]),
                                     f, full_ci, f"the probe trained on {s['n_train_rows']} rows of "
                                     f"{st['config'].get('n_probe', '?')} items here, {heading.get('n_items', '?')} "
                                     "items in the full run"))
            graded = full.get("rankings") or {m: {"auroc": g["auroc"]} for m, g in
                                              (card.get("measured") or {}).get("methods", {}).items()}
            for stage, sc in results.items():
                method = stage[len("rank_"):] if stage.startswith("rank_") else None
                if method in graded and known:
                    g, f = _graded(st, side, known)[stage], graded[method]
                    rows.append(_cmp_row(f"{name}: {method} AUROC vs {'D' if deficit else 'C'}", g["auroc"],
                                         (g["low"], g["high"]), f["auroc"], (f["low"], f["high"]) if "low" in f else None,
                                         f"{sc.summary()['n_pairs']} pairs here", fmt=lambda x: f"{x:.2f}"))
        repair = None
        if st.get("base") in ORGANISMS:
            repair = organism_card(st["base"]).get("full_run", {}).get("repair")
        for stage, ft in st["results"].items():
            if not (repair and stage.startswith("finetune_")):
                continue
            s = ft.summary()
            arm = repair["arms"].get(ARM_OF_METHOD.get(s["method"]))
            if not arm:
                continue
            cfg, fs = ft.train["config"], repair["settings"]
            differs = (f"one seed here, {len(fs['seeds'])} there; here {cfg['steps']} steps, held-out templates "
                       f"kept out of training, the best of its validation checkpoints kept (step {ft.train['best_step']}); "
                       f"the full run: {fs['steps']} steps, {fs['templates']}")
            n = s["vru_after"].get("n") or st["config"].get("n_eval", 0)
            q = s["vru_after"]["test"]
            rows.append(_cmp_row(f"{st['base']} + {s['method']}: VRU accuracy", q, wilson_interval(q, n),
                                 arm["vru_acc"]["mean"], arm["vru_acc"]["ci"], differs))
            kl = s["general_after"].get("list/kl")
            if kl is not None and "list_kl" in arm:
                rows.append(_cmp_row(f"{st['base']} + {s['method']}: list-recall KL", kl, None, arm["list_kl"]["mean"],
                                     arm["list_kl"]["ci"], differs, fmt=lambda x: f"{x:.3f}"))
    if not rows:
        return ""
    return ("<h3>This run against the full measurement (docs/organism.md)</h3>"
            + _table(["quantity", "this run [95% interval]", "full run [95% interval]", "agree", "settings that differ"],
                     rows)
            + "<p class='note'>Intervals: Wilson over items or probe rows, bootstrap over pairs for AUROCs, a t-interval "
              "over seeds for the full run's fine-tuning; a bare number has none kept. Agree: the intervals overlap.</p>")


def _model_base_tuned(st: dict, stage: str) -> dict:
    """One stage's result for the model, its base checkpoint and the tuned base, labelled for a figure."""
    res, base, model = st["results"], st.get("base_results", {}), st["model"]
    out = {model: res[stage]} if stage in res else {}
    if stage in base:
        out[f"{st['base']} (base)"] = base[stage]
    if f"after_{stage}" in res:
        out[f"{st.get('base') or model} tuned"] = res[f"after_{stage}"]
    return out


def figures(st: dict, figure, attention) -> str:
    """One model's figures, in the study's order."""
    from .viz import accuracy_figure, finetune_curves, heatmaps, probe_figure

    res, model, circuit = st["results"], st["model"], st.get("circuit")
    base = st.get("base_results", {})
    out = [f"<h2>{_e(model)}</h2>"]
    if circuit:
        out.append(f"<p class='note'>The complete circuit C (the known answer): "
                   f"{', '.join(f'L{l}H{h}' for l, h in circuit)}.</p>")
    evals = _model_base_tuned(st, "eval")
    if evals:
        out.append(figure(accuracy_figure(evals)))
    for target, stage in PROBE_STAGES.items():
        probes = _model_base_tuned(st, stage)
        if probes:
            out.append(figure(probe_figure(probes, f"Probe for the {target} by layer, with the control task and chance")))
    if "lens" in res:
        out.append(figure(res["lens"].plot()))
    ranks = {"{method} ({n_pairs} pairs)".format(**sc.summary()): sc for k, sc in res.items() if k.startswith("rank_")}
    if ranks:
        out.append(figure(heatmaps(ranks, circuit, f"Head rankings on {model}" +
                                   (" (squares: the circuit C)" if circuit else ""))))
    if "knockout" in res:
        ks, ev = res["knockout"].summary()["ks"], res.get("eval")
        fig = res["knockout"].plot(f"Knockout curves on {model}: top-k heads of each ranking vs random k outside it")
        if ev is not None:  # the floors, on the same test items
            s = ev.summary()
            for value, name, dash in ((s["chance"], "chance", "dash"),
                                      (s["blind_baseline"], "best rotation-blind rule", "dashdot")):
                if value is not None:
                    fig.add_scatter(x=[ks[0], ks[-1]], y=[value, value], mode="lines", name=name,
                                    line={"dash": dash, "color": "black", "width": 1})
        fig.update_layout(yaxis_tickformat=".0%")
        out.append(figure(fig))
    for stage, fr in res.items():
        if stage.startswith("faithfulness"):
            out.append(figure(fr.plot(f"Faithfulness on {model}: top-k heads of each ranking clean, the others "
                                      f"{fr.ablation} (band: random head sets, 5-95%)")))
    tuned = {k.removeprefix("finetune_"): v for k, v in res.items() if k.startswith("finetune_")}
    if tuned:
        out.append(figure(finetune_curves(tuned)))
    before_rank = next((v for k, v in base.items() if k.startswith("rank_")),
                       next((v for k, v in res.items() if k.startswith("rank_")), None))
    after_rank = next((v for k, v in res.items() if k.startswith("after_rank_")), None)
    if before_rank is not None and after_rank is not None:
        out.append(figure(heatmaps({"before tuning": before_rank, "after tuning": after_rank}, circuit,
                                   f"Re-ranking the tuned model ({after_rank.summary()['method']})")))
    if "attention" in res:
        att = res["attention"]
        out.append(f"<h3>Attention of the top heads ({', '.join(att.summary()['heads'])}) on one story</h3>"
                   "<p class='note'>Hover a head to view it, click to lock; hover a token to see where it attends.</p>"
                   + attention(att.view()))
    others = [(k, v) for k, v in res.items() if k.startswith("other_")]
    if others:
        out.append("<h3>Other results</h3>" + "".join(
            f"<pre>{_e(json.dumps(v.summary(), default=str))}</pre>" + figure(v.plot()) for _, v in others))
    return "".join(out)


def _studies(source) -> list:
    """Studies from a folder of studies, or from a list of studies and/or results (results form one study)."""
    if isinstance(source, (str, Path)):
        out = Path(source)
        manifests = list(out.glob("*/study.json"))
        if not manifests:
            raise ValueError(f"no study under {out}: run `vru-lens run --model NAME --out {out}` first")
        return sorted((load_study(p.parent) for p in manifests), key=lambda st: st.get("started", 0))
    studies = [st for st in source if isinstance(st, dict)]
    results = [r for r in source if not isinstance(r, dict)]
    return studies + ([study_of(results)] if results or not studies else [])


def build_report(source, path: str | Path | None = None, title: str = "vru-lens study") -> Path:
    """Write the report of ``source`` to ``path``: a study folder (default path ``<folder>/report.html``),
    or a list of results and/or studies ({"model", "results": {stage: result}}, as ``load_study`` gives)."""
    import plotly.offline

    if path is None and not isinstance(source, (str, Path)):
        raise ValueError("pass path= (where to write report.html) when building a report from results")
    loaded = _studies(source)
    bases = {st["base"] for st in loaded if st.get("base")}
    studies = [st for st in loaded if st["model"] not in bases]  # a base checkpoint is shown with its model
    for st in studies:
        if st.get("base"):
            base = next((s for s in loaded if s["model"] == st["base"]), {})
            st["base_results"], st["base_deficient"] = base.get("results", {}), base.get("deficient")
    uses_cv = any("attention" in st["results"] for st in studies)

    def figure(fig) -> str:
        fig.update_layout(height=fig.layout.height or 420)
        return "<div class='fig'>" + fig.to_html(full_html=False, include_plotlyjs=False) + "</div>"

    cv_js = ""
    if uses_cv:
        import circuitsvis

        cv_js = (Path(circuitsvis.__file__).parent / "dist" / "cdn" / "iife.js").read_text(encoding="utf-8")
        cv_js = cv_js.replace("</script>", "").split("//# sourceMappingURL")[0]

    def attention(rendered) -> str:
        # circuitsvis inlines its whole bundle in every view; the page loads it once (below) instead
        # and its "<div .../>" is not a closed element in HTML: React would render into (and wipe) what follows
        src = rendered.local_src
        start, end = src.index("<script"), src.index("CircuitsVis.render(")
        div = src[:start].strip()
        div = div[:-2] + "></div>" if div.endswith("/>") else div
        return div + "<script>\n" + src[end:]

    body = [summary(studies)] + [figures(st, figure, attention) for st in studies]
    settings = "".join(f"<h3>{_e(st['model'])}</h3><pre>{_e(json.dumps(st.get('config', {}), indent=1))}</pre>"
                       for st in studies)
    page = ("<!doctype html><html><head><meta charset='utf-8'>"
            f"<title>{_e(title)}</title><style>{_CSS}</style>"
            f"<script>{plotly.offline.get_plotlyjs()}</script>"
            + (f"<script>{cv_js}</script>" if cv_js else "") +
            f"</head><body><h1>{_e(title)}</h1>"
            "<p class='note'>Written by vru-lens from the saved results in this folder; every number is measured. "
            "Settings of each run are at the end.</p>"
            + "".join(body) + f"<h2>Settings</h2>{settings}</body></html>")
    target = Path(path) if path else Path(source) / "report.html"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(page, encoding="utf-8")
    return target
