"""The batched lasso problem: objective, duality gap and Lipschitz constant.

For inputs ``X (B, D)``, a dictionary ``W (F, D)`` (row ``i`` is atom ``i``, the layout of an SAE's
``W_dec``) and codes ``C (B, F)``, each sample ``b`` has its own problem

    P(c) = ½‖x − c W‖² + Σ_i λ_i |c_i|          (with ``nonneg``: and c ≥ 0)

and its dual ``D(θ) = ½‖x‖² − ½‖x − θ‖²`` over ``|W θ|_i ≤ λ_i`` (``nonneg``: ``(W θ)_i ≤ λ_i``).
Weak duality ``D(θ) ≤ P*  ≤ P(c)`` makes the duality gap ``P(c) − D(θ)`` a certified bound on the
suboptimality of ``c``. The dual point is the residual ``r = x − c W`` rescaled, ``θ = s r``, with
``s`` the best feasible scale (Fercoq, Gramfort & Salmon 2015). Writing ``g = W r``,

    P(c) − D(s r) = ½(1 − s)²‖r‖² + Σ_i (λ_i |c_i| − s c_i g_i),

a sum of non-negative terms, computed without the cancellation of ``½‖x‖² − ½‖x‖²`` that limits
the naive difference in float32.

References:
  O. Fercoq, A. Gramfort, J. Salmon. Mind the duality gap: safer rules for the lasso. ICML 2015.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxsae.kernels._checks import check_array, check_nonnegative, is_concrete

__all__ = ["lasso_objective", "duality_gap", "lipschitz_constant", "check_problem"]


# --------------------------------------------------------------------------------------------
# validation (host side, before anything is traced)


def check_problem(
    X: ArrayLike, W: ArrayLike, reg: ArrayLike, C: ArrayLike | None = None
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array | None]:
    """Validate a lasso problem and bring it to one floating dtype.

    Args:
      X: ``(B, D)`` or ``(D,)`` inputs.
      W: ``(F, D)`` dictionary.
      reg: ``λ ≥ 0``, a scalar or an ``(F,)`` per-feature array.
      C: optional codes, ``(B, F)`` or ``(F,)`` like ``X``.

    Returns:
      ``(X, W, reg, C)`` as arrays of the common floating dtype, ``reg`` of shape ``(F,)``.

    Raises:
      ValueError: wrong rank, mismatched ``D`` or ``F``, ``λ < 0``, non-finite values, empty
        arrays; the message says what was expected and what was found.
    """
    X = check_array("X", X, ndim=(1, 2))
    W = check_array("W", W, ndim=2)
    F, D = W.shape
    if X.shape[-1] != D:
        raise ValueError(
            f"X: expected last dimension D={D} (W has shape {tuple(W.shape)} = (F, D)), "
            f"found X of shape {tuple(X.shape)}"
        )
    reg = check_array("reg", reg, ndim=(0, 1))
    if reg.ndim == 1 and reg.shape != (F,):
        raise ValueError(
            f"reg: expected a scalar or shape ({F},) (one per atom), found shape {tuple(reg.shape)}"
        )
    check_nonnegative("reg", reg)
    if C is not None:
        C = check_array("C", C, ndim=X.ndim)
        if C.shape != X.shape[:-1] + (F,):
            raise ValueError(f"C: expected shape {X.shape[:-1] + (F,)}, found {tuple(C.shape)}")
    dtype = jnp.result_type(X.dtype, W.dtype)
    X, W = X.astype(dtype), W.astype(dtype)
    reg = jnp.broadcast_to(reg.astype(dtype), (F,))
    if C is not None:
        C = C.astype(dtype)
    return X, W, reg, C


# --------------------------------------------------------------------------------------------
# core maths (no validation; (B, D), (F, D), (B, F), (F,) arrays)


def _penalty(C: jax.Array, reg: jax.Array) -> jax.Array:
    """``(B,)`` ``Σ_i λ_i |c_i|``."""
    return jnp.abs(C) @ reg


def batch_objective(
    X: jax.Array, W: jax.Array, C: jax.Array, reg: jax.Array, nonneg: bool
) -> jax.Array:
    R = X - C @ W
    val = 0.5 * jnp.sum(R * R, axis=-1) + _penalty(C, reg)
    if nonneg:
        val = jnp.where(jnp.any(C < 0, axis=-1), jnp.inf, val)
    return val


def excess(g: jax.Array, nonneg: bool) -> jax.Array:
    """How far correlations ``g`` push against their constraint ``|g_i| ≤ λ_i``: ``|g|``
    (``nonneg``: ``max(g, 0)``, the constraint being ``g_i ≤ λ_i``)."""
    return jnp.maximum(g, 0) if nonneg else jnp.abs(g)


def worst_ratio(G: jax.Array, reg: jax.Array, nonneg: bool) -> jax.Array:
    """``(B,)`` ``max_i |g_i| / λ_i`` (``nonneg``: ``max(g_i, 0) / λ_i``), with ``0/0 = 0`` and
    ``g/0 = inf``, for ``g = W r`` given as ``G (B, F)``."""
    excess_ = excess(G, nonneg)
    reg_b = reg[None, :]
    safe = jnp.where(reg_b > 0, reg_b, 1)
    ratio = jnp.where(reg_b > 0, excess_ / safe, jnp.where(excess_ > 0, jnp.inf, 0))
    return jnp.max(ratio, axis=-1)


def _dual_scale(worst: jax.Array, XR: jax.Array, RR: jax.Array) -> jax.Array:
    """``(B,)`` the scale ``s`` of the dual point ``θ = s r``.

    ``s`` maximises ``D(s r) = s⟨x, r⟩ − ½ s²‖r‖²`` over ``[0, s_max]``, where ``s_max`` is the
    largest scale that keeps ``θ`` feasible: ``s_max = 1 / worst``, ``worst = max_i |g_i| / λ_i``
    (``worst_ratio``; an upper bound of it gives a feasible, more cautious ``θ``).
    """
    s_max = jnp.where(worst > 0, 1 / jnp.where(worst > 0, worst, 1), jnp.inf)
    s_free = jnp.where(RR > 0, XR / jnp.where(RR > 0, RR, 1), 0)
    return jnp.clip(s_free, 0, s_max)


def gap_from_residual(
    C: jax.Array, R: jax.Array, G: jax.Array, reg: jax.Array, nonneg: bool
) -> tuple[jax.Array, jax.Array]:
    """``(gap, objective)``, both ``(B,)``, from the codes, the residual ``R = X − C W`` and
    ``G = R Wᵀ``."""
    negative = jnp.any(C < 0, axis=-1) if nonneg else None
    return gap_from_sums(
        jnp.sum(R * R, axis=-1),
        jnp.sum(C * G, axis=-1),
        _penalty(C, reg),
        worst_ratio(G, reg, nonneg),
        negative,
    )


def gap_from_sums(
    RR: jax.Array,
    CG: jax.Array,
    pen: jax.Array,
    worst: jax.Array,
    negative: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """``gap_from_residual`` from sums, all ``(B,)``: ``‖r‖²``, ``⟨c, g⟩``, the penalty
    ``Σ_i λ_i |c_i|``, ``max_i |g_i| / λ_i`` (``worst_ratio``, or an upper bound of it: the
    gap is then an upper bound too) and, for non-negative codes, which rows have a negative code
    (``negative``, their gap and objective ``inf``): a caller that holds each row's codes on a
    few atoms forms these sums there."""
    XR = RR + CG  # ⟨x, r⟩ = ⟨c W + r, r⟩
    s = _dual_scale(worst, XR, RR)
    gap = 0.5 * (1 - s) ** 2 * RR + jnp.maximum(pen - s * CG, 0)
    obj = 0.5 * RR + pen
    if negative is not None:
        gap = jnp.where(negative, jnp.inf, gap)
        obj = jnp.where(negative, jnp.inf, obj)
    return gap, obj


def _gap(
    X: jax.Array, W: jax.Array, C: jax.Array, reg: jax.Array, nonneg: bool
) -> tuple[jax.Array, jax.Array]:
    R = X - C @ W
    return gap_from_residual(C, R, R @ W.T, reg, nonneg)


def _power_iteration(W: jax.Array, tol: jax.Array, max_steps: int) -> jax.Array:
    """Largest eigenvalue of ``Wᵀ W`` by power iteration from a fixed start."""
    F, D = W.shape
    v0 = jax.random.normal(jax.random.key(0), (D,), W.dtype)
    v0 = v0 / jnp.linalg.norm(v0)

    def cond(state):
        k, _, lam, lam_prev = state
        return (k < max_steps) & (jnp.abs(lam - lam_prev) > tol * lam)

    def body(state):
        k, v, lam, _ = state
        u = W.T @ (W @ v)
        new = jnp.linalg.norm(u)
        return k + 1, u / jnp.where(new > 0, new, 1), new, lam

    zero = jnp.zeros((), W.dtype)
    _, _, lam, _ = jax.lax.while_loop(cond, body, (0, v0, zero, zero - 1))
    return lam


_power_iteration_jit = jax.jit(_power_iteration, static_argnames="max_steps")


def high_dtype(dtype) -> jnp.dtype:
    """The precision certificates run in: float64 when x64 is enabled, else ``dtype``."""
    return jnp.dtype(jnp.float64) if jax.config.read("jax_enable_x64") else jnp.dtype(dtype)


@jax.jit
def _gram_factor(W: jax.Array) -> jax.Array:
    """``R (D, D)`` upper triangular with ``Rᵀ R = Wᵀ W`` (the product in ``W``'s precision,
    the factor in the certificates')."""
    return jnp.linalg.cholesky((W.T @ W).astype(high_dtype(W.dtype))).T


def _spectral_operand(W: jax.Array) -> jax.Array:
    """A matrix with ``W``'s spectral norm that is cheap to iterate on.

    For a concrete wide dictionary (``F ≥ 2D``) the ``D × D`` Cholesky factor ``R`` of ``Wᵀ W``
    (``Rᵀ R = Wᵀ W``, so ``‖R‖₂ = ‖W‖₂``): one ``F·D²`` product, then ``2·D²`` per power step
    instead of ``2·F·D`` (5× faster at ``F = 10,240``, ``D = 320`` and 9× at ``F = 40,960``,
    ``D = 1,280`` on a 2-core CPU). ``W`` itself otherwise, and when the factor is not finite
    (``W`` of rank ``< D``)."""
    F, D = W.shape
    if F >= 2 * D and is_concrete(W):
        R = _gram_factor(W)
        if bool(jnp.all(jnp.isfinite(R))):
            return R
    return W


# --------------------------------------------------------------------------------------------
# public API


def lasso_objective(
    X: ArrayLike, W: ArrayLike, C: ArrayLike, reg: ArrayLike, *, nonneg: bool = False
) -> jax.Array:
    """Per-sample lasso objective ``½‖x − c W‖² + Σ_i λ_i |c_i|``.

    Args:
      X: ``(B, D)`` inputs (or ``(D,)``).
      W: ``(F, D)`` dictionary, row ``i`` = atom ``i``.
      C: ``(B, F)`` codes (or ``(F,)``).
      reg: ``λ ≥ 0``, scalar or ``(F,)``.
      nonneg: add the constraint ``c ≥ 0``: samples with a negative code get ``+inf``.

    Returns:
      ``(B,)`` objective values (a scalar for rank-1 ``X``), in the common dtype. Differentiable
      in every argument.
    """
    X, W, reg, C = check_problem(X, W, reg, C)
    if X.ndim == 1:
        return batch_objective(X[None, :], W, C[None, :], reg, nonneg)[0]
    return batch_objective(X, W, C, reg, nonneg)


def duality_gap(
    X: ArrayLike,
    W: ArrayLike,
    C: ArrayLike,
    reg: ArrayLike,
    *,
    nonneg: bool = False,
    relative: bool = False,
) -> jax.Array:
    """Per-sample duality gap of the lasso at ``C``: a certified bound on ``P(c) − P*``.

    The dual point is the rescaled residual ``θ = s (x − c W)``, feasible by construction
    (``|W θ|_i ≤ λ_i``; with ``nonneg``, ``(W θ)_i ≤ λ_i``), so ``0 ≤ P(c) − P* ≤ gap``, and the
    gap is 0 exactly at the optimum (for ``λ > 0``). With ``λ = 0`` the dual is feasible only when
    ``W r = 0`` exactly, so the gap is not a useful certificate of least-squares solutions.

    Args:
      X: ``(B, D)`` inputs (or ``(D,)``).
      W: ``(F, D)`` dictionary.
      C: ``(B, F)`` codes (or ``(F,)``).
      reg: ``λ ≥ 0``, scalar or ``(F,)``.
      nonneg: the problem with ``c ≥ 0`` (``+inf`` for a sample with a negative code).
      relative: return ``gap / P(c)`` (0 where ``P(c) = 0``) instead of the absolute gap.

    Returns:
      ``(B,)`` gaps (a scalar for rank-1 ``X``), each ``≥ 0``.
    """
    X, W, reg, C = check_problem(X, W, reg, C)
    squeeze = X.ndim == 1
    if squeeze:
        X, C = X[None, :], C[None, :]
    gap, obj = _gap(X, W, C, reg, nonneg)
    if relative:
        gap = relative_gap(gap, obj)
    return gap[0] if squeeze else gap


def relative_gap(gap: jax.Array, objective: jax.Array) -> jax.Array:
    """``gap / objective`` with ``0 / 0 = 0`` (a zero objective means a zero input)."""
    pos = objective > 0
    return jnp.where(pos, gap / jnp.where(pos, objective, 1), jnp.where(gap > 0, jnp.inf, 0))


def lipschitz_constant(
    W: ArrayLike, *, tol: float = 1e-7, max_steps: int = 1000, safety: float = 1.01
) -> jax.Array:
    """Lipschitz constant ``L = ‖W‖₂²`` of the lasso gradient ``c ↦ (c W − x) Wᵀ``.

    Power iteration on ``Wᵀ W`` (for a wide dictionary, on ``Rᵀ R`` with ``R`` the ``D × D``
    Cholesky factor of ``Wᵀ W``: the same norm, cheaper steps) from a fixed (seeded) start, so
    the result is deterministic; it
    stops when the eigenvalue estimate changes by less than ``tol`` (relative) or after
    ``max_steps``. The Rayleigh estimate approaches ``‖W‖₂²`` from below, so it is multiplied by
    ``safety`` (default 1 %): a step ``1/L`` slightly too small costs ~1 % more iterations, one
    slightly too large can make FISTA diverge.

    Args:
      W: ``(F, D)`` dictionary.
      tol: relative change of the estimate at which to stop.
      max_steps: the most power iterations.
      safety: factor ``≥ 1`` applied to the estimate.

    Returns:
      A scalar of ``W``'s dtype, ``≥ ‖W‖₂²`` up to the power iteration's accuracy.
    """
    W = check_array("W", W, ndim=2)
    check_nonnegative("tol", tol)
    if safety < 1:
        raise ValueError(f"safety: expected a factor >= 1, found {safety}")
    if max_steps < 1:
        raise ValueError(f"max_steps: expected >= 1, found {max_steps}")
    op = _spectral_operand(W)
    lam = _power_iteration_jit(op, jnp.asarray(tol, op.dtype), max_steps).astype(W.dtype)
    return lam * jnp.asarray(safety, W.dtype)
