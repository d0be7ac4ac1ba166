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


@dataclass
class EmbedResult(Result):
    """2-D coordinates per layer for the same sampled items, their labels and indices."""

    layers: list[str]
    method: str
    coords: dict                 # layer -> [[x, y], ...]
    indices: list[int]
    labels: list | None
    explained_variance: dict = field(default_factory=dict)   # PCA: layer -> [ratio1, ratio2]
    seen: int = 0

    def summary(self) -> str:
        text = f"{self.method.upper()} of {len(self.layers)} layers on {len(self.indices)} of {self.seen} items"
        if self.explained_variance:
            first = self.layers[0]
            text += f"; the first two components explain {sum(self.explained_variance[first]):.1%} of {first}"
            if len(self.layers) > 1:
                last = self.layers[-1]
                text += f" and {sum(self.explained_variance[last]):.1%} of {last}"
        return text

    def plot(self, ax=None):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        k = len(self.layers)
        fig, axes = plt.subplots(1, k, figsize=(3.4 * k, 3.3), squeeze=False)
        labels = np.asarray([np.nan if v is None else v for v in self.labels], float) if self.labels else None
        for a, name in zip(axes[0], self.layers):
            xy = np.asarray(self.coords[name])
            sc = a.scatter(xy[:, 0], xy[:, 1], c=labels if labels is not None else "tab:blue",
                           s=8, cmap="coolwarm" if labels is not None else None)
            a.set_title(name, fontsize=9)
            a.set_xticks([]); a.set_yticks([])
        if labels is not None:
            fig.colorbar(sc, ax=axes[0].tolist(), label="label")
        fig.suptitle(f"{self.method.upper()} of layer outputs", fontsize=10)
        return fig


def reducers(*, layers=None, sample: int = 1000, view: str = "mean", seed: int = 0) -> list[Reducer]:
    """The reducer the maps need in a sweep: one reservoir sample shared by the chosen layers."""
    return [Reservoir(capacity=sample, layers=layers, view=view, seed=seed)]


def from_reducers(reds: list[Reducer], *, method: str = "pca", seed: int = 0,
                  perplexity: float = 30.0) -> EmbedResult:
    res = next(r for r in reds if isinstance(r, Reservoir)).result()
    coords, var = {}, {}
    for name in res.rows:
        xy, ev = project(res.rows[name], method, seed=seed, perplexity=perplexity)
        coords[name] = xy.tolist()
        if ev:
            var[name] = ev
    return EmbedResult(list(res.rows), method, coords, list(res.indices), res.labels, var, res.seen)


def embed(model, data, *, layers=None, method: str = "pca", sample: int = 1000, view: str = "mean",
          granularity: str = "blocks", seed: int = 0, perplexity: float = 30.0,
          batch_size: int = 32, max_length: int | None = 128, progress: bool = False) -> EmbedResult:
    """PCA or t-SNE maps of ``layers`` of ``model`` on a sample of ``data``, coloured by label."""
    from layerscope.sweep import sweep

    if method not in METHODS:
        raise LayerscopeError(f"unknown method {method!r}; use pca or tsne")
    reds = reducers(sample=sample, view=view, seed=seed)
    sweep(model, data, reducers=reds, layers=layers, granularity=granularity,
          batch_size=batch_size, max_length=max_length, progress=progress)
    return from_reducers(reds, method=method, seed=seed, perplexity=perplexity)


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
    with torch.inference_mode(), lay.capture([name], stop_early=True) as cap:
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
