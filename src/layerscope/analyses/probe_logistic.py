"""L2 logistic-regression probes for every layer at once, the penalty chosen by cross-validation.

The objective is scikit-learn's ``LogisticRegression`` on standardised features (binary: one
weight vector; more classes: multinomial), ``Σᵢ CE(xᵢ) + ‖W‖² / (2C)``, intercept unpenalised.
Every (layer, C, fold) problem — and the refit on all training rows for every C — is solved in
one batched L-BFGS run in torch: the problems are independent, so the sum of their objectives
has a block-separable gradient, and all layers share each matrix product. C is then chosen per
layer by the mean held-out-fold accuracy (as ``LogisticRegressionCV`` scores), and that C's refit
is the probe.

Example:
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> X = torch.randn(300, 6, generator=g); y = (X[:, 0] + 0.3 * X[:, 1] > 0).long().numpy()
    >>> fits, info = fit_logistic_cv([X.numpy(), X[:, 2:].numpy()], y, 2)
    >>> float(((X.numpy() @ fits[0].coef + fits[0].intercept).argmax(1) == y).mean()) > 0.9
    True
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from layerscope.errors import LayerscopeError

CS = (0.001, 0.01, 0.1, 1.0)


def _folds(y: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Stratified fold number per row (seeded)."""
    rng = np.random.default_rng(seed)
    out = np.empty(len(y), dtype=np.int64)
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        rng.shuffle(idx)
        out[idx] = np.arange(len(idx)) % folds
    return out


def fit_logistic_cv(rows, y, n_classes: int, *, Cs=CS, folds: int = 3, seed: int = 0,
                    max_iter: int = 150, cv_iter: int = 50, dtype=torch.float32):
    """Per layer (``rows``: one (n, d_l) array per layer, same items) the L2 logistic probe with
    C from ``Cs`` chosen by ``folds``-fold CV; returns (fits, info) with fits as
    :class:`~layerscope.analyses.probe.RidgeFit` in raw feature space (``alpha`` = 1/C; −inf
    intercepts for classes absent from ``y``) and info: chosen C, CV accuracy, iterations, seconds."""
    from layerscope.analyses.probe import RidgeFit

    t0 = time.perf_counter()
    y = np.asarray(y, dtype=np.int64)
    seen = np.unique(y)
    if len(seen) < 2:
        raise LayerscopeError("the training items hold a single class; a logistic probe needs two")
    k = len(seen)
    yi = torch.from_numpy(np.searchsorted(seen, y))
    n = len(y)
    xs = [torch.as_tensor(np.asarray(r)).to(dtype) for r in rows]
    if any(len(x) != n for x in xs):
        raise LayerscopeError("every layer needs one row per training label")
    L, D = len(xs), max(x.shape[1] for x in xs)
    mus, sds = [], []
    Z = torch.zeros(L, n, D, dtype=dtype)
    for i, x in enumerate(xs):
        mu = x.mean(0)
        sd = x.std(0, unbiased=False)
        sd = torch.where(sd > 1e-12 * max(1.0, float(mu.abs().max())), sd, torch.ones_like(sd))
        Z[i, :, : x.shape[1]] = (x - mu) / sd
        mus.append(mu.double().numpy()); sds.append(sd.double().numpy())
    F = max(2, int(folds)) if n >= 2 * folds else 1
    fold = torch.from_numpy(_folds(y, F, seed)) if F > 1 else torch.zeros(n, dtype=torch.long)
    G = len(Cs)
    K = 1 if k == 2 else k
    iters = 0
    if F > 1 and G > 1:
        # phase 1: every (layer, C, fold) problem, solved loosely: only the ranking of C matters
        masks = torch.stack([(fold != f) for f in range(F)]).to(dtype).repeat(G, 1)       # (G·F, n)
        pen = torch.tensor([1.0 / (2.0 * c) for c in Cs for _ in range(F)], dtype=dtype).expand(L, G * F)
        W, b, it = _solve(Z, yi, masks, pen, K, cv_iter, dtype)
        iters += it
        with torch.no_grad():
            pred = _predict(Z, W, b, K)                                   # (L, G·F, n)
            held = torch.stack([(fold == f) for f in range(F)]).to(dtype).repeat(G, 1)
            acc = ((pred == yi).to(dtype) * held).sum(-1) / held.sum(-1)
            cv = acc.view(L, G, F).mean(-1)                               # (L, G)
            best = cv.argmax(1)                                           # first max: the smallest C
            init_w = W.view(L, G, F, D, K)[torch.arange(L), best].mean(1, keepdim=True)
            init_b = b.view(L, G, F, K)[torch.arange(L), best].mean(1, keepdim=True)
    else:
        best = torch.full((L,), G - 1 if G else 0, dtype=torch.long)
        cv = torch.full((L, G), float("nan"))
        init_w = init_b = None
    # phase 2: the refit on all training rows at each layer's chosen C, warm-started
    pen = torch.tensor([[1.0 / (2.0 * Cs[int(g)])] for g in best], dtype=dtype)     # (L, 1)
    W, b, it = _solve(Z, yi, torch.ones(1, n, dtype=dtype), pen, K, max_iter, dtype, init_w, init_b)
    iters += it
    fits, chosen = [], []
    for i, x in enumerate(xs):
        g = int(best[i])
        d = x.shape[1]
        w = W[i, 0, :d].detach().double().numpy()
        bb = b[i, 0].detach().double().numpy()
        if K == 1:
            w, bb = np.c_[np.zeros((d, 1)), w], np.r_[0.0, bb]
        coef = np.zeros((d, n_classes))
        intercept = np.full(n_classes, -np.inf)
        coef[:, seen] = w / sds[i][:, None]
        intercept[seen] = bb - mus[i] @ coef[:, seen]
        fits.append(RidgeFit(coef, intercept, 1.0 / Cs[g]))
        chosen.append(float(Cs[g]))
    info = {"C": chosen, "cv_accuracy": cv.max(1).values.tolist(), "iterations": iters, "folds": F,
            "Cs": list(Cs), "seconds": time.perf_counter() - t0}
    return fits, info


