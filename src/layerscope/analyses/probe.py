"""Linear probes for every layer at once, from streaming sufficient statistics.

One pass over the data accumulates, per layer and per cross-validation fold, the sums
``n, Σx, XᵀX, XᵀY, Σy, YᵀY`` (float64 totals; see :class:`RidgeStats`) of the training items,
and keeps the rows of the held-out items (a seeded hash of the item index decides the split, so
one pass suffices and batching does not matter). Which probe is fitted is picked per task and
size by ``solver="auto"``, the default everywhere (``probe()``, :func:`reducers`, ``analyze``,
the report and the CLI): for classes, L2 logistic regression with its penalty chosen by 3-fold
cross-validation on the kept training rows (:mod:`layerscope.analyses.probe_logistic`): for
2 classes all layers in one batched L-BFGS (``solver`` "lbfgs"), for more scikit-learn's
``LogisticRegressionCV`` per layer with the same folds and C rule ("logistic-cv"; the faster
on a CPU, as measured in BENCHMARKS.md), while those rows fit :data:`MEMORY_BUDGET`; past
it, or for continuous targets, the closed form from the streamed sums. The result's ``solver``
and ``method`` say which was used. The closed forms, on standardised features:

- continuous targets: ridge regression (equal to scikit-learn's ``Ridge``);
- classes: regularised linear discriminant analysis (:func:`fit_lda`; equal to scikit-learn's
  ``LinearDiscriminantAnalysis`` with covariance ``(S_W + αI) / n``). One-hot least squares, the
  cheaper classifier from the same sums, masks classes that lie between others: on MiniLM's
  5-bin sentence-length task it scored 10-15 points below logistic regression, LDA 0-4.

The penalty is chosen from a grid by generalised cross-validation of the (one-hot) ridge
(``cv="gcv"``, default: every penalty's GCV error from one eigendecomposition of the
standardised XᵀX per layer) or by k-fold cross-validation computed from per-fold sums
(``cv="kfold"``: squared error on each held-out fold), then refitted on all training items.
GCV costs one O(d³) eigendecomposition per layer whatever the number of items.

Reported per layer: held-out accuracy with a Wilson 95% interval, or R² with a bootstrap 95%
interval over held-out items; next to two controls: the majority-class (or training-mean)
baseline, and the same probe on *random features*: i.i.d. standard Gaussian vectors of the same
width as the widest probed layer, a pure function of each item's index and the seed (so they
carry no information about the item; the control shows what a probe of that width scores by
chance with this many training items — Hewitt & Liang 2019 motivate such controls).

Example:
    >>> import torch
    >>> from layerscope.analyses.probe import LinearProbe
    >>> g = torch.Generator().manual_seed(0)
    >>> X = torch.randn(200, 5, generator=g); y = (X[:, 0] > 0).long()
    >>> LinearProbe(alpha=1.0).fit(X[:150], y[:150]).score(X[150:], y[150:]) > 0.9
    True
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from layerscope.errors import LayerscopeError
from layerscope.reducers import BatchInfo, Reducer
from layerscope.results import Result

ALPHAS = tuple(float(a) for a in np.logspace(-2, 5, 15))
PRECISION = "float32"   # of the streamed XᵀX products in a sweep; the totals are float64
RANDOM = "random features"
SOLVERS = ("auto", "closed", "lbfgs", "logistic")
MEMORY_BUDGET = 1 << 30    # bytes of kept training rows (and the batched solve) for solver="auto"


# --- hashing items into splits ----------------------------------------------------------------


def _unit_hash(indices: np.ndarray, seed: int, salt: int) -> np.ndarray:
    """A uniform number in [0, 1) per item index (splitmix64 of index, seed and salt)."""
    with np.errstate(over="ignore"):
        z = (np.asarray(indices, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
             + np.uint64(seed * 1_000_003 + salt * 7919 + 1))
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def split_items(indices, test_fraction: float = 0.2, folds: int = 3, seed: int = 0) -> np.ndarray:
    """Fold number per item index: ``-1`` for held-out (test) items, ``0..folds-1`` for training.

    Example:
        >>> split_items(range(8), test_fraction=0.25, folds=2, seed=0).tolist()
        [-1, -1, 0, 1, -1, 0, 0, 0]
    """
    idx = np.asarray(list(indices) if not isinstance(indices, np.ndarray) else indices, dtype=np.int64)
    test = _unit_hash(idx, seed, 1) < test_fraction
    fold = np.floor(_unit_hash(idx, seed, 2) * folds).astype(np.int64)
    return np.where(test, -1, fold)


def random_features(indices, width: int, seed: int = 0) -> Tensor:
    """The random-features control: N(0, 1) rows of ``width`` per item index, a pure function of
    (seed, index, column) — Box–Muller on two hashed uniforms — so batching and sharding do not
    change them.

    Example:
        >>> a = random_features([0, 1, 2], 4); b = random_features([2], 4)
        >>> tuple(a.shape), bool((a[2] == b[0]).all())
        ((3, 4), True)
    """
    if width >= 1 << 24:
        raise LayerscopeError(f"random-features width {width} is too large; use at most {1 << 24}")
    idx = np.asarray(list(indices), dtype=np.uint64).reshape(-1, 1)
    key = (idx << np.uint64(24)) | np.arange(width, dtype=np.uint64).reshape(1, -1)
    u1, u2 = _unit_hash(key, seed, 3), _unit_hash(key, seed, 4)
    z = np.sqrt(-2.0 * np.log1p(-u1)) * np.cos(2.0 * np.pi * u2)
    return torch.from_numpy(z.astype(np.float32))


# --- sufficient statistics and the closed-form ridge ------------------------------------------


class RidgeStats:
    """Additive sums of rows ``x`` (d) and targets ``y`` (c): n, Σx, XᵀX, XᵀY, Σy, YᵀY.

    The sums are of ``x − shift`` (``shift``: the mean of the first rows added), which keeps the
    centred Gram accurate when features have a large mean; every formula that reads them is
    shift-invariant or adds the shift back. Rows are buffered until ``chunk`` have arrived, then
    summed with one symmetric rank-k update (BLAS ``syrk``) in ``dtype`` — float64 by default,
    float32 for twice the speed at about 1e-6 relative error — and added to float64 totals.
    Buffered rows are summed before any total is read, so the sums are always complete.

    Example:
        >>> import torch
        >>> s = RidgeStats(2, 1, chunk=3)
        >>> s.add(torch.tensor([[1.0, 2.0], [3.0, 5.0]]), torch.tensor([[1.0], [0.0]]))
        >>> s.n, s.mean.tolist()
        (2, [2.0, 3.5])
    """

    def __init__(self, d: int, c: int, *, dtype: str = "float64", chunk: int | None = None):
        _check_precision(dtype)
        self.dtype = dtype
        self.chunk = max(1, int(chunk)) if chunk else max(256, 2**19 // max(d, 1))
        self.n = 0
        self.shift = np.zeros(d)
        self._sums = {"sx": np.zeros(d), "sxx": np.zeros((d, d)), "sxy": np.zeros((d, c)),
                      "sy": np.zeros(c), "syy": np.zeros((c, c))}
        self._rows: list[np.ndarray] = []
        self._targets: list[np.ndarray] = []
        self._pending = 0
        self._upper: np.ndarray | None = None    # syrk's upper triangles, folded into sxx on reading

    # the totals, complete whenever they are read
    sx = property(lambda self: self._total("sx"))
    sxx = property(lambda self: self._total("sxx"))
    sxy = property(lambda self: self._total("sxy"))
    sy = property(lambda self: self._total("sy"))
    syy = property(lambda self: self._total("syy"))

    @property
    def mean(self) -> np.ndarray:
        """The mean of the rows added (zeros before any)."""
        return self.sx / max(self.n, 1) + self.shift

    def _total(self, key: str) -> np.ndarray:
        self._settle()
        return self._sums[key]

    def _settle(self) -> None:
        """Sum the buffered rows and fold syrk's upper triangles into a symmetric XᵀX."""
        if self._pending:
            self._flush()
        if self._upper is not None:
            self._sums["sxx"] += np.triu(self._upper) + np.triu(self._upper, 1).T
            self._upper = None

    def add(self, x: Tensor | np.ndarray, y: Tensor | np.ndarray) -> None:
        x = (x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)).reshape(len(x), -1)
        y = (y.detach().cpu().numpy() if isinstance(y, Tensor) else np.asarray(y)).reshape(len(y), -1)
        if not len(x):
            return
        if self.n == 0 and not self._pending:
            self.shift = x.mean(0, dtype=np.float64)
        self._rows.append(x)
        self._targets.append(y)
        self._pending += len(x)
        self.n += len(x)
        if self._pending >= self.chunk:
            self._flush()

    def _flush(self) -> None:
        from scipy.linalg import blas

        dt = np.float64 if self.dtype == "float64" else np.float32
        x = np.concatenate(self._rows, dtype=dt)     # a new array: shifted in place below
        np.subtract(x, self.shift.astype(dt), out=x)
        y = np.concatenate(self._targets, dtype=np.float64)
        self._rows, self._targets, self._pending = [], [], 0
        syrk = blas.dsyrk if dt is np.float64 else blas.ssyrk
        upper = syrk(1.0, x.T, trans=0)          # x.T is Fortran-ordered (d, k): upper of x.T @ x
        if self._upper is None:
            self._upper = upper.astype(np.float64)
        else:
            np.add(self._upper, upper, out=self._upper)
        s = self._sums
        s["sx"] += x.sum(0, dtype=np.float64)
        s["sxy"] += x.T @ y.astype(dt)
        s["sy"] += y.sum(0)
        s["syy"] += y.T @ y

    def grow_targets(self, c: int) -> None:
        """Widen the target columns to ``c`` (new classes seen later in the stream)."""
        extra = c - self._sums["sy"].shape[0]
        if extra > 0:
            self._targets = [np.pad(t, ((0, 0), (0, extra))) for t in self._targets]
            s = self._sums
            s["sxy"] = np.pad(s["sxy"], ((0, 0), (0, extra)))
            s["sy"] = np.pad(s["sy"], (0, extra))
            s["syy"] = np.pad(s["syy"], ((0, extra), (0, extra)))

    def shifted_to(self, shift: np.ndarray) -> "RidgeStats":
        """A copy whose sums are of ``x − shift`` (the same rows, another reference)."""
        out = copy.deepcopy(self)
        out._settle()
        d = out.shift - shift                    # x − shift = (x − old) + d
        s, sx = out._sums, out._sums["sx"].copy()
        s["sxx"] += np.outer(d, sx) + np.outer(sx, d) + out.n * np.outer(d, d)
        s["sxy"] += np.outer(d, s["sy"])
        s["sx"] = sx + out.n * d
        out.shift = np.array(shift, dtype=np.float64)
        return out

    def _combine(self, other: "RidgeStats", sign: int) -> "RidgeStats":
        out = copy.deepcopy(self)
        c = max(self._sums["sy"].shape[0], other._sums["sy"].shape[0])
        out.grow_targets(c)
        o = other.shifted_to(out.shift) if out.n else copy.deepcopy(other)
        o.grow_targets(c)
        out._settle(), o._settle()
        if not out.n:
            out.shift = o.shift
        out.n += sign * o.n
        for k in out._sums:
            out._sums[k] = out._sums[k] + sign * o._sums[k]
        return out

    def __add__(self, other: "RidgeStats") -> "RidgeStats":
        return self._combine(other, 1)

    def __sub__(self, other: "RidgeStats") -> "RidgeStats":
        return self._combine(other, -1)


