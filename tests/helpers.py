"""Reference implementations for the tests: independent of jaxsae, written for clarity.

* ``soft_threshold_loop``: the prox, one scalar at a time.
* ``lasso_objective_np``, ``ista_np``, ``fista_np``: NumPy proximal gradient, one sample at a time.
* ``sklearn_lasso``: scikit-learn's coordinate descent (``sparse_encode``, float64).
* ``make_lasso_problem``: a seeded sparse-coding problem (unit-norm Gaussian atoms, sparse codes
  plus noise), the one the benchmarks use.
"""

from __future__ import annotations

import numpy as np

from jaxsae.bench import make_lasso_problem  # noqa: F401  (the benchmarks' problems)


def soft_threshold_loop(v, t, nonneg: bool = False) -> np.ndarray:
    """``sign(v)·max(|v| − t, 0)`` (or ``max(v − t, 0)``) by a Python loop over scalars."""
    v = np.asarray(v, dtype=np.float64)
    t = np.broadcast_to(np.asarray(t, dtype=np.float64), v.shape)
    out = np.zeros_like(v)
    for i in np.ndindex(v.shape):
        x, th = float(v[i]), float(t[i])
        if nonneg:
            out[i] = x - th if x > th else 0.0
        elif x > th:
            out[i] = x - th
        elif x < -th:
            out[i] = x + th
    return out


def lasso_objective_np(X, W, C, reg) -> np.ndarray:
    """``(B,)`` ``½‖x − c W‖² + Σ_i λ_i |c_i|`` in float64."""
    X, W, C = (np.asarray(a, np.float64) for a in (X, W, C))
    reg = np.broadcast_to(np.asarray(reg, np.float64), (W.shape[0],))
    R = X - C @ W
    return 0.5 * np.sum(R * R, axis=1) + np.abs(C) @ reg


def _prox_grad_np(X, W, reg, steps, step_size, nonneg, accel, init=None):
    X, W = np.asarray(X, np.float64), np.asarray(W, np.float64)
    reg = np.broadcast_to(np.asarray(reg, np.float64), (W.shape[0],))
    C = np.zeros((X.shape[0], W.shape[0])) if init is None else np.array(init, np.float64)
    Y, t = C.copy(), 1.0
    objs = [lasso_objective_np(X, W, C, reg)]
    for _ in range(steps):
        grad = (Y @ W - X) @ W.T
        Cn = soft_threshold_loop(Y - step_size * grad, step_size * reg[None, :], nonneg)
        if accel:
            tn = (1 + np.sqrt(1 + 4 * t * t)) / 2
            Y = Cn + (t - 1) / tn * (Cn - C)
            t = tn
        else:
            Y = Cn
        C = Cn
        objs.append(lasso_objective_np(X, W, C, reg))
    return C, np.stack(objs)


def ista_np(X, W, reg, steps, step_size, nonneg=False, init=None):
    """ISTA in NumPy: ``(codes (B, F), objectives (steps + 1, B))``."""
    return _prox_grad_np(X, W, reg, steps, step_size, nonneg, accel=False, init=init)


def fista_np(X, W, reg, steps, step_size, nonneg=False, init=None):
    """FISTA (Beck–Teboulle, no restart) in NumPy: ``(codes, objectives)``."""
    return _prox_grad_np(X, W, reg, steps, step_size, nonneg, accel=True, init=init)


def sklearn_lasso(X, W, reg, nonneg: bool = False) -> np.ndarray:
    """``argmin_c ½‖x − c W‖² + λ‖c‖₁`` by scikit-learn coordinate descent, float64.

    ``sparse_encode(alpha=λ)`` solves exactly this problem (its ``alpha / n_features`` cancels
    the ``1 / n_samples`` of ``Lasso``)."""
    from sklearn.decomposition import sparse_encode

    return sparse_encode(
        np.asarray(X, np.float64),
        np.asarray(W, np.float64),
        algorithm="lasso_cd",
        alpha=float(reg),
        positive=nonneg,
        max_iter=10000,
    )
