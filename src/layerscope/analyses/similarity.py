"""Layer similarity: unbiased linear CKA between all layer pairs, streamed; RBF CKA on a sample.

CKA(X, Y) = HSIC(K, L) / sqrt(HSIC(K, K) · HSIC(L, L)) with K = XXᵀ, L = YYᵀ over n items
(Kornblith et al. 2019), using the unbiased HSIC₁ of Song et al. 2012 (as Nguyen et al. 2021 do):
the biased estimator makes unrelated layers look alike at small n. HSIC₁ divides by
n(n−3) and (n−1)(n−2), so it needs **n ≥ 4 items**; by chance it can dip slightly below 0, so
CKA values below 0 are reported (``clamped``, ``raw_min``) and clamped to 0 (and above 1 to 1).
A layer whose features are constant over the items has HSIC(K, K) = 0: its CKA is undefined,
reported as 0 and named in ``degenerate`` — never NaN.

For linear kernels every term of HSIC₁ is a sum over items (see METHODS.md), so one pass keeps,
with Z the side-by-side features of all layers (each shifted by a fixed vector, its first
batch's mean: HSIC₁ is invariant to shifting the features, and the shift avoids cancellation):
ZᵀZ, Σz, ZᵀQ and QᵀQ where Q holds each layer's squared row norms. Memory is (Σ widths)², not
n². Two models are compared on the same items in chunks (both run on a chunk, the chunk's rows
added to the sums, then dropped). When Σ widths exceeds ``max_width`` each layer is first
multiplied by a fixed seeded Gaussian projection to fewer dimensions (Johnson–Lindenstrauss;
HSIC of the projected features is unbiased for the cross terms), and ``estimator`` says so.

Example:
    >>> import torch
    >>> from layerscope.analyses.similarity import linear_cka
    >>> X = torch.randn(200, 10)
    >>> round(linear_cka(X, 3 * X @ torch.linalg.qr(torch.randn(10, 10))[0]), 6)
    1.0
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from layerscope.errors import LayerscopeError
from layerscope.reducers import BatchInfo, Reducer, Reservoir
from layerscope.results import Result

MIN_ITEMS = 4


def _need_items(n: int) -> None:
    if n < MIN_ITEMS:
        raise LayerscopeError(
            f"unbiased CKA needs at least {MIN_ITEMS} items (HSIC₁ divides by n(n-3) and "
            f"(n-1)(n-2)); got {n}: pass more items")


# --- streaming sums ---------------------------------------------------------------------------


class CKAStats(Reducer):
    """Sums for unbiased linear HSIC between every pair of the given feature blocks (layers).

    Example:
        >>> import torch
        >>> s = CKAStats()
        >>> x = torch.randn(50, 4)
        >>> s.update({"a": x, "b": x[:, :2]}, BatchInfo(0, 50))
        >>> s.hsic().shape
        (2, 2)
    """

    def __init__(self, layers: list[str] | None = None, view: str = "mean", max_width: int = 8192,
                 seed: int = 0):
        self.layers = list(layers) if layers is not None else None
        self.view, self.max_width, self.seed = view, max_width, seed
        self.names: list[str] = []
        self.widths: list[int] = []
        self.shift: dict[str, Tensor] = {}
        self.proj: dict[str, Tensor | None] = {}
        self.n = 0
        self.zz = self.sz = self.zq = self.qq = self.sq = None

    def _start(self, acts: dict[str, Tensor]) -> None:
        self.names = list(acts)
        raw = [int(v[0].numel()) for v in acts.values()]
        k = None
        if sum(raw) > self.max_width:
            k = max(1, self.max_width // len(raw))
        g = torch.Generator().manual_seed(self.seed)
        for name, d in zip(self.names, raw):
            self.proj[name] = (torch.randn(d, k, generator=g, dtype=torch.float64) / math.sqrt(k)
                               if k is not None and d > k else None)
        self.widths = [raw[i] if self.proj[n] is None else self.proj[n].shape[1]
                       for i, n in enumerate(self.names)]
        for name, v in acts.items():
            self.shift[name] = v.reshape(v.shape[0], -1).double().mean(0).cpu()
        total, n_layers = sum(self.widths), len(self.names)
        self.zz = torch.zeros(total, total, dtype=torch.float64)
        self.sz = torch.zeros(total, dtype=torch.float64)
        self.zq = torch.zeros(total, n_layers, dtype=torch.float64)
        self.qq = torch.zeros(n_layers, n_layers, dtype=torch.float64)
        self.sq = torch.zeros(n_layers, dtype=torch.float64)

    @property
    def projected(self) -> bool:
        return any(p is not None for p in self.proj.values())

    def update(self, acts: dict[str, Tensor], batch: BatchInfo) -> None:
        acts = {k: v for k, v in acts.items() if self.layers is None or k in self.layers}
        if not acts:
            return
        if self.zz is None:
            self._start(acts)
        missing = [n for n in self.names if n not in acts]
        if missing:
            raise LayerscopeError(f"layer {missing[0]!r} is missing from a batch; CKA needs every layer on every item")
        parts = []
        for name in self.names:
            x = acts[name].reshape(acts[name].shape[0], -1).double().cpu() - self.shift[name]
            if not torch.isfinite(x).all():
                raise LayerscopeError(f"layer {name!r} produced NaN or inf; CKA needs finite activations")
            if self.proj[name] is not None:
                x = x @ self.proj[name]
            parts.append(x)
        z = torch.cat(parts, 1)
        q = torch.stack([(p * p).sum(1) for p in parts], 1)
        self.n += z.shape[0]
        self.zz += z.T @ z
        self.sz += z.sum(0)
        self.zq += z.T @ q
        self.qq += q.T @ q
        self.sq += q.sum(0)

    def merge(self, other: "CKAStats") -> "CKAStats":
        self._check_mergeable(other)
        if other.zz is None:
            return copy.deepcopy(self)
        if self.zz is None:
            return copy.deepcopy(other)
        if other.names != self.names or other.widths != self.widths:
            raise LayerscopeError("CKA sums can be merged only over the same layers")
        other = other._reshifted(self.shift)
        out = copy.deepcopy(self)
        out.n += other.n
        for k in ("zz", "sz", "zq", "qq", "sq"):
            setattr(out, k, getattr(out, k) + getattr(other, k))
        return out

    def _reshifted(self, shift: dict[str, Tensor]) -> "CKAStats":
        """The same sums as if this reducer's features had been shifted by ``shift`` instead."""
        deltas = []
        for name in self.names:
            d = self.shift[name] - shift[name]
            deltas.append(d @ self.proj[name] if self.proj[name] is not None else d)
        if all(not torch.any(d) for d in deltas):
            return self
        D, L, n = sum(self.widths), len(self.names), self.n
        delta = torch.cat(deltas)
        m = torch.zeros(D, L, dtype=torch.float64)
        edges = np.cumsum([0] + self.widths)
        for i, d in enumerate(deltas):
            m[edges[i]:edges[i + 1], i] = d
        c = torch.stack([d @ d for d in deltas])
        msz = m.T @ self.sz
        out = copy.copy(self)
        out.shift = dict(shift)
        out.sz = self.sz + n * delta
        out.zz = self.zz + torch.outer(self.sz, delta) + torch.outer(delta, self.sz) + n * torch.outer(delta, delta)
        out.sq = self.sq + 2 * msz + n * c
        out.zq = self.zq + 2 * self.zz @ m + torch.outer(self.sz, c) + torch.outer(delta, out.sq)
        out.qq = (self.qq + 2 * self.zq.T @ m + 2 * m.T @ self.zq + 4 * m.T @ self.zz @ m
                  + torch.outer(self.sq, c) + torch.outer(c, self.sq) + 2 * torch.outer(msz, c)
                  + 2 * torch.outer(c, msz) + n * torch.outer(c, c))
        return out

    def hsic(self) -> np.ndarray:
        """Unbiased HSIC₁ for every pair of layers, (L, L)."""
        if self.zz is None:
            _need_items(0)
        n = self.n
        _need_items(n)
        edges = np.cumsum([0] + self.widths)
        blocks = [slice(edges[i], edges[i + 1]) for i in range(len(self.widths))]
        n_l = len(blocks)
        one_k = [float(self.sz[b] @ self.sz[b] - self.sq[i]) for i, b in enumerate(blocks)]
        out = np.zeros((n_l, n_l))
        for i, bi in enumerate(blocks):
            for j in range(i, n_l):
                bj = blocks[j]
                g = self.zz[bi, bj]
                tr = float((g * g).sum() - self.qq[i, j])
                kl = float(self.sz[bi] @ g @ self.sz[bj] - self.sz[bi] @ self.zq[bi, j]
                           - self.sz[bj] @ self.zq[bj, i] + self.qq[i, j])
                h = (tr + one_k[i] * one_k[j] / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * kl) / (n * (n - 3))
                out[i, j] = out[j, i] = h
        return out


