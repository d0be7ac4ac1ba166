"""Pictures of layers: PCA / t-SNE maps of chosen layers, activation heatmaps, CNN feature maps.

The maps are made from a uniform reservoir sample of items (one sweep, the same items in every
layer), projected with scikit-learn's ``PCA`` or ``TSNE`` and coloured by label.

Example:
    >>> import torch
    >>> from layerscope.analyses.pictures import embed
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    >>> res = embed(net, torch.randn(50, 4), method="pca")
    >>> res.method, len(res.coords[res.layers[0]]), len(res.coords[res.layers[0]][0])
    ('pca', 50, 2)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from layerscope.errors import LayerscopeError
from layerscope.reducers import Reducer, Reservoir
from layerscope.results import Result

METHODS = ("pca", "tsne")


def _figure(ax, size):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return (ax.figure, ax) if ax is not None else (lambda f: (f, f.add_subplot(111)))(plt.figure(figsize=size))


# --- 2-D maps --------------------------------------------------------------------------------


def project(rows: np.ndarray, method: str = "pca", *, seed: int = 0, perplexity: float = 30.0):
    """2-D coordinates of ``rows`` (n × d) and, for PCA, the explained variance ratios."""
    rows = np.asarray(rows, dtype=np.float64).reshape(len(rows), -1)
    if method not in METHODS:
        raise LayerscopeError(f"unknown method {method!r}; use pca or tsne")
    if len(rows) < 3:
        raise LayerscopeError(f"a 2-D map needs at least 3 items; got {len(rows)}")
    if method == "pca":
        from sklearn.decomposition import PCA

        pca = PCA(n_components=min(2, rows.shape[1]), random_state=seed)
        xy = pca.fit_transform(rows)
        if xy.shape[1] == 1:
            xy = np.hstack([xy, np.zeros_like(xy)])
        return xy, pca.explained_variance_ratio_.tolist()
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    perp = min(perplexity, (len(rows) - 1) / 3.0)
    # OpenMP threads spin-wait badly on a busy machine; small maps are fastest on one thread
    with threadpool_limits(limits=1 if len(rows) <= 5000 else None):
        xy = TSNE(n_components=2, perplexity=perp, init="pca", random_state=seed).fit_transform(rows)
    return xy, []


def dominant_dimensions(rows: np.ndarray, *, share: float = 0.5, ratio: float = 20.0,
                        most: int = 5) -> list[tuple[int, float]]:
    """The outlier dimensions (at most ``most``, each with a variance at least ``ratio`` times the
    median dimension's) when together they hold at least ``share`` of the total variance; else ``[]``.

    Such outlier dimensions (common in transformer residual streams) decide a PCA on their own:
    its first components then show them, not the layer's other directions.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> x = rng.normal(size=(300, 64)); x[:, 7] *= 100
        >>> [(d, round(s, 2)) for d, s in dominant_dimensions(x)]
        [(7, 0.99)]
    """
    x = np.asarray(rows, dtype=np.float64).reshape(len(rows), -1)
    if x.shape[1] < 8 or len(x) < 3:
        return []
    var = x.var(0)
    total = float(var.sum())
    if not np.isfinite(total) or total <= 0:
        return []
    median = float(np.median(var))
    order = np.argsort(-var, kind="stable")
    picked = []
    for d in order[:most]:
        if var[d] < ratio * max(median, 1e-300):
            break
        picked.append((int(d), float(var[d] / total)))
    return picked if sum(s for _, s in picked) >= share else []


def outlier_note(layer: str, dims: list[tuple[int, float]], explained: float | None = None) -> str:
    """One sentence naming the dimensions that dominate ``layer``'s variance (and so its PCA)."""
    if not dims:
        return ""
    names = ", ".join(str(d) for d, _ in dims)
    held = sum(s for _, s in dims)
    plural = "s" if len(dims) > 1 else ""
    pca = (f"the first two principal components explain {explained:.0%} of the variance because "
           if explained is not None else "")
    return (f"{pca}{len(dims)} outlier dimension{plural} of {layer} (dimension{plural} {names}) "
            f"hold{'' if plural else 's'} {held:.0%} of its variance, so a PCA mostly shows "
            f"{'them' if plural else 'it'} (distances, and so t-SNE, too); standardised dimensions would show the rest")


@dataclass
class EmbedResult(Result):
    """2-D coordinates per layer for the same sampled items, their labels and indices.

    ``seen`` is how many items the data had (the map shows ``len(indices)`` of them);
    ``outliers`` names, per layer, the few dimensions that dominate its variance (and so a PCA).
    """

    layers: list[str]
    method: str
    coords: dict                 # layer -> [[x, y], ...]
    indices: list[int]
    labels: list | None
    explained_variance: dict = field(default_factory=dict)   # PCA: layer -> [ratio1, ratio2]
    seen: int = 0
    outliers: dict = field(default_factory=dict)             # layer -> [[dimension, share], ...]
    classes: list | None = None                              # class names when labels are classes

    def summary(self) -> str:
        text = f"{self.method.upper()} of {len(self.layers)} layers on {len(self.indices)} of {self.seen} items"
        if self.explained_variance:
            first = self.layers[0]
            text += f"; the first two components explain {sum(self.explained_variance[first]):.1%} of {first}"
            if len(self.layers) > 1:
                last = self.layers[-1]
                text += f" and {sum(self.explained_variance[last]):.1%} of {last}"
        notes = [outlier_note(name, [tuple(d) for d in self.outliers[name]])
                 for name in self.layers if self.outliers.get(name)]
        if notes:
            text += "; " + "; ".join(notes)
        return text

    def categorical(self) -> bool:
        """Whether the labels are classes (drawn with a qualitative palette and a legend)."""
        return categorical_labels(self.labels, self.classes)

    def plot(self, ax=None):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        k = len(self.layers)
        fig, axes = plt.subplots(1, k, figsize=(3.4 * k, 3.3), squeeze=False)
        classes = self.categorical()
        values = (np.asarray([np.nan if v is None else v for v in self.labels], float)
                  if self.labels and not classes else None)
        sc = None
        for a, name in zip(axes[0], self.layers):
            xy = np.asarray(self.coords[name])
            if classes:
                for i, (code, label) in enumerate(class_names(self.labels, self.classes)):
                    sel = np.asarray([v == code for v in self.labels])
                    a.scatter(xy[sel, 0], xy[sel, 1], s=8, color=qualitative_color(i), label=label)
            else:
                sc = a.scatter(xy[:, 0], xy[:, 1], c=values if values is not None else "tab:blue",
                               s=8, cmap="coolwarm" if values is not None else None)
            a.set_title(name, fontsize=9)
            a.set_xticks([]); a.set_yticks([])
        if classes:
            handles, labels = axes[0][0].get_legend_handles_labels()
            fig.legend(handles, labels, loc="center right", fontsize=8, title="class",
                       markerscale=2)
            fig.subplots_adjust(right=0.85)
        elif values is not None and sc is not None:
            fig.colorbar(sc, ax=axes[0].tolist(), label="label")
        fig.suptitle(f"{self.method.upper()} of layer outputs", fontsize=10)
        return fig


def categorical_labels(labels, classes=None) -> bool:
    """Labels that name classes: given class names, or few distinct whole numbers / strings."""
    if not labels:
        return False
    if classes:
        return True
    vals = [v for v in labels if v is not None]
    if any(isinstance(v, str) for v in vals):
        return True
    whole = all(float(v).is_integer() for v in vals)
    return whole and len(set(vals)) <= 20


def class_names(labels, classes=None) -> list[tuple]:
    """``(code, name)`` per distinct label in sorted order; names from ``classes`` when given."""
    codes = sorted({v for v in labels if v is not None}, key=lambda v: (isinstance(v, str), v))
    out = []
    for c in codes:
        name = classes[int(c)] if classes and not isinstance(c, str) and 0 <= int(c) < len(classes) else c
        out.append((c, str(name)))
    return out


def qualitative_color(i: int):
    """The ``i``-th colour of a qualitative palette (tab10, then tab20 for more classes)."""
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if i < 10 else "tab20"]
    return cmap(i % cmap.N)


