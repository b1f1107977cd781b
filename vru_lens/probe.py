"""Layer-wise linear probes on the residual stream: where the viewpoint lives.

Flow: ``capture`` runs the model once over the items and keeps only
``blocks.{l}.hook_resid_post`` at the probed positions (the end of every step
and the question's last token), gathered inside the hook so no full sequence
is ever stored. ``target_labels`` turns the VRUBench probe labels into class
ids per captured row; ``fit`` trains one multinomial logistic-regression probe
per layer, all layers in one batched torch optimisation, on a train/test split
made by item (never by token), together with the Hewitt & Liang control task,
and returns a ``ProbeResult``. ``probe`` does all three.

The probe of layer l is softmax(standardise_l(x) @ W_l + b_l), minimising mean
cross-entropy + weight_decay/2 * ||W_l||^2 (an L2 penalty: sklearn's
``LogisticRegression(C=1 / (weight_decay * n_train))`` on standardised features
minimises the same objective), full batch, all layers in one batched loop:
bound-optimisation steps (Boehning) by default, or Adam. Each update acts on
each layer alone, so training all layers together takes exactly the steps a
per-layer loop would take.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from .heads import hook_name
from .readout import run_until
from .results import Result, load_tensors, model_name
from .tokens import chat_for, encode, pad_id, pad_right, render, step_positions

TARGETS = {
    "heading": "label_heading_slot",
    "cum_angle": "label_cum_angle",
    "observed": "label_observed",
    "object": "label_object_at_heading",
}
_INDEX_FIELDS = ("item", "step", "token")  # ResidCache's numpy fields, saved as tensors (weights_only loads them)
CONTROL_TYPES = ("prefix", "phrase", "token", "label")
# The control each target gets unless told otherwise: the heading is a function of the turns so far, so its
# control is a random function of the same turns ("prefix"); the other targets keep the phrase control.
DEFAULT_CONTROL = {"heading": "prefix", "cum_angle": "prefix", "observed": "phrase", "object": "phrase"}
MIN_ITEMS = 10  # a split by item needs a few items on each side


# --------------------------------------------------------------------------- capture


@dataclass
class ResidCache:
    """Residual stream at the probed positions of every item, all requested layers.

    Row r holds item ``item[r]`` at step ``step[r]`` (0..n_steps-1 = end of that
    step, n_steps = the question's last token); ``token[r]`` is the token id
    there. ``final`` (optional) is the residual at each item's last prompt token
    (where the answer is read), for the logit lens.
    """

    resid: Float[Tensor, "layer row d_model"]
    item: np.ndarray
    step: np.ndarray
    token: np.ndarray
    layers: list[int]
    final: Float[Tensor, "layer item d_model"] | None = None
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return self.resid.shape[1]

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        fields = {k: getattr(self, k) for k in self.__dataclass_fields__}
        torch.save({k: torch.from_numpy(np.asarray(v)) if k in _INDEX_FIELDS else v for k, v in fields.items()}, tmp)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "ResidCache":
        """A cache ``save`` wrote: tensors only (never unpickled; a file holding anything else is refused)."""
        data = load_tensors(path, "probe activation cache")
        if not isinstance(data, dict) or set(data) != set(cls.__dataclass_fields__):
            raise ValueError(f"{path} is not a probe activation cache that vru-lens wrote (its fields differ); "
                             "delete it (it is rewritten)")
        return cls(**{k: v.numpy() if k in _INDEX_FIELDS else v for k, v in data.items()})

    def check(self, want: dict, layers: list[int] | None = None, final: bool = False) -> "ResidCache":
        """Refuse a cache captured for other settings: ``meta`` must hold ``want``, the layers be
        ``layers`` (if given), and the final-position residuals be there if ``final``. Returns self."""
        stale = [k for k in want if self.meta.get(k) != want[k]]
        if layers is not None and self.layers != sorted(set(int(l) for l in layers)):
            stale.append("layers")
        if final and self.final is None:
            stale.append("final")
        if stale:
            raise ValueError(f"the cache was captured for other settings ({', '.join(stale)}); "
                             "delete it or pass another cache path")
        return self

    @classmethod
    def cached(cls, path: str | Path | None, model, items: list[dict], layers: list[int] | None = None,
               chat: bool | None = None, batch_size: int = 16, final: bool = False, progress: bool = True) -> "ResidCache":
        """``capture``, kept at ``path``: a cache there for this model, items, chat setting and layers
        (and with the final-position residuals if ``final``) is reused; one for other settings is
        refused (``ValueError``) rather than silently mixed with these items; none is captured and written."""
        path, chat = Path(path) if path is not None else None, chat_for(model, chat)
        if path is not None and path.exists():
            try:
                wanted = range(model.cfg.n_layers) if layers is None else layers  # None: all, as capture reads it
                return cls.load(path).check(_settings(model, items, chat), wanted, final=final)
            except ValueError as err:
                raise ValueError(f"{path}: {err}") from None
        acts = capture(model, items, layers=layers, chat=chat, batch_size=batch_size, final=final, progress=progress)
        if path is not None:
            acts.save(path)
        return acts

    @classmethod
    def concat(cls, parts: list["ResidCache"]) -> "ResidCache":
        """Join caches of consecutive item chunks (captured separately, e.g. to resume or in parallel)."""
        if not parts or any(p.layers != parts[0].layers for p in parts):
            raise ValueError("need at least one cache, all with the same layers")
        offsets = np.cumsum([0] + [int(p.meta.get("n_items", p.item.max() + 1)) for p in parts])
        finals = [p.final for p in parts]
        meta = {**parts[0].meta, "n_items": int(offsets[-1]),
                "item_ids": [i for p in parts for i in p.meta.get("item_ids", [])]}
        return cls(
            torch.cat([p.resid for p in parts], 1), np.concatenate([p.item + o for p, o in zip(parts, offsets)]),
            np.concatenate([p.step for p in parts]), np.concatenate([p.token for p in parts]), parts[0].layers,
            None if any(f is None for f in finals) else torch.cat(finals, 1), meta,
        )


def capture(
    model, items: list[dict], layers: list[int] | None = None, chat: bool | None = None, batch_size: int = 16,
    final: bool = False, progress: bool = True,
) -> ResidCache:
    """Run the model over ``items`` keeping ``hook_resid_post`` only at step ends and the question end.

    Items are batched by length (right-padded, causal, so padding never reaches
    a real token) and the forward pass stops after the deepest requested layer.
    """
    from tqdm.auto import tqdm

    if not items:
        raise ValueError("no items to probe")
    n_layers = model.cfg.n_layers
    layers = list(range(n_layers)) if layers is None else sorted(set(int(l) for l in layers))
    bad = [l for l in layers if not 0 <= l < n_layers]
    if bad:
        raise ValueError(f"layers {bad} out of range: this model has layers 0..{n_layers - 1}")
    tok, chat = model.tokenizer, chat_for(model, chat)
    seqs, rows_item, rows_step, rows_pos = [], [], [], []
    for i, it in enumerate(items):
        ids = encode(tok, render(it["prompt"], tok, chat), chat)
        pos = step_positions(tok, it, chat)
        seqs.append(ids)
        rows_item += [i] * len(pos)
        rows_step += list(range(len(pos)))
        rows_pos += pos
    rows_item, rows_step, rows_pos = map(np.asarray, (rows_item, rows_step, rows_pos))
    first_row = np.concatenate([[0], np.cumsum(np.bincount(rows_item, minlength=len(items)))])
    token = np.asarray([seqs[i][p] for i, p in zip(rows_item, rows_pos)])

    d_model = model.cfg.d_model
    resid = torch.empty(len(layers), len(rows_item), d_model)
    fin = torch.empty(len(layers), len(items), d_model) if final else None
    device = next(model.parameters()).device
    order = np.argsort([len(s) for s in seqs], kind="stable")  # similar lengths together: less padding
    pid = pad_id(tok)
    deepest = layers[-1]
    bar = tqdm(total=len(items), desc="capture resid_post", disable=not progress, unit="item")
    for start in range(0, len(items), batch_size):
        batch = order[start:start + batch_size]
        ids, lengths = pad_right([seqs[i] for i in batch], pid)
        row_idx = torch.from_numpy(np.concatenate([np.arange(first_row[i], first_row[i + 1]) for i in batch]))
        b_idx = torch.from_numpy(np.concatenate([[j] * (first_row[i + 1] - first_row[i]) for j, i in enumerate(batch)]))
        p_idx = torch.from_numpy(rows_pos[row_idx.numpy()])
        item_idx = torch.from_numpy(batch.copy())

        def hook(x, hook, j=None):
            resid[j, row_idx] = x[b_idx.to(x.device), p_idx.to(x.device)].float().cpu()
            if fin is not None:
                fin[j, item_idx] = x[torch.arange(x.shape[0], device=x.device), (lengths - 1).to(x.device)].float().cpu()

        hooks = [(hook_name(l, "resid_post"), _bind(hook, j=j)) for j, l in enumerate(layers)]
        with torch.inference_mode():
            run_until(model, ids.to(device), hooks, stop_at=hook_name(deepest, "resid_post"), return_type=None)
        bar.update(len(batch))
    bar.close()
    return ResidCache(resid, rows_item, rows_step, token, layers, fin, _settings(model, items, chat))


def _settings(model, items: list[dict], chat: bool) -> dict:
    """What a capture depends on besides the layers: a cache is reused only for the same."""
    return {"model": model_name(model), "chat": chat,
            "n_items": len(items), "item_ids": [it.get("id") for it in items]}


def _bind(fn, **kw):
    return lambda x, hook: fn(x, hook, **kw)


# --------------------------------------------------------------------------- labels


def target_labels(items: list[dict], cache: ResidCache, target: str) -> tuple[np.ndarray, list]:
    """Class id of every cached row for a VRUBench probe target, and the class values.

    The question position takes the label after the last step (the final state).
    """
    if target not in TARGETS:
        raise ValueError(f"unknown probe target {target!r}; valid targets: {', '.join(TARGETS)}")
    if cache.meta.get("n_items", len(items)) != len(items):
        raise ValueError(f"the cache holds {cache.meta['n_items']} items but {len(items)} were given")
    key = TARGETS[target]
    values = []
    for i, s in zip(cache.item, cache.step):
        labels = items[i][key]
        values.append(labels[min(int(s), len(labels) - 1)])
    classes = sorted(set(values), key=lambda v: (str(type(v)), v))
    index = {v: k for k, v in enumerate(classes)}
    return np.asarray([index[v] for v in values]), classes


def control_types(items: list[dict], cache: ResidCache, by: str, y: np.ndarray | None = None) -> list:
    """The 'type' of every row that the control task maps to a random class.

    ``prefix``: the whole sequence of turns so far ((angle, direction) of every
    step up to this one; the question position has its own types), the input the
    heading is a function of. A random class per distinct prefix can only be
    memorised: held-out items mostly have prefixes no training item had, so the
    control stays near the label prior unless the residual stores the whole turn
    sequence verbatim (docs/probing.md has the numbers). ``phrase``: the rotation phrase that ends at this position (template, angle,
    direction; the question position has its own types), the surface form a
    probe could memorise without tracking the heading. ``token``: the token id at
    the position (Hewitt & Liang's word type). ``label``: the true label itself
    (a random many-to-one relabelling; as linearly decodable as the label).
    """
    if by == "prefix":
        out = []
        for i, s in zip(cache.item, cache.step):
            steps = items[i]["steps"]
            turns = tuple((st["angle"], st["direction"]) for st in steps[: int(s) + 1])
            out.append((int(s) >= len(steps), turns))
        return out
    if by == "phrase":
        out = []
        for i, s in zip(cache.item, cache.step):
            steps = items[i]["steps"]
            st = steps[min(int(s), len(steps) - 1)]
            out.append((int(s) >= len(steps), st["template_id"], st["angle"], st["direction"]))
        return out
    if by == "token":
        return [int(t) for t in cache.token]
    if by == "label":
        if y is None:
            raise ValueError("control by label needs the labels")
        return [int(v) for v in y]
    raise ValueError(f"unknown control type {by!r}; valid: {', '.join(CONTROL_TYPES)}")


def control_labels(types: list, y: np.ndarray, n_classes: int, seed: int = 0) -> np.ndarray:
    """Hewitt & Liang control labels: each type gets one class, drawn from the empirical label distribution."""
    rng = np.random.default_rng(seed)
    freq = np.bincount(y, minlength=n_classes) / len(y)
    keys = sorted(set(types), key=repr)
    mapping = dict(zip(keys, rng.choice(n_classes, size=len(keys), p=freq)))
    return np.asarray([mapping[t] for t in types])


def split_items(n_items: int, test_frac: float = 0.2, seed: int = 0) -> np.ndarray:
    """Boolean mask over items: True = held out for testing."""
    if n_items < MIN_ITEMS:
        raise ValueError(f"probing needs at least {MIN_ITEMS} items (split by item into train and test); got {n_items}")
    if not 0 < test_frac < 1:
        raise ValueError(f"test_frac must lie in (0, 1), got {test_frac}")
    n_test = max(1, int(round(n_items * test_frac)))
    mask = np.zeros(n_items, dtype=bool)
    mask[np.random.default_rng(seed).permutation(n_items)[:n_test]] = True
    return mask


# --------------------------------------------------------------------------- training


@dataclass
class Probes:
    """Per-layer probes on raw residuals: logits = x @ W[l] + b[l] (standardisation folded in)."""

    W: Float[Tensor, "layer d_model cls"]
    b: Float[Tensor, "layer cls"]

    def logits(self, X: Float[Tensor, "layer n d_model"]) -> Float[Tensor, "layer n cls"]:
        return torch.einsum("lnd,lcd->lnc", X, self.W.transpose(1, 2).contiguous()) + self.b[:, None, :]

    def predict(self, X: Float[Tensor, "layer n d_model"], chunk: int = 8192) -> Int[Tensor, "layer n"]:
        return torch.cat([self.logits(X[:, i:i + chunk]).argmax(-1) for i in range(0, X.shape[1], chunk)], 1)


SOLVERS = ("bound", "adam")
DEFAULT_STEPS = {"bound": 20, "adam": 200}


def _standardise(X: Tensor) -> tuple[Tensor, Tensor]:
    var, mean = torch.var_mean(X, 1)  # [L, d], one pass
    return mean, var.sqrt().clamp_min(1e-6).reciprocal()


def _softmax_grad(X, y_onehot, W, b, mean, inv):
    """Raw-space weights, and the gradient of the mean cross-entropy w.r.t. the standardised W and b."""
    n = X.shape[1]
    Wr = W * inv[:, :, None]  # standardised -> raw-space weights
    br = b - torch.bmm(mean[:, None, :], Wr).squeeze(1)
    logits = torch.einsum("lnd,lcd->lnc", X, Wr.transpose(1, 2).contiguous()).add_(br[:, None, :])
    G = torch.softmax(logits, -1).sub_(y_onehot).div_(n)  # dLoss/dlogits
    g_b = G.sum(1)  # [L, C]
    # (G^T X)^T rather than X^T G: reads X in its own layout (several times faster on CPU)
    g_W = (torch.bmm(G.transpose(1, 2).contiguous(), X).transpose(1, 2) - mean[:, :, None] * g_b[:, None, :]) * inv[:, :, None]
    return g_W, g_b


def train_probes(
    X: Float[Tensor, "layer n d_model"], y: Int[Tensor, "n"] | np.ndarray, n_classes: int,
    weight_decay: float = 1e-2, steps: int | None = None, lr: float = 0.03, seed: int = 0,
    solver: str = "bound", cosine: bool = True,
) -> Probes:
    """Multinomial logistic regression for every layer at once (full batch, L2 penalty).

    Features are standardised per layer with the training mean and std (folded
    into the weights, so X is never copied); the returned weights act on raw
    residuals. Loss per layer: mean cross-entropy + weight_decay / 2 * ||W||^2
    on the standardised weights (the bias is not penalised). Gradients are
    written out (softmax - one-hot), batched over layers.

    ``solver="bound"`` (default, 20 steps): Boehning's bound-optimisation
    (majorise-minimise) steps. The Hessian of the softmax cross-entropy is
    bounded by 1/2 (I - 11^T/C) (x) S, with S the features' correlation
    matrix, so each step is D = -(S/2 + weight_decay I)^-1 gradient with the
    inverse computed once per layer (Cholesky): monotone descent, no step
    size, and 10-20 steps reach the optimum's held-out accuracy.
    ``solver="adam"`` (200 steps): full-batch Adam (torch's defaults) with a
    learning rate ``lr``, cosine-decayed to 0 when ``cosine``, from a small
    random init (``seed``).
    Both act on each layer independently: a batched run takes exactly the
    steps a separate per-layer run would.
    """
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; valid: {', '.join(SOLVERS)}")
    steps = DEFAULT_STEPS[solver] if steps is None else steps
    y = torch.as_tensor(np.asarray(y), dtype=torch.long)
    n_layers, n, d = X.shape
    if y.shape[0] != n:
        raise ValueError(f"{n} rows of activations but {y.shape[0]} labels")
    if y.min() < 0 or y.max() >= n_classes:
        raise ValueError(f"labels must lie in 0..{n_classes - 1}")
    with torch.no_grad():
        X = X.float()
        onehot = torch.nn.functional.one_hot(y, n_classes).float()[None]  # [1, n, C]
        if solver == "bound":
            W, b, mean, inv = _fit_bound(X, onehot, weight_decay, steps)
        else:
            mean, inv = _standardise(X)
            W, b = _fit_adam(X, onehot, mean, inv, weight_decay, steps, lr, seed, cosine)
        Wr = W * inv[:, :, None]
        br = b - torch.bmm(mean[:, None, :], Wr).squeeze(1)
    return Probes(Wr, br)


def _fit_bound(X, onehot, weight_decay, steps):
    n_layers, n, d = X.shape
    C = onehot.shape[-1]
    mean = torch.empty(n_layers, d)
    A = torch.empty(n_layers, d, d)
    for l in range(n_layers):  # one layer at a time: centred data (no cancellation), small temporaries
        mean[l] = X[l].mean(0)
        Xc = X[l] - mean[l]
        torch.mm(Xc.T, Xc, out=A[l])
    inv = (A.diagonal(dim1=1, dim2=2) / (n - 1)).sqrt().clamp_min(1e-6).reciprocal()  # the same std as _standardise
    A.mul_(inv[:, :, None]).mul_(inv[:, None, :]).mul_(0.5 / n).diagonal(dim1=1, dim2=2).add_(weight_decay)
    A_inv = torch.cholesky_inverse(torch.linalg.cholesky(A))  # (S/2 + wd I)^-1, once per layer
    W = torch.zeros(n_layers, d, C)
    b = torch.zeros(n_layers, C)
    for _ in range(steps):
        g_W, g_b = _softmax_grad(X, onehot, W, b, mean, inv)
        g_W.add_(W, alpha=weight_decay)
        g_perp = g_W - g_W.mean(-1, keepdim=True)  # the class-mean part of W only feels the penalty
        W = W - W.mean(-1, keepdim=True) - torch.bmm(A_inv, g_perp)
        b = b - 2 * g_b
    return W, b, mean, inv


def _fit_adam(X, onehot, mean, inv, weight_decay, steps, lr, seed, cosine):
    n_layers, n, d = X.shape
    b1, b2, eps = 0.9, 0.999, 1e-8
    W = torch.randn(n_layers, d, onehot.shape[-1], generator=torch.Generator().manual_seed(seed)) * 0.01
    b = torch.zeros(n_layers, onehot.shape[-1])
    state = [(torch.zeros_like(p), torch.zeros_like(p)) for p in (W, b)]
    for t in range(1, steps + 1):
        rate = lr * 0.5 * (1 + math.cos(math.pi * (t - 1) / steps)) if cosine else lr
        g_W, g_b = _softmax_grad(X, onehot, W, b, mean, inv)
        for p, g, (m, v) in zip((W, b), (g_W.add_(W, alpha=weight_decay), g_b), state):
            m.mul_(b1).add_(g, alpha=1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            denom = (v / (1 - b2 ** t)).sqrt_().add_(eps)
            p.addcdiv_(m, denom, value=-rate / (1 - b1 ** t))
    return W, b


# --------------------------------------------------------------------------- results


@dataclass
class ProbeResult(Result):
    """Per-layer probe accuracy on held-out items, with the control task and chance."""

    target: str
    classes: list
    layers: np.ndarray
    accuracy: np.ndarray  # [layer], all held-out rows
    question_accuracy: np.ndarray  # [layer], held-out rows at the question position only
    control_accuracy: np.ndarray  # [layer]
    selectivity: np.ndarray  # accuracy - control_accuracy
    chance: float  # majority-class rate on the test rows
    confusion: np.ndarray  # [layer, true, predicted] counts on the test rows
    weights: np.ndarray  # [layer, d_model, class], act on raw residuals
    bias: np.ndarray  # [layer, class]
    n_train_items: int
    n_test_items: int
    n_train_rows: int
    n_test_rows: int
    control_by: str
    config: dict

    def best_layer(self) -> int:
        return int(self.layers[int(np.argmax(self.accuracy))])

    def summary(self) -> dict:
        best = int(np.argmax(self.accuracy))
        return {
            "target": self.target, "layers": [int(l) for l in self.layers],
            "accuracy": [round(float(a), 4) for a in self.accuracy],
            "control_accuracy": [round(float(a), 4) for a in self.control_accuracy],
            "selectivity": [round(float(a), 4) for a in self.selectivity],
            "question_accuracy": [round(float(a), 4) for a in self.question_accuracy],
            "chance": round(self.chance, 4), "n_classes": len(self.classes),
            "best_layer": int(self.layers[best]), "best_accuracy": round(float(self.accuracy[best]), 4),
            "best_selectivity": round(float(self.selectivity[best]), 4),
            "n_train_items": self.n_train_items, "n_test_items": self.n_test_items,
            "n_train_rows": self.n_train_rows, "n_test_rows": self.n_test_rows, "control_by": self.control_by,
        }

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame({
            "layer": self.layers, "accuracy": self.accuracy, "question_accuracy": self.question_accuracy,
            "control_accuracy": self.control_accuracy, "selectivity": self.selectivity,
            "chance": np.full(len(self.layers), self.chance),
        })

    def plot(self, title: str | None = None):
        import plotly.graph_objects as go

        x = [int(l) for l in self.layers]
        fig = go.Figure()
        fig.add_scatter(x=x, y=self.accuracy, mode="lines+markers", name="probe accuracy")
        fig.add_scatter(x=x, y=self.question_accuracy, mode="lines", name="accuracy at question", line={"dash": "dot"})
        fig.add_scatter(x=x, y=self.control_accuracy, mode="lines+markers", name=f"control task ({self.control_by})")
        fig.add_scatter(x=x, y=[self.chance] * len(x), mode="lines", name="chance (majority)", line={"dash": "dash", "color": "grey"})
        fig.update_layout(title=title or f"Probe '{self.target}' by layer ({len(self.classes)} classes, "
                          f"{self.n_test_items} held-out items)", xaxis_title="layer (resid_post)",
                          yaxis_title="held-out accuracy", yaxis_range=[0, 1.02])
        return fig


def _accuracy(pred: Tensor, y: Tensor) -> np.ndarray:
    return (pred == y[None]).float().mean(1).numpy()


def fit(
    cache: ResidCache, y: np.ndarray, classes: list, target: str = "custom", control: np.ndarray | None = None,
    control_by: str = "custom", test_frac: float = 0.2, weight_decay: float = 1e-2, steps: int | None = None,
    lr: float = 0.03, seed: int = 0, solver: str = "bound",
) -> ProbeResult:
    """Train and evaluate probes on ``cache`` for labels ``y`` (class ids into ``classes``).

    The split is by item: all rows of a test item are held out. ``control``
    (same shape as ``y``) gives control-task labels; without it the control
    accuracy is NaN.
    """
    y = np.asarray(y)
    if y.shape != (len(cache),):
        raise ValueError(f"need one label per cached row ({len(cache)}), got shape {y.shape}")
    n_items = int(cache.item.max()) + 1
    test_item = split_items(n_items, test_frac, seed)
    test = test_item[cache.item]
    train = ~test
    if len(np.unique(y[train])) < 2:
        raise ValueError("the training rows hold a single class: nothing to probe")
    n_classes = len(classes)
    X_tr, X_te = cache.resid[:, torch.from_numpy(train)], cache.resid[:, torch.from_numpy(test)]
    y_te = torch.from_numpy(y[test])
    kw = dict(weight_decay=weight_decay, steps=steps, lr=lr, seed=seed, solver=solver)
    probes = train_probes(X_tr, y[train], n_classes, **kw)
    pred = probes.predict(X_te)
    acc = _accuracy(pred, y_te)
    q = torch.from_numpy((cache.step == _n_steps(cache))[test])  # rows at the question position
    q_acc = _accuracy(pred[:, q], y_te[q]) if q.any() else np.full(len(acc), np.nan)
    conf = np.zeros((len(cache.layers), n_classes, n_classes), dtype=np.int64)
    for j in range(len(cache.layers)):
        np.add.at(conf[j], (y[test], pred[j].numpy()), 1)
    if control is not None:
        control = np.asarray(control)
        n_ctrl = int(max(control.max() + 1, n_classes))
        ctrl_probes = train_probes(X_tr, control[train], n_ctrl, **kw)
        ctrl_acc = _accuracy(ctrl_probes.predict(X_te), torch.from_numpy(control[test]))
    else:
        ctrl_acc = np.full(len(acc), np.nan)
    chance = float(np.bincount(y[test], minlength=n_classes).max() / test.sum())
    return ProbeResult(
        target=target, classes=[c if isinstance(c, str) else (c.item() if hasattr(c, "item") else c) for c in classes],
        layers=np.asarray(cache.layers), accuracy=acc, question_accuracy=q_acc, control_accuracy=ctrl_acc,
        selectivity=acc - ctrl_acc, chance=chance, confusion=conf, weights=probes.W.numpy(), bias=probes.b.numpy(),
        n_train_items=int((~test_item).sum()), n_test_items=int(test_item.sum()), n_train_rows=int(train.sum()),
        n_test_rows=int(test.sum()), control_by=control_by,
        config={"test_frac": test_frac, "weight_decay": weight_decay, "steps": steps or DEFAULT_STEPS.get(solver),
                "lr": lr, "seed": seed, "solver": solver},
    )


def _n_steps(cache: ResidCache) -> np.ndarray:
    """Per row, the step index of its item's question position (= the item's number of steps)."""
    last = np.zeros(int(cache.item.max()) + 1, dtype=np.int64)
    np.maximum.at(last, cache.item, cache.step)
    return last[cache.item]


def fit_target(
    cache: ResidCache, items: list[dict], target: str = "heading", control_by: str | None = None, **kw,
) -> ProbeResult:
    """``fit`` for a VRUBench target, with the Hewitt & Liang control task (``control_by`` None: the
    target's ``DEFAULT_CONTROL``)."""
    control_by = control_by or DEFAULT_CONTROL.get(target, "phrase")
    y, classes = target_labels(items, cache, target)
    types = control_types(items, cache, control_by, y)
    control = control_labels(types, y, len(classes), seed=kw.get("seed", 0) + 1)
    return fit(cache, y, classes, target=target, control=control, control_by=control_by, **kw)


def probe(
    model, items: list[dict], target: str = "heading", layers: list[int] | None = None, chat: bool | None = None,
    batch_size: int = 16, control_by: str | None = None, progress: bool = True, **kw,
) -> ProbeResult:
    """Capture the residual stream at step ends and the question, then probe every layer for ``target``
    (``control_by`` None: the target's ``DEFAULT_CONTROL``)."""
    if target not in TARGETS:
        raise ValueError(f"unknown probe target {target!r}; valid targets: {', '.join(TARGETS)}")
    control_by = control_by or DEFAULT_CONTROL[target]
    if control_by not in CONTROL_TYPES:
        raise ValueError(f"unknown control type {control_by!r}; valid: {', '.join(CONTROL_TYPES)}")
    if len(items) < MIN_ITEMS:
        raise ValueError(f"probing needs at least {MIN_ITEMS} items (split by item into train and test); got {len(items)}")
    cache = capture(model, items, layers=layers, chat=chat, batch_size=batch_size, progress=progress)
    return fit_target(cache, items, target, control_by=control_by, **kw)
