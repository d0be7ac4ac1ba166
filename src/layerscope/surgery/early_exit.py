"""Early exit (dynamic depth) for classifiers: a small exit head after every block.

Each exit head is a probe: scikit-learn's L2-regularised ``LogisticRegression`` on standardised,
pooled block outputs (mean over real tokens for text, over positions for feature maps), fitted on
the training split. For a classifier whose own head gives the classes (a zoo CNN/MLP, a
``...ForSequenceClassification``), the model's own output is the last exit; for an encoder such
as MiniLM the probe on the last block is. At inference an item leaves at the first exit whose top
class probability reaches the threshold, else at the last one.

Reported per threshold, on the held-out split: accuracy, the mean number of blocks run, and the
latency. Latency is estimated from measured timings, not from a dynamic-depth runtime: the full
forward is timed with a timestamp at every block's output (median over runs), so running up to
block ``i`` costs ``cumulative[i]`` of the full time; the mean over items of the cost at its exit
(plus the exit heads it evaluated) is the expected latency, reported as a fraction saved.

Example:
    >>> import torch
    >>> from layerscope.surgery.early_exit import early_exit
    >>> g = torch.Generator().manual_seed(0)
    >>> x = torch.randn(120, 64, generator=g); y = (x[:, 0] > 0).long()
    >>> res = early_exit("mlp:depth=3,width=64,n_classes=2", (x, y), thresholds=[0.6, 0.99])
    >>> len(res.accuracy), res.layers_used[-1] >= res.layers_used[0]
    (2, True)
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from layerscope.errors import LayerscopeError
from layerscope.modes import evaluating
from layerscope.results import Result

DEFAULT_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)


@dataclass
class EarlyExitResult(Result):
    """Per threshold: held-out accuracy, mean blocks run, expected latency; per exit: accuracy."""

    model: str
    layers: list[str]
    exits: list[str]                 # exit names in order ("probe:<block>" or "model")
    exit_depth: list[int]            # blocks run before each exit
    exit_accuracy: list[float]       # accuracy of each exit alone on the held-out split
    thresholds: list[float]
    accuracy: list[float]
    layers_used: list[float]         # mean blocks run per item
    latency_saved: list[float]       # fraction of the full forward's time saved
    full_accuracy: float             # the last exit alone (no early exit)
    full_ms: float                   # median time of the full forward on the held-out batch
    cumulative: list[float]          # fraction of the full time spent when block i has run
    n_train: int
    n_test: int

    def summary(self) -> str:
        i = int(np.argmax([s if a >= self.full_accuracy - 0.01 else -1
                           for a, s in zip(self.accuracy, self.latency_saved)]))
        return (f"early exit on {self.model}: full depth {len(self.layers)} blocks, accuracy "
                f"{self.full_accuracy:.3f}; threshold {self.thresholds[i]:g} keeps accuracy "
                f"{self.accuracy[i]:.3f} with {self.layers_used[i]:.2f} blocks on average and "
                f"saves {self.latency_saved[i]:.0%} of the time (estimated from block timings)")

    def plot(self, ax=None):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
        axes[0].plot(self.layers_used, self.accuracy, marker="o")
        for t, x, y in zip(self.thresholds, self.layers_used, self.accuracy):
            axes[0].annotate(f"{t:g}", (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        axes[0].axhline(self.full_accuracy, color="grey", ls="--", label="full depth")
        axes[0].set(xlabel="mean blocks run", ylabel="accuracy", title="accuracy vs depth used")
        axes[0].legend()
        axes[1].bar(range(len(self.exits)), self.exit_accuracy)
        axes[1].set(xlabel="exit (after block)", ylabel="accuracy", title="each exit alone")
        fig.tight_layout()
        return fig


@dataclass
class ExitHead:
    """A standardise-then-logistic head: ``softmax((x - mean) / scale @ coef.T + intercept)``."""

    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: np.ndarray
    classes: np.ndarray

    def proba(self, x: np.ndarray) -> np.ndarray:
        z = ((x - self.mean) / self.scale) @ self.coef.T + self.intercept
        if z.shape[1] == 1:  # binary logistic regression: one logit
            p1 = 1 / (1 + np.exp(-z[:, 0]))
            return np.stack([1 - p1, p1], axis=1)
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)


def fit_head(x: np.ndarray, y: np.ndarray, C: float = 1.0) -> ExitHead:
    """Fit one exit head (scikit-learn StandardScaler + LogisticRegression)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x)
    clf = LogisticRegression(C=C, max_iter=2000).fit(scaler.transform(x), y)
    scale = np.where(scaler.scale_ > 0, scaler.scale_, 1.0)
    return ExitHead(scaler.mean_, scale, clf.coef_, clf.intercept_, clf.classes_)


