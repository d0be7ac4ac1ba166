"""Streaming reducers: statistics that see activations batch by batch and merge exactly.

A reducer keeps only what it needs (counts, running means, co-moments, a bounded sample), so a
sweep's memory does not grow with the data. Two reducers that saw two parts of a dataset merge
into the reducer that saw all of it: ``a.merge(b)`` equals one run over ``a``'s data then ``b``'s.
Means and (co)variances use Welford per batch and Chan et al.'s pairwise merge of
``(n, mean, M2)`` in float64. Non-finite values (NaN, ±inf) are counted per layer and excluded
from the statistics explicitly.

Example:
    >>> import torch
    >>> from layerscope.reducers import Moments, BatchInfo
    >>> a, b = Moments(), Moments()
    >>> a.update({"h": torch.tensor([[1.0], [2.0]])}, BatchInfo(0, 2))
    >>> b.update({"h": torch.tensor([[3.0], [float("nan")]])}, BatchInfo(2, 2))
    >>> r = a.merge(b).result()
    >>> r.mean[0], r.nonfinite[0]
    (2.0, 1)
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from layerscope.errors import LayerscopeError
from layerscope.results import Result
from layerscope.views import check_view


@dataclass
class BatchInfo:
    """What a reducer knows about the batch besides its activations."""

    start: int                               # index of the batch's first item in the dataset
    size: int
    labels: Tensor | None = None
    items: Sequence | None = None            # raw items (texts) when available
    inputs: dict[str, Tensor] | None = None  # layer inputs in the reducer's view (wants_inputs)
    mask: Tensor | None = None               # (B, T) attention mask of token models, else None
    encoded: Any = None                      # the batch as the model was called with (Encoded)


class Reducer(ABC):
    """Base class: ``update`` with each batch's activations, ``merge`` exactly, ``result``.

    ``view`` says how the sweep pools each layer's output (see :mod:`layerscope.views`);
    ``layers`` names the layers needed (None: every swept layer); ``wants_inputs`` asks for
    the layers' inputs as well, delivered in ``BatchInfo.inputs``.

    ``merge`` has one meaning for every reducer: ``a.merge(b)`` returns a new reducer holding the
    state of both, and leaves ``a`` and ``b`` unchanged. ``state_dict()`` is a deep copy of the
    reducer's whole state (its settings and sums: tensors, arrays and plain values, picklable
    with ``torch.save``), and ``load_state_dict(state)`` puts it back, so a long sweep can be
    checkpointed and resumed (``sweep(..., start=n_items_done)``) with the same result as one run.

    Example:
        >>> import torch
        >>> a = Moments()
        >>> a.update({"h": torch.tensor([[1.0], [2.0]])}, BatchInfo(0, 2))
        >>> b = Moments().load_state_dict(a.state_dict())
        >>> b.update({"h": torch.tensor([[3.0]])}, BatchInfo(2, 1))
        >>> b.result().mean[0], a.result().mean[0]
        (2.0, 1.5)
    """

    view: str = "mean"
    wants_inputs: bool = False
    layers: list[str] | None = None

    @abstractmethod
    def update(self, acts: dict[str, Tensor], batch: BatchInfo) -> None:
        """Fold one batch's activations (layer name -> pooled tensor) into the state."""

    # merge and result are optional: a reducer read through its own attributes needs no result,
    # and one never split across runs needs no merge
    def merge(self, other: "Reducer") -> "Reducer":
        raise NotImplementedError

    def result(self):
        raise NotImplementedError

    def state_dict(self) -> dict:
        """Everything the reducer holds, deep-copied: ``{"type": class name, "state": {...}}``."""
        return {"type": type(self).__qualname__, "state": copy.deepcopy(vars(self))}

    def load_state_dict(self, state: dict) -> "Reducer":
        """Replace this reducer's state by ``state`` (from :meth:`state_dict`); returns ``self``."""
        if not isinstance(state, dict) or "state" not in state:
            raise LayerscopeError("not a reducer state; pass what state_dict() returned")
        if state.get("type") != type(self).__qualname__:
            raise LayerscopeError(f"cannot load a {state.get('type')} state into "
                                  f"{type(self).__qualname__}; load it into a {state.get('type')}")
        self.__dict__.clear()
        self.__dict__.update(copy.deepcopy(state["state"]))
        return self

    def _check_mergeable(self, other: "Reducer") -> None:
        if type(other) is not type(self):
            raise LayerscopeError(
                f"cannot merge {type(other).__name__} into {type(self).__name__}; merge reducers of one kind"
            )
        if other.view != self.view:
            raise LayerscopeError(f"cannot merge reducers of views {self.view!r} and {other.view!r}")


