"""The tour notebook's code cells run end to end on a tiny model."""

import json
from pathlib import Path

NOTEBOOK = Path(__file__).parents[1] / "notebooks" / "tour.ipynb"


def test_tour_notebook_runs_on_tiny_model():
    cells = [c for c in json.loads(NOTEBOOK.read_text())["cells"] if c["cell_type"] == "code"]
    params, body = cells[0], cells[1:]
    assert "MODEL =" in "".join(params["source"])
    scope = {}
    exec("MODEL = 'tiny-llama'\nN_ITEMS, N_PAIRS, N_PROBE, TRAIN_STEPS, K = 24, 8, 60, 4, 3", scope)
    for cell in body:
        exec("".join(cell["source"]), scope)
    assert scope["tuned"].n == scope["base"].n == 24
    assert len(scope["top_heads"]) == 3