def _split(data, test_fraction: float, seed: int):
    """(train items, train labels, test items, test labels) from a Dataset or (items, labels)."""
    from sklearn.model_selection import train_test_split

    if isinstance(data, str):
        from layerscope.data import load_dataset

        data = load_dataset(data)
    if hasattr(data, "items") and hasattr(data, "labels") and not isinstance(data, dict):
        items, labels = data.items, data.labels
    elif isinstance(data, (tuple, list)) and len(data) == 2:
        items, labels = data
    else:
        raise LayerscopeError("early exit needs labelled data: a Dataset with labels or (items, labels)")
    if labels is None:
        raise LayerscopeError("early exit needs class labels; use a labelled dataset")
    labels = torch.as_tensor(labels)
    if labels.is_floating_point():
        raise LayerscopeError("early exit needs class labels (integers); got real-valued targets: "
                              "binarise them first (e.g. score > 0)")
    if labels.dim() != 1:
        raise LayerscopeError(f"early exit needs one class label per item; got labels of shape "
                              f"{tuple(labels.shape)} (one per position?); use a classification "
                              "data set such as digits or mnist")
    idx = np.arange(len(labels))
    counts = np.unique(labels.numpy(), return_counts=True)[1]
    tr, te = train_test_split(idx, test_size=test_fraction, random_state=seed,
                              stratify=labels.numpy() if counts.min() >= 2 else None)

    def take(ix):
        if isinstance(items, Tensor):
            return items[torch.as_tensor(ix)]
        return [items[i] for i in ix]

    return take(tr), labels[tr].numpy(), take(te), labels[te].numpy()


def _features(loaded, view, items, *, batch_size, max_length, with_output: bool):
    """Pooled outputs of every block (list of (N, D) arrays) and the model's logits if wanted."""
    from layerscope.replay import main_output
    from layerscope.sweep import encoded_batches
    from layerscope.views import pool

    feats = [[] for _ in view]
    outs = []
    with torch.inference_mode(), view.capture(list(view)) as cap:
        for enc, _ in encoded_batches(loaded, items, batch_size=batch_size, max_length=max_length):
            cap.clear()
            out = cap.call(loaded, enc)
            for i, layer in enumerate(view):
                feats[i].append(pool(cap.outputs[layer.name], enc.mask, "mean").cpu().numpy())
            if with_output:
                outs.append(main_output(out, "classification").float().cpu().numpy())
    return [np.concatenate(f) for f in feats], (np.concatenate(outs) if with_output else None)


def block_timings(loaded, view, enc, repeats: int = 7) -> tuple[float, list[float]]:
    """Median full-forward ms, and the median fraction of it elapsed at each block's output."""
    from layerscope.layers import Capture

    stamps: dict[str, float] = {}
    fractions, totals = [], []

    def stamp(output, name):   # an edit that changes nothing: it notes when each block finished
        stamps[name] = time.perf_counter()

    with evaluating(loaded), torch.inference_mode(), Capture(loaded.module, list(view),
                                                             edit=stamp) as cap:
        cap.call(loaded, enc)
        for _ in range(repeats):
            start = time.perf_counter()
            cap.call(loaded, enc)
            total = time.perf_counter() - start
            totals.append(total)
            fractions.append([(stamps[layer.name] - start) / total for layer in view])
            cap.clear()
    return 1000 * statistics.median(totals), np.median(np.array(fractions), axis=0).tolist()