# --- running moments --------------------------------------------------------------------------


@dataclass
class _Running:
    """Per-unit count, mean and sum of squared deviations, float64 (Chan et al.)."""

    n: Tensor
    mean: Tensor
    m2: Tensor

    @classmethod
    def zeros(cls, d: int, device) -> "_Running":
        z = torch.zeros(d, dtype=torch.float64, device=device)
        return cls(z.clone(), z.clone(), z.clone())

    def add(self, n_b: Tensor, mean_b: Tensor, m2_b: Tensor) -> None:
        n = self.n + n_b
        safe = n.clamp_min(1)
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (n_b / safe)
        self.m2 = self.m2 + m2_b + delta * delta * (self.n * n_b / safe)
        self.n = n


def _stats_state_device(x: Tensor):
    return torch.device("cpu") if x.device.type == "mps" else x.device


@dataclass
class MomentsResult(Result):
    """Per-layer summary statistics over all units of each layer.

    ``mean``/``std`` are averaged over units; ``min``/``max`` are over all values; ``sparsity``
    is the fraction of exact zeros (the dead-ReLU share); ``nonfinite`` counts NaN/inf values,
    which were left out of every other number. ``unit_mean``/``unit_std`` hold per-unit arrays.
    """

    layers: list[str]
    count: list[int]
    mean: list[float]
    std: list[float]
    min: list[float]
    max: list[float]
    sparsity: list[float]
    nonfinite: list[int]
    unit_mean: dict = field(default_factory=dict, metadata={"serialize": False})
    unit_std: dict = field(default_factory=dict, metadata={"serialize": False})

    def summary(self) -> str:
        if not self.layers:
            return "no layers"
        widest = int(np.nanargmax(self.std)) if any(np.isfinite(self.std)) else 0
        bad = sum(self.nonfinite)
        text = (
            f"{len(self.layers)} layers over {max(self.count)} rows; std ranges "
            f"{np.nanmin(self.std):.3g}-{np.nanmax(self.std):.3g} (widest: {self.layers[widest]}); "
            f"zeros up to {100 * max(self.sparsity):.1f}%"
        )
        return text + (f"; {bad} non-finite values excluded" if bad else "; all values finite")

    def plot(self, ax=None):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(7, 3.5))
        x = np.arange(len(self.layers))
        mean, std = np.asarray(self.mean), np.asarray(self.std)
        ax.plot(x, mean, marker="o", label="mean")
        ax.fill_between(x, mean - std, mean + std, alpha=0.25, label="± std")
        ax.set_xticks(x, self.layers, rotation=45, ha="right", fontsize=7)
        ax.set_ylabel("activation")
        ax.legend()
        fig.tight_layout()
        return fig