@dataclass
class RidgeFit:
    """A fitted probe in raw feature space: ``predict(x) = x @ coef + intercept``."""

    coef: np.ndarray        # (d, c)
    intercept: np.ndarray   # (c,)
    alpha: float

    def predict(self, x) -> np.ndarray:
        return np.asarray(x, dtype=np.float64) @ self.coef + self.intercept


def _standardised(s: RidgeStats, standardize: bool):
    """Centred (and scaled) Gram and cross products, with the mean and scale used."""
    n = max(s.n, 1)
    ms, my = s.sx / n, s.sy / n              # ms: the mean of the shifted rows
    c = s.sxx - n * np.outer(ms, ms)
    cxy = s.sxy - n * np.outer(ms, my)
    mu = ms + s.shift
    scale = np.ones_like(mu)
    if standardize:
        var = np.clip(np.diag(c) / n, 0.0, None)
        scale = np.sqrt(var)
        scale[scale < 1e-12 * max(1.0, float(np.abs(mu).max(initial=0.0)))] = 1.0
        c = c / np.outer(scale, scale)
        cxy = cxy / scale[:, None]
    return c, cxy, mu, my, scale


def fit_ridge(s: RidgeStats, alphas, standardize: bool = True) -> list[RidgeFit]:
    """The ridge solution for each penalty, from one eigendecomposition of the centred Gram."""
    return _ridge_path(s, alphas, standardize)[0]


