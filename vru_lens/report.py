"""One self-contained HTML page from a study folder: the summary tables first, then the figures.

``build_report(out)`` reads every ``<model>/study.json`` under ``out`` (written by
``vru_lens.study``) in the order the models were run, loads the results they list and lays
them out. plotly.js and circuitsvis's JavaScript are inlined once each, so the page opens
with no network.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

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


def load_study(folder: Path) -> dict:
    """A model's manifest with its results loaded: {"model", "config", "planted", "base", "results": {stage: obj}}."""
    from .evaluate import EvalResult
    from .finetune.run import FinetuneResult
    from .logit_lens import LogitLensResult
    from .patching import HeadScores, KnockoutCurve
    from .probe import ProbeResult
    from .viz import AttentionPatterns

    manifest = json.loads((folder / "study.json").read_text())
    kinds = {"eval": EvalResult, "probe": ProbeResult, "lens": LogitLensResult, "rank": HeadScores,
             "knockout": KnockoutCurve, "attention": AttentionPatterns, "finetune": FinetuneResult}
    results = {}
    for stage, name in manifest["files"].items():
        kind = stage.removeprefix("after_").split("_")[0]
        if kind in kinds and (folder / name).exists():
            results[stage] = kinds[kind].load(folder / name)
    return {**manifest, "results": results}


def _heads_text(scores, k: int, planted) -> str:
    marks = {tuple(h) for h in planted or ()}
    out = []
    for l, h, s in scores.top(k):
        ci = f" [{scores.ci_low[l, h]:.2f}, {scores.ci_high[l, h]:.2f}]" if scores.ci_low is not None else ""
        out.append(f"L{l}H{h}{'&#9733;' if (l, h) in marks else ''} {s:.2f}{_e(ci)}")
    return "<br>".join(out)