class Moments(Reducer):
    """Per-unit count, mean, variance, min, max, zero count and non-finite count, per layer.

    Example:
        >>> import torch
        >>> m = Moments()
        >>> m.update({"h": torch.tensor([[0.0, 2.0], [4.0, 2.0]])}, BatchInfo(0, 2))
        >>> r = m.result()
        >>> r.unit_mean["h"].tolist(), r.sparsity
        ([2.0, 2.0], [0.25])
    """

    def __init__(self, layers: list[str] | None = None, view: str = "mean"):
        self.view = check_view(view)
        self.layers = list(layers) if layers is not None else None
        self.state: dict[str, dict] = {}

    def update(self, acts: dict[str, Tensor], batch: BatchInfo) -> None:
        for name, x in acts.items():
            if self.layers is not None and name not in self.layers:
                continue
            x = x.reshape(x.shape[0], -1)
            dev = _stats_state_device(x)
            x = x.to(device=dev, dtype=torch.float64)
            s = self.state.get(name)
            if s is None:
                d = x.shape[1]
                s = self.state[name] = {
                    "run": _Running.zeros(d, dev),
                    "min": torch.full((d,), float("inf"), dtype=torch.float64, device=dev),
                    "max": torch.full((d,), float("-inf"), dtype=torch.float64, device=dev),
                    "zeros": torch.zeros(d, dtype=torch.float64, device=dev),
                    "nonfinite": torch.zeros(d, dtype=torch.float64, device=dev),
                }
            finite = torch.isfinite(x)
            n_b = finite.sum(dim=0).to(torch.float64)
            xz = torch.where(finite, x, 0.0)
            mean_b = xz.sum(dim=0) / n_b.clamp_min(1)
            m2_b = torch.where(finite, (x - mean_b) ** 2, 0.0).sum(dim=0)
            s["run"].add(n_b, mean_b, m2_b)
            s["min"] = torch.minimum(s["min"], torch.where(finite, x, float("inf")).amin(dim=0))
            s["max"] = torch.maximum(s["max"], torch.where(finite, x, float("-inf")).amax(dim=0))
            s["zeros"] += (x == 0).sum(dim=0)
            s["nonfinite"] += (~finite).sum(dim=0)

    def merge(self, other: "Moments") -> "Moments":
        self._check_mergeable(other)
        out = copy.deepcopy(self)
        for name, t in other.state.items():
            t = {k: (v if k == "run" else v.cpu()) for k, v in t.items()}
            s = out.state.get(name)
            if s is None:
                out.state[name] = copy.deepcopy(t)
                continue
            for k in ("min", "max", "zeros", "nonfinite"):
                s[k] = s[k].cpu()
            r = s["run"]
            r.n, r.mean, r.m2 = r.n.cpu(), r.mean.cpu(), r.m2.cpu()
            r.add(t["run"].n.cpu(), t["run"].mean.cpu(), t["run"].m2.cpu())
            s["min"] = torch.minimum(s["min"], t["min"])
            s["max"] = torch.maximum(s["max"], t["max"])
            s["zeros"] = s["zeros"] + t["zeros"]
            s["nonfinite"] = s["nonfinite"] + t["nonfinite"]
        return out

    def unit_stats(self, name: str) -> dict[str, np.ndarray]:
        """Per-unit arrays of one layer: n, mean, var (population), min, max, zeros, nonfinite."""
        s = self.state[name]
        r = s["run"]
        n = r.n.cpu().numpy()
        with np.errstate(invalid="ignore", divide="ignore"):
            var = np.where(n > 0, r.m2.cpu().numpy() / np.maximum(n, 1), np.nan)
        mean = np.where(n > 0, r.mean.cpu().numpy(), np.nan)
        return {
            "n": n, "mean": mean, "var": var,
            "min": s["min"].cpu().numpy(), "max": s["max"].cpu().numpy(),
            "zeros": s["zeros"].cpu().numpy(), "nonfinite": s["nonfinite"].cpu().numpy(),
        }

    def result(self) -> MomentsResult:
        names = list(self.state)
        res = MomentsResult(names, [], [], [], [], [], [], [])
        for name in names:
            u = self.unit_stats(name)
            total_finite = float(u["n"].sum())
            std = np.sqrt(u["var"])
            res.count.append(int(u["n"].max()) if len(u["n"]) else 0)
            res.mean.append(float(np.nanmean(u["mean"])) if total_finite else float("nan"))
            res.std.append(float(np.nanmean(std)) if total_finite else float("nan"))
            res.min.append(float(u["min"].min()) if total_finite else float("nan"))
            res.max.append(float(u["max"].max()) if total_finite else float("nan"))
            res.sparsity.append(float(u["zeros"].sum() / total_finite) if total_finite else float("nan"))
            res.nonfinite.append(int(u["nonfinite"].sum()))
            res.unit_mean[name] = u["mean"]
            res.unit_std[name] = std
        return res


# --- covariance -------------------------------------------------------------------------------


