"""L2 logistic-regression probes for every layer at once, the penalty chosen by cross-validation.

The objective is scikit-learn's ``LogisticRegression`` on standardised features (binary: one
weight vector; more classes: multinomial, one vector per class), scaled as scikit-learn scales it:
``(1/n) Σᵢ CE(xᵢ) + ‖W‖² / (2Cn)``, intercept unpenalised, on features standardised by
StandardScaler's rule (a feature is constant only within the variance's rounding bound). Every
(layer, C, fold) problem is solved to a stopping rule tighter than scikit-learn's lbfgs: the
Euclidean norm of the objective's gradient below ``tol`` (default 1e-6; scikit-learn stops when
the largest gradient entry is below 1e-4), or a relative objective decrease below 64 machine
epsilons (the float64 floor).

How it is fast: the problems are independent, so they run side by side in one batched
limited-memory BFGS in float64, each problem with its own curvature pairs, step length
(backtracking Armijo search) and convergence test, so one slow problem never shortens or lengthens
another's step, and finished problems drop out. Every layer shares each matrix product over its
rows. Each problem is solved in coordinates where the objective's Hessian at the start is about
the identity: ``W = V · (U ⊙ r) · Qᵀ`` with ``V`` the eigenvectors of the layer's Gram matrix,
``Q`` those of the class covariance ``diag(π) − ππᵀ`` (π: class frequencies) and
``r = (a·s/n + 1/(Cn))^{-1/2}`` from both spectra, so the first L-BFGS steps are already close to
Newton steps.

Which engine runs is picked per task by :func:`pick_engine` (``engine="auto"``): the batched
solve for 2 classes; for more, scikit-learn's own ``LogisticRegressionCV`` per layer on the same
standardised rows, folds, grid and C rule (``engine="sklearn"``), because the multinomial
problems at C = 1 take the batched L-BFGS hundreds of iterations of narrow products and
scikit-learn's per-problem lbfgs at its own tolerance is several times faster on a CPU
(BENCHMARKS.md "Probes"). ``info["engine"]`` says which ran.

C is chosen per layer exactly as ``LogisticRegressionCV`` chooses it: the sum over folds of each
fold's held-out accuracy, the first C in ``Cs`` order among equal sums; then the probe is the refit
on all training rows at that C, started from the folds' mean solution.

Example:
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> X = torch.randn(300, 6, generator=g); y = (X[:, 0] + 0.3 * X[:, 1] > 0).long().numpy()
    >>> fits, info = fit_logistic_cv([X.numpy(), X[:, 2:].numpy()], y, 2)
    >>> float(((X.numpy() @ fits[0].coef + fits[0].intercept).argmax(1) == y).mean()) > 0.9
    True
    >>> info["converged"]
    True
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from layerscope.errors import LayerscopeError

CS = (0.001, 0.01, 0.1, 1.0)
TOL = 1e-6            # Euclidean gradient norm of the mean-scaled objective at convergence
SKLEARN_TOL = 1e-4    # engine="sklearn": scikit-learn's lbfgs default (largest gradient entry)
FTOL = 64 * float(np.finfo(np.float64).eps)   # relative decrease that counts as no progress
HISTORY = 10          # L-BFGS curvature pairs kept per problem
DTYPE = torch.float64


def _folds(y: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Stratified fold number per row (seeded)."""
    rng = np.random.default_rng(seed)
    out = np.empty(len(y), dtype=np.int64)
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        rng.shuffle(idx)
        out[idx] = np.arange(len(idx)) % folds
    return out