def _ridge_path(s: RidgeStats, alphas, standardize: bool):
    """Fits for every penalty, the resolvable eigenvalues and the targets' squared projections.

    Eigenvalues below ``d · eps · λ_max`` (eps of the products' float type) are rounding noise —
    with fewer items than features, float32 products leave hundreds of them — and are treated as
    exact zeros, with their directions dropped from the solution."""
    c, cxy, mu, my, scale = _standardised(s, standardize)
    lam, v = np.linalg.eigh(c)
    eps = np.finfo(np.float32 if s.dtype == "float32" else np.float64).eps
    noise = lam <= len(lam) * eps * max(float(lam.max(initial=0.0)), 0.0)
    lam = np.where(noise, 0.0, lam)
    proj = v.T @ cxy
    proj[noise] = 0.0
    fits = []
    for a in alphas:
        w = v @ (proj / (lam + a)[:, None])
        coef = w / scale[:, None]
        fits.append(RidgeFit(coef, my - mu @ coef, float(a)))
    return fits, lam, (proj ** 2).sum(1)


def gcv_fit(s: RidgeStats, alphas, standardize: bool = True) -> tuple[RidgeFit, list[float]]:
    """The fit whose penalty minimises generalised cross-validation, GCV(α) = (SSE/n) / (1 − df/n)²
    with df = 1 + Σ λᵢ/(λᵢ + α) (intercept plus the ridge hat matrix's trace), every penalty from
    one eigendecomposition (Golub, Heath & Wahba 1979). SSE is computed in the eigenbasis as the
    least-squares residual plus ``Σ (pᵢ²/λᵢ) α²/(λᵢ + α)²`` (pᵢ: the targets' projections), so
    that near-interpolating penalties do not subtract two nearly equal numbers; a penalty that
    leaves no residual degrees of freedom (df ≥ n) is never chosen."""
    fits, lam, p2 = _ridge_path(s, alphas, standardize)
    n = s.n
    q = np.divide(p2, lam, out=np.zeros_like(p2), where=lam > 0)
    ss = float(np.trace(s.syy) - s.sy @ s.sy / max(n, 1))      # Σ ‖y − ȳ‖²
    resid = max(ss - float(q.sum()), 0.0)                       # the least-squares residual
    err = []
    for fit in fits:
        a = fit.alpha
        df = 1.0 + float(np.sum(lam / (lam + a)))
        sse = resid + float(np.sum(q * a * a / (lam + a) ** 2))
        err.append(sse / n / (1.0 - df / n) ** 2 if df < n else float("inf"))
    return fits[int(np.argmin(err))], err


def squared_error(fit: RidgeFit, s: RidgeStats) -> float:
    """Σᵢ ‖yᵢ − predict(xᵢ)‖² over the items summarised in ``s``, from the sums alone."""
    a = fit.coef
    b = fit.intercept + s.shift @ a          # the same predictions, written on the shifted rows
    return float(np.trace(s.syy) - 2 * np.sum(a * s.sxy) - 2 * b @ s.sy
                 + np.sum(a * (s.sxx @ a)) + 2 * b @ (a.T @ s.sx) + s.n * b @ b)


def fit_lda(s: RidgeStats, alpha: float, standardize: bool = True) -> RidgeFit:
    """Regularised linear discriminant analysis from the sums of one-hot targets: class means
    ``m_k`` (from XᵀY), shared covariance ``Σ = (S_W + α I) / n`` with ``S_W`` the within-class
    scatter of the (standardised) features, and scores ``xᵀΣ⁻¹m_k − ½ m_kᵀΣ⁻¹m_k + log π_k``.

    Unlike least squares on one-hot targets, LDA does not mask classes that lie between others
    (ordered classes such as length bins); with two classes its direction equals the ridge's.
    Classes absent from the training items get a score of −inf.
    """
    from scipy.linalg import solve

    c, cxy, mu, _, scale = _standardised(s, standardize)
    counts = s.sy
    seen = counts > 0
    n = s.n
    means = cxy[:, seen] / counts[seen]                  # class means; the overall mean is 0
    within = c - (cxy[:, seen] * (1.0 / counts[seen])) @ cxy[:, seen].T
    within[np.diag_indices_from(within)] += alpha
    try:
        b = n * solve(within, means, assume_a="pos")
    except np.linalg.LinAlgError:
        raise LayerscopeError(f"the within-class scatter plus alpha={alpha:g} is singular; use a "
                              f"positive alpha (or let cross-validation choose it)") from None
    coef = np.zeros((len(mu), len(counts)))
    intercept = np.full(len(counts), -np.inf)
    coef[:, seen] = b / scale[:, None]
    intercept[seen] = -mu @ coef[:, seen] - 0.5 * np.sum(means * b, 0) + np.log(counts[seen] / n)
    return RidgeFit(coef, intercept, float(alpha))


def choose_alpha(folds: list[RidgeStats], alphas, standardize: bool = True) -> tuple[float, list[float]]:
    """The penalty with the least k-fold squared error (and every penalty's mean error per item)."""
    folds = [f for f in folds if f.n > 0]
    if len(alphas) == 1 or len(folds) < 2:
        return float(alphas[0]), []
    total = folds[0]
    for f in folds[1:]:
        total = total + f
    err = np.zeros(len(alphas))
    for f in folds:
        for i, fit in enumerate(fit_ridge(total - f, alphas, standardize)):
            err[i] += squared_error(fit, f)
    err /= total.n
    return float(alphas[int(np.argmin(err))]), err.tolist()


def _targets(y: Tensor, classification: bool, n_classes: int) -> Tensor:
    if classification:
        return torch.nn.functional.one_hot(y.long(), n_classes).double()
    return y.double().reshape(len(y), -1)


# --- intervals ---------------------------------------------------------------------------------