class _CoMoment:
    """Running (n, mean_x, mean_y, C = sum (x-mx)(y-my)^T) over complete rows, float64."""

    def __init__(self):
        self.n = 0
        self.mx = self.my = self.c = None

    def add_rows(self, x: Tensor, y: Tensor) -> None:
        n_b = x.shape[0]
        if n_b == 0:
            return
        mx_b, my_b = x.mean(dim=0), y.mean(dim=0)
        c_b = (x - mx_b).T @ (y - my_b)
        self.add(n_b, mx_b, my_b, c_b)

    def add(self, n_b: int, mx_b: Tensor, my_b: Tensor, c_b: Tensor) -> None:
        if self.n == 0:
            self.n, self.mx, self.my, self.c = n_b, mx_b.clone(), my_b.clone(), c_b.clone()
            return
        n = self.n + n_b
        dx, dy = mx_b - self.mx, my_b - self.my
        self.c = self.c + c_b + torch.outer(dx, dy) * (self.n * n_b / n)
        self.mx = self.mx + dx * (n_b / n)
        self.my = self.my + dy * (n_b / n)
        self.n = n

    def merged(self, other: "_CoMoment") -> "_CoMoment":
        out = copy.deepcopy(self)
        if other.n:
            if out.n:
                out.mx, out.my, out.c = out.mx.cpu(), out.my.cpu(), out.c.cpu()
            out.add(other.n, other.mx.cpu(), other.my.cpu(), other.c.cpu())
        return out

    def cov(self, ddof: int = 1) -> np.ndarray:
        if self.n <= ddof:
            raise LayerscopeError(f"covariance needs more than {ddof} finite rows; got {self.n}")
        return (self.c / (self.n - ddof)).cpu().numpy()


def _finite_rows(*xs: Tensor) -> tuple[list[Tensor], int]:
    """Rows where every given matrix is finite, as float64, and how many rows were dropped."""
    keep = torch.ones(xs[0].shape[0], dtype=torch.bool, device=xs[0].device)
    for x in xs:
        keep &= torch.isfinite(x).all(dim=1)
    dev = _stats_state_device(xs[0])
    out = [x[keep].to(device=dev, dtype=torch.float64) for x in xs]
    return out, int((~keep).sum())


@dataclass
class CovarianceResult(Result):
    """Per-layer covariance matrices (``cov``, not serialised) and their spectra's spread."""

    layers: list[str]
    count: list[int]
    dropped_rows: list[int]
    effective_rank: list[float]
    cov: dict = field(default_factory=dict, metadata={"serialize": False})
    mean: dict = field(default_factory=dict, metadata={"serialize": False})

    def summary(self) -> str:
        if not self.layers:
            return "no layers"
        i = int(np.argmin(self.effective_rank))
        return (
            f"{len(self.layers)} layers over {max(self.count)} rows; effective rank "
            f"{min(self.effective_rank):.1f}-{max(self.effective_rank):.1f} "
            f"(lowest: {self.layers[i]}); {sum(self.dropped_rows)} non-finite rows excluded"
        )

    def plot(self, ax=None):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(7, 3.5))
        ax.bar(range(len(self.layers)), self.effective_rank)
        ax.set_xticks(range(len(self.layers)), self.layers, rotation=45, ha="right", fontsize=7)
        ax.set_ylabel("effective rank (participation ratio)")
        fig.tight_layout()
        return fig


def participation_ratio(cov: np.ndarray) -> float:
    """(trace C)^2 / trace(C^2): how many directions the variance spreads over."""
    tr = float(np.trace(cov))
    tr2 = float((cov * cov).sum())
    return tr * tr / tr2 if tr2 > 0 else 0.0


