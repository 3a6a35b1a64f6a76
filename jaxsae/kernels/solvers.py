"""Batched lasso solvers: homotopy, ISTA and FISTA (restart, support polish), trace mode, gradients.

Every sample ``b`` of ``X (B, D)`` gets its own lasso problem on the shared dictionary
``W (F, D)`` (row ``i`` = atom ``i``, the layout of an SAE's ``W_dec``):

    c_b* = argmin_c ½‖x_b − c W‖² + Σ_i λ_i |c_i|        (``nonneg``: over c ≥ 0)

solved for the whole block at once by proximal gradient with step ``η = 1/L``:

    C_{k+1} = prox_{ηλ}(Y_k − η (Y_k W − X) Wᵀ),    Y_{k+1} = C_{k+1} + β_k (C_{k+1} − C_k)

ISTA has ``β = 0``; FISTA has Beck–Teboulle momentum ``β_k = (t_k − 1)/t_{k+1}``, ``t_{k+1} =
(1 + √(1 + 4t_k²))/2``, with ``t`` per sample, and optionally O'Donoghue–Candès adaptive restart
(``t ← 1`` for a sample whose step goes uphill). One driver serves both (``_solve_core``).

The default (``solve_lasso``: ``fista`` with ``polish``, from zero, outside ``jit``) first
follows each sample's lasso path (homotopy / LARS-lasso, Efron et al. 2004; the method of SPAMS
and ``lasso_lars``) from ``c = 0`` down to ``λ``: the solution is piecewise linear in the
penalty, so a sample whose support ends with ``k`` atoms needs about ``k`` kinks, each one
matmul pair over ``F`` (the correlations) where FISTA needs tens to hundreds of iterations.
Samples the path certifies (duality gap ``≤ tol``) are final; the others (active set out of
slots, singular Gram, too many kinks) continue by FISTA from the path's codes
(``_solve_from_path``).

Implementation notes:
  * Homotopy (``_path_step``): per sample, the active set lives in ``K`` slots with the inverse
    of its Gram matrix ``G_AA⁻¹ (B, K, K)`` and the direction ``d = G_AA⁻¹ (λ s)_A``, both
    updated by rank-one formulas when an atom joins (Schur complement) or leaves; each kink
    costs ``(d W) Wᵀ`` for the correlations' direction and ``O(F + K²)`` per sample besides.
    Blocks shrink as samples finish and ``K`` doubles (from 32, up to ``min(128, D, F)``) for
    the samples whose support outgrows it (``_homotopy``). The codes of a finished sample get
    one Newton step on their support (undoing the drift of the incremental updates) and are
    certified by the duality gap in float64 when x64 is enabled (``_path_finish``).
  * The iteration is written on the products ``C W`` (*direct* form, ``4·B·D·F`` flops per
    iteration) or ``C G`` with ``G = W Wᵀ`` (*Gram* form, ``2·B·F²``); ``form="auto"`` takes the
    cheaper (Gram iff ``F < 2D``). The product of ``Y`` is a linear combination of those of
    ``C_{k+1}`` and ``C_k``, so each iteration does one (Gram) or two (direct) matmuls and the
    objective for function restart comes for free.
  * Stopping is certified: every ``check_every`` iterations the duality gap
    (``jaxsae.kernels.lasso``) of every sample is computed; a sample whose relative gap
    ``gap / P(c) ≤ tol`` is *done* and frozen; the loop ends when all are done or after
    ``max_steps`` iterations.
  * ``polish``: at each check, each sample's current support ``S`` (at most ``max_support``
    atoms) gets one Newton step on the smooth problem restricted to ``S`` with the current signs,
    ``c_S ← c_S + (W_S W_Sᵀ)⁻¹ (W_S r − λ_S sign(c_S))`` — the exact lasso solution once the
    support and signs are right. It is tried on samples whose support did not change since the
    previous check (at most ``max(B/4, COMPACT_MIN)`` of them per check, gathered into a smaller
    block), in float64 when x64 is enabled (a support of 40 atoms in dimension 64 is
    ill-conditioned enough to miss a 1e-6 gap in float32). The polished codes are kept only for
    samples whose duality gap certifies them (``≤ tol``), so the shortcut can never return a
    worse answer.
  * Compaction: a batch of at least ``COMPACT_MIN`` samples (outside ``jit``) is solved in
    blocks of shrinking static size. When at most half of a block is still running, the
    running samples, with their momentum, are gathered into the next power-of-two block and
    continue there (``_solve_compacted``): certification waits for the slowest samples, but
    the work then follows the number of samples still running, not ``B``.
  * Gradients: ``lax.while_loop`` is not reverse-differentiable, so ``Solution.codes`` carries a
    ``custom_vjp`` by implicit differentiation of the optimality conditions on the support
    (``_implicit_codes``); ``fista_trace``/``ista_trace`` (a fixed-length ``lax.scan``) give
    unrolled gradients. For dictionary learning, ``stop_gradient`` on optimal codes is exact
    (envelope theorem): ``∇_W min_C P = ∇_W P(C*)``.

References:
  B. Efron, T. Hastie, I. Johnstone, R. Tibshirani. Least angle regression. Annals of
  Statistics, 2004. M. Osborne, B. Presnell, B. Turlach. A new approach to variable selection
  in least squares problems. IMA J. Numerical Analysis, 2000.
  A. Beck, M. Teboulle. A fast iterative shrinkage-thresholding algorithm for linear inverse
  problems. SIAM J. Imaging Sciences, 2009.
  B. O'Donoghue, E. Candès. Adaptive restart for accelerated gradient schemes. Found. Comput.
  Math., 2015.
"""

from __future__ import annotations

import functools
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jaxsae.kernels._checks import check_array, is_concrete
from jaxsae.kernels.lasso import (
    _gap_from_residual,
    _objective,
    check_problem,
    lipschitz_constant,
    relative_gap,
)
from jaxsae.kernels.prox import prox_l1

__all__ = [
    "Solution",
    "SolverTrace",
    "fista",
    "ista",
    "solve_lasso",
    "fista_trace",
    "ista_trace",
]

# the polish handles at most B / POLISH_FRACTION samples per check
POLISH_FRACTION = 4
# support size of the cheaper polish system tried first
SMALL_SUPPORT = 24
# batches of at least this many samples are compacted as samples finish
COMPACT_MIN = 256

Restart = Literal["gradient", "function"] | None
Form = Literal["auto", "gram", "direct"]


class Solution(NamedTuple):
    """Result of a batched lasso solve.

    Attributes:
      codes: ``(B, F)`` codes (``(F,)`` for a single input). Differentiable w.r.t. ``X``, ``W``
        and ``reg`` by implicit differentiation (reverse mode).
      num_steps: scalar int, iterations run (the same for the whole batch); with the homotopy,
        the kinks of the longest path plus the FISTA iterations that followed, if any.
      converged: scalar bool, every sample's relative duality gap ``gap / objective ≤ tol``.
      objective: ``(B,)`` per-sample ``½‖x − c W‖² + Σ_i λ_i |c_i|``.
      gap: ``(B,)`` per-sample *absolute* duality gap, a certified bound on
        ``objective − optimum``; the relative gap is ``gap / objective``.
    """

    codes: jax.Array
    num_steps: jax.Array
    converged: jax.Array
    objective: jax.Array
    gap: jax.Array