def cka_from_hsic(h: np.ndarray, rows: list[int], cols: list[int], tol: float = 1e-10):
    """CKA for rows × cols of a full HSIC matrix: (clamped matrix, degenerate, n clamped, raw min, raw max)."""
    diag = np.diag(h)
    scale = max(float(np.abs(diag).max(initial=0.0)), 1e-300)
    ok = diag > tol * scale
    out = np.zeros((len(rows), len(cols)))
    raw = []
    for a, i in enumerate(rows):
        for b, j in enumerate(cols):
            if ok[i] and ok[j]:
                v = h[i, j] / math.sqrt(diag[i] * diag[j])
                raw.append(v)
                out[a, b] = v
    raw = np.array(raw) if raw else np.zeros(1)
    clamped = int(((out < 0) | (out > 1)).sum())
    out = np.clip(out, 0.0, 1.0)
    degenerate = [int(i) for i in range(len(diag)) if not ok[i]]
    return out, degenerate, clamped, float(raw.min()), float(raw.max())


def linear_cka(X, Y) -> float:
    """Unbiased linear CKA between two feature matrices (n items × any widths), via the sums.

    Example:
        >>> import torch
        >>> X = torch.randn(100, 8)
        >>> round(linear_cka(X, 2 * X + 1), 6), linear_cka(X, torch.ones(100, 3))
        (1.0, 0.0)
    """
    X, Y = torch.as_tensor(np.asarray(X)), torch.as_tensor(np.asarray(Y))
    if len(X) != len(Y):
        raise LayerscopeError(f"CKA compares the same items: X has {len(X)} rows, Y has {len(Y)}")
    s = CKAStats(max_width=10**9)
    s.update({"x": X.reshape(len(X), -1), "y": Y.reshape(len(Y), -1)}, BatchInfo(0, len(X)))
    return float(cka_from_hsic(s.hsic(), [0], [1])[0][0, 0])