class Covariance(Reducer):
    """Per-layer covariance of the units over rows (rows with any non-finite value excluded).

    Example:
        >>> import torch, numpy as np
        >>> c = Covariance()
        >>> x = torch.randn(50, 3)
        >>> c.update({"h": x}, BatchInfo(0, 50))
        >>> bool(np.allclose(c.result().cov["h"], np.cov(x.numpy().T), atol=1e-6))
        True
    """

    def __init__(self, layers: list[str] | None = None, view: str = "mean", ddof: int = 1):
        self.view = check_view(view)
        self.layers = list(layers) if layers is not None else None
        self.ddof = ddof
        self.state: dict[str, _CoMoment] = {}
        self.dropped: dict[str, int] = {}

    def update(self, acts: dict[str, Tensor], batch: BatchInfo) -> None:
        for name, x in acts.items():
            if self.layers is not None and name not in self.layers:
                continue
            (x,), dropped = _finite_rows(x.reshape(x.shape[0], -1))
            self.state.setdefault(name, _CoMoment()).add_rows(x, x)
            self.dropped[name] = self.dropped.get(name, 0) + dropped

    def merge(self, other: "Covariance") -> "Covariance":
        self._check_mergeable(other)
        out = copy.deepcopy(self)
        for name, st in other.state.items():
            out.state[name] = out.state[name].merged(st) if name in out.state else copy.deepcopy(st)
            out.dropped[name] = out.dropped.get(name, 0) + other.dropped.get(name, 0)
        return out

    def result(self) -> CovarianceResult:
        names = list(self.state)
        res = CovarianceResult(names, [], [], [])
        for name in names:
            st = self.state[name]
            cov = st.cov(self.ddof)
            res.cov[name] = cov
            res.mean[name] = st.mx.cpu().numpy()
            res.count.append(st.n)
            res.dropped_rows.append(self.dropped.get(name, 0))
            res.effective_rank.append(participation_ratio(cov))
        return res


@dataclass
class CrossCovarianceResult(Result):
    """The cross-covariance between two layers' units (``cross``, not serialised)."""

    layers: list[str]
    count: int
    dropped_rows: int
    frobenius: float
    cross: np.ndarray | None = field(default=None, metadata={"serialize": False})

    def summary(self) -> str:
        return (
            f"cross-covariance {self.layers[0]} x {self.layers[1]} over {self.count} rows: "
            f"Frobenius norm {self.frobenius:.4g}"
        )

    def plot(self, ax=None):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(4.5, 4))
        im = ax.imshow(self.cross, aspect="auto", cmap="RdBu_r")
        ax.set_xlabel(self.layers[1])
        ax.set_ylabel(self.layers[0])
        fig.colorbar(im, ax=ax)
        fig.tight_layout()
        return fig


class CrossCovariance(Reducer):
    """Cross-covariance between the units of two layers, over rows finite in both.

    Example:
        >>> import torch, numpy as np
        >>> x, y = torch.randn(40, 3), torch.randn(40, 2)
        >>> c = CrossCovariance("a", "b")
        >>> c.update({"a": x, "b": y}, BatchInfo(0, 40))
        >>> full = np.cov(np.hstack([x.numpy(), y.numpy()]).T)
        >>> bool(np.allclose(c.result().cross, full[:3, 3:], atol=1e-6))
        True
    """

    def __init__(self, layer_a: str, layer_b: str, view: str = "mean", ddof: int = 1):
        self.view = check_view(view)
        self.layers = [layer_a, layer_b]
        self.ddof = ddof
        self.state = _CoMoment()
        self.dropped = 0

    def update(self, acts: dict[str, Tensor], batch: BatchInfo) -> None:
        a, b = self.layers
        if a not in acts or b not in acts:
            missing = a if a not in acts else b
            raise LayerscopeError(f"CrossCovariance needs layer {missing!r}, which the sweep did not capture")
        x, y = acts[a], acts[b]
        if x.shape[0] != y.shape[0]:
            raise LayerscopeError(
                f"layers {a!r} and {b!r} give {x.shape[0]} and {y.shape[0]} rows in view "
                f"{self.view!r}; use a per-item view such as 'mean'"
            )
        (x, y), dropped = _finite_rows(x.reshape(x.shape[0], -1), y.reshape(y.shape[0], -1))
        self.state.add_rows(x, y)
        self.dropped += dropped

    def merge(self, other: "CrossCovariance") -> "CrossCovariance":
        self._check_mergeable(other)
        if other.layers != self.layers:
            raise LayerscopeError(f"cannot merge cross-covariances of {self.layers} and {other.layers}")
        out = copy.deepcopy(self)
        out.state = self.state.merged(other.state)
        out.dropped = self.dropped + other.dropped
        return out

    def result(self) -> CrossCovarianceResult:
        cross = self.state.cov(self.ddof)
        return CrossCovarianceResult(
            list(self.layers), self.state.n, self.dropped, float(np.linalg.norm(cross)), cross
        )