def early_exit(model, data, *, thresholds=DEFAULT_THRESHOLDS, blocks: str | None = None,
               test_fraction: float = 0.3, seed: int = 0, batch_size: int = 32,
               max_length: int | None = 128, C: float = 1.0, save_to=None) -> EarlyExitResult:
    """Fit an exit head per block and sweep confidence thresholds on held-out data."""
    from layerscope.layouts import infer_task
    from layerscope.layers import Layers
    from layerscope.sweep import as_model

    loaded = as_model(model)
    thresholds = [float(t) for t in thresholds]
    if not thresholds or not all(0.0 < t <= 1.0 for t in thresholds):
        raise LayerscopeError(f"thresholds must be in (0, 1]; got {thresholds}")
    view = Layers(loaded, granularity="blocks", blocks=blocks)
    own_head = infer_task(loaded) == "classification"
    x_tr, y_tr, x_te, y_te = _split(data, test_fraction, seed)
    with evaluating(loaded):
        return _early_exit(loaded, view, own_head, x_tr, y_tr, x_te, y_te, thresholds,
                           batch_size=batch_size, max_length=max_length, C=C, save_to=save_to)


def _early_exit(loaded, view, own_head, x_tr, y_tr, x_te, y_te, thresholds, *, batch_size,
                max_length, C, save_to) -> EarlyExitResult:
    f_tr, _ = _features(loaded, view, x_tr, batch_size=batch_size, max_length=max_length,
                        with_output=False)
    f_te, logits = _features(loaded, view, x_te, batch_size=batch_size, max_length=max_length,
                             with_output=own_head)
    n_probe = len(view) - (0 if not own_head else 1)  # the last block's exit is the model itself
    heads = [fit_head(f_tr[i], y_tr, C) for i in range(n_probe)]
    probs = [h.proba(f_te[i]) for i, h in enumerate(heads)]
    classes = [h.classes for h in heads]
    exits = [f"probe:{view[i].name}" for i in range(n_probe)]
    depth = [i + 1 for i in range(n_probe)]
    if own_head:
        p = torch.softmax(torch.as_tensor(logits), dim=-1).numpy()
        probs.append(p)
        classes.append(np.arange(p.shape[1]))
        exits.append("model")
        depth.append(len(view))
    preds = [c[p.argmax(1)] for p, c in zip(probs, classes)]
    conf = [p.max(1) for p in probs]
    exit_acc = [float((pr == y_te).mean()) for pr in preds]
    enc = loaded.encode(x_te[:batch_size], max_length=max_length)
    full_ms, cumulative = block_timings(loaded, view, enc)
    accuracy, used, saved = [], [], []
    for t in thresholds:
        chosen = np.full(len(y_te), len(probs) - 1)
        for k in range(len(probs) - 2, -1, -1):
            chosen = np.where(conf[k] >= t, k, chosen)
        pred = np.array([preds[k][i] for i, k in enumerate(chosen)])
        accuracy.append(float((pred == y_te).mean()))
        blocks_run = np.array([depth[k] for k in chosen])
        used.append(float(blocks_run.mean()))
        cost = np.array([cumulative[d - 1] if d < len(view) else 1.0 for d in blocks_run])
        saved.append(float(1.0 - cost.mean()))
    result = EarlyExitResult(
        model=loaded.ref, layers=view.names(), exits=exits, exit_depth=depth,
        exit_accuracy=exit_acc, thresholds=thresholds, accuracy=accuracy, layers_used=used,
        latency_saved=saved, full_accuracy=exit_acc[-1], full_ms=full_ms, cumulative=cumulative,
        n_train=len(y_tr), n_test=len(y_te))
    if save_to is not None:
        save_heads(heads, exits[:n_probe], save_to)
    return result


def save_heads(heads: list[ExitHead], names: list[str], out) -> Path:
    """Write the exit heads as safetensors (mean, scale, coef, intercept per exit) + JSON."""
    from safetensors.numpy import save_file

    from .save import check_output

    folder = check_output(out, overwrite=True)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, h in zip(names, heads):
        for key in ("mean", "scale", "coef", "intercept", "classes"):
            tensors[f"{name}.{key}"] = np.ascontiguousarray(getattr(h, key))
    save_file(tensors, str(folder / "exit_heads.safetensors"))
    (folder / "exit_heads.json").write_text(json.dumps({"exits": names}, indent=2) + "\n")
    return folder


__all__ = ["early_exit", "EarlyExitResult", "ExitHead", "fit_head", "block_timings", "save_heads"]