# --- kernels on a sample ------------------------------------------------------------------------


def unbiased_hsic(K: np.ndarray, L: np.ndarray) -> float:
    """HSIC₁ (Song et al. 2012) from two n × n Gram matrices."""
    n = K.shape[0]
    _need_items(n)
    K, L = K.copy(), L.copy()
    np.fill_diagonal(K, 0.0)
    np.fill_diagonal(L, 0.0)
    k1, l1 = K.sum(0), L.sum(0)
    return float(((K * L).sum() + k1.sum() * l1.sum() / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * (k1 @ l1))
                 / (n * (n - 3)))


def rbf_gram(x: np.ndarray, sigma_frac: float = 1.0) -> np.ndarray:
    """exp(−‖xᵢ−xⱼ‖² / (2σ²)) with σ = ``sigma_frac`` × the median pairwise distance."""
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    sq = (x * x).sum(1)
    d2 = np.clip(sq[:, None] + sq[None, :] - 2 * x @ x.T, 0.0, None)
    med = np.median(np.sqrt(d2[np.triu_indices(len(x), 1)])) if len(x) > 1 else 0.0
    if med <= 0:
        return np.ones_like(d2)
    return np.exp(-d2 / (2 * (sigma_frac * med) ** 2))


def kernel_hsic(samples: list[np.ndarray], sigma_frac: float = 1.0) -> np.ndarray:
    grams = [rbf_gram(s, sigma_frac) for s in samples]
    out = np.zeros((len(grams), len(grams)))
    for i in range(len(grams)):
        for j in range(i, len(grams)):
            out[i, j] = out[j, i] = unbiased_hsic(grams[i], grams[j])
    return out


# --- the result --------------------------------------------------------------------------------