# --- reservoir samples ------------------------------------------------------------------------


@dataclass
class ReservoirResult(Result):
    """A uniform random sample of rows per layer (``rows``, not serialised) and their indices."""

    layers: list[str]
    seen: int
    indices: list[int]
    rows: dict = field(default_factory=dict, metadata={"serialize": False})
    labels: list | None = None

    def summary(self) -> str:
        return f"{len(self.indices)} of {self.seen} rows sampled uniformly from {len(self.layers)} layers"


class Reservoir(Reducer):
    """A uniform sample of at most ``capacity`` rows (Algorithm R, seeded), the same rows in every layer.

    ``indices`` are row numbers in the stream (item indices for per-item views). Merging two
    reservoirs draws from each in proportion to the rows each saw, so the merge is again a
    uniform sample; when everything fits (seen <= capacity) the sample is all rows, exactly.

    Example:
        >>> import torch
        >>> r = Reservoir(capacity=3, seed=0)
        >>> r.update({"h": torch.arange(10.0).reshape(10, 1)}, BatchInfo(0, 10))
        >>> len(r.result().indices), r.result().seen
        (3, 10)
    """

    def __init__(self, capacity: int = 1000, layers: list[str] | None = None, view: str = "mean",
                 seed: int = 0):
        if capacity < 1:
            raise LayerscopeError(f"reservoir capacity must be at least 1; got {capacity}")
        self.capacity = capacity
        self.view = check_view(view)
        self.layers = list(layers) if layers is not None else None
        self.rng = np.random.default_rng(seed)
        self.seen = 0
        self.indices: list[int] = []
        self.rows: dict[str, Tensor] = {}
        self.labels: list = []

    def update(self, acts: dict[str, Tensor], batch: BatchInfo) -> None:
        acts = {k: v for k, v in acts.items() if self.layers is None or k in self.layers}
        if not acts:
            return
        counts = {v.shape[0] for v in acts.values()}
        if len(counts) != 1:
            raise LayerscopeError(
                f"Reservoir got layers with different row counts {sorted(counts)} in view "
                f"{self.view!r}; sample each layer with its own Reservoir"
            )
        n_b = counts.pop()
        first_row = self.seen if self.view == "tokens" else batch.start
        labels = batch.labels if (batch.labels is not None and self.view != "tokens") else None
        slot_src: dict[int, int] = {}  # reservoir slot -> row of this batch; later rows win
        fill = min(max(self.capacity - self.seen, 0), n_b)
        for i in range(fill):
            slot_src[len(self.indices) + i] = i
        if n_b > fill:
            t = self.seen + np.arange(fill, n_b)  # 0-based position of each later row in the stream
            j = np.floor(self.rng.random(n_b - fill) * (t + 1)).astype(np.int64)
            for src, slot in zip(range(fill, n_b), j):
                if slot < self.capacity:
                    slot_src[int(slot)] = src
        if slot_src:
            slots = sorted(slot_src)
            dst_t = torch.tensor(slots)
            src_t = torch.tensor([slot_src[s] for s in slots])
            for name, x in acts.items():
                x = x.reshape(n_b, -1).detach().float().cpu()
                buf = self.rows.get(name)
                if buf is None:
                    buf = torch.empty(0, x.shape[1])
                if buf.shape[0] < slots[-1] + 1:
                    buf = torch.cat([buf, torch.empty(slots[-1] + 1 - buf.shape[0], x.shape[1])])
                buf[dst_t] = x[src_t]
                self.rows[name] = buf
            for slot in slots:
                src = slot_src[slot]
                lab = labels[src].item() if labels is not None and labels[src].numel() == 1 else None
                if slot == len(self.indices):
                    self.indices.append(first_row + src)
                    self.labels.append(lab)
                else:
                    self.indices[slot] = first_row + src
                    self.labels[slot] = lab
        self.seen += n_b

    def merge(self, other: "Reservoir") -> "Reservoir":
        self._check_mergeable(other)
        out = copy.deepcopy(self)
        out.capacity = max(self.capacity, other.capacity)
        total = self.seen + other.seen
        k = min(out.capacity, total)
        # how many of the k draws come from self: hypergeometric over the rows each side saw
        n_self = int(out.rng.hypergeometric(self.seen, other.seen, k)) if self.seen and other.seen else (
            k if other.seen == 0 else 0)
        pick_a = np.sort(out.rng.choice(len(self.indices), n_self, replace=False)) if n_self else np.array([], int)
        pick_b = np.sort(out.rng.choice(len(other.indices), k - n_self, replace=False)) if k - n_self else np.array([], int)
        out.indices = [self.indices[i] for i in pick_a] + [other.indices[i] for i in pick_b]
        out.labels = [self.labels[i] for i in pick_a] + [other.labels[i] for i in pick_b]
        names = list(dict.fromkeys(list(self.rows) + list(other.rows)))
        out.rows = {}
        for name in names:
            parts = []
            if len(pick_a):
                parts.append(self.rows[name][torch.from_numpy(pick_a)])
            if len(pick_b):
                parts.append(other.rows[name][torch.from_numpy(pick_b)])
            out.rows[name] = torch.cat(parts)
        out.seen = total
        return out

    def result(self) -> ReservoirResult:
        labels = self.labels if any(lab is not None for lab in self.labels) else None
        return ReservoirResult(list(self.rows), self.seen, list(self.indices),
                               {k: v.numpy() for k, v in self.rows.items()}, labels)