def reducers(*, layers=None, sample: int = 1000, view: str = "mean", seed: int = 0) -> list[Reducer]:
    """The reducer the maps need in a sweep: one reservoir sample shared by the chosen layers."""
    return [Reservoir(capacity=sample, layers=layers, view=view, seed=seed)]


def from_reducers(reds: list[Reducer], *, method: str = "pca", seed: int = 0,
                  perplexity: float = 30.0, progress: bool = False, classes=None,
                  index_map=None, total: int | None = None) -> EmbedResult:
    """The maps from a swept reservoir; ``index_map[i]`` is the data index of swept item ``i``."""
    from layerscope.progress import track

    res = next(r for r in reds if isinstance(r, Reservoir)).result()
    coords, var, outliers = {}, {}, {}
    names = list(res.rows)
    for name in track(names, desc=method.upper() if method == "pca" else "t-SNE", unit="layer",
                      enabled=progress and method == "tsne"):
        rows = np.asarray(res.rows[name], dtype=np.float64)
        xy, ev = project(rows, method, seed=seed, perplexity=perplexity)
        coords[name] = xy.tolist()
        if ev:
            var[name] = ev
        dims = dominant_dimensions(rows)
        if dims:
            outliers[name] = [[d, s] for d, s in dims]
    indices = list(res.indices) if index_map is None else [int(index_map[i]) for i in res.indices]
    return EmbedResult(names, method, coords, indices, res.labels, var,
                       res.seen if total is None else total, outliers, classes)