class SolverTrace(NamedTuple):
    """Result of a fixed-length solve (``fista_trace`` / ``ista_trace``).

    Attributes:
      codes: ``(B, F)`` codes after the last iteration.
      objective: ``(num_steps + 1, B)`` objective of the iterate ``C_k`` for ``k = 0..num_steps``
        (row 0 is the initial point).
    """

    codes: jax.Array
    objective: jax.Array


class _State(NamedTuple):
    codes: jax.Array  # (B, F) C_k
    codes_lin: jax.Array  # (B, D) C_k W (direct) or (B, F) C_k G (Gram)
    aux: jax.Array  # (B, F) Y_k, the point the gradient is taken at
    aux_lin: jax.Array  # Y_k W or Y_k G
    t: jax.Array  # (B,) momentum scalar
    value: jax.Array  # (B,) objective at C_k (for function restart)
    done: jax.Array  # (B,) certified and frozen
    gap: jax.Array  # (B,) absolute gap at the last check
    objective: jax.Array  # (B,) objective at the last check
    support: jax.Array  # (B, F) bool, support at the last check
    num_steps: jax.Array  # scalar int
    num_checks: jax.Array  # scalar int


class _Carry(NamedTuple):
    """What a block hands to the next (smaller) one besides the codes."""

    aux: jax.Array  # (B, F) Y_k
    t: jax.Array  # (B,) momentum scalar
    support: jax.Array  # (B, F) bool, support at the last check
    done: jax.Array  # (B,) certified


class _Ops(NamedTuple):
    """The problem data in the chosen form."""

    X: jax.Array  # (B, D)
    W: jax.Array  # (F, D)
    G: jax.Array  # (F, F) Gram matrix, or (0, 0) when unused
    XW: jax.Array  # (B, F) X Wᵀ in Gram form, or (B, 0)
    xx: jax.Array  # (B,) ‖x‖²
    reg: jax.Array  # (F,)


def _lin(ops: _Ops, C: jax.Array, gram: bool) -> jax.Array:
    return C @ ops.G if gram else C @ ops.W


def _neg_grad(ops: _Ops, lin: jax.Array, gram: bool) -> jax.Array:
    """``W r = −∇`` at the point whose product is ``lin``."""
    return ops.XW - lin if gram else (ops.X - lin) @ ops.W.T


def _value(ops: _Ops, C: jax.Array, lin: jax.Array, gram: bool) -> jax.Array:
    """Objective of ``C`` from its product (for restart decisions; no validation)."""
    pen = jnp.abs(C) @ ops.reg
    if gram:
        return 0.5 * ops.xx - jnp.sum(C * ops.XW, -1) + 0.5 * jnp.sum(C * lin, -1) + pen
    R = ops.X - lin
    return 0.5 * jnp.sum(R * R, -1) + pen


def _step(
    state: _State,
    ops: _Ops,
    eta: jax.Array,
    *,
    accel: bool,
    restart: Restart,
    nonneg: bool,
    gram: bool,
) -> _State:
    """One proximal-gradient iteration with the configured momentum rule."""
    C, Y = state.codes, state.aux
    thr = (eta * ops.reg)[None, :]
    Cn = prox_l1(Y + eta * _neg_grad(ops, state.aux_lin, gram), thr, nonneg=nonneg)
    Cn_lin = _lin(ops, Cn, gram)
    value = _value(ops, Cn, Cn_lin, gram) if restart == "function" else state.value
    if accel:
        t = state.t
        tn = 0.5 * (1 + jnp.sqrt(1 + 4 * t * t))
        beta = (t - 1) / tn
        if restart == "gradient":
            up = jnp.sum((Y - Cn) * (Cn - C), axis=-1) > 0
        elif restart == "function":
            up = value > state.value
        else:
            up = jnp.zeros_like(state.done)
        tn = jnp.where(up, 1, tn)
        beta = jnp.where(up, 0, beta)[:, None]
        Yn = Cn + beta * (Cn - C)
        Yn_lin = Cn_lin + beta * (Cn_lin - state.codes_lin)
    else:
        tn, Yn, Yn_lin = state.t, Cn, Cn_lin
    keep = state.done[:, None]
    return state._replace(
        codes=jnp.where(keep, C, Cn),
        codes_lin=jnp.where(keep, state.codes_lin, Cn_lin),
        aux=jnp.where(keep, Y, Yn),
        aux_lin=jnp.where(keep, state.aux_lin, Yn_lin),
        t=jnp.where(state.done, state.t, tn),
        value=jnp.where(state.done, state.value, value),
        num_steps=state.num_steps + 1,
    )


def _residual(ops: _Ops, C: jax.Array, lin: jax.Array, gram: bool) -> tuple[jax.Array, jax.Array]:
    """``(R, W r)`` for codes ``C`` with product ``lin``: one matmul in either form."""
    if gram:
        return ops.X - C @ ops.W, ops.XW - lin
    R = ops.X - lin
    return R, R @ ops.W.T


def _polish(
    reg: jax.Array, C: jax.Array, WR: jax.Array, G: jax.Array, *, nonneg: bool, max_support: int
) -> jax.Array:
    """One Newton step on each row's support: the exact lasso solution if the support and the
    signs are right. ``C (M, F)`` codes, ``WR = W r (M, F)`` at ``C``, ``G = W Wᵀ``.
    Returns ``(M, F)`` candidate codes (non-finite where the support system is singular)."""
    M, F = C.shape
    # the first k non-zeros of each row, by a prefix sum (cheaper than top_k on a CPU)
    nz = C != 0
    pos = jnp.where(nz, jnp.cumsum(nz, axis=1) - 1, max_support)
    rows = jnp.broadcast_to(jnp.arange(M)[:, None], (M, F))
    cols = jnp.broadcast_to(jnp.arange(F, dtype=jnp.int32)[None, :], (M, F))
    idx = jnp.zeros((M, max_support), jnp.int32).at[rows, pos].set(cols, mode="drop")
    on = jnp.zeros((M, max_support), bool).at[rows, pos].set(True, mode="drop")
    c_s = jnp.take_along_axis(C, idx, axis=1)
    g_s = jnp.take_along_axis(WR, idx, axis=1)
    sign = jnp.ones_like(c_s) if nonneg else jnp.sign(c_s)
    rhs = jnp.where(on, g_s - reg[idx] * sign, 0)
    H = G[idx[:, :, None], idx[:, None, :]]  # (M, k, k)
    both = on[:, :, None] & on[:, None, :]
    eye = jnp.eye(max_support, dtype=bool)[None, :, :]
    H = jnp.where(both, H, jnp.where(eye, jnp.ones_like(H), jnp.zeros_like(H)))
    L = jax.lax.linalg.cholesky(H)
    y = jax.lax.linalg.triangular_solve(L, rhs[:, :, None], left_side=True, lower=True)
    delta = jax.lax.linalg.triangular_solve(L, y, left_side=True, lower=True, transpose_a=True)
    new = jnp.where(on, c_s + delta[:, :, 0], 0)
    return C.at[jnp.arange(M)[:, None], jnp.where(on, idx, F)].set(new, mode="drop")


