"""The study's report, rendered in headless Chromium: no JavaScript or console error, no network, every
plot drawn. The study is the demo's (organism with fine-tuning from its base, then a second model with
evaluation and probes) at a smaller size; its folder is also what test_run reads."""

import json

import pytest

from chromium import HOW_TO_GET, Page, find_chromium
from vru_lens.report import build_report
from vru_lens.study import StudyConfig, run_study

CHECK = """(() => {
  const plots = [...document.querySelectorAll('.js-plotly-plot')].map(p => ({
    title: (p.querySelector('.gtitle') || {}).textContent || '',
    svg: p.querySelectorAll('svg.main-svg').length,
    marks: p.querySelectorAll('.trace, .heatmaplayer image, .hm image').length}));
  const cv = [...document.querySelectorAll('[id^="circuits-vis-"]')].map(d => ({
    children: d.querySelectorAll('*').length, text: d.textContent.length}));
  const tables = [...document.querySelectorAll('table')].map(t => t.rows.length);
  const first = document.querySelector('h2').textContent;
  return JSON.stringify({plots, cv, tables, first});
})()"""


@pytest.fixture(scope="module")
def demo_report(tmp_path_factory):
    import torch

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("demo")
    small = dict(n_eval=60, n_probe=100, n_pairs=12, n_boot=50, n_random=2, knockout_k=3, n_train=160,
                 top_k=3, batch_size=16)
    run_study("vru-organism", out, StudyConfig.quick(**small), progress=False, log=lambda m: None)
    run_study("tiny-llama", out, StudyConfig.quick(**small, stages=("eval", "probe")), progress=False,
              log=lambda m: None)
    return build_report(out)


def test_report_renders_in_headless_chromium(demo_report, tmp_path):
    binary = find_chromium()
    assert binary, HOW_TO_GET
    page = Page(binary)
    try:
        page.open(demo_report.resolve().as_uri())
        errors = page.errors()
        state = json.loads(page.evaluate(CHECK))
        page.screenshot(str(tmp_path / "report.png"))
    finally:
        page.close()
    assert errors == [], errors
    assert state["first"] == "Summary"  # the tables come first
    assert len(state["tables"]) >= 4 and all(rows >= 2 for rows in state["tables"])
    # organism: accuracy, probes (model, base, tuned), logit lens, heatmaps, knockout, fine-tuning, re-ranking;
    # the second model: accuracy and probes
    assert len(state["plots"]) >= 9, state["plots"]
    for plot in state["plots"]:
        assert plot["svg"] >= 1 and plot["marks"] >= 1, plot
    assert len(state["cv"]) == 1 and state["cv"][0]["children"] > 20, state["cv"]
    assert (tmp_path / "report.png").stat().st_size > 10_000


def test_report_inlines_each_library_once(demo_report):
    page = demo_report.read_text()
    assert page.count("var CircuitsVis=") == 1  # circuitsvis's bundle, not once per view
    assert "unpkg.com/circuitsvis" not in page  # its CDN loader is not used
    assert page.count("<script src=") == 0  # nothing loaded from outside the file


def test_report_has_every_section_of_the_study(demo_report):
    page = demo_report.read_text()
    sections = ["<h2>Summary</h2>", "VRUBench accuracy against chance", "Probes: are the heading and the object", "Top heads", "Knockout: the top-k heads",
                "Selective fine-tuning", "<h2>vru-organism</h2>", "<h2>tiny-llama</h2>", "Probe for the heading",
                "Head rankings on vru-organism", "Knockout curves on vru-organism", "Fine-tuning curves",
                "Re-ranking the tuned model", "Attention of the top heads", "<h2>Settings</h2>"]
    where = [page.find(s) for s in sections]
    assert all(i >= 0 for i in where), [s for s, i in zip(sections, where) if i < 0]
    assert where[:6] == sorted(where[:6]) and where[5] < where[6]  # the summary tables first, then each model
    assert "&#9733;" in page  # planted heads are marked in the top-heads table
    # the deficit checkpoint's ranking is graded against its damaged heads D, the organism's against C
    assert "vru-organism-deficit (base checkpoint)" in page and "] vs D" in page and "] vs C" in page