def sample_items(data, sample: int, seed: int = 0):
    """``(data restricted to a seeded uniform sample of size sample, the kept indices, total)``.

    Only these items need to run through the model. ``kept`` is ``None`` when everything is kept
    or when the data cannot be indexed (a stream, which a reservoir then samples as it goes).
    """
    from layerscope.data import Dataset, load_dataset

    if isinstance(data, str):
        data = load_dataset(data)
    try:
        total = len(data)
    except TypeError:
        return data, None, None
    if total <= sample:
        return data, None, total
    kept = np.sort(np.random.default_rng(seed).choice(total, size=sample, replace=False))
    if isinstance(data, Dataset):
        return data.subset(kept.tolist()), kept, total
    if isinstance(data, torch.Tensor):
        return data[torch.as_tensor(kept)], kept, total
    if isinstance(data, np.ndarray):
        return data[kept], kept, total
    if isinstance(data, list):
        return [data[i] for i in kept], kept, total
    return data, None, total


def embed(model, data, *, layers=None, method: str = "pca", sample: int = 1000, view: str = "mean",
          granularity: str = "blocks", seed: int = 0, perplexity: float = 30.0,
          batch_size: int = 32, max_length: int | None = 128, progress: bool = False) -> EmbedResult:
    """PCA or t-SNE maps of ``layers`` of ``model`` on ``sample`` items of ``data``, coloured by label.

    Only the sampled items run through the model (a seeded uniform sample drawn before the pass).

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> res = embed(net, torch.randn(500, 4), sample=100)
        >>> len(res.indices), res.seen, res.layers
        (100, 500, ['0', '2'])
    """
    from layerscope.sweep import sweep

    if method not in METHODS:
        raise LayerscopeError(f"unknown method {method!r}; use pca or tsne")
    if sample < 3:
        raise LayerscopeError(f"a 2-D map needs a sample of at least 3 items; got {sample}")
    subset, kept, total = sample_items(data, sample, seed)
    reds = reducers(sample=sample, view=view, seed=seed)
    sweep(model, subset, reducers=reds, layers=layers, granularity=granularity,
          batch_size=batch_size, max_length=max_length, progress=progress)
    classes = getattr(subset, "classes", None)
    return from_reducers(reds, method=method, seed=seed, perplexity=perplexity, progress=progress,
                         classes=classes, index_map=kept, total=total)


# --- heatmaps of units × items -----------------------------------------------------------------