def _logits(Z, W, b, K):
    """(L, P, n, K) logits of every problem; one GEMM per layer over all problems' columns."""
    L, n, D = Z.shape
    P = W.shape[1]
    z = torch.bmm(Z, W.permute(0, 2, 1, 3).reshape(L, D, P * K)).view(L, n, P, K)
    return z.permute(0, 2, 1, 3) + b[:, :, None, :]


def _predict(Z, W, b, K):
    z = _logits(Z, W, b, K)
    return (z[..., 0] > 0).long() if K == 1 else z.argmax(-1)


def _solve(Z, yi, masks, pen, K, max_iter, dtype, init_w=None, init_b=None):
    """Minimise Σ_p [Σᵢ mask_pᵢ CE(xᵢ; W_p) + pen_p ‖W_p‖²] over all (layer, problem) pairs at once."""
    L, n, D = Z.shape
    P = masks.shape[0]
    W = (init_w.clone() if init_w is not None else torch.zeros(L, P, D, K, dtype=dtype)).requires_grad_(True)
    b = (init_b.clone() if init_b is not None else torch.zeros(L, P, K, dtype=dtype)).requires_grad_(True)
    k = int(yi.max()) + 1
    onehot = torch.nn.functional.one_hot(yi, k).to(dtype)
    yb = yi.to(dtype)
    scale = 1.0 / float(n)                   # keeps the summed objective O(1) for the tolerances

    def closure():
        opt.zero_grad()
        z = _logits(Z, W, b, K)
        if K == 1:
            ce = torch.nn.functional.softplus(z[..., 0]) - yb * z[..., 0]
        else:
            ce = torch.logsumexp(z, -1) - (z * onehot).sum(-1)
        total = ((ce * masks).sum() + (pen * (W ** 2).sum((-1, -2))).sum()) * scale
        total.backward()
        return total

    opt = torch.optim.LBFGS([W, b], lr=1.0, max_iter=max_iter, history_size=20,
                            tolerance_grad=1e-7, tolerance_change=1e-12, line_search_fn="strong_wolfe")
    with torch.enable_grad():
        opt.step(closure)
    iters = int(opt.state[opt._params[0]].get("n_iter", 0))
    return W.detach(), b.detach(), iters


def kept_bytes(n_rows: int, widths, itemsize: int = 4) -> int:
    """Memory of kept training rows and of the batched solve's products (for the budget)."""
    return int(n_rows * sum(widths) * itemsize * 2)


def describe(info: dict) -> str:
    cs = info.get("C", [])
    lo, hi = (min(cs), max(cs)) if cs else (math.nan, math.nan)
    return (f"L2 logistic regression on standardised features, all layers in one batched L-BFGS "
            f"({info.get('iterations')} iterations), C from {{{', '.join(f'{c:g}' for c in info.get('Cs', []))}}} "
            f"by {info.get('folds')}-fold CV accuracy (chosen {lo:g}-{hi:g}); exact solve on the kept "
            f"training rows")