def _polish_group(
    state,
    ops,
    tol,
    hi,
    *,
    C,
    gap,
    obj,
    ok,
    group,
    n_cand,
    running,
    max_support,
    n_rows,
    nonneg,
    gram,
):
    """Polish up to ``n_rows`` samples of ``group``; keep those the duality gap certifies."""
    W_hi, G_hi, reg_hi = hi
    score_sel, rows = jax.lax.top_k(group.astype(jnp.int32), n_rows)
    # worth a solve: the group fills half the block, or the candidates are half of the samples
    # still running, or every fifth check
    n = jnp.sum(group)
    worth = (2 * n >= n_rows) | (2 * n_cand >= running) | (state.num_checks % 5 == 4)
    worth = worth & (n > 0)

    def attempt(_):
        # in the highest available precision (float64 when x64 is on): the support system of a
        # large support is ill-conditioned enough to miss a 1e-6 gap in float32
        Cs = C[rows]
        Xr = ops.X[rows].astype(W_hi.dtype)
        Rs = Xr - Cs.astype(W_hi.dtype) @ W_hi
        Cp = _polish(
            reg_hi, Cs.astype(W_hi.dtype), Rs @ W_hi.T, G_hi, nonneg=nonneg, max_support=max_support
        ).astype(C.dtype)
        Cp_hi = Cp.astype(W_hi.dtype)
        Rp = Xr - Cp_hi @ W_hi
        gap_p, obj_p = _gap_from_residual(Cp_hi, Rp, Rp @ W_hi.T, reg_hi, nonneg)
        gap_p, obj_p = gap_p.astype(C.dtype), obj_p.astype(C.dtype)
        take = (relative_gap(gap_p, obj_p) <= tol) & (score_sel > 0)
        take = take & jnp.all(jnp.isfinite(Cp), axis=-1)
        return Cp, gap_p, obj_p, take

    def skip(_):
        zeros = jnp.zeros((n_rows,), C.dtype)
        return jnp.zeros((n_rows, C.shape[1]), C.dtype), zeros, zeros, jnp.zeros((n_rows,), bool)

    Cp, gap_p, obj_p, take = jax.lax.cond(worth, attempt, skip, None)
    Cs = C[rows]
    t2 = take[:, None]
    lin_p = _lin(ops, Cp, gram)
    C = C.at[rows].set(jnp.where(t2, Cp, Cs))
    lin = state.codes_lin.at[rows].set(jnp.where(t2, lin_p, state.codes_lin[rows]))
    taken = jnp.zeros_like(ok).at[rows].set(take)
    gap = gap.at[rows].set(jnp.where(take, gap_p, gap[rows]))
    obj = obj.at[rows].set(jnp.where(take, obj_p, obj[rows]))
    t_all = taken[:, None]
    state = state._replace(
        codes=C,
        codes_lin=lin,
        aux=jnp.where(t_all, C, state.aux),
        aux_lin=jnp.where(t_all, lin, state.aux_lin),
        value=jnp.where(taken, obj, state.value),
    )
    return state, gap, obj, ok | taken