def wilson(correct: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval for a proportion (95% by default).

    Example:
        >>> [round(v, 4) for v in wilson(80, 100)]
        [0.7112, 0.8666]
    """
    if n == 0:
        return float("nan"), float("nan")
    p = correct / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return mid - half, mid + half


def clustered_wilson(correct, groups, z: float = 1.959964) -> tuple[float, float]:
    """Wilson interval for the share of ``correct`` (one 0/1 per row) when rows come in groups
    that are not independent (the token rows of one sentence): Wilson's interval on the effective
    number of rows, ``n`` over the design effect of the groups (Kish), the ratio estimator's
    cluster-robust variance against the binomial one; never narrower than Wilson on the rows.

    Example:
        >>> ok = np.array([1, 1, 0, 0, 1, 1, 0, 0] * 10)
        >>> [round(v, 3) for v in wilson(int(ok.sum()), len(ok))]
        [0.393, 0.607]
        >>> [round(v, 3) for v in clustered_wilson(ok, np.repeat(np.arange(40), 2))]   # pairs agree
        [0.35, 0.65]
    """
    c = np.asarray(correct, dtype=float)
    g = np.unique(np.asarray(groups), return_inverse=True)[1]
    n, G = len(c), int(g.max()) + 1 if len(g) else 0
    if n == 0:
        return float("nan"), float("nan")
    p = c.mean()
    if G < 2 or p in (0.0, 1.0):
        return wilson(int(c.sum()), n, z)
    resid = np.bincount(g, weights=c - p, minlength=G)
    var = G / (G - 1) * float((resid ** 2).sum()) / n ** 2
    deff = max(1.0, var / (p * (1 - p) / n))
    n_eff = n / deff
    lo, hi = wilson(p * n_eff, n_eff, z)
    return float(lo), float(hi)


def r2_score(y: np.ndarray, pred: np.ndarray) -> float:
    y, pred = np.asarray(y, float).reshape(len(y), -1), np.asarray(pred, float).reshape(len(y), -1)
    ss_tot = ((y - y.mean(0)) ** 2).sum()
    return float(1 - ((y - pred) ** 2).sum() / ss_tot) if ss_tot > 0 else 0.0


def bootstrap_r2(y: np.ndarray, pred: np.ndarray, n_boot: int = 1000, seed: int = 0,
                 groups: np.ndarray | None = None) -> tuple[float, float]:
    """95% percentile bootstrap interval of R² over held-out items (over whole groups of rows
    when ``groups`` gives one group per row)."""
    rng = np.random.default_rng(seed)
    if groups is not None:
        return _group_bootstrap_r2(y, pred, np.asarray(groups), n_boot, rng)
    idx = rng.integers(0, len(y), size=(n_boot, len(y)))
    yb = np.asarray(y, float).reshape(len(y), -1)[idx]
    pb = np.asarray(pred, float).reshape(len(y), -1)[idx]
    ss_tot = ((yb - yb.mean(1, keepdims=True)) ** 2).sum((1, 2))
    ss_res = ((yb - pb) ** 2).sum((1, 2))
    r2 = np.where(ss_tot > 0, 1 - ss_res / np.where(ss_tot > 0, ss_tot, 1), 0.0)
    lo, hi = np.percentile(r2, [2.5, 97.5])
    return float(lo), float(hi)


def _group_bootstrap_r2(y, pred, groups, n_boot, rng) -> tuple[float, float]:
    y, pred = np.asarray(y, float).reshape(len(y), -1), np.asarray(pred, float).reshape(len(y), -1)
    members = [np.flatnonzero(groups == g) for g in np.unique(groups)]
    r2 = []
    for _ in range(n_boot):
        rows = np.concatenate([members[i] for i in rng.integers(0, len(members), size=len(members))])
        r2.append(r2_score(y[rows], pred[rows]))
    lo, hi = np.percentile(r2, [2.5, 97.5])
    return float(lo), float(hi)


# --- the estimator -----------------------------------------------------------------------------


class LinearProbe:
    """A linear probe with scikit-learn habits: ``fit(X, y)``, ``predict``, ``score``.

    ``task`` is "classification" (regularised LDA, :func:`fit_lda`), "regression" (ridge) or "auto"
    (integer labels mean classes). ``alpha=None`` picks the penalty from ``alphas`` by
    generalised cross-validation (``cv="gcv"``) or ``folds``-fold cross-validation
    (``cv="kfold"``) on the sufficient statistics. Features are standardised
    (mean 0, variance 1 over the training items) unless ``standardize=False``.

    Example:
        >>> import torch
        >>> X = torch.randn(100, 3); y = X @ torch.tensor([1.0, -2.0, 0.5])
        >>> round(LinearProbe(alpha=1e-6).fit(X, y).score(X, y), 6)
        1.0
    """

    def __init__(self, alpha: float | None = None, *, task: str = "auto", alphas=ALPHAS,
                 cv: str = "gcv", folds: int = 3, standardize: bool = True, seed: int = 0):
        _check_cv(cv)
        self.alpha, self.task, self.alphas, self.cv = alpha, task, tuple(alphas), cv
        self.folds = folds if cv == "kfold" else 1
        self.standardize, self.seed = standardize, seed

    def fit(self, X, y) -> "LinearProbe":
        X = torch.as_tensor(np.asarray(X) if not isinstance(X, Tensor) else X).reshape(len(X), -1)
        y = torch.as_tensor(np.asarray(y) if not isinstance(y, Tensor) else y)
        if len(X) != len(y):
            raise LayerscopeError(f"{len(X)} rows of features but {len(y)} labels; give one label per row")
        self.classification_ = _is_classification(y, self.task)
        if self.classification_:
            self.classes_, y_idx = np.unique(y.numpy(), return_inverse=True)
            if len(self.classes_) < 2:
                raise LayerscopeError("the labels hold a single class; a probe needs at least two classes")
            targets = _targets(torch.from_numpy(y_idx.reshape(-1)), True, len(self.classes_))
        else:
            targets = _targets(y, False, 0)
        fold = split_items(np.arange(len(X)), 0.0, self.folds, self.seed)
        stats = []
        for f in range(self.folds):
            s = RidgeStats(X.shape[1], targets.shape[1])
            rows = torch.from_numpy(np.flatnonzero(fold == f))
            if len(rows):
                s.add(X[rows], targets[rows])
            stats.append(s)
        self.fit_, self.cv_error_ = select_fit(stats, [self.alpha] if self.alpha is not None else self.alphas,
                                               self.cv, self.standardize, self.classification_)
        self.alpha_ = self.fit_.alpha
        return self

    def decision_function(self, X) -> np.ndarray:
        return self.fit_.predict(np.asarray(X, dtype=np.float64).reshape(len(X), -1))

    def predict(self, X) -> np.ndarray:
        out = self.decision_function(X)
        if self.classification_:
            return self.classes_[out.argmax(1)]
        return out[:, 0] if out.shape[1] == 1 else out

    def score(self, X, y) -> float:
        """Accuracy for classes, R² for regression."""
        y = np.asarray(y)
        pred = self.predict(X)
        return float((pred == y).mean()) if self.classification_ else r2_score(y, pred)


def _check_precision(dtype: str) -> None:
    if dtype not in ("float64", "float32"):
        raise LayerscopeError(f"unknown probe precision {dtype!r}; use float64 or float32")


def _check_solver(solver: str, classification: bool, C: float) -> None:
    if solver not in SOLVERS:
        raise LayerscopeError(f"unknown probe solver {solver!r}; use one of {', '.join(SOLVERS)}")
    if solver in ("logistic", "lbfgs") and not classification:
        raise LayerscopeError("a logistic probe needs class labels; use the closed-form (ridge) probe for scores")
    if not C > 0:
        raise LayerscopeError(f"C must be positive; got {C}")


def fit_logistic(x: np.ndarray, y: np.ndarray, n_classes: int, C: float = 1.0) -> RidgeFit:
    """scikit-learn's L2 ``LogisticRegression(C)`` on standardised ``x``, written back as a fit in
    raw feature space with one score column per class (−inf for classes absent from ``y``)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    if len(np.unique(y)) < 2:
        raise LayerscopeError("the training items hold a single class; a logistic probe needs two")
    sc = StandardScaler().fit(x)
    lr = LogisticRegression(C=C, max_iter=5000).fit(sc.transform(x), y)
    w = lr.coef_.T if len(lr.classes_) > 2 else np.c_[np.zeros_like(lr.coef_.T), lr.coef_.T]
    b = lr.intercept_ if len(lr.classes_) > 2 else np.r_[0.0, lr.intercept_]
    scale = np.where(sc.scale_ > 0, sc.scale_, 1.0)
    coef = np.zeros((x.shape[1], n_classes))
    intercept = np.full(n_classes, -np.inf)
    coef[:, lr.classes_] = w / scale[:, None]
    intercept[lr.classes_] = b - sc.mean_ @ coef[:, lr.classes_]
    return RidgeFit(coef, intercept, 1.0 / C)


def _check_cv(cv: str) -> None:
    if cv not in ("gcv", "kfold"):
        raise LayerscopeError(f"unknown penalty selection {cv!r}; use gcv or kfold")


def select_fit(folds: list[RidgeStats], alphas, cv: str = "gcv", standardize: bool = True,
               classification: bool = False):
    """The refitted probe on all folds with the penalty chosen by ``cv`` (the ridge's squared
    error, on one-hot targets for classes), and each penalty's error. For classes the probe is
    :func:`fit_lda` at that penalty."""
    total = folds[0]
    for f in folds[1:]:
        total = total + f
    if len(alphas) == 1:
        fit, err = fit_ridge(total, alphas, standardize)[0], []
    elif cv == "gcv":
        fit, err = gcv_fit(total, alphas, standardize)
    else:
        alpha, err = choose_alpha(folds, alphas, standardize)
        fit = fit_ridge(total, [alpha], standardize)[0]
    return (fit_lda(total, fit.alpha, standardize) if classification else fit), err


def _is_classification(y: Tensor, task: str) -> bool:
    if task in ("classification", "regression"):
        return task == "classification"
    if task != "auto":
        raise LayerscopeError(f"unknown probe task kind {task!r}; use classification, regression or auto")
    return not torch.is_floating_point(y) or bool(torch.all(y == y.round()) and y.unique().numel() <= 20)


# --- the reducer: all layers in one pass -------------------------------------------------------


class ProbeStats(Reducer):
    """Per layer and fold the ridge sums of the training items; the held-out rows kept as they are.

    ``random_width`` (default: the widest layer seen in the first batch; 0 for none) adds the
    random-features control as an extra pseudo-layer. ``precision`` is the float type of the
    XᵀX products (see :class:`RidgeStats`); the totals are float64 either way.
    ``solver``: "auto" (default; see the module text), "closed", "lbfgs" or "logistic".
    ``solver="logistic"`` (classes only) also keeps the training rows and fits scikit-learn's
    L2 ``LogisticRegression(C=C)`` per layer instead of the closed form: the usual probe of the
    literature, at its usual cost, with memory growing with the data.
    ``groups`` (one number per item index; default: each item its own group) makes the held-out
    split by group: items with one group number fall on the same side (e.g. the token rows of one
    sentence), so no group is both trained on and scored.
    """

    def __init__(self, classification: bool, *, layers: list[str] | None = None, view: str = "mean",
                 test_fraction: float = 0.2, cv: str = "gcv", folds: int = 3, seed: int = 0,
                 random_width: int | None = None, precision: str = PRECISION,
                 solver: str = "auto", C: float = 1.0, memory_budget: int = MEMORY_BUDGET,
                 groups=None):
        self.groups = None if groups is None else np.asarray(groups, dtype=np.int64)
        _check_cv(cv)
        _check_precision(precision)
        _check_solver(solver, classification, C)
        if solver == "auto" and not classification:
            solver = "closed"               # scores: the closed-form ridge is the exact solution
        self.precision, self.solver, self.C = precision, solver, float(C)
        self.memory_budget, self.over_budget = int(memory_budget), False
        self.train_rows: dict[str, list[Tensor]] = {}    # only for solver="logistic"
        self.train_y: list[Tensor] = []
        self.train_index: list[np.ndarray] = []          # item index per kept training row
        if not 0.0 < test_fraction < 1.0:
            raise LayerscopeError(f"test_fraction must be between 0 and 1; got {test_fraction}")
        self.classification, self.view = classification, view
        self.layers = list(layers) if layers is not None else None
        self.test_fraction, self.seed, self.cv = test_fraction, seed, cv
        self.folds = folds if cv == "kfold" else 1
        self.random_width = random_width
        self.n_classes = 0
        self.stats: dict[str, list[RidgeStats]] = {}
        self.test_rows: dict[str, list[Tensor]] = {}
        self.test_y: list[Tensor] = []
        self.test_index: list[np.ndarray] = []
        self.order: list[str] = []

    def update(self, acts: dict[str, Tensor], batch: BatchInfo) -> None:
        if batch.labels is None:
            raise LayerscopeError("a probe needs labels; give data with labels or a probing task")
        y = batch.labels.detach().cpu()
        if len(y) != batch.size:
            raise LayerscopeError(f"a batch of {batch.size} items came with {len(y)} labels; give one label per item")
        if not torch.all(torch.isfinite(y.double())):
            raise LayerscopeError("labels hold NaN or inf; drop those items before probing")
        idx = np.arange(batch.start, batch.start + batch.size)
        if self.groups is not None and len(idx) and idx[-1] >= len(self.groups):
            raise LayerscopeError(f"the probe was given groups for {len(self.groups)} items but saw item {idx[-1]}")
        fold = split_items(idx if self.groups is None else self.groups[idx], self.test_fraction, self.folds, self.seed)
        if self.classification:
            if torch.is_floating_point(y) and not torch.all(y == y.round()):
                raise LayerscopeError("classification probes need integer class labels; use a regression probe")
            if int(y.min()) < 0:
                raise LayerscopeError("class labels must be 0, 1, 2, ...; got a negative label")
            self.n_classes = max(self.n_classes, int(y.max()) + 1)
        targets = _targets(y, self.classification, max(self.n_classes, 1))
        acts = {k: v.reshape(v.shape[0], -1) for k, v in acts.items()
                if self.layers is None or k in self.layers}
        if self.random_width is None:
            self.random_width = max((v.shape[1] for v in acts.values()), default=0)
        if self.random_width:
            acts[RANDOM] = random_features(idx, self.random_width, self.seed)
        logistic = self._keeps_rows()
        sums = self.solver in ("closed", "auto")
        test = torch.from_numpy(np.flatnonzero(fold < 0))
        train = torch.from_numpy(np.flatnonzero(fold >= 0))
        parts = [] if not sums else [(f, torch.from_numpy(np.flatnonzero(fold == f))) for f in range(self.folds)]
        parts = [(f, rows, targets[rows]) for f, rows in parts if len(rows)]
        for name, x in acts.items():
            if name not in self.test_rows:
                self.order.append(name)
                self.test_rows[name] = []
                if sums:
                    self.stats[name] = [RidgeStats(x.shape[1], targets.shape[1], dtype=self.precision)
                                        for _ in range(self.folds)]
            x = x.detach().float().cpu()
            for f, rows, t in parts:
                s = self.stats[name][f]
                s.grow_targets(targets.shape[1])
                s.add(x[rows], t)                      # indexing copies: the batch may be reused
            self.test_rows[name].append(x[test])
            if logistic:
                self.train_rows.setdefault(name, []).append(x[train])
        self.test_y.append(y[test])
        if logistic:
            self.train_y.append(y[train])
            self.train_index.append(idx[fold >= 0])
            self._check_budget()
        self.test_index.append(idx[fold < 0])

    def _keeps_rows(self) -> bool:
        return self.solver in ("logistic", "lbfgs") or (self.solver == "auto" and not self.over_budget)

    def _check_budget(self) -> None:
        """solver="auto": past the memory budget, drop the kept rows and use the streamed sums."""
        from layerscope.analyses.probe_logistic import kept_bytes

        if self.solver != "auto" or self.over_budget:
            return
        n = sum(len(t) for t in self.train_y)
        widths = [rows[0].shape[1] for rows in self.train_rows.values() if rows]
        if kept_bytes(n, widths) > self.memory_budget:
            self.over_budget = True
            self.train_rows, self.train_y, self.train_index = {}, [], []

    def merge(self, other: "ProbeStats") -> "ProbeStats":
        self._check_mergeable(other)
        out = copy.deepcopy(self)
        out.over_budget = self.over_budget or getattr(other, "over_budget", False)
        out.n_classes = max(self.n_classes, other.n_classes)
        for name in other.order:
            if name not in out.test_rows:
                out.order.append(name)
                out.test_rows[name] = []
            out.test_rows[name] += [t.clone() for t in other.test_rows[name]]
            if name in other.stats:
                out.stats[name] = ([a + b for a, b in zip(out.stats[name], other.stats[name])]
                                   if name in out.stats else copy.deepcopy(other.stats[name]))
        out.test_y += [t.clone() for t in other.test_y]
        out.test_index += list(other.test_index)
        for name, rows in other.train_rows.items():
            out.train_rows.setdefault(name, []).extend(t.clone() for t in rows)
        out.train_y += [t.clone() for t in other.train_y]
        out.train_index = list(getattr(out, "train_index", [])) + list(getattr(other, "train_index", []))
        if out.over_budget:
            out.train_rows, out.train_y, out.train_index = {}, [], []
        else:
            out._check_budget()
        return out

    def result(self, *, alphas=ALPHAS, standardize: bool = True, classes: list[str] | None = None,
               task_name: str | None = None, n_boot: int = 1000) -> "ProbeResult":
        return probe_result(self, alphas=alphas, standardize=standardize, classes=classes,
                            task_name=task_name, n_boot=n_boot)


# --- the result --------------------------------------------------------------------------------


@dataclass
class ProbeResult(Result):
    """Held-out probe scores per layer, with 95% intervals and two controls."""

    layers: list[str]
    task: str                   # the probing task's name (e.g. "sentiment" or "labels")
    problem: str                # "classification" | "regression"
    metric: str                 # "accuracy" | "r2"
    score: list[float]
    ci_low: list[float]
    ci_high: list[float]
    alpha: list[float]
    n_train: int
    n_test: int
    baseline: float             # majority class accuracy / R² of the training mean, held out
    random_features: float      # the same probe on Gaussian features of random_width
    random_ci: list[float]
    random_width: int
    classes: list[str] | None = None
    method: str = ("ridge regression (continuous targets) or regularised LDA (classes) on "
                   "standardised features, closed form from streamed XᵀX / XᵀY; penalty by "
                   "cross-validation of the ridge on the sums")
    interval: str = ""
    peak_layer: str = ""        # the layer with the highest held-out score
    solver: str = ""            # what fitted the probes: lbfgs | logistic-cv | logistic | lda | ridge

    @property
    def peak(self) -> int:
        return int(np.argmax(self.score))

    def summary(self) -> str:
        from layerscope.analyses.claims import peak_claim  # names a peak only when intervals allow

        claim = peak_claim(self.task, self.layers, self.score, self.ci_low, self.ci_high,
                           baseline=self.baseline, n_test=self.n_test, metric=self.metric)
        return f"{claim.sentence}; random features {self.random_features:.3f}"

    def plot(self, ax=None):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig = ax.figure if ax is not None else plt.figure(figsize=(7, 4))
        ax = ax or fig.add_subplot(111)
        x = np.arange(len(self.layers))
        ax.plot(x, self.score, marker="o", label=f"probe ({self.metric})")
        ax.fill_between(x, self.ci_low, self.ci_high, alpha=0.25, label="95% interval")
        ax.axhline(self.baseline, color="gray", ls="--", label="baseline")
        ax.axhline(self.random_features, color="tab:red", ls=":", label=f"random features (d={self.random_width})")
        ax.set_xticks(x, [str(i) for i in x])
        ax.set_xlabel("layer")
        ax.set_ylabel(self.metric)
        ax.set_title(f"probe: {self.task} (n_test={self.n_test})")
        ax.legend(fontsize=8)
        fig.tight_layout()
        return fig


def _evaluate(fit: RidgeFit, x: np.ndarray, y: np.ndarray, classification: bool, n_boot: int, seed: int,
              groups: np.ndarray | None = None):
    """Held-out score and its 95% interval; with ``groups`` (one per row) the interval counts
    rows of one group as one cluster (classes: :func:`clustered_wilson`; scores: a bootstrap
    over whole groups)."""
    pred = fit.predict(x)
    if classification:
        hits = pred.argmax(1) == y
        lo, hi = wilson(int(hits.sum()), len(y)) if groups is None else clustered_wilson(hits, groups)
        return float(hits.mean()), lo, hi
    if groups is not None:
        return r2_score(y, pred), *bootstrap_r2(y, pred, n_boot, seed, groups=groups)
    return r2_score(y, pred), *bootstrap_r2(y, pred, n_boot, seed)


def _groups_of(stats: ProbeStats, index: list[np.ndarray]) -> np.ndarray | None:
    """The group of each row whose item indices ``index`` lists, or None without groups."""
    groups = getattr(stats, "groups", None)
    if groups is None:
        return None
    return groups[np.concatenate(index)] if index else np.zeros(0, dtype=np.int64)


def probe_result(stats: ProbeStats, *, alphas=ALPHAS, standardize: bool = True,
                 classes: list[str] | None = None, task_name: str | None = None,
                 n_boot: int = 1000) -> ProbeResult:
    """Fit every layer's probe from the reducer's sums and score it on the held-out rows."""
    if not stats.order:
        raise LayerscopeError("the probe saw no data; pass at least a few dozen labelled items")
    y_test = torch.cat(stats.test_y).numpy() if stats.test_y else np.zeros(0)
    logistic = stats.solver == "logistic" or (stats.solver in ("lbfgs", "auto") and bool(stats.train_y))
    batched = None
    if logistic:   # rows were kept: count the training labels directly
        y_train = torch.cat(stats.train_y).numpy().astype(np.int64) if stats.train_y else np.zeros(0, np.int64)
        n_train, sum_y = len(y_train), np.bincount(y_train, minlength=max(stats.n_classes, 1)).astype(float)
    else:
        first = stats.stats[stats.order[0]]
        n_train, sum_y = sum(s.n for s in first), sum(s.sy for s in first)
    if len(y_test) < 5 or n_train < 10:
        total = n_train + len(y_test)
        raise LayerscopeError(
            f"too few items for a held-out probe: {total} items gave {n_train} for training and "
            f"{len(y_test)} held out (at least 10 and 5 are needed); use at least {int(math.ceil(10 / stats.test_fraction))} items")
    if stats.classification:      # sum_y: the training items' class counts
        counts = np.bincount(y_test.astype(np.int64), minlength=len(sum_y)) + sum_y
        if (counts > 0).sum() < 2:
            raise LayerscopeError("the labels hold a single class; a probe needs at least two classes")
        majority = int(np.argmax(sum_y))
        baseline = float((y_test == majority).mean())
    else:
        mean = sum_y / n_train
        baseline = r2_score(y_test, np.broadcast_to(mean, (len(y_test), len(mean))))
    scores, lo, hi, chosen = [], [], [], []
    names = [n for n in stats.order if n != RANDOM]
    rand = None
    if logistic and stats.solver != "logistic":    # every layer in one batched solve, C by CV
        from layerscope.analyses.probe_logistic import fit_logistic_cv

        fits, batched = fit_logistic_cv([torch.cat(stats.train_rows[k]).float().numpy() for k in stats.order],
                                        y_train, len(sum_y), seed=stats.seed,
                                        engine="auto" if stats.solver == "auto" else "batched",
                                        groups=_groups_of(stats, getattr(stats, "train_index", [])))
        batched["fits"] = dict(zip(stats.order, fits))
    test_groups = _groups_of(stats, stats.test_index)
    for name in stats.order:
        if batched is not None:
            fit = batched["fits"][name]
        elif logistic:
            rows = torch.cat(stats.train_rows[name]).double().numpy()
            fit = fit_logistic(rows, y_train, len(sum_y), stats.C)
        else:
            fit, _ = select_fit(stats.stats[name], alphas, stats.cv, standardize, stats.classification)
        alpha = fit.alpha
        x_test = torch.cat(stats.test_rows[name]).double().numpy()
        out = _evaluate(fit, x_test, y_test, stats.classification, n_boot, stats.seed, groups=test_groups)
        if name == RANDOM:
            rand = out
            continue
        scores.append(out[0]); lo.append(out[1]); hi.append(out[2]); chosen.append(alpha)
    method = ProbeResult.method + (" (generalised CV from one eigendecomposition)" if stats.cv == "gcv"
                                   else f" ({stats.folds}-fold CV)")
    if logistic and batched is None:
        method = (f"L2 logistic regression (scikit-learn, lbfgs, C={stats.C:g}) per layer on "
                  f"standardised features; training rows kept in memory; alpha = 1/C")
    elif batched is not None:
        from layerscope.analyses.probe_logistic import describe

        method = describe(batched)
    if stats.solver == "auto" and stats.over_budget:
        method += (f" (solver auto: the training rows passed the {stats.memory_budget / 2**20:.0f} MiB "
                   f"memory budget, so the streamed closed form was used)")
    solver_used = (("lbfgs" if batched["engine"] == "batched" else "logistic-cv") if batched is not None
                   else "logistic" if logistic else
                   "lda" if stats.classification else "ridge")
    kind = "classification" if stats.classification else "regression"
    return ProbeResult(
        layers=names, task=task_name or "labels", problem=kind,
        metric="accuracy" if stats.classification else "r2", score=scores, ci_low=lo, ci_high=hi,
        alpha=chosen, n_train=int(n_train), n_test=int(len(y_test)), baseline=baseline,
        random_features=rand[0] if rand else float("nan"),
        random_ci=[rand[1], rand[2]] if rand else [], random_width=int(stats.random_width or 0),
        classes=classes, method=method, peak_layer=names[int(np.argmax(scores))], solver=solver_used,
        interval="Wilson 95%" if stats.classification else f"bootstrap 95% over held-out items ({n_boot} resamples)",
    )


# --- the analysis: reducers / from_reducers / probe ---------------------------------------------


def reducers(data, *, layers=None, view: str = "mean", test_fraction: float = 0.2, cv: str = "gcv",
             folds: int = 3, seed: int = 0, random_width: int | None = None,
             precision: str = PRECISION, solver: str = "auto", C: float = 1.0) -> list[Reducer]:
    """The reducers a probe needs in a sweep over ``data`` (a Dataset with labels); ``solver`` as
    in :func:`probe` (default "auto", the same in the CLI, ``analyze`` and the report)."""
    return [ProbeStats(_data_is_classification(data), layers=layers, view=view,
                       test_fraction=test_fraction, cv=cv, folds=folds, seed=seed,
                       random_width=random_width, precision=precision, solver=solver, C=C)]


def from_reducers(reds: list[Reducer], *, data=None, alphas=ALPHAS, task_name: str | None = None) -> ProbeResult:
    """The ProbeResult from the swept reducers of :func:`reducers`."""
    stats = next(r for r in reds if isinstance(r, ProbeStats))
    classes = getattr(data, "classes", None) if data is not None else None
    name = task_name or (data.meta.get("probe_task") if data is not None and hasattr(data, "meta") else None)
    return stats.result(alphas=alphas, classes=classes, task_name=name)


def _data_is_classification(data) -> bool:
    labels = getattr(data, "labels", None)
    if labels is None:
        raise LayerscopeError("the data has no labels; choose a probing task (length, bigram-shift, sentiment) or labelled data")
    if len(labels) != len(data):
        raise LayerscopeError(f"the data has {len(data)} items but {len(labels)} labels; give one label per item")
    if torch.as_tensor(labels).dim() != 1:
        raise LayerscopeError(
            f"a probe needs one label per item; the data's labels have shape "
            f"{tuple(torch.as_tensor(labels).shape)} (one per position, as for language modelling); "
            "use data with one label per item or a probing task (--task)")
    task = getattr(data, "task", None)
    if task in ("classification", "regression"):
        return task == "classification"
    return _is_classification(torch.as_tensor(labels), "auto")


def probe(model, data, *, task: str | None = None, layers=None, granularity: str = "blocks",
          view: str = "mean", test_fraction: float = 0.2, cv: str = "gcv", folds: int = 3, seed: int = 0,
          alphas=ALPHAS, random_width: int | None = None, precision: str = PRECISION,
          solver: str = "auto", C: float = 1.0, limit: int | None = None,
          batch_size: int = 32, max_length: int | None = 128,
          progress: bool = False) -> ProbeResult:
    """Probe every layer of ``model`` for the labels of ``data`` (or a built-in ``task``) in one pass.

    ``task``: None (the data's own labels), or "length", "bigram-shift", "sentiment",
    "sentiment-score" (see :mod:`layerscope.analyses.probe_tasks`). ``precision``: the float
    type of the streamed XᵀX products, "float32" (default, fast) or "float64" (see
    :class:`RidgeStats`). ``solver``: "auto" (default: for classes, L2 logistic regression with C
    chosen by 3-fold CV on the kept training rows while they fit :data:`MEMORY_BUDGET` - all
    layers in one batched L-BFGS for 2 classes, scikit-learn's ``LogisticRegressionCV`` per layer
    for more - else the streamed closed form; for scores, the closed-form ridge),
    "lbfgs" (always the batched logistic solve), "closed" (ridge / regularised LDA from streamed
    sums) or "logistic" (scikit-learn's ``LogisticRegression(C=C)`` per layer). The result's
    ``solver`` and ``method`` say which was used.

    Example:
        >>> import torch
        >>> from layerscope.data import Dataset
        >>> X = torch.randn(300, 4); ds = Dataset("toy", X, (X[:, 0] > 0).long(), "tensor", "classification")
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
        >>> res = probe(net, ds)
        >>> res.metric, len(res.layers) == len(res.score), res.score[0] > res.baseline
        ('accuracy', True, True)
    """
    from layerscope.sweep import sweep

    data = prepare_data(data, task, limit=limit, seed=seed)
    reds = reducers(data, layers=None, view=view, test_fraction=test_fraction, cv=cv, folds=folds,
                    seed=seed, random_width=random_width, precision=precision, solver=solver, C=C)
    sweep(model, data, reducers=reds, layers=layers, granularity=granularity,
          batch_size=batch_size, max_length=max_length, progress=progress)
    return from_reducers(reds, data=data, alphas=alphas)


def prepare_data(data, task: str | None, *, limit: int | None = None, seed: int = 0):
    """The labelled Dataset to probe: ``data`` itself, or a built-in probing task made from it."""
    if isinstance(data, str):
        from layerscope.data import load_dataset

        data = load_dataset(data, limit=limit, seed=seed)
    elif limit is not None and hasattr(data, "subset"):
        data = data.subset(range(min(limit, len(data))))
    if task in (None, "labels"):
        return data
    from layerscope.analyses.probe_tasks import make_task

    return make_task(task, data, seed=seed)
