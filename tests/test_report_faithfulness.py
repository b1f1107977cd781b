"""The report shows a faithfulness result: a CPR/CMD table in the summary and its curves, from results in
memory and from a study folder (a faithfulness*.json beside the study), drawn in headless Chromium."""

import json

import numpy as np
import pytest
import torch

from chromium import HOW_TO_GET, Page, find_chromium
from vru_lens.bench import PAIRABLE, make_items
from vru_lens.patching.faithfulness import faithfulness_curve
from vru_lens.report import build_report
from vru_lens.tokens import tokenize_pairs

torch.set_num_threads(1)

PLOTS = """JSON.stringify([...document.querySelectorAll('.js-plotly-plot')].map(p => ({
  title: (p.querySelector('.gtitle') || {}).textContent || '',
  traces: p.querySelectorAll('.trace').length})))"""


@pytest.fixture(scope="module")
def faith(strong):
    from vru_lens.models.tiny import tiny_hf_model

    model = strong(tiny_hf_model("tiny-llama", seed=3, n_layers=2))
    pt = tokenize_pairs(model.tokenizer, make_items(30, 1, PAIRABLE), max_pairs=4)
    n = model.cfg.n_layers * model.cfg.n_heads
    rng = np.random.default_rng(0)
    return faithfulness_curve(model, pt, {"some ranking": rng.normal(size=(model.cfg.n_layers, model.cfg.n_heads)),
                                          "listed heads": [(1, 0), (0, 1)]},
                              ks=[0, 1, 2, n // 2, n], n_random=3, progress=False)


def test_report_from_results_has_the_faithfulness_table_and_curves(faith, tmp_path):
    page = build_report([faith], tmp_path / "report.html").read_text()
    s = faith.summary(n_boot=500)
    assert "Faithfulness: the top-k heads of each ranking kept clean" in page
    assert "Faithfulness on " in page and "Other results" not in page
    for name, r in s["rankings"].items():  # the table's numbers are the result's summary
        assert f"<td>{name}</td><td>resample</td><td>4</td><td>{r['cpr']:.2f} [{r['cpr_ci'][0]:.2f}, " \
               f"{r['cpr_ci'][1]:.2f}]</td><td>{r['cmd']:.2f} [" in page
    assert f"{s['random']['cpr_mean']:.2f} (5-95%: {s['random']['cpr_5_95'][0]:.2f}" in page


def test_a_faithfulness_file_in_a_study_folder_is_reported_and_drawn(faith, tmp_path):
    folder = tmp_path / "tiny-llama"
    folder.mkdir()
    (folder / "study.json").write_text(json.dumps({"model": "tiny-llama", "config": {}, "started": 0, "base": None,
                                                   "circuit": None, "files": {}}))
    faith.save(folder / "faithfulness.json")
    path = build_report(tmp_path)
    page = path.read_text()
    assert "Faithfulness: the top-k heads of each ranking kept clean" in page and "Faithfulness on tiny-llama" in page
    binary = find_chromium()
    assert binary, HOW_TO_GET
    browser = Page(binary)
    try:
        browser.open(path.resolve().as_uri())
        errors = browser.errors()
        plots = json.loads(browser.evaluate(PLOTS))
    finally:
        browser.close()
    assert errors == [], errors
    (plot,) = plots
    # the random band, the random mean and the two rankings
    assert plot["title"].startswith("Faithfulness on tiny-llama") and plot["traces"] >= 4, plot
