"""One HTML page from result objects: the figures and headline numbers of a run.

Takes whatever results exist (evaluation, probes, logit lens, head scores,
knockout) and lays them out in order; plotly figures are embedded with one
shared copy of plotly.js so the page opens offline.
"""

from __future__ import annotations

import html
import json
from pathlib import Path


def _section(title: str, body: str) -> str:
    return f"<section><h2>{html.escape(title)}</h2>{body}</section>"


def _numbers(summary: dict) -> str:
    return f"<pre>{html.escape(json.dumps(summary, indent=1, default=str))}</pre>"


def build_report(results: dict, out: str | Path, title: str = "vru-lens report") -> Path:
    """results: {"eval": EvalResult, "probe": ProbeResult, "lens": LogitLensResult,
    "scores": HeadScores, "knockout": KnockoutResult}, any subset."""
    from .viz import accuracy_figure

    parts, first = [], True

    def figure(fig) -> str:
        nonlocal first
        out_html = fig.to_html(full_html=False, include_plotlyjs="inline" if first else False)
        first = False
        return out_html

    if "eval" in results:
        res = results["eval"]
        parts.append(_section("VRUBench accuracy", f"<pre>{html.escape(res.table())}</pre>"
                              + figure(accuracy_figure({res.model: res}))))
    if "probe" in results:
        parts.append(_section(f"Probes: {results['probe'].target}",
                              _numbers(results["probe"].summary()) + figure(results["probe"].plot())))
    if "lens" in results:
        parts.append(_section("Logit lens of the answer", _numbers(results["lens"].summary()) + figure(results["lens"].plot())))
    if "scores" in results:
        sc = results["scores"]
        rows = "".join(f"<tr><td>L{l}H{h}</td><td>{s:.4f}</td></tr>" for l, h, s in sc.top(10))
        parts.append(_section(f"Head ranking ({sc.method})", f"<table><tr><th>head</th><th>score</th></tr>{rows}</table>"
                              + figure(sc.plot())))
    if "knockout" in results:
        parts.append(_section("Knockout: top heads against random heads", _numbers(results["knockout"].summary())))
    if not parts:
        raise ValueError("nothing to report: pass at least one result")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}pre{background:#f6f6f6;padding:8px}</style>"
            f"</head><body><h1>{html.escape(title)}</h1>{''.join(parts)}</body></html>")
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page)
    return path