@dataclass
class SimilarityResult(Result):
    """CKA between ``layers`` (rows) and ``other_layers`` (columns; the same for one model)."""

    layers: list[str]
    other_layers: list[str]
    cka: list[list[float]]
    n: int
    kernel: str
    estimator: str
    models: list[str] = field(default_factory=list)
    degenerate: list[str] = field(default_factory=list)
    clamped: int = 0
    raw_min: float = 0.0
    raw_max: float = 0.0

    @property
    def matrix(self) -> np.ndarray:
        return np.asarray(self.cka, dtype=float)

    def summary(self) -> str:
        m = self.matrix
        if len(self.models) < 2 and self.layers == self.other_layers and len(self.layers) > 1:
            adj = [m[i, i + 1] for i in range(len(self.layers) - 1)]
            i = int(np.argmax(adj))
            off = m + np.eye(len(m)) * 9
            a, b = np.unravel_index(int(np.argmin(off)), m.shape)
            return (f"{self.kernel} CKA over {self.n} items: most alike neighbours {i}-{i + 1} "
                    f"({adj[i]:.3f}), least alike {min(a, b)} and {max(a, b)} ({m[a, b]:.3f})"
                    + (f"; {len(self.degenerate)} constant layers" if self.degenerate else ""))
        a, b = np.unravel_index(int(np.argmax(m)), m.shape)
        best = ", ".join(str(int(j)) for j in m.argmax(1))
        return (f"{self.kernel} CKA over {self.n} items: highest {m[a, b]:.3f} between {a} "
                f"({self.layers[a]}) and {b} ({self.other_layers[b]}); best match per row: {best}")

    def plot(self, ax=None):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig = ax.figure if ax is not None else plt.figure(figsize=(5.5, 4.6))
        ax = ax or fig.add_subplot(111)
        im = ax.imshow(self.matrix, vmin=0, vmax=1, cmap="magma", origin="lower")
        fig.colorbar(im, ax=ax, label=f"{self.kernel} CKA")
        names = self.models or ["model"]
        ax.set_ylabel(f"{names[0]} layer")
        ax.set_xlabel(f"{names[-1]} layer")
        ax.set_title(f"layer similarity (unbiased, n={self.n})")
        fig.tight_layout()
        return fig


# --- the analysis ------------------------------------------------------------------------------


def reducers(*, kernel: str = "linear", layers=None, view: str = "mean", sample: int = 1000,
             max_width: int = 8192, seed: int = 0) -> list[Reducer]:
    """The reducers a one-model similarity needs in a sweep."""
    if kernel == "linear":
        return [CKAStats(layers=layers, view=view, max_width=max_width, seed=seed)]
    if kernel == "rbf":
        return [Reservoir(capacity=sample, layers=layers, view=view, seed=seed)]
    raise LayerscopeError(f"unknown kernel {kernel!r}; use linear or rbf")


def from_reducers(reds: list[Reducer], *, model_name: str = "model", sigma_frac: float = 1.0) -> SimilarityResult:
    """The SimilarityResult from the swept reducers of :func:`reducers`."""
    red = next(r for r in reds if isinstance(r, (CKAStats, Reservoir)))
    if isinstance(red, CKAStats):
        names, n, h = red.names, red.n, red.hsic()
        est = "unbiased HSIC₁, streamed sums" + (
            f", Gaussian projection to {min(red.widths)} dims per layer" if red.projected else "")
        kernel = "linear"
    else:
        res = red.result()
        names, n = list(res.rows), len(res.indices)
        _need_items(n)
        h = kernel_hsic([res.rows[k] for k in names], sigma_frac)
        est = f"unbiased HSIC₁ on a uniform sample of {n} of {res.seen} items, σ = {sigma_frac} × median distance"
        kernel = "rbf"
    idx = list(range(len(names)))
    m, deg, clamped, lo, hi = cka_from_hsic(h, idx, idx)
    return SimilarityResult(names, names, m.tolist(), n, kernel, est, [model_name],
                            [names[i] for i in deg], clamped, lo, hi)


