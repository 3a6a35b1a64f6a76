"""ISTA / FISTA: one ``lax.while_loop`` driver (momentum, restart, certified stopping, support
polish) and its fixed-length ``lax.scan`` trace mode."""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxsae.kernels.lasso import batch_objective, gap_from_residual, relative_gap
from jaxsae.kernels.prox import prox_l1
from jaxsae.kernels.solvers.common import (
    COMPACT_MIN,
    GRAM_BUDGET,
    Form,
    Restart,
    Solution,
    SolverTrace,
    high_dtype,
)

# the polish handles at most B / POLISH_FRACTION samples per check
POLISH_FRACTION = 4
# support size of the cheaper polish system tried first
SMALL_SUPPORT = 24


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


class Carry(NamedTuple):
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
    reg: jax.Array,
    C: jax.Array,
    WR: jax.Array,
    W: jax.Array,
    G: jax.Array | None,
    *,
    nonneg: bool,
    max_support: int,
) -> jax.Array:
    """One Newton step on each row's support: the exact lasso solution if the support and the
    signs are right. ``C (M, F)`` codes, ``WR = W r (M, F)`` at ``C``, ``W (F, D)``, ``G = W Wᵀ``
    or None (the support's Gram block is then formed from its atoms, ``O(M k² D)``).
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
    if G is None:
        W_s = W[idx]  # (M, k, D)
        H = jnp.einsum("mid,mjd->mij", W_s, W_s)
    else:
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
            reg_hi,
            Cs.astype(W_hi.dtype),
            Rs @ W_hi.T,
            W_hi,
            G_hi,
            nonneg=nonneg,
            max_support=max_support,
        ).astype(C.dtype)
        Cp_hi = Cp.astype(W_hi.dtype)
        Rp = Xr - Cp_hi @ W_hi
        gap_p, obj_p = gap_from_residual(Cp_hi, Rp, Rp @ W_hi.T, reg_hi, nonneg)
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
    gap, obj = gap_from_residual(C, R, WR, ops.reg, nonneg)
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


def _init_state(ops: _Ops, C0: jax.Array, gram: bool, carry: Carry | None = None) -> _State:
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
def solve_core(
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
) -> tuple[Solution, Carry]:
    """Iterate until every sample is certified, ``max_steps``, or (at a check) at most
    ``min_running`` samples are still running. ``carry``: momentum and support from a previous
    block, or None."""
    F, D = W.shape
    gram = _use_gram(form, F, D)
    ops = _make_ops(X, W, reg, gram)
    hi = None
    if polish:  # the polish runs in float64 when x64 is enabled
        hi_dtype = high_dtype(X.dtype)
        W_hi = W.astype(hi_dtype)
        small = F * F * W_hi.dtype.itemsize <= GRAM_BUDGET
        hi = (W_hi, W_hi @ W_hi.T if small else None, reg.astype(hi_dtype))
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
    return sol, Carry(aux=state.aux, t=state.t, support=state.support, done=state.done)


@functools.partial(jax.jit, static_argnames=("num_steps", "accel", "restart", "nonneg", "form"))
def trace_core(X, W, reg, C0, step_size, *, num_steps, accel, restart, nonneg, form):
    F, D = W.shape
    gram = _use_gram(form, F, D)
    ops = _make_ops(X, W, reg, gram)
    step = functools.partial(
        _step, ops=ops, eta=step_size, accel=accel, restart=restart, nonneg=nonneg, gram=gram
    )

    def body(state, _):
        state = step(state)
        return state, batch_objective(X, W, state.codes, reg, nonneg)

    state0 = _init_state(ops, C0, gram)
    state, objs = jax.lax.scan(body, state0, None, length=num_steps)
    objs = jnp.concatenate([batch_objective(X, W, C0, reg, nonneg)[None, :], objs], axis=0)
    return SolverTrace(codes=state.codes, objective=objs)