@dataclass
class HeatmapResult(Result):
    """Activations of one layer: ``values[u][i]`` for the most variable units × sampled items."""

    layer: str
    units: list[int]
    indices: list[int]
    values: list[list[float]]

    def summary(self) -> str:
        v = np.asarray(self.values)
        return (f"{self.layer}: {len(self.units)} most variable units × {len(self.indices)} items, "
                f"values {v.min():.3g} to {v.max():.3g}")

    def plot(self, ax=None):
        fig, ax = _figure(ax, (7, 4.5))
        v = np.asarray(self.values)
        lim = float(np.abs(v).max()) or 1.0
        im = ax.imshow(v, aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
        fig.colorbar(im, ax=ax, label="activation")
        ax.set_xlabel("item")
        ax.set_ylabel("unit (most variable first)")
        ax.set_title(self.layer, fontsize=10)
        fig.tight_layout()
        return fig


def activation_heatmap(model, data, layer, *, items: int = 64, units: int = 64, view: str = "mean",
                       granularity: str = "blocks", seed: int = 0, batch_size: int = 32,
                       max_length: int | None = 128) -> HeatmapResult:
    """Units × items heatmap of one layer: a sample of ``items`` and the ``units`` most variable units."""
    from layerscope.sweep import sweep

    res_red = Reservoir(capacity=items, view=view, seed=seed)
    run = sweep(model, data, reducers=[res_red], layers=str(layer) if isinstance(layer, int) else layer,
                granularity=granularity, batch_size=batch_size, max_length=max_length, progress=False)
    if len(run.layers) != 1:
        raise LayerscopeError(f"a heatmap shows one layer; {layer!r} selects {len(run.layers)}")
    res = res_red.result()
    order = np.argsort(res.indices)
    rows = res.rows[run.layers[0]][order]
    top = np.argsort(-rows.var(0), kind="stable")[:units]
    return HeatmapResult(run.layers[0], top.tolist(), np.asarray(res.indices)[order].tolist(),
                         rows[:, top].T.tolist())


# --- CNN feature maps ---------------------------------------------------------------------------


@dataclass
class FeatureMapResult(Result):
    """Feature maps ``maps[k]`` (H × W) of ``channels[k]`` of a conv layer for one image."""

    layer: str
    channels: list[int]
    maps: list
    input_shape: list[int]

    def summary(self) -> str:
        m = np.asarray(self.maps)
        act = m.reshape(len(self.channels), -1).mean(1)
        return (f"{self.layer}: {len(self.channels)} channels of {m.shape[1]}×{m.shape[2]} maps; "
                f"most active channel {self.channels[int(np.argmax(act))]}")

    def plot(self, ax=None):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        k = len(self.channels)
        cols = min(k, 8)
        rows = (k + cols - 1) // cols
        fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.7 * rows), squeeze=False)
        for a in axes.ravel():
            a.axis("off")
        for a, ch, m in zip(axes.ravel(), self.channels, self.maps):
            a.imshow(np.asarray(m), cmap="viridis")
            a.set_title(f"ch {ch}", fontsize=8)
        fig.suptitle(self.layer, fontsize=10)
        return fig


def feature_maps(model, image, layer, *, channels=None, max_channels: int = 16,
                 granularity: str = "modules") -> FeatureMapResult:
    """The (C, H, W) output of ``layer`` for one ``image`` (C', H, W or 1, C', H, W); chosen channels.

    ``channels=None`` shows the ``max_channels`` channels with the largest mean activation.
    """
    from layerscope.layers import Layers
    from layerscope.sweep import as_model

    loaded = as_model(model)
    x = torch.as_tensor(np.asarray(image) if not isinstance(image, torch.Tensor) else image).float()
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4 or x.shape[0] != 1:
        raise LayerscopeError(f"feature maps take one image of shape (C, H, W); got {tuple(x.shape)}")
    lay = Layers(loaded, granularity=granularity)
    chosen = lay.select(str(layer) if isinstance(layer, int) else layer)
    if len(chosen) != 1:
        raise LayerscopeError(f"feature maps show one layer; {layer!r} selects {len(chosen)}")
    name = chosen[0].name
    enc = loaded.encode(x)
    from layerscope.sweep import model_device

    enc = enc.to(model_device(loaded.module))
    from layerscope.modes import evaluating

    with evaluating(loaded), torch.inference_mode(), lay.capture([name], stop_early=True) as cap:
        cap.call(loaded, enc)
        out = cap.outputs[name]
    if out.dim() != 4:
        raise LayerscopeError(f"layer {name!r} gives shape {tuple(out.shape)}, not (1, C, H, W) maps; "
                              f"choose a convolutional layer")
    fm = out[0].float().cpu().numpy()
    if channels is None:
        channels = np.argsort(-fm.reshape(fm.shape[0], -1).mean(1), kind="stable")[:max_channels].tolist()
    bad = [c for c in channels if not 0 <= int(c) < fm.shape[0]]
    if bad:
        raise LayerscopeError(f"channel {bad[0]} is out of range: {name} has {fm.shape[0]} channels (0-{fm.shape[0] - 1})")
    return FeatureMapResult(name, [int(c) for c in channels], [fm[int(c)].tolist() for c in channels],
                            list(x.shape[1:]))
