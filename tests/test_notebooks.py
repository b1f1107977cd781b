"""Every study notebook runs top to bottom as shipped (on vru-organism), in a real kernel (nbclient),
and is exactly what notebooks/make_notebooks.py writes."""

import importlib.util
import json
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

FOLDER = Path(__file__).parents[1] / "notebooks"
NAMES = ("01_benchmark_and_evaluation", "02_probing", "03_head_ranking", "04_selective_finetuning", "05_user_task")


def test_notebooks_match_their_generator():
    spec = importlib.util.spec_from_file_location("make_notebooks", FOLDER / "make_notebooks.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    assert tuple(gen.NOTEBOOKS) == NAMES
    for name, cells in gen.NOTEBOOKS.items():
        assert json.loads((FOLDER / f"{name}.ipynb").read_text()) == gen.notebook(cells), \
            f"{name}.ipynb is stale: run notebooks/make_notebooks.py"


@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs(name, tmp_path):
    nb = nbformat.read(FOLDER / f"{name}.ipynb", as_version=4)
    assert "MODEL = " in "".join(nb.cells[1].source)  # the parameter cell switches the model
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    assert any(o.output_type in ("display_data", "execute_result") for o in nb.cells[-1].outputs)