def similarity(model, data, *, other=None, kernel: str = "linear", layers=None,
               other_layers=None, granularity: str = "blocks", view: str = "mean",
               sample: int = 1000, sigma_frac: float = 1.0, max_width: int = 8192,
               batch_size: int = 32, max_length: int | None = 128, chunk: int = 256,
               seed: int = 0, progress: bool = False) -> SimilarityResult:
    """CKA between all layer pairs of ``model`` (or between its layers and ``other``'s) on ``data``.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
        >>> res = similarity(net, torch.randn(64, 4))
        >>> len(res.cka) == len(res.layers), round(res.cka[0][0], 6)
        (True, 1.0)
    """
    from layerscope.sweep import as_model, as_source, sweep

    source = as_source(data)
    _need_items(len(source))
    if other is None:
        reds = reducers(kernel=kernel, layers=None, view=view, sample=sample, max_width=max_width, seed=seed)
        sweep(model, data, reducers=reds, layers=layers, granularity=granularity,
              batch_size=batch_size, max_length=max_length, progress=progress)
        return from_reducers(reds, model_name=_name(model), sigma_frac=sigma_frac)
    if source.stream is not None:
        raise LayerscopeError("comparing two models needs indexable data (a Dataset, texts or a tensor), not a DataLoader")
    if kernel not in ("linear", "rbf"):
        raise LayerscopeError(f"unknown kernel {kernel!r}; use linear or rbf")
    a, b = as_model(model), as_model(other)
    joint = CKAStats(max_width=max_width, seed=seed)
    rows_a: list[dict] = []
    rows_b: list[dict] = []
    n_a = n_b = 0
    n_total = len(source) if kernel == "linear" else min(len(source), sample)
    order = (np.arange(len(source)) if kernel == "linear"
             else np.sort(np.random.default_rng(seed).choice(len(source), n_total, replace=False)))
    for start in range(0, n_total, chunk):
        pick = order[start:start + chunk]
        items = ([source.items[i] for i in pick] if isinstance(source.items, list)
                 else source.items[torch.as_tensor(pick)])
        ra, rb = _Rows(view), _Rows(view)
        run_a = sweep(a, items, reducers=[ra], layers=layers, granularity=granularity,
                      batch_size=batch_size, max_length=max_length, progress=progress)
        run_b = sweep(b, items, reducers=[rb], layers=other_layers, granularity=granularity,
                      batch_size=batch_size, max_length=max_length, progress=progress)
        n_a, n_b = len(run_a.layers), len(run_b.layers)
        acts = {**{("a", k): v for k, v in ra.rows().items()}, **{("b", k): v for k, v in rb.rows().items()}}
        if kernel == "linear":
            joint.update(acts, BatchInfo(start, len(pick)))
        else:
            rows_a.append(ra.rows())
            rows_b.append(rb.rows())
    names_a, names_b = run_a.layers, run_b.layers
    if kernel == "linear":
        h, n = joint.hsic(), joint.n
        est = "unbiased HSIC₁, streamed sums (chunks of both models)" + (
            f", Gaussian projection to {min(joint.widths)} dims per layer" if joint.projected else "")
    else:
        samples = [torch.cat([r[k] for r in rows_a]).numpy() for k in names_a] + [
            torch.cat([r[k] for r in rows_b]).numpy() for k in names_b]
        h, n = kernel_hsic(samples, sigma_frac), n_total
        est = f"unbiased HSIC₁ on a uniform sample of {n} of {len(source)} items, σ = {sigma_frac} × median distance"
    rows, cols = list(range(n_a)), list(range(n_a, n_a + n_b))
    m, deg, clamped, lo, hi = cka_from_hsic(h, rows, cols)
    all_names = [f"{_name(model)}:{x}" for x in names_a] + [f"{_name(other)}:{x}" for x in names_b]
    return SimilarityResult(names_a, names_b, m.tolist(), n, kernel, est, [_name(model), _name(other)],
                            [all_names[i] for i in deg], clamped, lo, hi)


def _name(model) -> str:
    if isinstance(model, str):
        return model
    return getattr(model, "ref", None) or type(getattr(model, "module", model)).__name__


class _Rows(Reducer):
    """Keeps every row of every layer (one chunk of items at a time)."""

    def __init__(self, view: str):
        self.view = view
        self.parts: dict[str, list[Tensor]] = {}

    def update(self, acts: dict[str, Tensor], batch: BatchInfo) -> None:
        for k, v in acts.items():
            self.parts.setdefault(k, []).append(v.reshape(v.shape[0], -1).detach().double().cpu())

    def merge(self, other: "_Rows") -> "_Rows":
        self._check_mergeable(other)
        out = copy.deepcopy(self)
        for k, v in other.parts.items():
            out.parts.setdefault(k, []).extend(t.clone() for t in v)
        return out

    def rows(self) -> dict[str, Tensor]:
        return {k: torch.cat(v) for k, v in self.parts.items()}