def _group_folds(y: np.ndarray, groups: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Fold number per row with every group's rows in one fold, classes balanced across folds
    as far as the groups allow (scikit-learn's ``StratifiedGroupKFold``, shuffled by ``seed``)."""
    from sklearn.model_selection import StratifiedGroupKFold

    out = np.empty(len(y), dtype=np.int64)
    split = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    for f, (_, rows) in enumerate(split.split(np.zeros(len(y)), y, groups)):
        out[rows] = f
    return out


def pick_engine(n_classes: int) -> str:
    """The faster engine for a task, by the rule measured in BENCHMARKS.md "Probes" (CPU, MiniLM
    features, 1,500-6,000 items): "batched" (one float64 L-BFGS over every layer, C and fold) for
    2 classes, where it costs 5-7% of the forward pass; "sklearn" (scikit-learn's own
    LogisticRegressionCV per layer) for more, where the multinomial problems at C = 1 need
    hundreds of narrow batched iterations and scikit-learn's per-problem lbfgs, warm-started
    along the C path, is several times faster.

    Example:
        >>> pick_engine(2), pick_engine(5)
        ('batched', 'sklearn')
    """
    return "batched" if n_classes <= 2 else "sklearn"


def fit_logistic_cv(rows, y, n_classes: int, *, Cs=CS, folds: int = 3, seed: int = 0,
                    tol: float | None = None, max_iter: int = 2000, engine: str = "batched", groups=None):
    """Per layer (``rows``: one (n, d_l) array per layer, same items) the L2 logistic probe with
    C from ``Cs`` chosen by ``folds``-fold CV; returns (fits, info) with fits as
    :class:`~layerscope.analyses.probe.RidgeFit` in raw feature space (``alpha`` = 1/C; −inf
    intercepts for classes absent from ``y``) and info: chosen C, CV accuracy per C, iterations,
    whether every problem met ``tol`` (``converged``), the largest final gradient, seconds, and
    the ``engine`` that ran.

    ``engine``: "batched" (this module's batched L-BFGS; ``tol``: Euclidean gradient norm, default
    :data:`TOL`), "sklearn" (scikit-learn's ``LogisticRegressionCV`` per layer on the same
    standardised rows, folds, grid and C rule; ``tol``: its lbfgs tolerance on the largest
    gradient entry, default :data:`SKLEARN_TOL`, its own default) or "auto" (:func:`pick_engine`).
    ``groups`` (one per row): the CV folds keep each group's rows together (rows that are not
    independent, such as the tokens of one sentence, would otherwise score C on their own kin)."""
    from layerscope.analyses.probe import RidgeFit

    t0 = time.perf_counter()
    if engine == "auto":
        engine = pick_engine(len(np.unique(np.asarray(y))))
    if engine not in ("batched", "sklearn"):
        raise LayerscopeError(f"unknown logistic engine {engine!r}; use auto, batched or sklearn")
    if tol is None:
        tol = TOL if engine == "batched" else SKLEARN_TOL
    y = np.asarray(y, dtype=np.int64)
    seen = np.unique(y)
    if len(seen) < 2:
        raise LayerscopeError("the training items hold a single class; a logistic probe needs two")
    if any(not (c > 0 and math.isfinite(c)) for c in Cs) or not len(Cs):
        raise LayerscopeError(f"the probe's C grid must hold positive numbers; got {list(Cs)}")
    yi = np.searchsorted(seen, y)
    n = len(y)
    xs = [torch.as_tensor(np.asarray(r)).to(DTYPE) for r in rows]
    if any(len(x) != n for x in xs):
        raise LayerscopeError("every layer needs one row per training label")
    L, D = len(xs), max(x.shape[1] for x in xs)
    mus, sds = [], []
    Z = torch.zeros(L, n, D, dtype=DTYPE)
    for i, x in enumerate(xs):
        mu = x.mean(0)
        var = x.var(0, unbiased=False)
        # StandardScaler's rule: constant only within the two-pass variance's rounding bound
        eps = float(np.finfo(np.float64).eps)
        sd = torch.where(var <= n * eps * var + (n * mu * eps) ** 2, torch.ones_like(var), var.sqrt())
        Z[i, :, : x.shape[1]] = (x - mu) / sd
        mus.append(mu.numpy()); sds.append(sd.numpy())
    if groups is not None and len(groups) != n:
        raise LayerscopeError(f"groups has {len(groups)} entries for {n} training rows; give one per row")
    n_groups = n if groups is None else len(np.unique(groups))
    F = max(2, int(folds)) if n_groups >= 2 * folds else 1
    if F == 1:
        fold = np.zeros(n, dtype=np.int64)
    else:
        fold = _folds(y, F, seed) if groups is None else _group_folds(y, np.asarray(groups), F, seed)
    G = len(Cs)
    if engine == "sklearn":
        return _fit_sklearn([Z[i, :, : x.shape[1]].numpy() for i, x in enumerate(xs)], yi, seen, mus, sds,
                            n_classes, Cs, fold, F, tol, max_iter, t0)
    solver = _Batch(Z, yi)
    iters, gmax, ok = 0, 0.0, True
    cv = np.full((L, G), np.nan)
    if F > 1 and G > 1:
        # every (layer, C, fold) problem side by side; problem p = g·F + f
        train = torch.from_numpy(np.stack([fold != f for f in range(F)] * G)).to(DTYPE)   # (G·F, n)
        Wt, st = solver.solve(train, [c for c in Cs for _ in range(F)], tol, max_iter)
        iters += st["iterations"]; gmax = max(gmax, st["max_gradient"]); ok &= st["converged"]
        hits = (solver.predict(Wt) == solver.y).numpy()                              # (L, G·F, n)
        acc = np.stack([hits[:, p][:, fold == p % F].mean(-1) for p in range(G * F)], 1)
        cv = acc.reshape(L, G, F).sum(-1)            # LogisticRegressionCV's rule: summed, first max
        best = cv.argmax(1)
        cv = cv / F
        init = Wt.view(L, G, F, D + 1, -1)[torch.arange(L), torch.from_numpy(best)].mean(1, keepdim=True)
    else:
        best = np.full(L, G - 1, dtype=np.int64)
        init = None
    # the refit on all training rows at each layer's C, warm-started from its folds' mean
    Wt, st = solver.solve(torch.ones(1, n, dtype=DTYPE), [[Cs[int(g)]] for g in best], tol, max_iter, init)
    iters += st["iterations"]; gmax = max(gmax, st["max_gradient"]); ok &= st["converged"]
    W, b = solver.weights(Wt)
    fits, chosen = [], []
    for i, x in enumerate(xs):
        g = int(best[i])
        d = x.shape[1]
        w = W[i, 0, :d].numpy()
        bb = b[i, 0].numpy()
        if solver.K == 1:
            w, bb = np.c_[np.zeros((d, 1)), w], np.r_[0.0, bb]
        coef = np.zeros((d, n_classes))
        intercept = np.full(n_classes, -np.inf)
        coef[:, seen] = w / sds[i][:, None]
        intercept[seen] = bb - mus[i] @ coef[:, seen]
        fits.append(RidgeFit(coef, intercept, 1.0 / Cs[g]))
        chosen.append(float(Cs[g]))
    info = {"C": chosen, "cv_accuracy": np.nanmax(cv, 1).tolist() if F > 1 and G > 1 else [math.nan] * L,
            "cv_by_C": cv.tolist(), "iterations": iters, "converged": bool(ok), "max_gradient": gmax,
            "tol": tol, "folds": F, "Cs": list(Cs), "engine": "batched", "seconds": time.perf_counter() - t0}
    return fits, info


def _fit_sklearn(Zs, yi, seen, mus, sds, n_classes, Cs, fold, F, tol, max_iter, t0):
    """engine="sklearn": ``LogisticRegressionCV`` (lbfgs; multinomial past 2 classes) per layer on
    the standardised rows ``Zs``, with the same folds (PredefinedSplit), grid and accuracy rule,
    refitted on all rows at the chosen C (scikit-learn warm-starts along the C path and the refit
    from the folds' mean). The largest gradient entry of each refit objective is computed here."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
    from sklearn.model_selection import PredefinedSplit

    from layerscope.analyses.probe import RidgeFit

    n, G = len(yi), len(Cs)
    onehot = np.eye(len(seen))[yi]
    fits, chosen, cv_by, iters, gmax, ok = [], [], [], 0, 0.0, True
    for i, Z in enumerate(Zs):
        Z = np.ascontiguousarray(Z)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", ConvergenceWarning)       # judged below, from n_iter_
            if F > 1 and G > 1:
                lr = LogisticRegressionCV(Cs=list(Cs), cv=PredefinedSplit(fold), scoring="accuracy",
                                          tol=tol, max_iter=max_iter).fit(Z, yi)
                cv = next(iter(lr.scores_.values())).mean(0)
                C = float(np.atleast_1d(lr.C_)[0])
            else:
                C = float(Cs[-1])
                lr = LogisticRegression(C=C, tol=tol, max_iter=max_iter).fit(Z, yi)
                cv = np.full(G, np.nan)
        it = int(np.max(lr.n_iter_))
        iters = max(iters, it); ok &= it < max_iter
        w, b = lr.coef_.T, lr.intercept_
        if w.shape[1] == 1:
            w, b = np.c_[np.zeros((len(w), 1)), w], np.r_[0.0, b]
        z = Z @ w + b
        p = np.exp(z - z.max(1, keepdims=True)); p /= p.sum(1, keepdims=True)
        grad = np.r_[Z.T @ (p - onehot) / n + w / (C * n), (p - onehot).mean(0)[None]]
        if len(seen) == 2:            # the binary objective's gradient in its one weight vector
            grad = grad[:, 1:]
        gmax = max(gmax, float(np.abs(grad).max()))
        d = len(sds[i])
        coef = np.zeros((d, n_classes))
        intercept = np.full(n_classes, -np.inf)
        coef[:, seen] = w[:d] / sds[i][:, None]
        intercept[seen] = b - mus[i] @ coef[:, seen]
        fits.append(RidgeFit(coef, intercept, 1.0 / C))
        chosen.append(C); cv_by.append(np.asarray(cv, dtype=float).tolist())
    cv_arr = np.array(cv_by)
    info = {"C": chosen, "cv_accuracy": np.nanmax(cv_arr, 1).tolist() if F > 1 and G > 1 else [math.nan] * len(Zs),
            "cv_by_C": cv_by, "iterations": iters, "converged": bool(ok), "max_gradient": gmax,
            "tol": tol, "folds": F, "Cs": list(Cs), "engine": "sklearn", "seconds": time.perf_counter() - t0}
    return fits, info


class _Batch:
    """Many L2 logistic problems on one (L, n, D) stack of standardised rows: problem (l, p) fits
    layer l's rows where ``mask[p]`` is 1 with penalty 1/C[l][p] (C given per p, or per (l, p)).

    Everything runs in rotated coordinates: the rows times the eigenvectors V of each layer's Gram
    matrix, with a column of ones for the intercept, and the classes in the eigenbasis Q of their
    covariance. Both rotations are orthogonal, so the penalty and the gradient's Euclidean norm
    are unchanged; a problem's variables are (D + 1, K) with weights ``x ⊙ r`` (the preconditioner)."""

    def __init__(self, Z: torch.Tensor, yi: np.ndarray):
        L, n, D = Z.shape
        self.L, self.n, self.D = L, n, D
        self.y = torch.from_numpy(yi)
        k = int(yi.max()) + 1
        self.K = 1 if k == 2 else k
        self.target = (self.y.to(DTYPE)[:, None] if self.K == 1
                       else torch.nn.functional.one_hot(self.y, k).to(DTYPE))        # (n, K)
        s, self.V = torch.linalg.eigh(Z.transpose(1, 2) @ Z)                         # (L, D), (L, D, D)
        self.s = s.clamp_min(0.0) / n
        self.X = torch.cat([Z @ self.V, torch.ones(L, n, 1, dtype=DTYPE)], -1)       # (L, n, D + 1)
        pi = torch.from_numpy(np.bincount(yi, minlength=k) / n).to(DTYPE)
        if self.K == 1:
            self.a, self.Q = (pi[1] * pi[0]).reshape(1), None
        else:
            a, self.Q = torch.linalg.eigh(torch.diag(pi) - pi[:, None] * pi[None, :])
            self.a = a.clamp_min(0.0)

    def weights(self, Wt):
        """(L, P, D+1, K) rotated weights -> W (L, P, D, K) on the standardised features and b."""
        W = self.V[:, None] @ Wt[..., : self.D, :]
        b = Wt[..., self.D, :]
        if self.Q is not None:
            W, b = W @ self.Q.T, b @ self.Q.T
        return W, b

    def _logits(self, Wt):
        L, n, D1 = self.X.shape
        P, K = Wt.shape[1], Wt.shape[-1]
        z = torch.bmm(self.X, Wt.permute(0, 2, 1, 3).reshape(L, D1, P * K)).view(L, n, P, K)
        z = z.permute(0, 2, 1, 3)                                                    # (L, P, n, K)
        return z @ self.Q.T if self.Q is not None else z

    def predict(self, Wt):
        z = self._logits(Wt)
        return (z[..., 0] > 0).long() if self.K == 1 else z.argmax(-1)

    def value_grad(self, Wt, mask, n_p, C):
        """Objective (L, P) and its gradient in the rotated weights, for the problems given."""
        L, n, D1 = self.X.shape
        P, K = Wt.shape[1], self.K
        z = self._logits(Wt)
        if K == 1:
            ce = torch.nn.functional.softplus(z[..., 0]) - self.target[:, 0] * z[..., 0]
            r = torch.sigmoid(z) - self.target
        else:
            lse = torch.logsumexp(z, -1, keepdim=True)
            ce = (lse - z).mul_(self.target).sum(-1)
            r = (torch.exp(z - lse) - self.target) @ self.Q
        w8 = mask / n_p[:, None]                                                     # (P, n)
        pen = (1.0 / (C * n_p))[..., None, None]                                     # (L, P, 1, 1)
        Wd = Wt[..., : self.D, :]
        f = (ce * w8).sum(-1) + 0.5 * pen[..., 0, 0] * (Wd ** 2).sum((-1, -2))
        r = r * w8[None, :, :, None]
        g = torch.bmm(self.X.transpose(1, 2), r.permute(0, 2, 1, 3).reshape(L, n, P * K))
        g = g.view(L, D1, P, K).permute(0, 2, 1, 3).contiguous()
        g[..., : self.D, :] += pen * Wd
        return f, g

    def solve(self, mask, C, tol, max_iter, init=None):
        """Minimise every (layer, problem) objective; returns the rotated weights (L, P, D+1, K)
        and stats."""
        L, D, K = self.L, self.D, self.K
        P = mask.shape[0]
        n_p = mask.sum(1)
        C = torch.as_tensor(C, dtype=DTYPE)
        C = C.expand(L, P).clone() if C.dim() == 1 else C.reshape(L, P)
        r = torch.empty(L, P, D + 1, K, dtype=DTYPE)
        r[..., :D, :] = (self.a * self.s[:, None, :, None]
                         + (1.0 / (C * n_p))[..., None, None]).rsqrt()
        r[..., D, :] = torch.where(self.a > 1e-12, self.a.clamp_min(1e-12).rsqrt(), torch.zeros_like(self.a))

        def evaluate(x, idx):
            ri = r[:, idx]
            f, g = self.value_grad(x * ri, mask[idx], n_p[idx], C[:, idx])
            return f, g * ri, g.square().sum((-1, -2)).sqrt()

        every = torch.arange(P)
        x = (torch.where(r > 0, init / r.clamp_min(1e-300), torch.zeros_like(r)) if init is not None
             else torch.zeros(L, P, D + 1, K, dtype=DTYPE))
        f, g, gnorm = evaluate(x, every)
        done = gnorm <= tol
        S, Y, rho = [], [], []
        it = 0
        while not bool(done.all()) and it < max_iter:
            it += 1
            idx = torch.nonzero(~done.all(0)).flatten()     # problems with an unfinished layer
            act = ~done[:, idx]
            gi = g[:, idx]
            d = -self._two_loop(gi, [s[:, idx] for s in S], [y_[:, idx] for y_ in Y],
                                [p[:, idx] for p in rho])
            gd = (gi * d).sum((-1, -2))
            bad = gd >= 0                                  # not a descent direction: steepest descent
            d = torch.where(bad[..., None, None], -gi, d)
            gd = torch.where(bad, -(gi * gi).sum((-1, -2)), gd)
            d = d * act[..., None, None]
            xi, fi = x[:, idx], f[:, idx]
            t = torch.ones_like(fi)
            took = ~act
            x_new, f_new, g_new, n_new = xi.clone(), fi.clone(), gi.clone(), gnorm[:, idx].clone()
            for _ in range(60):
                xt = xi + t[..., None, None] * d
                ft, gt, nt = evaluate(xt, idx)
                ok = ~took & (ft <= fi + 1e-4 * t * gd)
                x_new[ok], f_new[ok], g_new[ok], n_new[ok] = xt[ok], ft[ok], gt[ok], nt[ok]
                took = took | ok
                if bool(took.all()):
                    break
                t = torch.where(took, t, t * 0.5)
            stuck = ~took                                   # no decrease at any step: the float floor
            s_, y_ = torch.zeros_like(x), torch.zeros_like(x)
            s_[:, idx], y_[:, idx] = x_new - xi, g_new - gi
            sy = (s_ * y_).sum((-1, -2))
            S.append(s_); Y.append(y_)
            rho.append(torch.where(sy > 1e-300, 1.0 / sy.clamp_min(1e-300), torch.zeros_like(sy)))
            if len(S) > HISTORY:
                S.pop(0); Y.pop(0); rho.pop(0)
            small = (fi - f_new) <= FTOL * torch.maximum(torch.maximum(fi.abs(), f_new.abs()),
                                                         torch.ones_like(fi))
            x[:, idx], f[:, idx], g[:, idx], gnorm[:, idx] = x_new, f_new, g_new, n_new
            done[:, idx] |= (n_new <= tol) | (act & (small | stuck))
        return x * r, {"iterations": it, "converged": bool((gnorm <= tol).all()),
                       "max_gradient": float(gnorm.max())}

    @staticmethod
    def _two_loop(g, S, Y, rho):
        """The L-BFGS direction H·g of every problem (the last two dims), from its own pairs."""
        dot = lambda u, v: (u * v).sum((-1, -2))  # noqa: E731
        q = g.clone()
        alphas = []
        for s, y, p in zip(reversed(S), reversed(Y), reversed(rho)):
            a = p * dot(s, q)
            q -= a[..., None, None] * y
            alphas.append(a)
        if S:
            sy, yy = dot(S[-1], Y[-1]), dot(Y[-1], Y[-1])
            gamma = torch.where((sy > 0) & (yy > 0), sy / yy.clamp_min(1e-300), torch.ones_like(sy))
            q *= gamma[..., None, None]
        for s, y, p, a in zip(S, Y, rho, reversed(alphas)):
            q += (a - p * dot(y, q))[..., None, None] * s
        return q


def kept_bytes(n_rows: int, widths, itemsize: int = 4) -> int:
    """Memory of kept training rows plus the solve's float64 standardised copy (for the budget)."""
    widths = list(widths)
    return int(n_rows * (sum(widths) * itemsize + len(widths) * max(widths, default=0) * 8))


def describe(info: dict) -> str:
    cs = info.get("C", [])
    lo, hi = (min(cs), max(cs)) if cs else (math.nan, math.nan)
    state = ("converged" if info.get("converged") else
             f"NOT converged: largest gradient {info.get('max_gradient', math.nan):.1e}")
    grid = ', '.join(f'{c:g}' for c in info.get('Cs', []))
    if info.get("engine") == "sklearn":
        return (f"L2 logistic regression on standardised features by scikit-learn's LogisticRegressionCV "
                f"per layer (lbfgs, multinomial past 2 classes, warm-started along the C path; up to "
                f"{info.get('iterations')} iterations per fit, tolerance {info.get('tol', SKLEARN_TOL):g} "
                f"on the largest gradient entry, {state if info.get('converged') else state.replace('gradient', 'gradient entry')}; "
                f"largest final gradient entry {info.get('max_gradient', math.nan):.1e}), "
                f"C from {{{grid}}} by {info.get('folds')}-fold CV accuracy (chosen {lo:g}-{hi:g}); "
                f"exact solve on the kept training rows")
    return (f"L2 logistic regression on standardised features (scikit-learn's objective), all layers "
            f"in one batched float64 L-BFGS ({info.get('iterations')} iterations, gradient tolerance "
            f"{info.get('tol', TOL):g}, {state}), C from {{{', '.join(f'{c:g}' for c in info.get('Cs', []))}}} "
            f"by {info.get('folds')}-fold CV accuracy as LogisticRegressionCV picks it (chosen "
            f"{lo:g}-{hi:g}); exact solve on the kept training rows")