def _check(
    state: _State,
    ops: _Ops,
    tol: jax.Array,
    hi: tuple,
    *,
    nonneg: bool,
    gram: bool,
    polish: bool,
    max_support: int,
    polish_rows: int,
) -> _State:
    """Duality gap of every sample, optional polish, and the done flags.

    The polish is tried on samples not yet done whose support fits in ``max_support`` and did
    not change since the last check: those with at most ``SMALL_SUPPORT`` atoms in a block of
    ``polish_rows``, larger ones in a block of ``polish_rows // 4``. ``hi = (W, W Wᵀ, reg)`` in
    the precision the polish runs in."""
    C = state.codes
    R, WR = _residual(ops, C, state.codes_lin, gram)
    gap, obj = _gap_from_residual(C, R, WR, ops.reg, nonneg)
    ok = relative_gap(gap, obj) <= tol
    support = C != 0
    if polish:
        nnz = jnp.sum(support, axis=-1)
        stable = jnp.all(support == state.support, axis=-1)
        # candidates: not done, support unchanged since the last check and small enough
        cand = ~ok & ~state.done & stable & (nnz > 0) & (nnz <= max_support)
        running = jnp.sum(~ok & ~state.done)
        small_k = min(SMALL_SUPPORT, max_support)
        groups = [(cand & (nnz <= small_k), small_k, polish_rows)]
        if max_support > small_k:  # the few large supports, in a smaller block
            groups.append((cand & (nnz > small_k), max_support, max(1, polish_rows // 4)))
        for group, k, n_rows in groups:
            state, gap, obj, ok = _polish_group(
                state,
                ops,
                tol,
                hi,
                C=state.codes,
                gap=gap,
                obj=obj,
                ok=ok,
                group=group,
                n_cand=jnp.sum(cand),
                running=running,
                max_support=k,
                n_rows=n_rows,
                nonneg=nonneg,
                gram=gram,
            )
    done = state.done | ok
    return state._replace(done=done, gap=gap, objective=obj, support=support)


def _use_gram(form: Form, F: int, D: int) -> bool:
    if form == "auto":
        return F < 2 * D
    return form == "gram"


def _make_ops(X, W, reg, gram: bool) -> _Ops:
    B = X.shape[0]
    if gram:
        G, XW = W @ W.T, X @ W.T
    else:
        G, XW = jnp.zeros((0, 0), W.dtype), jnp.zeros((B, 0), W.dtype)
    return _Ops(X=X, W=W, G=G, XW=XW, xx=jnp.sum(X * X, axis=-1), reg=reg)


def _init_state(ops: _Ops, C0: jax.Array, gram: bool, carry: _Carry | None = None) -> _State:
    """The state at ``C0``, or at a ``carry`` from a previous block (momentum and support)."""
    lin = _lin(ops, C0, gram)
    B = C0.shape[0]
    zeros = jnp.zeros((B,), C0.dtype)
    if carry is None:
        aux, aux_lin, t, support = C0, lin, jnp.ones((B,), C0.dtype), C0 != 0
    else:
        aux, t, support = carry.aux, carry.t, carry.support
        aux_lin = _lin(ops, aux, gram)
    return _State(
        codes=C0,
        codes_lin=lin,
        aux=aux,
        aux_lin=aux_lin,
        t=t,
        value=_value(ops, C0, lin, gram),
        done=jnp.zeros((B,), bool),
        gap=zeros,
        objective=zeros,
        support=support,
        num_steps=jnp.zeros((), jnp.int32),
        num_checks=jnp.zeros((), jnp.int32),
    )


@functools.partial(
    jax.jit,
    static_argnames=("accel", "restart", "nonneg", "form", "check_every", "polish", "max_support"),
)
def _solve_core(
    X,
    W,
    reg,
    C0,
    carry,
    step_size,
    tol,
    max_steps,
    min_running,
    *,
    accel,
    restart,
    nonneg,
    form,
    check_every,
    polish,
    max_support,
) -> tuple[Solution, _Carry]:
    """Iterate until every sample is certified, ``max_steps``, or (at a check) at most
    ``min_running`` samples are still running. ``carry``: momentum and support from a previous
    block, or None."""
    F, D = W.shape
    gram = _use_gram(form, F, D)
    ops = _make_ops(X, W, reg, gram)
    hi = None
    if polish:  # the polish runs in float64 when x64 is enabled
        hi_dtype = jnp.float64 if jax.config.read("jax_enable_x64") else X.dtype
        W_hi = W.astype(hi_dtype)
        hi = (W_hi, W_hi @ W_hi.T, reg.astype(hi_dtype))
    step = functools.partial(
        _step, ops=ops, eta=step_size, accel=accel, restart=restart, nonneg=nonneg, gram=gram
    )
    B = X.shape[0]
    check = functools.partial(
        _check,
        ops=ops,
        tol=tol,
        hi=hi,
        nonneg=nonneg,
        gram=gram,
        polish=polish,
        max_support=max_support,
        polish_rows=min(B, max(COMPACT_MIN, B // POLISH_FRACTION)),
    )

    def cond(state):
        first = state.num_checks == 0
        running = jnp.sum(~state.done)
        return first | ((state.num_steps < max_steps) & (running > min_running))

    def body(state):
        # the first pass only checks the initial point (one copy of the check in the graph)
        n = jnp.where(
            state.num_checks == 0, 0, jnp.minimum(check_every, max_steps - state.num_steps)
        )
        state = jax.lax.fori_loop(0, n, lambda _, s: step(s), state)
        return check(state)._replace(num_checks=state.num_checks + 1)

    state = jax.lax.while_loop(cond, body, _init_state(ops, C0, gram, carry))
    sol = Solution(
        codes=state.codes,
        num_steps=state.num_steps,
        converged=jnp.all(state.done),
        objective=state.objective,
        gap=state.gap,
    )
    return sol, _Carry(aux=state.aux, t=state.t, support=state.support, done=state.done)


def _bucket(n: int) -> int:
    """The static block size for ``n`` running samples: a power of two ``≥ n``."""
    return max(COMPACT_MIN // 4, 1 << max(n - 1, 0).bit_length())


def _solve_compacted(X, W, reg, C0, step_size, tol, max_steps: int, **static) -> Solution:
    """Solve in blocks of shrinking static size: when at most half of a block's samples
    are still running, gather them (with their momentum) into the next power-of-two block,
    zero-padded (a zero input is certified at once), continue there, and scatter the results
    back. Iterations are those of one solve on the whole batch; the work follows the number
    of samples still running instead of ``B``."""
    B = X.shape[0]
    codes, gap, obj = C0, jnp.zeros((B,), X.dtype), jnp.zeros((B,), X.dtype)
    rows = np.arange(B)  # the global index of each real row of the current block
    Xb, Cb, carry, steps = X, C0, None, 0
    while True:
        n = Xb.shape[0]
        min_running = n // 2 if n >= COMPACT_MIN else 0
        sol, carry = _solve_core(
            Xb,
            W,
            reg,
            Cb,
            carry,
            step_size,
            tol,
            jnp.asarray(max_steps - steps, jnp.int32),
            jnp.asarray(min_running, jnp.int32),
            **static,
        )
        steps += int(sol.num_steps)
        m = len(rows)
        codes = codes.at[rows].set(sol.codes[:m])
        gap = gap.at[rows].set(sol.gap[:m])
        obj = obj.at[rows].set(sol.objective[:m])
        left = np.flatnonzero(~np.asarray(carry.done[:m]))
        if len(left) == 0 or steps >= max_steps or min_running == 0:
            break
        size = _bucket(len(left))
        take = jnp.asarray(np.concatenate([left, np.full(size - len(left), left[0])]))
        real = (jnp.arange(size) < len(left))[:, None]
        rows = rows[left]
        Xb = jnp.where(real, Xb[take], 0)
        Cb = jnp.where(real, sol.codes[take], 0)
        carry = _Carry(
            aux=jnp.where(real, carry.aux[take], 0),
            t=carry.t[take],
            support=carry.support[take] & real,
            done=carry.done[take],
        )
    return Solution(
        codes=codes,
        num_steps=jnp.asarray(steps, jnp.int32),
        converged=jnp.asarray(len(left) == 0),
        objective=obj,
        gap=gap,
    )


# --------------------------------------------------------------------------------------------
# homotopy (LARS-lasso) warm start


class _Path(NamedTuple):
    """Homotopy state of a block of ``B`` samples; the active set lives in ``K`` slots."""

    codes: jax.Array  # (B, K) codes of the atoms in the slots
    atom: jax.Array  # (B, K) int32 atom of each slot
    occ: jax.Array  # (B, K) bool, slot occupied
    sign: jax.Array  # (B, K) sign of the slot's code on the current segment of the path
    H: jax.Array  # (B, K, K) inverse Gram of the occupied slots, zero elsewhere
    d: jax.Array  # (B, K) direction H (λ s) of the codes in the slots
    corr: jax.Array  # (B, F) correlations W r of the residual
    active: jax.Array  # (B, F) bool, atom in the active set
    tau: jax.Array  # (B,) path parameter: the penalty is τ λ, from max_i |g_i|/λ_i down to 1
    done: jax.Array  # (B,) reached τ = 1
    paused: jax.Array  # (B,) needs a slot it does not have (or a singular Gram): stopped
    last_drop: jax.Array  # (B,) int32 atom dropped at the previous kink, or -1
    steps: jax.Array  # scalar int32, kinks computed


@functools.partial(jax.jit, static_argnames=("K", "nonneg"))
def _path_init(X, W, reg, *, K: int, nonneg: bool) -> _Path:
    """The start of the path, ``c = 0`` at ``τ = max_i g_i / λ_i`` (``g = W x``)."""
    B, F = X.shape[0], W.shape[0]
    g = X @ W.T
    excess = jnp.maximum(g, 0) if nonneg else jnp.abs(g)
    tau = jnp.max(excess / reg[None, :], axis=-1)
    zk = jnp.zeros((B, K), X.dtype)
    return _Path(
        codes=zk,
        atom=jnp.zeros((B, K), jnp.int32),
        occ=jnp.zeros((B, K), bool),
        sign=zk,
        H=jnp.zeros((B, K, K), X.dtype),
        d=zk,
        corr=g,
        active=jnp.zeros((B, F), bool),
        tau=jnp.maximum(tau, 1),
        done=tau <= 1,  # c = 0 is optimal
        paused=jnp.zeros((B,), bool),
        last_drop=jnp.full((B,), -1, jnp.int32),
        steps=jnp.zeros((), jnp.int32),
    )


def _argmin(t: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(argmin, min)`` of ``t (B, n)`` over the last axis."""
    i = jnp.argmin(t, axis=-1).astype(jnp.int32)
    return i, jnp.take_along_axis(t, i[:, None], 1)[:, 0]


def _path_step(p: _Path, W, G, reg, *, nonneg: bool) -> _Path:
    """One kink of the lasso path of every running sample (Efron et al. 2004, lasso variant).

    On the active set ``A`` with signs ``s``, ``c_A(τ − δ) = c_A(τ) + δ d``, ``d = G_AA⁻¹ (λ s)_A``,
    and ``g(τ − δ) = g(τ) − δ a``, ``a = G_{·A} d``. ``δ`` is the first event: an inactive atom
    reaches ``|g_j| = (τ − δ) λ_j`` (it joins), an active code reaches zero (it leaves), or
    ``τ − δ = 1`` (the end). ``G_AA⁻¹`` and ``d`` are kept up to date by rank-one updates
    (one pass over ``G_AA⁻¹`` to update it, one to find the Schur complement of a new atom)."""
    B, K = p.occ.shape
    F = W.shape[0]
    dt = p.codes.dtype
    run = ~p.done & ~p.paused
    rows = jnp.arange(B)[:, None]
    d = p.d
    idx = jnp.where(p.occ, p.atom, F)
    d_full = jnp.zeros((B, F), dt).at[rows, idx].set(d, mode="drop")
    a = (d_full @ W) @ W.T
    # joins: the first δ ≥ 0 at which g_j − δ a_j = ±(τ − δ) λ_j
    inf = jnp.asarray(jnp.inf, dt)
    tr = p.tau[:, None] * reg[None, :]

    def first(num, den):
        pos = den > 0
        return jnp.where(pos, jnp.maximum(num, 0) / jnp.where(pos, den, 1), inf)

    t_join = first(tr - p.corr, reg[None, :] - a)
    if not nonneg:
        t_join = jnp.minimum(t_join, first(tr + p.corr, reg[None, :] + a))
    fresh = jnp.arange(F, dtype=jnp.int32)[None, :] == p.last_drop[:, None]
    t_join = jnp.where(p.active | fresh, inf, t_join)
    j, dj = _argmin(t_join)
    # the sign it joins with: that of g_j − δ a_j = ±(τ − δ) λ_j
    gj = jnp.take_along_axis(p.corr, j[:, None], 1)[:, 0]
    aj = jnp.take_along_axis(a, j[:, None], 1)[:, 0]
    up = (gj - jnp.where(jnp.isfinite(dj), dj, 0) * aj) >= 0
    # drops: an active code crossing zero
    t_drop = jnp.where(p.occ & (p.codes * d < 0), -p.codes / jnp.where(d != 0, d, 1), inf)
    i, di = _argmin(t_drop)
    d_end = p.tau - 1
    end = d_end <= jnp.minimum(dj, di)
    drop = ~end & (di < dj)
    join = ~end & ~drop
    delta = jnp.where(run, jnp.minimum(d_end, jnp.minimum(dj, di)), 0)
    codes = p.codes + delta[:, None] * d
    corr = p.corr - delta[:, None] * a
    tau = jnp.where(run & end, 1, p.tau - delta)
    # the new slot: Schur complement of the joining atom
    free = ~p.occ
    slot = jnp.argmax(free, axis=-1)
    has_slot = jnp.any(free, axis=-1)
    b = jnp.where(p.occ, G[j[:, None], p.atom], 0)
    u = jnp.einsum("bij,bj->bi", p.H, b)
    gjj = G[j, j]
    schur = gjj - jnp.sum(b * u, axis=-1)
    ok = schur > 64 * jnp.finfo(dt).eps * gjj
    add = run & join & has_slot & ok
    rem = run & drop
    e_p = jax.nn.one_hot(slot, K, dtype=dt)
    h = jnp.take_along_axis(p.H, i[:, None, None], axis=1)[:, 0, :]  # (symmetric) column i
    hii = jnp.take_along_axis(h, i[:, None], 1)[:, 0]
    v = jnp.where(add[:, None], u - e_p, jnp.where(rem[:, None], h, 0))
    coef = jnp.where(
        add, 1 / jnp.where(add, schur, 1), jnp.where(rem, -1 / jnp.where(rem, hii, 1), 0)
    )
    gone = (jnp.arange(K)[None, :] == i[:, None]) & rem[:, None]  # (B, K)
    keep = ~gone
    H = jnp.where(
        keep[:, :, None] & keep[:, None, :],
        p.H + coef[:, None, None] * v[:, :, None] * v[:, None, :],
        0,
    )
    new = (jnp.arange(K)[None, :] == slot[:, None]) & add[:, None]
    codes = jnp.where(gone | new, 0, codes)
    atom_i = jnp.take_along_axis(p.atom, i[:, None], 1)[:, 0]
    occ = (p.occ & keep) | new
    atom = jnp.where(new, j[:, None], p.atom)
    sign = jnp.where(new, jnp.where(up, 1, -1)[:, None].astype(dt), p.sign)
    # the new direction H' w' without a pass over H: H w' = d (+ nothing for a free slot,
    # − w_i h for a dropped slot i), then the rank-one term
    w_new = jnp.where(occ, reg[atom] * sign, 0)
    w_i = jnp.take_along_axis(reg[p.atom] * p.sign, i[:, None], 1)[:, 0]
    base = d - jnp.where(rem, w_i, 0)[:, None] * h
    d_new = jnp.where(keep, base + (coef * jnp.sum(v * w_new, axis=-1))[:, None] * v, 0)
    active = p.active.at[rows[:, 0], jnp.where(rem, atom_i, F)].set(False, mode="drop")
    active = active.at[rows[:, 0], jnp.where(add, j, F)].set(True, mode="drop")
    return p._replace(
        codes=codes,
        atom=atom,
        occ=occ,
        sign=sign,
        H=H,
        d=d_new,
        corr=corr,
        active=active,
        tau=tau,
        done=p.done | (run & end),
        paused=p.paused | (run & join & ~(has_slot & ok)),
        last_drop=jnp.where(rem, atom_i, jnp.where(add, -1, p.last_drop)),
        steps=p.steps + 1,
    )


@functools.partial(jax.jit, static_argnames="nonneg")
def _path_block(X, W, G, reg, p: _Path, min_running, max_steps, *, nonneg: bool) -> _Path:
    """Follow the path until at most ``min_running`` samples are running (or ``max_steps``
    kinks in all)."""

    def cond(q):
        running = jnp.sum(~q.done & ~q.paused)
        return (q.steps < max_steps) & (running > min_running)

    step = functools.partial(_path_step, W=W, G=G, reg=reg, nonneg=nonneg)
    return jax.lax.while_loop(cond, step, p)


@functools.partial(jax.jit, static_argnames=("nonneg", "refine"))
def _path_finish(X, W, reg, p: _Path, take, *, nonneg: bool, refine: int):
    """The codes of the rows ``take`` of a block; those of the samples at ``τ = 1`` refined by
    Newton steps on their active set (``c_A += G_AA⁻¹ (W_A r − λ_A s_A)``, undoing the drift of
    the incremental updates), and the duality gaps in the highest available precision (float64
    when x64 is enabled).

    Returns ``(codes (n, F), gap (n,), objective (n,))`` in ``X.dtype``, ``n = len(take)``."""
    X = X[take]
    cs0, atom, occ, sign, H, done = (x[take] for x in (p.codes, p.atom, p.occ, p.sign, p.H, p.done))
    B, F = X.shape[0], W.shape[0]
    rows = jnp.arange(B)[:, None]
    idx = jnp.where(occ, atom, F)
    cs = cs0
    C = jnp.zeros((B, F), X.dtype).at[rows, idx].set(cs, mode="drop")
    for _ in range(refine):  # W_A r = λ_A s_A on the active set
        g = jnp.take_along_axis((X - C @ W) @ W.T, idx % F, axis=1)
        e = jnp.where(occ, g - reg[atom] * sign, 0)
        cs = jnp.where(done[:, None], cs + jnp.einsum("bij,bj->bi", H, e), cs0)
        C = jnp.zeros((B, F), X.dtype).at[rows, idx].set(cs, mode="drop")
    hi = jnp.float64 if jax.config.read("jax_enable_x64") else X.dtype
    Ch, Wh = C.astype(hi), W.astype(hi)
    R = X.astype(hi) - Ch @ Wh
    gap, obj = _gap_from_residual(Ch, R, R @ Wh.T, reg.astype(hi), nonneg)
    return C, gap.astype(X.dtype), obj.astype(X.dtype)


def _homotopy(X, W, reg, tol, *, nonneg: bool, max_slots: int, max_kinks: int):
    """The lasso path of every sample from ``c = 0`` down to ``λ`` (outside ``jit``), in blocks
    that shrink as samples finish (as ``_solve_compacted``) and whose slot count ``K`` doubles,
    from ``min(32, max_slots)``, for the samples whose active set outgrows it.

    Returns ``(codes (B, F), gap (B,), objective (B,), certified (B,) bool, kinks)`` as NumPy
    arrays and an int: the codes of a sample not certified (relative gap > ``tol``) are a warm
    start for the iterations."""
    B, F = X.shape[0], W.shape[0]
    K = min(32, max_slots)
    G = _gram(W)
    p = _path_init(X, W, reg, K=K, nonneg=nonneg)
    codes = np.zeros((B, F), X.dtype)
    gap = np.zeros((B,), X.dtype)
    obj = np.zeros((B,), X.dtype)
    certified = np.zeros((B,), bool)
    rows = np.arange(B)
    Xb, kinks = X, 0
    while True:
        n = Xb.shape[0]
        min_running = n // 2 if n >= COMPACT_MIN else 0
        p = _path_block(
            Xb,
            W,
            G,
            reg,
            p,
            jnp.asarray(min_running, jnp.int32),
            jnp.asarray(max_kinks, jnp.int32),
            nonneg=nonneg,
        )
        m = len(rows)
        kinks, done, paused = int(p.steps), np.asarray(p.done)[:m], np.asarray(p.paused)[:m]
        grow = paused & ~done if max_slots > K else np.zeros_like(done)
        left = np.flatnonzero(~done & (~paused | grow))
        last = len(left) == 0 or kinks >= max_kinks
        # the codes of the samples that leave: done, out of slots, or after the last block
        stay = np.zeros((m,), bool)
        stay[left] = not last
        out = np.flatnonzero(~stay)
        if len(out):
            take = np.concatenate([out, np.full(_bucket(len(out)) - len(out), out[0])])
            Cb, gb, ob = _path_finish(Xb, W, reg, p, jnp.asarray(take), nonneg=nonneg, refine=1)
            n_out, r = len(out), rows[out]
            codes[r], gap[r], obj[r] = (
                np.asarray(Cb)[:n_out],
                np.asarray(gb)[:n_out],
                np.asarray(ob)[:n_out],
            )
            rel = np.where(obj[r] > 0, gap[r] / np.where(obj[r] > 0, obj[r], 1), gap[r] > 0)
            certified[r] = done[out] & (rel <= tol)
        if last:
            break
        if grow.any():
            K = min(2 * K, max_slots)
        size = _bucket(len(left))
        take = np.concatenate([left, np.full(size - len(left), left[0])])
        rows = rows[left]
        Xb, p = _path_take(Xb, p, jnp.asarray(take), len(left), K=K)
    return codes, gap, obj, certified, kinks


@functools.partial(jax.jit, static_argnames=("n", "K"))
def _path_take(X, p: _Path, take, n: int, *, K: int) -> tuple[jax.Array, _Path]:
    """The rows ``take`` of a block (the first ``n`` real, the rest frozen padding), with ``K``
    slots (zero padding); paused samples resume."""
    p = jax.tree_util.tree_map(lambda x: x[take] if x.ndim else x, p)
    k = p.occ.shape[1]
    pad2 = ((0, 0), (0, K - k))
    pad = jnp.arange(take.shape[0]) >= n
    p = p._replace(
        codes=jnp.pad(p.codes, pad2),
        d=jnp.pad(p.d, pad2),
        atom=jnp.pad(p.atom, pad2),
        occ=jnp.pad(p.occ, pad2),
        sign=jnp.pad(p.sign, pad2),
        H=jnp.pad(p.H, ((0, 0), (0, K - k), (0, K - k))),
        done=p.done | pad,
        paused=jnp.zeros_like(p.paused),
    )
    return X[take], p


@jax.jit
def _gram(W):
    return W @ W.T


def _solve_from_path(X, W, reg, step_size, tol, max_steps: int, **static) -> Solution:
    """The homotopy for every sample, then the iterations (``_solve_compacted`` or one block,
    zero-padded to a power of two) for the samples it did not certify, from its codes.
    ``step_size``: ``None`` for ``1 / L``, computed only if iterations are needed."""
    F, D = W.shape
    max_slots = min(128, F, D)
    codes, gap, obj, certified, kinks = _homotopy(
        X,
        W,
        reg,
        float(tol),
        nonneg=static["nonneg"],
        max_slots=max_slots,
        max_kinks=4 * max_slots + 64,
    )
    left = np.flatnonzero(~certified)
    steps = kinks
    if len(left):
        n = len(left)
        size = n if n >= COMPACT_MIN else _bucket(n)
        take = np.concatenate([left, np.full(size - n, left[0])])
        real = (np.arange(size) < n)[:, None]
        eta = _default_step(W, X.dtype) if step_size is None else step_size
        sub = (
            jnp.asarray(np.where(real, np.asarray(X)[take], 0)),
            W,
            reg,
            jnp.asarray(np.where(real, codes[take], 0)),
            eta,
            tol,
        )
        if size >= COMPACT_MIN:
            rest = _solve_compacted(*sub, max_steps=max_steps, **static)
        else:
            rest, _ = _solve_core(
                *sub[:4],
                None,
                *sub[4:],
                jnp.asarray(max_steps, jnp.int32),
                jnp.asarray(0, jnp.int32),
                **static,
            )
        codes[left] = np.asarray(rest.codes)[:n]
        gap[left] = np.asarray(rest.gap)[:n]
        obj[left] = np.asarray(rest.objective)[:n]
        steps += int(rest.num_steps)
    gap, obj = jnp.asarray(gap), jnp.asarray(obj)
    return Solution(
        codes=jnp.asarray(codes),
        num_steps=jnp.asarray(steps, jnp.int32),
        converged=jnp.all(relative_gap(gap, obj) <= tol),
        objective=obj,
        gap=gap,
    )


# --------------------------------------------------------------------------------------------
# implicit differentiation of the codes


@jax.custom_vjp
def _implicit_codes(X, W, reg, C):
    return C


def _implicit_fwd(X, W, reg, C):
    return C, (X, W, reg, C)


def _masked_cg(W, mask, b, max_steps: int):
    """Solve ``(P W Wᵀ P + I − P) u = b`` for every row (``P = diag(mask)``) by batched CG."""

    def matvec(u):
        return mask * (((mask * u) @ W) @ W.T) + (1 - mask) * u

    eps = jnp.finfo(b.dtype).eps
    bb = jnp.sum(b * b, -1)

    def cond(s):
        k, _, _, _, rs = s
        return (k < max_steps) & jnp.any(rs > (eps * eps) * bb)

    def body(s):
        k, u, r, p, rs = s
        Ap = matvec(p)
        pAp = jnp.sum(p * Ap, -1)
        alpha = jnp.where(pAp > 0, rs / jnp.where(pAp > 0, pAp, 1), 0)[:, None]
        u = u + alpha * p
        r = r - alpha * Ap
        rs_new = jnp.sum(r * r, -1)
        beta = jnp.where(rs > 0, rs_new / jnp.where(rs > 0, rs, 1), 0)[:, None]
        return k + 1, u, r, r + beta * p, rs_new

    init = (0, jnp.zeros_like(b), b, b, bb)
    return jax.lax.while_loop(cond, body, init)[1]


def _implicit_bwd(res, C_bar):
    """Cotangents from the optimality conditions on the support ``S`` of each sample:
    ``W_S (x − c_S W_S) = λ_S sign(c_S)`` ⇒ with ``u_S = (W_S W_Sᵀ)⁻¹ c̄_S``:
    ``x̄ = u W``, ``W̄ = Σ_b u rᵀ − c (u W)ᵀ``, ``λ̄ = −Σ_b u ⊙ sign(c)``."""
    X, W, reg, C = res
    mask = (C != 0).astype(C.dtype)
    F = W.shape[0]
    U = _masked_cg(W, mask, mask * C_bar, max_steps=2 * F + 10)
    R = X - C @ W
    UW = U @ W
    X_bar = UW
    W_bar = U.T @ R - C.T @ UW
    reg_bar = -jnp.sum(U * jnp.sign(C), axis=0)
    return X_bar, W_bar, reg_bar, jnp.zeros_like(C)


_implicit_codes.defvjp(_implicit_fwd, _implicit_bwd)


# --------------------------------------------------------------------------------------------
# public API


def _default_step(W: jax.Array, dtype) -> jax.Array:
    """``1 / L``, the default step size."""
    return jnp.asarray(1 / lipschitz_constant(jax.lax.stop_gradient(W)), dtype)


def _prepare(X, W, reg, init, step_size, lazy: bool = False):
    """Validate; return 2-D arrays, the squeeze flag and the step size (``None`` for the
    default with ``lazy``: ``_default_step`` computes it when needed)."""
    X, W, reg, init = check_problem(X, W, reg, init)
    squeeze = X.ndim == 1
    if squeeze:
        X = X[None, :]
        init = None if init is None else init[None, :]
    if init is None:
        init = jnp.zeros((X.shape[0], W.shape[0]), X.dtype)
    if step_size is None:
        if lazy:
            return X, W, reg, init, None, squeeze
        step_size = 1 / lipschitz_constant(jax.lax.stop_gradient(W))
    else:
        step_size = check_array("step_size", step_size, ndim=0)
        if is_concrete(step_size) and not float(step_size) > 0:
            raise ValueError(f"step_size: expected a value > 0, found {float(step_size)}")
    return X, W, reg, init, jnp.asarray(step_size, X.dtype), squeeze


def _check_options(max_steps, tol, check_every, restart, form, max_support, F):
    if isinstance(max_steps, int) and max_steps < 0:
        raise ValueError(f"max_steps: expected an int >= 0, found {max_steps}")
    if is_concrete(tol) and not float(tol) >= 0:
        raise ValueError(f"tol: expected a relative gap >= 0, found {tol}")
    if check_every < 1:
        raise ValueError(f"check_every: expected an int >= 1, found {check_every}")
    if restart not in (None, "gradient", "function"):
        raise ValueError(f"restart: expected None, 'gradient' or 'function', found {restart!r}")
    if form not in ("auto", "gram", "direct"):
        raise ValueError(f"form: expected 'auto', 'gram' or 'direct', found {form!r}")
    if max_support is not None and max_support < 1:
        raise ValueError(f"max_support: expected an int >= 1, found {max_support}")
    return F if max_support is None else min(max_support, F)


def default_tol(dtype) -> float:
    """Default relative duality gap: ``1e-6`` in float64, ``1e-4`` in lower precision."""
    return 1e-6 if jnp.dtype(dtype) == jnp.float64 else 1e-4


def _solve(
    X,
    W,
    reg,
    *,
    accel,
    nonneg,
    max_steps,
    tol,
    init,
    step_size,
    restart,
    check_every,
    form,
    polish,
    max_support,
    homotopy=False,
) -> Solution:
    init_given = init is not None
    X, W, reg, init, eta, squeeze = _prepare(X, W, reg, init, step_size, lazy=True)
    F, D = W.shape
    tol = default_tol(X.dtype) if tol is None else tol
    k = _check_options(
        max_steps,
        tol,
        check_every,
        restart,
        form,
        min(64, D, F) if max_support is None else max_support,
        F,
    )
    sg = jax.lax.stop_gradient
    static = dict(
        accel=accel,
        restart=restart if accel else None,
        nonneg=nonneg,
        form=form,
        check_every=check_every,
        polish=polish,
        max_support=k,
    )
    concrete = all(is_concrete(a) for a in (X, W, reg, init, tol, max_steps))
    concrete = concrete and (eta is None or is_concrete(eta))
    if homotopy is None:  # auto: the default solver, outside jit, from zero
        homotopy = polish and init_given is False
    homotopy = homotopy and concrete and int(max_steps) > 0 and bool(jnp.all(reg > 0))
    tol_a = jnp.asarray(tol, X.dtype)
    if homotopy:
        sol = _solve_from_path(
            sg(X), sg(W), sg(reg), eta, tol_a, max_steps=int(max_steps), **static
        )
    else:
        eta = _default_step(W, X.dtype) if eta is None else eta
        args = (sg(X), sg(W), sg(reg), sg(init), sg(eta), tol_a)
        if concrete and X.shape[0] >= COMPACT_MIN:
            sol = _solve_compacted(*args, max_steps=int(max_steps), **static)
        else:
            sol, _ = _solve_core(
                *args[:4],
                None,
                *args[4:],
                jnp.asarray(max_steps, jnp.int32),
                jnp.asarray(0, jnp.int32),
                **static,
            )
    codes = _implicit_codes(X, W, reg, sol.codes)
    sol = sol._replace(codes=codes)
    if squeeze:
        sol = sol._replace(codes=sol.codes[0], objective=sol.objective[0], gap=sol.gap[0])
    return sol


def fista(
    X: ArrayLike,
    W: ArrayLike,
    reg: ArrayLike,
    *,
    nonneg: bool = False,
    max_steps: int = 1000,
    tol: float | None = None,
    init: ArrayLike | None = None,
    step_size: ArrayLike | None = None,
    restart: Restart = "gradient",
    polish: bool = True,
    max_support: int | None = None,
    check_every: int = 10,
    form: Form = "auto",
    homotopy: bool | None = None,
) -> Solution:
    """Solve the batched lasso ``min_C ½‖X − C W‖² + Σ_i λ_i |C_{·i}|`` by FISTA.

    Args:
      X: ``(B, D)`` inputs, or ``(D,)`` for one.
      W: ``(F, D)`` dictionary, row ``i`` = atom ``i`` (the layout of an SAE's ``W_dec``).
      reg: ``λ ≥ 0``, a scalar or ``(F,)`` per atom.
      nonneg: constrain the codes to ``C ≥ 0``.
      max_steps: the most iterations.
      tol: stop when every sample's *relative* duality gap ``gap / P(c)`` is ``≤ tol`` (a
        certificate: ``P(c) − P* ≤ tol · P(c)``). Default ``1e-6`` in float64 and ``1e-4`` in
        float32 (the float32 gap cannot certify much below ~1e-6). With ``reg = 0`` the gap is
        not defined (see ``duality_gap``): the solver runs ``max_steps``.
      init: ``(B, F)`` warm start (default zeros).
      step_size: ``η``; default ``1 / lipschitz_constant(W)``.
      restart: adaptive restart of the momentum, per sample: ``"gradient"`` (restart when
        ``⟨Y_k − C_{k+1}, C_{k+1} − C_k⟩ > 0``), ``"function"`` (when the objective goes up) or
        ``None`` (plain FISTA).
      polish: at each check, try an exact solve on each sample's support, kept only where the
        duality gap certifies it (see the module docstring).
      max_support: the largest support polished (default ``min(64, D, F)``); a sample with a
        larger support is left to the iterations.
      check_every: iterations between two duality-gap checks (``num_steps`` is a multiple of it,
        or ``max_steps``).
      form: ``"direct"`` (``C W``, ``Wᵀ`` products), ``"gram"`` (``G = W Wᵀ``) or ``"auto"``
        (Gram iff ``F < 2D``).
      homotopy: follow each sample's lasso path from zero first and iterate only for the
        samples it does not certify (see the module docstring). ``None`` (default): on when
        ``polish`` is, ``init`` is not given and the call is not traced (``jit``/``vmap``), and
        every ``λ_i > 0``. ``True`` forces it with ``init`` too (the path starts from zero);
        traced calls, ``max_steps=0`` and a zero ``λ_i`` always use the iterations alone.

    Returns:
      ``Solution(codes (B, F), num_steps, converged, objective (B,), gap (B,))``; see
      ``Solution``. ``codes`` is differentiable (reverse mode, implicit differentiation).

    Raises:
      ValueError: bad ranks or shapes, ``λ < 0``, non-finite inputs, empty batch, bad options.

    Examples:
      >>> sol = fista(X, params.W_dec, 0.1, nonneg=True)
      >>> sol.codes.shape, bool(sol.converged)
    """
    return _solve(
        X,
        W,
        reg,
        accel=True,
        nonneg=nonneg,
        max_steps=max_steps,
        tol=tol,
        init=init,
        step_size=step_size,
        restart=restart,
        check_every=check_every,
        form=form,
        polish=polish,
        max_support=max_support,
        homotopy=homotopy,
    )


def ista(
    X: ArrayLike,
    W: ArrayLike,
    reg: ArrayLike,
    *,
    nonneg: bool = False,
    max_steps: int = 1000,
    tol: float | None = None,
    init: ArrayLike | None = None,
    step_size: ArrayLike | None = None,
    polish: bool = False,
    max_support: int | None = None,
    check_every: int = 10,
    form: Form = "auto",
) -> Solution:
    """Solve the batched lasso by ISTA (proximal gradient without momentum).

    Same problem, arguments and result as ``fista`` (no ``restart``; ``polish`` off by default,
    so that it is the textbook algorithm).
    """
    return _solve(
        X,
        W,
        reg,
        accel=False,
        nonneg=nonneg,
        max_steps=max_steps,
        tol=tol,
        init=init,
        step_size=step_size,
        restart=None,
        check_every=check_every,
        form=form,
        polish=polish,
        max_support=max_support,
    )


def solve_lasso(
    X: ArrayLike, W: ArrayLike, reg: ArrayLike, *, nonneg: bool = False, **options
) -> Solution:
    """The recommended solver: ``fista`` with its defaults (gradient restart, support polish).

    Same arguments and result as ``fista``. For a certified relative duality gap of 1e-6 with
    float32 inputs, enable x64 (the polish and its certificate then run in float64) and pass
    ``tol=1e-6``; the float32 default ``tol=1e-4`` needs neither.
    """
    return fista(X, W, reg, nonneg=nonneg, **options)


# --------------------------------------------------------------------------------------------
# trace mode


@functools.partial(jax.jit, static_argnames=("num_steps", "accel", "restart", "nonneg", "form"))
def _trace_core(X, W, reg, C0, step_size, *, num_steps, accel, restart, nonneg, form):
    F, D = W.shape
    gram = _use_gram(form, F, D)
    ops = _make_ops(X, W, reg, gram)
    step = functools.partial(
        _step, ops=ops, eta=step_size, accel=accel, restart=restart, nonneg=nonneg, gram=gram
    )

    def body(state, _):
        state = step(state)
        return state, _objective(X, W, state.codes, reg, nonneg)

    state0 = _init_state(ops, C0, gram)
    state, objs = jax.lax.scan(body, state0, None, length=num_steps)
    objs = jnp.concatenate([_objective(X, W, C0, reg, nonneg)[None, :], objs], axis=0)
    return SolverTrace(codes=state.codes, objective=objs)


def _trace(X, W, reg, *, num_steps, accel, nonneg, init, step_size, restart, form):
    if not isinstance(num_steps, int) or num_steps < 0:
        raise ValueError(f"num_steps: expected an int >= 0, found {num_steps!r}")
    _check_options(0, 0.0, 1, restart, form, None, 1)
    X, W, reg, init, eta, squeeze = _prepare(X, W, reg, init, step_size)
    out = _trace_core(
        X,
        W,
        reg,
        init,
        eta,
        num_steps=num_steps,
        accel=accel,
        restart=restart if accel else None,
        nonneg=nonneg,
        form=form,
    )
    if squeeze:
        out = SolverTrace(codes=out.codes[0], objective=out.objective[:, 0])
    return out


def fista_trace(
    X: ArrayLike,
    W: ArrayLike,
    reg: ArrayLike,
    *,
    num_steps: int,
    nonneg: bool = False,
    init: ArrayLike | None = None,
    step_size: ArrayLike | None = None,
    restart: Restart = None,
    form: Form = "auto",
) -> SolverTrace:
    """FISTA for exactly ``num_steps`` iterations (``lax.scan``), recording the objective.

    For convergence curves and for gradients by unrolling (reverse mode through the scan).
    Arguments as ``fista``; plain FISTA (``restart=None``) by default.

    Returns:
      ``SolverTrace(codes (B, F), objective (num_steps + 1, B))``.
    """
    return _trace(
        X,
        W,
        reg,
        num_steps=num_steps,
        accel=True,
        nonneg=nonneg,
        init=init,
        step_size=step_size,
        restart=restart,
        form=form,
    )


def ista_trace(
    X: ArrayLike,
    W: ArrayLike,
    reg: ArrayLike,
    *,
    num_steps: int,
    nonneg: bool = False,
    init: ArrayLike | None = None,
    step_size: ArrayLike | None = None,
    form: Form = "auto",
) -> SolverTrace:
    """ISTA for exactly ``num_steps`` iterations; see ``fista_trace``."""
    return _trace(
        X,
        W,
        reg,
        num_steps=num_steps,
        accel=False,
        nonneg=nonneg,
        init=init,
        step_size=step_size,
        restart=None,
        form=form,
    )