def summary(studies: list) -> str:
    """The tables a reader needs first: accuracy against its floors, heads, knockout, fine-tuning, forgetting."""
    parts = []
    rows = []
    for st in studies:
        tuned = next((ft for k, ft in st["results"].items() if k == "finetune_heads"), None)
        after = f"{st.get('base') or st['model']} + top-{len(tuned.heads)} head deltas" if tuned else "tuned"
        for name, ev in ((st["model"], st["results"].get("eval")),
                         (f"{st.get('base')} (base checkpoint)", st.get("base_results", {}).get("eval")),
                         (after, st["results"].get("after_eval"))):
            if ev is None:
                continue
            rule = ev.best_rule
            rows.append([_e(name), ev.n, _pct(ev.candidate_accuracy), _pct(ev.generation_accuracy), _pct(ev.chance),
                         f"{_pct(rule[1])} ({_e(rule[0])})" if rule else "n/a"])
    if rows:
        parts.append("<h3>VRUBench accuracy against chance and the best rotation-blind rule</h3>"
                     + _table(["model", "items", "candidate log-prob", "generation (study's scoring)", "chance",
                               "best rotation-blind rule"], rows)
                     + "<p class='note'>Accuracy above the best rotation-blind rule (a guess that ignores every turn) "
                       "is evidence that the model tracks the viewpoint.</p>")
    rows = []
    for st in studies:
        for stage, sc in st["results"].items():
            if stage.startswith("rank_"):
                k = len(st["planted"]) if st.get("planted") else 5
                auroc = ""
                if st.get("planted"):
                    from .organism.verify import auroc as grade

                    auroc = f"{grade(sc.scores, [tuple(h) for h in st['planted']]):.2f}"
                rows.append([_e(st["model"]), _e(sc.method), sc.n_pairs, _heads_text(sc, k, st.get("planted")),
                             auroc or "n/a"])
    if rows:
        parts.append("<h3>Top heads (score [95% bootstrap CI over pairs])</h3>"
                     + _table(["model", "method", "pairs", "top heads", "AUROC vs planted heads"], rows)
                     + "<p class='note'>&#9733; marks a planted head (the organism's known answer G). Scores are "
                       "normalised: 1 = the head alone carries the clean-corrupted difference.</p>")
    rows = []
    for st in studies:
        kc = st["results"].get("knockout")
        if kc is not None:
            ev = st["results"].get("eval")
            for k in sorted({len(st.get("planted") or ()) or kc.ks[-1], kc.ks[-1]} & set(kc.ks)):
                r = kc.random_summary()[str(k)]
                for name, accs in kc.curves.items():
                    rows.append([_e(st["model"]), _e(name), k, _pct(kc.base_accuracy), _pct(accs[kc.ks.index(k)]),
                                 f"{_pct(r['mean'])} (5-95%: {_pct(r['low'])}-{_pct(r['high'])}, "
                                 f"{len(kc.random[str(k)])} draws)",
                                 _pct(ev.blind_baseline) if ev is not None else "n/a"])
    if rows:
        parts.append("<h3>Knockout: the top-k heads mean-ablated together, against k random heads</h3>"
                     + _table(["model", "ranking", "k", "no ablation", "top-k ablated", "random k ablated",
                               "best rotation-blind rule"], rows))
    rows = []
    for st in studies:
        for stage, ft in st["results"].items():
            if not stage.startswith("finetune_"):
                continue
            vb, va = ft.vru_before, ft.vru_after
            pb, pa = (vb.get("pairs") or {}).get("both_right"), (va.get("pairs") or {}).get("both_right")
            forget = "; ".join(f"{_e(k)} {ft.general_before.get(k, 0):.3g} &rarr; {ft.general_after.get(k, float('nan')):.3g}"
                               for k in ft.general_before) or "not measured"
            rows.append([_e(ft.model), _e(ft.method), f"{ft.trainable_params:,}",
                         f"{_pct(vb['test'])} &rarr; {_pct(va['test'])}",
                         f"{_pct(pb)} &rarr; {_pct(pa)}",
                         _pct(vb.get("blind_baseline")), forget])
    if rows:
        parts.append("<h3>Selective fine-tuning: before &rarr; after, against baselines; forgetting</h3>"
                     + _table(["tuned checkpoint", "method", "trainable parameters", "VRU accuracy",
                               "pairs right on both sides", "best rotation-blind rule", "forgetting check"], rows)
                     + "<p class='note'>heads: the top-k heads of the ranking on the tuned checkpoint (W_Q/W_K/W_V/W_O "
                       "slices); random: as many random heads; lora: LoRA at the same parameter budget. Forgetting: "
                       "the second task (list recall, a fraction) and KL(before || after) for an organism, general "
                       "benchmarks otherwise.</p>")
    return "<h2>Summary</h2>" + "".join(parts)


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

    res, model, planted = st["results"], st["model"], st.get("planted")
    base = st.get("base_results", {})
    out = [f"<h2>{_e(model)}</h2>"]
    if planted:
        out.append(f"<p class='note'>Planted heads G (the known answer): "
                   f"{', '.join(f'L{l}H{h}' for l, h in planted)}.</p>")
    evals = _model_base_tuned(st, "eval")
    if evals:
        out.append(figure(accuracy_figure(evals)))
    probes = _model_base_tuned(st, "probe")
    if probes:
        out.append(figure(probe_figure(probes, "Probe for the heading by layer, with the control task and chance")))
    if "lens" in res:
        out.append(figure(res["lens"].plot()))
    ranks = {f"{sc.method} ({sc.n_pairs} pairs)": sc for k, sc in res.items() if k.startswith("rank_")}
    if ranks:
        out.append(figure(heatmaps(ranks, planted, f"Head rankings on {model}" +
                                   (" (squares: planted heads)" if planted else ""))))
    if "knockout" in res:
        kc, ev = res["knockout"], res.get("eval")
        fig = kc.plot(f"Knockout curves on {model}: top-k heads of each ranking vs random k")
        if ev is not None:  # the floors, on the same test items
            for value, name, dash in ((ev.chance, "chance", "dash"), (ev.blind_baseline, "best rotation-blind rule", "dashdot")):
                if value is not None:
                    fig.add_scatter(x=[kc.ks[0], kc.ks[-1]], y=[value, value], mode="lines", name=name,
                                    line={"dash": dash, "color": "black", "width": 1})
        fig.update_layout(yaxis_tickformat=".0%")
        out.append(figure(fig))
    tuned = {k.removeprefix("finetune_"): v for k, v in res.items() if k.startswith("finetune_")}
    if tuned:
        out.append(figure(finetune_curves(tuned)))
    before_rank = next((v for k, v in base.items() if k.startswith("rank_")),
                       next((v for k, v in res.items() if k.startswith("rank_")), None))
    after_rank = next((v for k, v in res.items() if k.startswith("after_rank_")), None)
    if before_rank is not None and after_rank is not None:
        out.append(figure(heatmaps({"before tuning": before_rank, "after tuning": after_rank}, planted,
                                   f"Re-ranking the tuned model ({after_rank.method})")))
    if "attention" in res:
        att = res["attention"]
        out.append(f"<h3>Attention of the top heads ({', '.join(att.labels)}) on one story</h3>"
                   "<p class='note'>Hover a head to view it, click to lock; hover a token to see where it attends.</p>"
                   + attention(att.plot()))
    return "".join(out)


def build_report(out: str | Path, path: str | Path | None = None, title: str = "vru-lens study") -> Path:
    """Write ``out/report.html`` (or ``path``) from every study under ``out``."""
    import plotly.offline

    out = Path(out)
    manifests = list(out.glob("*/study.json"))
    if not manifests:
        raise ValueError(f"no study under {out}: run `vru-lens run --model NAME --out {out}` first")
    loaded = sorted((load_study(p.parent) for p in manifests), key=lambda st: st.get("started", 0))
    bases = {st["base"] for st in loaded if st.get("base")}
    studies = [st for st in loaded if st["model"] not in bases]  # a base checkpoint is shown with its model
    for st in studies:
        if st.get("base"):
            st["base_results"] = next((s["results"] for s in loaded if s["model"] == st["base"]), {})
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
    settings = "".join(f"<h3>{_e(st['model'])}</h3><pre>{_e(json.dumps(st['config'], indent=1))}</pre>" for st in studies)
    page = ("<!doctype html><html><head><meta charset='utf-8'>"
            f"<title>{_e(title)}</title><style>{_CSS}</style>"
            f"<script>{plotly.offline.get_plotlyjs()}</script>"
            + (f"<script>{cv_js}</script>" if cv_js else "") +
            f"</head><body><h1>{_e(title)}</h1>"
            "<p class='note'>Written by vru-lens from the saved results in this folder; every number is measured. "
            "Settings of each run are at the end.</p>"
            + "".join(body) + f"<h2>Settings</h2>{settings}</body></html>")
    target = Path(path) if path else out / "report.html"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(page, encoding="utf-8")
    return target
