"""Writes the study notebooks from the cells below (keeps them reviewable as code).

    .venv/bin/python notebooks/make_notebooks.py
tests/test_notebooks.py executes every notebook top to bottom (nbclient), so they cannot rot.
Each starts with a parameter cell: MODEL is vru-organism (seconds on a CPU); any embedded
name, Hugging Face id or local folder works, with larger N for a real study.
"""

import json
from pathlib import Path

SETUP = ("import torch\n\ntorch.set_num_threads(1)  # small models on a shared CPU; remove on your own machine\n"
         "from vru_lens import load_model\n\nmodel = load_model(MODEL)")

NOTEBOOKS = {
    "01_benchmark_and_evaluation": [
        ("md", "# 1. VRUBench and evaluation\n"
               "A story turns the viewer (\"turn 90 degrees right\") and names what is seen at some headings; the "
               "question asks what is in front after the last turn, or \"unknown\" if that heading was never seen. "
               "A model tracks the viewpoint only if it beats **every rotation-blind rule** (\"the last object "
               "named\", \"always unknown\", ...); the generator keeps all of them near chance.\n\n"
               "The default model is `vru-organism`, a 4-layer Llama trained on the task with planted heads (a model "
               "with a known answer); set `MODEL` to `smollm2-135m-instruct` to see a model that does not solve it."),
        ("code", "MODEL = \"vru-organism\"\nN_ITEMS = 200\nSEED = 0"),
        ("code", SETUP),
        ("md", "## The items\nThe study's prompt format (paper style), about 30% of answers \"unknown\"."),
        ("code", "from vru_lens.bench import make_items\nfrom vru_lens.evaluate import audit\n\n"
                 "items = make_items(N_ITEMS, SEED, split=\"test\")\n"
                 "print(items[0][\"prompt\"])\nprint(\"answer:\", items[0][\"answer\"], \"| candidates:\", items[0][\"candidates\"])"),
        ("md", "## The floor: chance and the rotation-blind rules"),
        ("code", "rules = audit(items)\nprint(f\"chance {rules['chance']:.1%}; best rule {rules['best'][0]!r} at {rules['best'][1]:.1%}\")\n"
                 "sorted(rules[\"rules\"].items(), key=lambda kv: -kv[1])[:5]"),
        ("md", "## Evaluation with both scorings\n`method=\"both\"`: candidate log-probabilities and greedy generation "
               "scored like the study (exact match of the normalised answer)."),
        ("code", "from vru_lens.evaluate import evaluate\n\n"
                 "result = evaluate(model, items, method=\"both\", progress=False)\nprint(result.table())"),
        ("code", "from vru_lens.viz import accuracy_figure\n\naccuracy_figure({MODEL: result})"),
        ("md", "The final turn's direction is where a rotation-blind model fails; every direction should sit well "
               "above the best rule."),
        ("code", "accuracy_figure({MODEL: result}, key=\"final_direction\")"),
    ],
    "02_probing": [
        ("md", "# 2. Where does the viewpoint live? Probes and the logit lens\n"
               "A linear probe on each layer's residual stream (at the end of every step and at the question) "
               "predicts the current heading. The **control task** (Hewitt & Liang: the same inputs with labels "
               "assigned by phrase type) tells decodable structure from probe memorisation; the gap is the selectivity."),
        ("code", "MODEL = \"vru-organism\"\nN_PROBE = 400\nN_LENS = 200"),
        ("code", SETUP),
        ("code", "from vru_lens.bench import make_items\nfrom vru_lens.probe import probe\n\n"
                 "heading = probe(model, make_items(N_PROBE, seed=2, split=\"train\"), target=\"heading\", progress=False)\n"
                 "heading.plot()"),
        ("code", "{k: heading.summary()[k] for k in (\"best_layer\", \"best_accuracy\", \"best_selectivity\", \"chance\")}"),
        ("md", "## Logit lens of the answer\nEach layer's residual at the final position, read through the final norm "
               "and the unembedding: when does the gold answer overtake the strongest wrong candidate?"),
        ("code", "from vru_lens.logit_lens import logit_lens\n\n"
                 "answerable = [it for it in make_items(N_LENS, seed=0, split=\"test\") if it[\"answerable\"]]\n"
                 "lens = logit_lens(model, answerable, progress=False)\nlens.plot()"),
        ("code", "{k: lens.summary()[k] for k in (\"peak_layer\", \"peak_gold_top\", \"final_gold_top\", \"chance_top\")}"),
    ],
    "03_head_ranking": [
        ("md", "# 3. Which heads carry the final turn? Rankings, knockout, attention\n"
               "Counterfactual pairs flip the final turn's direction, so the answer changes. Each method scores every "
               "head by how much of the clean-corrupted logit difference it carries (bootstrap CIs over pairs). On the "
               "organism the planted heads G are the known answer: a method that finds them earns trust."),
        ("code", "MODEL = \"vru-organism\"\nN_PAIRS = 48\nN_ITEMS = 200\nK = 8\nN_BOOT = 200"),
        ("code", SETUP),
        ("code", "from vru_lens.bench import PAIRABLE, make_items\nfrom vru_lens.tokens import tokenize_pairs\n\n"
                 "pairs = tokenize_pairs(model.tokenizer, make_items(4 * N_PAIRS, seed=1, cfg=PAIRABLE, split=\"validation\"),\n"
                 "                       max_pairs=N_PAIRS)\npairs.pairs.summary()"),
        ("code", "from vru_lens.patching import rank_heads\n\n"
                 "scores = {m: rank_heads(model, pairs, method=m, n_boot=N_BOOT, progress=False)\n"
                 "          for m in (\"path\", \"activation\", \"attribution\")}\nscores[\"path\"].to_frame().head(K)"),
        ("md", "Side by side, with the planted heads outlined (organisms only). Path patching to the logits sees only "
               "direct effects, so heads that act through later heads score low there and high under activation patching."),
        ("code", "from vru_lens.models.organisms import known_circuit\nfrom vru_lens.viz import heatmaps\n\n"
                 "circuit = known_circuit(MODEL)  # None for models without a known answer\nheatmaps(scores, circuit)"),
        ("md", "## Knockout curve\nMean-ablate the top k heads together, k = 0..K, against random k-head sets drawn outside that top k (one band per ranking)."),
        ("code", "from functools import partial\n\nfrom vru_lens.evaluate import accuracy\n"
                 "from vru_lens.patching import head_means, knockout_curve\n\n"
                 "items = make_items(N_ITEMS, seed=0, split=\"test\")\n"
                 "rankings = {m: [(l, h) for l, h, _ in s.top(K)] for m, s in scores.items()}\n"
                 "curve = knockout_curve(model, items, rankings, head_means(model, pairs), max_k=K, n_random=3,\n"
                 "                       accuracy=partial(accuracy, batch_size=64))  # patching takes the accuracy function\n"
                 "curve.plot()"),
        ("md", "## Where the top heads look\nHover a token to see where it attends."),
        ("code", "from vru_lens.viz import attention_patterns\n\n"
                 "story = pairs.pairs.items[0]\nattention_patterns(model, story, rankings[\"path\"][:4]).view()"),
    ],
    "04_selective_finetuning": [
        ("md", "# 4. Fine-tune only the top heads\n"
               "The study's intervention: train only the W_Q/W_K/W_V/W_O slices of the top-k heads (the rest of the "
               "model frozen), then re-measure. Starting point: the model's base checkpoint where the package ships one "
               "(`vru-organism-deficit`, its circuit weakened in known heads), else the model itself. The control: as many random heads."),
        ("code", "MODEL = \"vru-organism\"\nK = 8\nSTEPS = 50\nLR = 1e-3\nN_PAIRS = 48"),
        ("code", "import torch\n\ntorch.set_num_threads(1)\nfrom vru_lens import load_model\nfrom vru_lens.study import base_checkpoint\n\n"
                 "BASE = base_checkpoint(MODEL) or MODEL\nbase = load_model(BASE)\nBASE"),
        ("code", "from vru_lens.bench import PAIRABLE, make_items, make_splits\nfrom vru_lens.evaluate import evaluate\n"
                 "from vru_lens.patching import rank_heads\nfrom vru_lens.tokens import tokenize_pairs\n\n"
                 "splits = make_splits(1600, 64, 200, seed=0)\n"
                 "pairs = tokenize_pairs(base.tokenizer, make_items(4 * N_PAIRS, seed=1, cfg=PAIRABLE, split=\"validation\"),\n"
                 "                       max_pairs=N_PAIRS)\n"
                 "before = evaluate(base, splits[\"test\"], progress=False)\n"
                 "ranked = rank_heads(base, pairs, method=\"path\", n_boot=0, progress=False)\n"
                 "top = [(l, h) for l, h, _ in ranked.top(K)]\n"
                 "print(before.table().splitlines()[0])\ntop"),
        ("code", "from vru_lens.evaluate import accuracy\nfrom vru_lens.finetune import HeadDeltas, TrainConfig, random_heads, train\n\n"
                 "cfg = TrainConfig(steps=STEPS, batch_size=32, lr=LR, eval_every=10)\nruns, tuned = {}, {}\n"
                 "for label, heads in ((\"top heads\", top), (\"random heads\", random_heads(base.cfg.n_layers, base.cfg.n_heads, K, seed=0, exclude=top))):\n"
                 "    deltas = HeadDeltas(base, heads, components=\"qkvo\")\n"
                 "    runs[label] = train(base, deltas, splits[\"train\"], splits[\"validation\"], cfg, progress=False,\n"
                 "                        accuracy=accuracy)  # validation: the fraction of items right\n"
                 "    with deltas.applied(base):\n"
                 "        tuned[label] = (deltas, evaluate(base, splits[\"test\"], progress=False))\n"
                 "print(deltas.num_parameters(), \"trainable parameters per run\")"),
        ("code", "from vru_lens.viz import accuracy_figure, finetune_curves\n\n"
                 "accuracy_figure({\"before\": before, **{k: r for k, (_, r) in tuned.items()}})"),
        ("code", "finetune_curves(runs)"),
        ("md", "## Forgetting\nAn organism's second task (list recall) and the KL from the untuned model there; "
               "for language models, the general benchmarks (`GeneralSuite`)."),
        ("code", "from vru_lens.general_eval import GeneralSuite, ListRecallSuite, compare\nfrom vru_lens.models.organisms import ORGANISMS\n\n"
                 "suite = ListRecallSuite() if BASE in ORGANISMS else GeneralSuite(n_per_task=20, mmlu_n=20, wiki_n=10)\n"
                 "reference = suite.run(base)\ndeltas = tuned[\"top heads\"][0]\nwith deltas.applied(base):\n"
                 "    after = suite.run(base, reference=reference)\ncompare(reference, after)"),
        ("md", "## Did the tuned heads change role? Re-rank the tuned model"),
        ("code", "from vru_lens.viz import heatmaps\n\n"
                 "with deltas.applied(base):\n    retuned = rank_heads(base, pairs, method=\"path\", n_boot=0, progress=False)\n"
                 "heatmaps({\"before\": ranked, \"after\": retuned})"),
    ],
    "05_user_task": [
        ("md", "# 5. A task of your own: rank heads, knock them out, and measure faithfulness\n"
               "Any contrastive task works: pairs of prompts of equal token length whose next tokens differ "
               "(`PairTokens.from_prompts` takes text, chat-rendered or plain, or token ids). Here: **induction** "
               "on random tokens. Clean: `[BOS] x x[:m]`, so the copy continues with `x[m]`; corrupt: the first "
               "copy's `x[m]` replaced by `y`, so it continues with `y`. The ground truth is independent of every "
               "ranking: the heads whose attention goes from each second-copy token to the token after its first "
               "occurrence. The default model runs in seconds; `smollm2-135m-instruct` has real induction heads "
               "(docs/grading.md)."),
        ("code", "MODEL = \"vru-organism\"\nN_SEQS = 8\nSEQ_LEN = 8\nSEED = 0"),
        ("code", SETUP),
        ("md", "## The pairs, built from token ids"),
        ("code", "import torch\nfrom vru_lens.grading import random_tokens\nfrom vru_lens.tokens import PairTokens\n\n"
                 "tok = model.tokenizer\nx = random_tokens(tok, N_SEQS, SEQ_LEN, SEED)  # distinct random tokens per row\n"
                 "spare = random_tokens(tok, 1, 2 * N_SEQS + SEQ_LEN, SEED + 1)[0].tolist()\n"
                 "spare = [t for t in spare if t not in set(x.flatten().tolist())]\n"
                 "g = torch.Generator().manual_seed(SEED)\nclean, corrupt, clean_answers, corrupt_answers = [], [], [], []\n"
                 "for i, row in enumerate(x.tolist()):\n"
                 "    m = int(torch.randint(1, SEQ_LEN, (1,), generator=g))\n"
                 "    changed = row[:m] + [spare[i]] + row[m + 1:]\n"
                 "    clean.append([tok.bos_token_id] + row + row[:m])\n"
                 "    corrupt.append([tok.bos_token_id] + changed + row[:m])\n"
                 "    clean_answers.append(row[m])\n    corrupt_answers.append(spare[i])\n"
                 "pairs = PairTokens.from_prompts(tok, clean, corrupt, clean_answers, corrupt_answers, chat=False)\n"
                 "pairs.pairs.summary()"),
        ("md", "## Ground truth: the standard induction test"),
        ("code", "from vru_lens.grading import THRESHOLD, induction_scores\n\n"
                 "truth = induction_scores(model, x)  # [sequence, layer, head]\n"
                 "print(f\"heads above {THRESHOLD}:\", [tuple(map(int, h)) for h in (truth.mean(0) > THRESHOLD).nonzero()])\n"
                 "truth.mean(0).round(2)"),
        ("md", "## Rank every head on the task, and grade the rankings against the ground truth\n"
               "AUROC needs at least one head above the threshold (None otherwise); Spearman uses the scores."),
        ("code", "from vru_lens.grading import grade\nfrom vru_lens.patching import rank_heads\n\n"
                 "rankings = {m: rank_heads(model, pairs, m, n_boot=0, progress=False) for m in (\"attribution\", \"gradient\")}\n"
                 "{m: grade(truth, hs, n_boot=200) for m, hs in rankings.items()}"),
        ("md", "## Knockout: the top heads against random heads\n"
               "`accuracy=None` scores the pairs themselves: the share of clean prompts where the clean answer beats "
               "the corrupt one."),
        ("code", "from vru_lens.heads import top_heads\nfrom vru_lens.patching import knockout\n\n"
                 "knockout(model, pairs, None, top_heads(rankings[\"attribution\"], 3), n_random=3, accuracy=None).summary()"),
        ("md", "## Faithfulness curves (MIB style)\n"
               "Keep a ranking's top-k heads at their clean values, give every other head its value on the corrupt "
               "prompt, and read the fraction of the logit difference recovered; CPR is the area under the curve, "
               "CMD the area between it and 1, beside random head sets."),
        ("code", "from vru_lens.patching.faithfulness import faithfulness_curve\n\n"
                 "faith = faithfulness_curve(model, pairs, {**rankings, \"induction score\": truth.mean(0)}, n_random=5,\n"
                 "                           progress=False)\n"
                 "{name: (round(r[\"cpr\"], 3), round(r[\"cmd\"], 3)) for name, r in faith.summary(n_boot=100)[\"rankings\"].items()}"),
        ("code", "faith.plot()"),
    ],
}


def notebook(cells) -> dict:
    out = []
    for kind, text in cells:
        cell = {"cell_type": "markdown" if kind == "md" else "code", "metadata": {}, "source": text.splitlines(True)}
        if kind == "code":
            cell.update(execution_count=None, outputs=[])
            if text.startswith("MODEL ="):
                cell["metadata"]["tags"] = ["parameters"]  # papermill's parameter cell
        out.append(cell)
    return {"cells": out, "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                                       "language_info": {"name": "python"}}, "nbformat": 4, "nbformat_minor": 5}


if __name__ == "__main__":
    for name, cells in NOTEBOOKS.items():
        path = Path(__file__).with_name(f"{name}.ipynb")
        path.write_text(json.dumps(notebook(cells), indent=1) + "\n")
        print(f"wrote {path}")
