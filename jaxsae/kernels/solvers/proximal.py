"""ISTA / FISTA: one ``lax.while_loop`` driver (momentum, restart, certified stopping, support
polish) and its fixed-length ``lax.scan`` trace mode."""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxsae.kernels.lasso import batch_objective, gap_from_residual, high_dtype, relative_gap
from jaxsae.kernels.prox import prox_l1
from jaxsae.kernels.solvers.common import (
    COMPACT_MIN,
    GRAM_BUDGET,
    Form,
    IterOptions,
    Solution,
    SolverTrace,
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

    @property
    def gram(self) -> bool:
        """The Gram form (static: from ``G``'s shape)."""
        return self.G.shape[0] > 0


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


def _step(state: _State, ops: _Ops, eta: jax.Array, *, opts: IterOptions, gram: bool) -> _State:
    """One proximal-gradient iteration with the configured momentum rule."""
    accel, restart, nonneg = opts.accel, opts.restart, opts.nonneg
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


class _Gaps(NamedTuple):
    """The duality gaps of a check and which samples they certify."""

    gap: jax.Array  # (B,) absolute duality gap
    objective: jax.Array  # (B,)
    ok: jax.Array  # (B,) bool, relative gap <= tol


class _Certifier(NamedTuple):
    """What the polish runs in (the highest available precision) and the test it must pass."""

    W: jax.Array  # (F, D)
    G: jax.Array | None  # (F, F) W Wᵀ, or None above the Gram budget
    reg: jax.Array  # (F,)
    tol: jax.Array  # relative gap
    nonneg: bool


def _polish_attempt(ops: _Ops, C: jax.Array, cert: _Certifier, rows, k: int):
    """The polished codes of the samples ``rows`` (support ``≤ k``), their gaps and whether the
    gap certifies them: ``(codes (n, F), gap (n,), objective (n,), ok (n,))``."""
    # in the highest available precision (float64 when x64 is on): the support system of a
    # large support is ill-conditioned enough to miss a 1e-6 gap in float32
    hi = cert.W.dtype
    Cs = C[rows].astype(hi)
    Xr = ops.X[rows].astype(hi)
    Rs = Xr - Cs @ cert.W
    Cp = _polish(
        cert.reg, Cs, Rs @ cert.W.T, cert.W, cert.G, nonneg=cert.nonneg, max_support=k
    ).astype(C.dtype)
    Cp_hi = Cp.astype(hi)
    Rp = Xr - Cp_hi @ cert.W
    gap_p, obj_p = gap_from_residual(Cp_hi, Rp, Rp @ cert.W.T, cert.reg, cert.nonneg)
    gap_p, obj_p = gap_p.astype(C.dtype), obj_p.astype(C.dtype)
    ok = (relative_gap(gap_p, obj_p) <= cert.tol) & jnp.all(jnp.isfinite(Cp), axis=-1)
    return Cp, gap_p, obj_p, ok


def _polish_group(
    state: _State, ops: _Ops, gaps: _Gaps, cert: _Certifier, *, group, worth, k: int, n_rows: int
) -> tuple[_State, _Gaps]:
    """Polish up to ``n_rows`` samples of ``group`` (``(B,)`` bool, supports ``≤ k``) if
    ``worth``; keep those the duality gap certifies."""
    C = state.codes
    selected, rows = jax.lax.top_k(group.astype(jnp.int32), n_rows)

    def skip():
        zeros = jnp.zeros((n_rows,), C.dtype)
        return jnp.zeros((n_rows, C.shape[1]), C.dtype), zeros, zeros, jnp.zeros((n_rows,), bool)

    Cp, gap_p, obj_p, take = jax.lax.cond(
        worth & jnp.any(group), lambda: _polish_attempt(ops, C, cert, rows, k), skip
    )
    take = take & (selected > 0)
    Cs = C[rows]
    t2 = take[:, None]
    C = C.at[rows].set(jnp.where(t2, Cp, Cs))
    lin_p = _lin(ops, Cp, ops.gram)
    lin = state.codes_lin.at[rows].set(jnp.where(t2, lin_p, state.codes_lin[rows]))
    taken = jnp.zeros_like(gaps.ok).at[rows].set(take)
    gaps = _Gaps(
        gap=gaps.gap.at[rows].set(jnp.where(take, gap_p, gaps.gap[rows])),
        objective=gaps.objective.at[rows].set(jnp.where(take, obj_p, gaps.objective[rows])),
        ok=gaps.ok | taken,
    )
    t_all = taken[:, None]
    state = state._replace(
        codes=C,
        codes_lin=lin,
        aux=jnp.where(t_all, C, state.aux),
        aux_lin=jnp.where(t_all, lin, state.aux_lin),
        value=jnp.where(taken, gaps.objective, state.value),
    )
    return state, gaps


def _check(
    state: _State,
    ops: _Ops,
    tol: jax.Array,
    cert: _Certifier | None,
    *,
    opts: IterOptions,
    polish_rows: int,
) -> _State:
    """Duality gap of every sample, optional polish (``cert``: None without), and the done
    flags.

    The polish is tried on samples not yet done whose support fits in ``opts.max_support`` and
    did not change since the last check: those with at most ``SMALL_SUPPORT`` atoms in a block of
    ``polish_rows``, larger ones in a block of ``polish_rows // 4``; a block is worth a solve
    when the group fills half of it, or the candidates are half of the samples still running, or
    at every fifth check."""
    C = state.codes
    R, WR = _residual(ops, C, state.codes_lin, ops.gram)
    gap, obj = gap_from_residual(C, R, WR, ops.reg, opts.nonneg)
    gaps = _Gaps(gap, obj, relative_gap(gap, obj) <= tol)
    support = C != 0
    if cert is not None:
        nnz = jnp.sum(support, axis=-1)
        stable = jnp.all(support == state.support, axis=-1)
        # candidates: not done, support unchanged since the last check and small enough
        cand = ~gaps.ok & ~state.done & stable & (nnz > 0) & (nnz <= opts.max_support)
        n_cand, running = jnp.sum(cand), jnp.sum(~gaps.ok & ~state.done)
        small_k = min(SMALL_SUPPORT, opts.max_support)
        groups = [(cand & (nnz <= small_k), small_k, polish_rows)]
        if opts.max_support > small_k:  # the few large supports, in a smaller block
            groups.append((cand & (nnz > small_k), opts.max_support, max(1, polish_rows // 4)))
        for group, k, n_rows in groups:
            n = jnp.sum(group)
            worth = (2 * n >= n_rows) | (2 * n_cand >= running) | (state.num_checks % 5 == 4)
            state, gaps = _polish_group(
                state, ops, gaps, cert, group=group, worth=worth, k=k, n_rows=n_rows
            )
    return state._replace(
        done=state.done | gaps.ok, gap=gaps.gap, objective=gaps.objective, support=support
    )


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


@functools.partial(jax.jit, static_argnames="opts")
def solve_core(
    X, W, reg, C0, carry, step_size, tol, max_steps, min_running, *, opts: IterOptions
) -> tuple[Solution, Carry]:
    """Iterate until every sample is certified, ``max_steps``, or (at a check) at most
    ``min_running`` samples are still running. ``carry``: momentum and support from a previous
    block, or None."""
    F, D = W.shape
    gram = _use_gram(opts.form, F, D)
    ops = _make_ops(X, W, reg, gram)
    cert = None
    if opts.polish:  # the polish runs in float64 when x64 is enabled
        hi_dtype = high_dtype(X.dtype)
        W_hi = W.astype(hi_dtype)
        small = F * F * W_hi.dtype.itemsize <= GRAM_BUDGET
        G_hi = W_hi @ W_hi.T if small else None
        cert = _Certifier(W_hi, G_hi, reg.astype(hi_dtype), tol, opts.nonneg)
    step = functools.partial(_step, ops=ops, eta=step_size, opts=opts, gram=gram)
    B = X.shape[0]
    polish_rows = min(B, max(COMPACT_MIN, B // POLISH_FRACTION))
    check = functools.partial(
        _check, ops=ops, tol=tol, cert=cert, opts=opts, polish_rows=polish_rows
    )

    def cond(state):
        first = state.num_checks == 0
        running = jnp.sum(~state.done)
        return first | ((state.num_steps < max_steps) & (running > min_running))

    def body(state):
        # the first pass only checks the initial point (one copy of the check in the graph)
        n = jnp.where(
            state.num_checks == 0, 0, jnp.minimum(opts.check_every, max_steps - state.num_steps)
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


@functools.partial(jax.jit, static_argnames=("num_steps", "opts"))
def trace_core(X, W, reg, C0, step_size, *, num_steps: int, opts: IterOptions) -> SolverTrace:
    """Exactly ``num_steps`` iterations (``lax.scan``), recording every iterate's objective."""
    F, D = W.shape
    gram = _use_gram(opts.form, F, D)
    ops = _make_ops(X, W, reg, gram)
    step = functools.partial(_step, ops=ops, eta=step_size, opts=opts, gram=gram)

    def body(state, _):
        state = step(state)
        return state, batch_objective(X, W, state.codes, reg, opts.nonneg)

    state0 = _init_state(ops, C0, gram)
    state, objs = jax.lax.scan(body, state0, None, length=num_steps)
    objs = jnp.concatenate([batch_objective(X, W, C0, reg, opts.nonneg)[None, :], objs], axis=0)
    return SolverTrace(codes=state.codes, objective=objs)