# --- non-finite counts and labels -------------------------------------------------------------


@dataclass
class NonFiniteResult(Result):
    """Per-layer counts of NaN, +inf and -inf values and of rows holding any of them."""

    layers: list[str]
    values: list[int]
    nan: list[int]
    posinf: list[int]
    neginf: list[int]
    rows: list[int]

    def summary(self) -> str:
        bad = [n for n, c in zip(self.layers, self.nan) if c] + [
            n for n, p, m in zip(self.layers, self.posinf, self.neginf) if p or m
        ]
        if not bad:
            return f"all {sum(self.values)} values finite in {len(self.layers)} layers"
        first = next(n for n in self.layers if n in bad)
        total = sum(self.nan) + sum(self.posinf) + sum(self.neginf)
        return f"{total} non-finite values in {len(set(bad))} layers, first in {first}"


class NonFinite(Reducer):
    """Counts NaN / +inf / -inf values per layer (and the rows that hold any)."""

    def __init__(self, layers: list[str] | None = None, view: str = "tokens"):
        self.view = check_view(view)
        self.layers = list(layers) if layers is not None else None
        self.counts: dict[str, np.ndarray] = {}

    def update(self, acts: dict[str, Tensor], batch: BatchInfo) -> None:
        for name, x in acts.items():
            if self.layers is not None and name not in self.layers:
                continue
            x = x.reshape(x.shape[0], -1)
            nan, inf = torch.isnan(x), torch.isinf(x)
            row_bad = (nan | inf).any(dim=1)
            c = np.array([x.numel(), int(nan.sum()), int((inf & (x > 0)).sum()),
                          int((inf & (x < 0)).sum()), int(row_bad.sum())], dtype=np.int64)
            self.counts[name] = self.counts.get(name, 0) + c

    def merge(self, other: "NonFinite") -> "NonFinite":
        self._check_mergeable(other)
        out = copy.deepcopy(self)
        for name, c in other.counts.items():
            out.counts[name] = out.counts.get(name, 0) + c
        return out

    def result(self) -> NonFiniteResult:
        names = list(self.counts)
        cols = [[int(self.counts[n][i]) for n in names] for i in range(5)]
        return NonFiniteResult(names, *cols)


class LabelCollector(Reducer):
    """Keeps the labels of every item (small: one number per item), in stream order."""

    layers: list[str] | None = []

    def __init__(self):
        self.starts: list[int] = []
        self.parts: list[Tensor] = []

    def update(self, acts: dict[str, Tensor], batch: BatchInfo) -> None:
        if batch.labels is not None:
            self.starts.append(batch.start)
            self.parts.append(batch.labels.detach().cpu())

    def merge(self, other: "LabelCollector") -> "LabelCollector":
        self._check_mergeable(other)
        out = copy.deepcopy(self)
        out.starts += other.starts
        out.parts += [p.clone() for p in other.parts]
        return out

    def result(self) -> Tensor | None:
        return torch.cat(self.parts) if self.parts else None
