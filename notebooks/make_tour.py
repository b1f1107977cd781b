"""Writes notebooks/tour.ipynb from the cells below (keeps the notebook reviewable as code).

    .venv/bin/python notebooks/make_tour.py
tests/test_notebook.py runs the same cells on a tiny model, so the notebook cannot rot.
"""

import json
from pathlib import Path

CELLS = [
    ("md", "# vru-lens tour: benchmark, probes, head ranking, head fine-tuning\n"
           "Runs on a CPU in minutes with the embedded SmolLM2-135M-Instruct. Set `MODEL` to any embedded "
           "name, Hugging Face id or local folder."),
    ("code", "MODEL = \"smollm2-135m-instruct\"\nN_ITEMS, N_PAIRS, N_PROBE, TRAIN_STEPS, K = 200, 32, 400, 40, 10"),
    ("code", "from vru_lens import load_model\nfrom vru_lens.bench import make_splits\n"
             "from vru_lens.evaluate import evaluate\nfrom vru_lens.viz import accuracy_figure, attention_view\n\n"
             "model = load_model(MODEL)\n"
             "splits = make_splits(400, 32, N_ITEMS, seed=0)  # the study's format, with unknown\n"
             "base = evaluate(model, splits[\"test\"], progress=False)\nprint(base.table())"),
    ("md", "## 1. Where does the viewpoint live? Probes on every layer's residual stream"),
    ("code", "from vru_lens.bench import PAIRABLE, make_items\nfrom vru_lens.probe import probe\n\n"
             "probe_items = make_items(N_PROBE, seed=1, split=\"train\")\n"
             "heading = probe(model, probe_items, target=\"heading\", progress=False)\nheading.plot()"),
    ("code", "from vru_lens.logit_lens import logit_lens\n\n"
             "answerable = [it for it in splits[\"test\"] if it[\"answerable\"]]  # the lens reads the answer's token\n"
             "lens = logit_lens(model, answerable, progress=False)\nlens.plot()"),
    ("md", "## 2. Which heads matter? Path patching on counterfactual pairs, with bootstrap CIs"),
    ("code", "from vru_lens.tokens import tokenize_pairs\nfrom vru_lens.patching import rank_heads, knockout\n\n"
             "pairs = tokenize_pairs(model.tokenizer, make_items(4 * N_PAIRS, seed=2, cfg=PAIRABLE), max_pairs=N_PAIRS)\n"
             "print(pairs.pairs.summary())\n"
             "scores = rank_heads(model, pairs, method=\"path\", progress=False)\n"
             "scores.top(K)"),
    ("code", "scores.plot()"),
    ("code", "layer, head, _ = scores.top(1)[0]\n"
             "attention_view(model, pairs.pairs.items[0], layer=layer, heads=[head], query_steps=True)"),
    ("code", "top_heads = [(l, h) for l, h, _ in scores.top(K)]\n"
             "knock = knockout(model, pairs, pairs.pairs.items, top=top_heads, n_random=3)\nknock.summary()"),
    ("md", "## 3. Fine-tune only those heads (W_Q/W_O slices), then re-evaluate"),
    ("code", "from vru_lens.finetune import HeadDeltas, TrainConfig, train\n\n"
             "deltas = HeadDeltas(model, heads=top_heads, components=\"qo\")\n"
             "print(deltas.num_parameters(), \"trainable parameters\")\n"
             "run = train(model, deltas, splits[\"train\"], splits[\"validation\"],\n"
             "            TrainConfig(steps=TRAIN_STEPS, eval_every=max(TRAIN_STEPS // 2, 1)), progress=False)\n"
             "with deltas.applied(model):\n"
             "    tuned = evaluate(model, splits[\"test\"], progress=False)\n"
             "accuracy_figure({\"base\": base, \"head deltas\": tuned})"),
]


def notebook() -> dict:
    cells = []
    for kind, text in CELLS:
        cell = {"cell_type": "markdown" if kind == "md" else "code", "metadata": {}, "source": text.splitlines(True)}
        if kind == "code":
            cell.update(execution_count=None, outputs=[])
        cells.append(cell)
    return {"cells": cells, "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                                         "language_info": {"name": "python"}}, "nbformat": 4, "nbformat_minor": 5}


if __name__ == "__main__":
    out = Path(__file__).with_name("tour.ipynb")
    out.write_text(json.dumps(notebook(), indent=1) + "\n")
    print(f"wrote {out}")
