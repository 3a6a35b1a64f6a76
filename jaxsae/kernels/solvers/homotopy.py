"""Homotopy (LARS-lasso): every sample's lasso path from ``c = 0`` down to ``λ``, batched."""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxsae.kernels.lasso import (
    excess,
    gap_from_residual,
    gap_from_sums,
    high_dtype,
    worst_ratio,
)
from jaxsae.kernels.solvers.common import (
    COMPACT_MIN,
    GRAM_BUDGET,
    bucket,
    pad_index,
    relative_gaps,
)


class Path(NamedTuple):
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
def path_init(X, W, reg, *, K: int, nonneg: bool) -> Path:
    """The start of the path over the whole dictionary (``path_start`` with ``g = W x``)."""
    return path_start(X @ W.T, reg[None, :], K, nonneg)


def path_start(corr: jax.Array, reg: jax.Array, K: int, nonneg: bool) -> Path:
    """The start of the path, ``c = 0`` at ``τ = max_i excess(g_i) / λ_i``, over the ``m`` atoms
    whose correlations with each input are ``corr (B, m)``, with ``λ`` ``reg (1 or B, m)``
    (the whole dictionary, or a working set), in ``K`` slots."""
    B, m = corr.shape
    tau = jnp.max(excess(corr, nonneg) / reg, axis=-1)
    zk = jnp.zeros((B, K), corr.dtype)
    return Path(
        codes=zk,
        atom=jnp.zeros((B, K), jnp.int32),
        occ=jnp.zeros((B, K), bool),
        sign=zk,
        H=jnp.zeros((B, K, K), corr.dtype),
        d=zk,
        corr=corr,
        active=jnp.zeros((B, m), bool),
        tau=jnp.maximum(tau, 1),
        done=tau <= 1,  # c = 0 is optimal
        paused=jnp.zeros((B,), bool),
        last_drop=jnp.full((B,), -1, jnp.int32),
        steps=jnp.zeros((), jnp.int32),
    )


def _argmin(t: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(argmin, min)`` of ``t (B, n)`` over the last axis (the first index of the minimum, as
    ``jnp.argmin``, NaN counted as the minimum), as two plain reductions: XLA:CPU runs
    ``argmin``'s (value, index) reduction an order of magnitude slower (measured at (1,024,
    256)). The index reduction runs on float32 indices (exact below 2²⁴), which XLA:CPU
    reduces as fast as the values, where an int32 row reduction is split into a slow
    ``reduce-window`` (per kink at D64 F256, 512 samples: 336 against 396 µs)."""
    m = jnp.min(t, axis=-1)
    hit = (t == m[:, None]) | (jnp.isnan(t) & jnp.isnan(m)[:, None])
    index = jnp.float32 if t.shape[1] < 2**24 else jnp.int32
    iota = jax.lax.broadcasted_iota(index, t.shape, 1)
    return jnp.min(jnp.where(hit, iota, t.shape[1]), axis=-1).astype(jnp.int32), m


# the full path's direction sums the slots' Gram rows (K rows of F) while K <= ROWS_PER_DIM * D,
# else sums the slots' atoms and takes one dense product with the dictionary (K D + F D
# multiply-adds); ROWS_PER_DIM_FAR instead where W Wᵀ outgrows ROWS_CACHE_BYTES (a core's L2
# cache: the rows then come from further away). Measured at B 1,024 (jit caches cleared between
# configurations): rows up to D / 2 against rows at every K and two dense products at every K,
# D64 F1024 109 against 140 and 163 ms, D256 F1024 45 against 83 ms; then the atoms' sum in
# place of a first dense product over all F atoms (spread codes), D64 F1024 103 → 99 ms, and
# rows only up to D / 4 for the 4 MB W Wᵀ of F 1,024, D64 F1024 99 → 82 ms (D / 8 level; at
# F 256, D / 4 was 24.2 → 26.3 ms, D256 F1024 level)
ROWS_PER_DIM = 0.5
ROWS_PER_DIM_FAR = 0.25
ROWS_CACHE_BYTES = 1 << 20


def _full_direction(W: jax.Array, G: jax.Array | None):
    """``a = G_{·A} d`` over the whole dictionary ``W (F, D)``, and Gram rows. With ``G = W
    Wᵀ``: ``a`` as the sum of the slots' rows of ``G`` (``_gram_rows_sum``, ``O(K F)`` per
    sample) up to ``K = ROWS_PER_DIM · D`` slots (``ROWS_PER_DIM_FAR`` for a ``G`` past
    ``ROWS_CACHE_BYTES``), and Gram rows from ``G``. Otherwise ``a = (d W_A) Wᵀ``: the slots'
    atoms summed (``O(K D)``), then one dense product (``O(F D)``), and without ``G`` Gram rows
    formed from the slots' atoms (``O(K D)``)."""
    rows = 0
    if G is not None:
        far = G.size * G.dtype.itemsize > ROWS_CACHE_BYTES
        rows = W.shape[1] * (ROWS_PER_DIM_FAR if far else ROWS_PER_DIM)

    def direction(p: Path, d: jax.Array) -> jax.Array:
        idx = jnp.where(p.occ, p.atom, 0)
        if d.shape[1] <= rows:
            return _gram_rows_sum(G, idx, d)
        return _gram_rows_sum(W, idx, d) @ W.T

    def gram_row(p: Path, j: jax.Array) -> tuple[jax.Array, jax.Array, None]:
        if G is not None:
            return G[j[:, None], p.atom], G[j, j], None
        w_j = W[j]  # (B, D)
        return jnp.einsum("bkd,bd->bk", W[p.atom], w_j), jnp.sum(w_j * w_j, axis=-1), None

    return direction, gram_row


def _gram_rows_sum(G: jax.Array, idx: jax.Array, d: jax.Array) -> jax.Array:
    """``Σ_k d_k G[idx_k]`` for ``idx, d (B, K)``: ``(B, F)`` for rows of ``W Wᵀ``, ``(B,
    D)`` for rows of ``W``; one term per slot, written out so that XLA fuses the ``K`` row
    gathers and the sum into one pass over the output (the free slots point at row 0 with ``d
    = 0``: a row in cache). On XLA:CPU this beats both ``einsum`` over the gathered rows (which
    materialises ``(B, K, F)``) and the two dense products with ``W`` (measured at ``B`` 1,024,
    ``K`` 16: D64 F256 0.12 against 0.32 ms, D256 F1024 1.8 against 2.8 ms, with every slot on
    a different row)."""
    a = d[:, 0, None] * G[idx[:, 0]]
    for k in range(1, idx.shape[1]):
        a = a + d[:, k, None] * G[idx[:, k]]
    return a


def gather_reg(reg: jax.Array, idx: jax.Array) -> jax.Array:
    """``λ`` of the atoms ``idx (B, K)``, for ``reg`` of shape ``(1, F)`` or ``(B, F)``."""
    if reg.shape[0] == 1:
        return reg[0][idx]
    return jnp.take_along_axis(reg, idx, axis=1)


def path_step(p: Path, reg: jax.Array, *, nonneg: bool, direction, gram_row, slope=None):
    """One kink of the lasso path of every running sample (Efron et al. 2004, lasso variant).

    ``reg (1 or B, F)``; ``slope (B, F)`` or None (``reg``): the penalty at ``τ`` is
    ``λ + (τ − 1) Δ`` with ``Δ`` the slope (``τ λ`` for the usual path; a path warm-started
    from the solution for other penalties has its own slope). ``direction(p, d) -> a (B, F)``
    and ``gram_row(p, j) -> (G_{j, slots} (B, K), G_jj (B,))`` give the products with the
    dictionary (``_full_direction``, or a working set's Gram rows; a third output of
    ``gram_row`` is passed back). Returns the new state, the atom ``j`` considered for joining,
    the ``(B, K)`` mask of the slot it took (if it joined) and that third output.

    On the active set ``A`` with signs ``s``, ``c_A(τ − δ) = c_A(τ) + δ d``,
    ``d = G_AA⁻¹ (Δ s)_A``, and ``g(τ − δ) = g(τ) − δ a``, ``a = G_{·A} d``. ``δ`` is the first
    event: an inactive atom reaches ``|g_j| = λ_j + (τ − δ − 1) Δ_j`` (it joins), an active
    code reaches zero (it leaves), or ``τ − δ = 1`` (the end). ``G_AA⁻¹`` and ``d`` are kept up
    to date by rank-one updates (one pass over ``G_AA⁻¹`` to update it, one to find the Schur
    complement of a new atom)."""
    B, K = p.occ.shape
    F = p.corr.shape[1]
    run = ~p.done & ~p.paused
    rows = jnp.arange(B)
    d = jnp.where(p.occ, p.d, 0)
    a = direction(p, d)
    ev = _next_event(p, reg, a, d, nonneg, slope)
    slope = reg if slope is None else slope
    delta = jnp.where(run, jnp.minimum(ev.d_end, jnp.minimum(ev.dj, ev.di)), 0)
    codes = p.codes + delta[:, None] * d
    # the new slot: Schur complement of the joining atom
    free = ~p.occ
    slot = jnp.argmax(free, axis=-1)
    has_slot = jnp.any(free, axis=-1)
    b, gjj, extra = gram_row(p, ev.j)
    b = jnp.where(p.occ, b, 0)
    u = jnp.einsum("bij,bj->bi", p.H, b)
    schur = gjj - jnp.sum(b * u, axis=-1)
    ok = schur > 64 * jnp.finfo(codes.dtype).eps * gjj
    add = run & ev.join & has_slot & ok
    rem = run & ev.drop
    H, v, coef, h = _rank_one(p.H, u, schur, slot, ev.i, add, rem)
    gone = (jnp.arange(K)[None, :] == ev.i[:, None]) & rem[:, None]  # (B, K)
    new = (jnp.arange(K)[None, :] == slot[:, None]) & add[:, None]
    atom_i = jnp.take_along_axis(p.atom, ev.i[:, None], 1)[:, 0]
    occ = (p.occ & ~gone) | new
    atom = jnp.where(new, ev.j[:, None], p.atom)
    sign = jnp.where(new, jnp.where(ev.up, 1, -1)[:, None].astype(codes.dtype), p.sign)
    # the new direction H' w' without a pass over H: H w' = d (+ nothing for a free slot,
    # − w_i h for a dropped slot i), then the rank-one term
    w_new = jnp.where(occ, gather_reg(slope, atom) * sign, 0)
    w_i = jnp.take_along_axis(gather_reg(slope, p.atom) * p.sign, ev.i[:, None], 1)[:, 0]
    base = d - jnp.where(rem, w_i, 0)[:, None] * h
    d_new = jnp.where(~gone, base + (coef * jnp.sum(v * w_new, axis=-1))[:, None] * v, 0)
    active = p.active.at[rows, jnp.where(rem, atom_i, F)].set(False, mode="drop")
    active = active.at[rows, jnp.where(add, ev.j, F)].set(True, mode="drop")
    p = p._replace(
        codes=jnp.where(gone | new, 0, codes),
        atom=atom,
        occ=occ,
        sign=sign,
        H=H,
        d=d_new,
        corr=p.corr - delta[:, None] * a,
        active=active,
        tau=jnp.where(run & ev.end, 1, p.tau - delta),
        done=p.done | (run & ev.end),
        paused=p.paused | (run & ev.join & ~(has_slot & ok)),
        last_drop=jnp.where(rem, atom_i, jnp.where(add, -1, p.last_drop)),
        steps=p.steps + 1,
    )
    return p, ev.j, new, extra


class _Event(NamedTuple):
    """The next kink of each sample's path: the atom ``j`` that would join after ``dj`` (with
    sign ``up``), the slot ``i`` that would leave after ``di``, the distance ``d_end`` to
    ``τ = 1``, and which comes first (``end``, ``drop`` or ``join``), all ``(B,)``."""

    j: jax.Array
    dj: jax.Array
    up: jax.Array
    i: jax.Array
    di: jax.Array
    d_end: jax.Array
    end: jax.Array
    drop: jax.Array
    join: jax.Array


def _next_event(p: Path, reg, a: jax.Array, d: jax.Array, nonneg: bool, slope=None) -> _Event:
    """The first event along the direction ``d`` (codes) / ``a`` (correlations); ``slope``: see
    ``path_step``."""
    F = p.corr.shape[1]
    # joins: the first δ ≥ 0 at which g_j − δ a_j = ±(λ_j + (τ − δ − 1) Δ_j)
    inf = jnp.asarray(jnp.inf, p.codes.dtype)
    if slope is None:
        tr, slope = p.tau[:, None] * reg, reg
    else:
        tr = reg + (p.tau[:, None] - 1) * slope

    t_join = _first_join(tr - p.corr, slope - a, None if nonneg else (tr + p.corr, slope + a))
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
    return _Event(j, dj, up, i, di, d_end, end, drop, ~end & ~drop)


def _first_join(num, den, other=None) -> jax.Array:
    """``max(num, 0) / den`` where ``den > 0``, else ``inf``; with ``other = (num2, den2)``,
    the smaller of that and the same of ``other``, with one division: the candidate is chosen
    by cross-multiplying (``n1 d2 ≤ n2 d1``, both denominators positive), which saves the
    second division over the ``(B, F)`` state, the costliest operation of the join times."""
    inf = jnp.asarray(jnp.inf, num.dtype)
    num = jnp.maximum(num, 0)
    pos = den > 0
    if other is not None:
        n2, d2 = jnp.maximum(other[0], 0), other[1]
        pos2 = d2 > 0
        one = pos & (~pos2 | (num * d2 <= n2 * den))
        num, den, pos = jnp.where(one, num, n2), jnp.where(one, den, d2), pos | pos2
    return jnp.where(pos, num / jnp.where(pos, den, 1), inf)


# the rank-one term of H is formed from materialised (B, K) factors for K in this range; per
# kink, D64 F256 (medians, jit caches cleared between configurations): K 32 (256 samples) 286
# against 317 µs, K 64 (64 samples) 130 against 153 µs; outside it slower: K 16 (512 samples)
# 384 against 330 µs, and the working sets' rounds up to K 512 at D1280 F10240 L0 ≈ 200 (whole
# solves, 7.2 against 6.6 s)
MATERIALIZE_SLOTS = (32, 64)


def _materialize(x: jax.Array) -> jax.Array:
    """``x``, as the output of a reduction: XLA keeps it as an array instead of fusing the
    operations that give it into each consumer (``optimization_barrier`` is removed before
    fusion on XLA:CPU), where a ``(B, K, K)`` consumer recomputes them for each of its ``K²``
    elements per sample: the event's selections behind ``coef`` are some twenty operations."""
    return jnp.sum(jnp.stack([x, jnp.zeros_like(x)]), axis=0)


def _rank_one(H, u, schur, slot, i, add, rem):
    """``G_AA⁻¹`` after atom ``j`` joins in ``slot`` (``add``: ``+ v vᵀ / schur``, ``v = u − e``)
    or slot ``i`` leaves (``rem``: ``− h hᵀ / h_ii``, ``h`` its column), the left slot's row
    and column exactly zero. Returns ``(H, v, coef, h)`` (the new direction reuses them)."""
    K = H.shape[1]
    rows = jnp.arange(H.shape[0])
    e_p = jax.nn.one_hot(slot, K, dtype=H.dtype)
    h = jnp.take_along_axis(H, i[:, None, None], axis=1)[:, 0, :]  # (symmetric) column i
    hii = jnp.take_along_axis(h, i[:, None], 1)[:, 0]
    v = jnp.where(add[:, None], u - e_p, jnp.where(rem[:, None], h, 0))
    coef = jnp.where(
        add, 1 / jnp.where(add, schur, 1), jnp.where(rem, -1 / jnp.where(rem, hii, 1), 0)
    )
    # the rank-one term, then the dropped slot's row and column exactly zero (two small
    # scatters: a mask over all of H would be one more pass over it)
    cv = coef[:, None] * v
    if MATERIALIZE_SLOTS[0] <= K <= MATERIALIZE_SLOTS[1]:
        cv, v = _materialize(cv), _materialize(v)
    H = H + cv[:, :, None] * v[:, None, :]
    off = jnp.where(rem, i, K)
    H = H.at[rows, off].set(0, mode="drop").at[rows, :, off].set(0, mode="drop")
    return H, v, coef, h


@functools.partial(jax.jit, static_argnames="nonneg")
def path_block(X, W, G, reg, p: Path, min_running, max_steps, *, nonneg: bool):
    """Follow the path until at most ``min_running`` samples are running (or ``max_steps``
    kinks in all). ``G``: ``W Wᵀ`` or None (see ``_full_direction``). Returns the new state
    and its status as one int32 array (one transfer to the host): the kinks so far, then
    ``done + 2 paused`` per sample."""

    def cond(q):
        running = jnp.sum(~q.done & ~q.paused)
        return (q.steps < max_steps) & (running > min_running)

    direction, gram_row = _full_direction(W, G)

    def step(q):
        return path_step(q, reg[None, :], nonneg=nonneg, direction=direction, gram_row=gram_row)[0]

    q = jax.lax.while_loop(cond, step, p)
    flags = q.done.astype(jnp.int32) + 2 * q.paused.astype(jnp.int32)
    return q, jnp.concatenate([q.steps[None], flags])


# codes of the wrong sign removed after the Newton steps, at most this many per sample
MAX_DROPS = 4

# the paths over the whole dictionary start with this many slots (doubled for the samples that
# need more); against 32, at B 1,024 (jit caches cleared between configurations): D64 F256 31.8
# against 33.9 ms, D64 F1024 109 against 116 ms, D256 F1024 45 against 56 ms
FIRST_SLOTS = 16


def refine_active(Xh, W_A, lam, sign, cs, occ, H, done, *, steps: int):
    """Newton steps ``c_A += H (W_A r − λ_A s_A)`` on the active set of the samples at ``τ = 1``
    (undoing the drift of the path's incremental updates), in the precision of the arguments.

    A code that comes out with the wrong sign (``c_i s_i < 0``: the path, in low precision,
    missed the kink where it leaves; the equations then hold on the wrong set) is removed: its
    slot is cleared, ``H`` downdated to the inverse Gram of the others (``H − h hᵀ / h_ii``) and
    the steps repeated, at most ``MAX_DROPS`` times per sample (one code per time).

    Args:
      Xh: ``(B, D)`` inputs; W_A: ``(B, K, D)`` the slots' atoms; lam, sign: ``(B, K)`` their
        ``λ`` and signs; cs: ``(B, K)`` codes; occ: ``(B, K)`` bool, slot occupied; H: ``(B, K,
        K)`` inverse Gram of the occupied slots; done: ``(B,)`` bool, at ``τ = 1``.

    Returns:
      ``(cs, occ, H)``: the refined codes (zero in free slots), the slots still occupied and
      the inverse Gram of those.
    """

    def correlations(cs):
        r = Xh - jnp.einsum("bs,bsd->bd", cs, W_A)
        return jnp.einsum("bsd,bd->bs", W_A, r)

    return _newton_with_drops(correlations, lam, sign, cs, occ, H, done, steps=steps)


def _newton_with_drops(correlations, lam, sign, cs, occ, H, done, *, steps: int):
    """``refine_active``'s Newton steps and removals, with ``correlations(c) = W_A r (B, K)``
    at the codes ``c``."""
    K = occ.shape[1]

    def newton(cs, occ, H):
        cs = jnp.where(occ, cs, 0)
        for _ in range(steps):
            e = jnp.where(occ, correlations(cs) - lam * sign, 0)
            cs = jnp.where(done[:, None] & occ, cs + jnp.einsum("bij,bj->bi", H, e), cs)
        return cs

    def wrong(cs, occ):
        return occ & (cs * sign < 0) & done[:, None]

    def cond(c):
        cs, occ, _, n = c
        return (n < MAX_DROPS) & jnp.any(wrong(cs, occ))

    def body(c):
        cs, occ, H, n = c
        bad = wrong(cs, occ)
        has = jnp.any(bad, axis=1)
        i = jnp.argmax(bad, axis=1)
        h = jnp.take_along_axis(H, i[:, None, None], axis=1)[:, 0, :]  # (B, K), row i
        hii = jnp.take_along_axis(h, i[:, None], 1)
        gone = (jnp.arange(K)[None, :] == i[:, None]) & has[:, None]
        H = jnp.where(has[:, None, None], H - h[:, :, None] * (h / hii)[:, None, :], H)
        H = jnp.where(gone[:, :, None] | gone[:, None, :], 0, H)
        occ = occ & ~gone
        return newton(cs, occ, H), occ, H, n + 1

    cs = newton(cs, occ, H)
    cs, occ, H, _ = jax.lax.while_loop(cond, body, (cs, occ, H, jnp.asarray(0, jnp.int32)))
    return jnp.where(occ, cs, 0), occ, H


def refine_on_gram(E, G_AA, lam, sign, c_ref, occ, H, done, *, steps: int):
    """``refine_active`` from the products at one point instead of the atoms: ``E = W_A r``
    at the codes ``c_ref`` (exact, in the precision of the arguments) and an approximate Gram
    ``G_AA`` of the slots, so that ``W_A r = E − G_AA (c − c_ref)`` at any ``c``. Its errors
    scale with ``c − c_ref`` (small: the drift of a path, and codes that cross zero at its very
    end), and the certificate that follows is computed from the codes anew.

    Args:
      E: ``(B, K)``; G_AA: ``(B, K, K)`` over all slots (occupied or not); the others as
        ``refine_active``.

    Returns:
      ``(cs, occ, H)`` as ``refine_active``.
    """
    c_ref = jnp.where(occ, c_ref, 0)
    G_AA = G_AA.astype(E.dtype)

    def correlations(cs):
        return E - jnp.einsum("bij,bj->bi", G_AA, cs - c_ref)

    return _newton_with_drops(correlations, lam, sign, c_ref, occ, H, done, steps=steps)


class ActiveSet(NamedTuple):
    """Where the paths of ``B`` samples ended: ``Path``'s fields of the same names."""

    codes: jax.Array  # (B, K)
    atom: jax.Array  # (B, K) int32
    occ: jax.Array  # (B, K) bool
    sign: jax.Array  # (B, K)
    H: jax.Array  # (B, K, K)
    done: jax.Array  # (B,) bool


@functools.partial(jax.jit, static_argnames=("nonneg", "refine"))
def path_finish(X, W, G, reg, s: ActiveSet, G_hi=None, *, nonneg: bool, refine: int):
    """The codes of the samples ``X (B, D)`` whose paths ended at ``s``; those at ``τ = 1``
    refined by ``refine`` Newton steps on their active set (``refine_on_gram``), and the
    duality gaps in the highest available precision (float64 when x64 is enabled). ``G``:
    ``W Wᵀ`` or None; ``G_hi``: ``W Wᵀ`` in that precision (``certificate_gram``) or None.

    With ``G_hi`` (``_finish_on_gram``) one dense product with the dictionary, ``W x``, and
    the slots' rows of ``G_hi`` give everything. Without it every product with the dictionary
    is a dense one over all atoms, in the certificate's precision: the residual and its
    correlations at the path's codes (for the Newton steps), then at the refined codes (for the
    gap). On XLA:CPU four such products cost less than gathering the active atoms once
    (``W[atom]``, a slow gather: measured at D 256, F 1,024, K 32, 1,024 samples, 24–34 ms
    against 48 ms; level at D 64, F 256).

    Returns ``(codes (B, F), gap (B,), objective (B,))`` in ``X.dtype``."""
    if G_hi is not None:
        return _finish_on_gram(X, W, G_hi, reg, s, nonneg=nonneg, refine=refine)
    cs0, atom, occ, sign, H, done = s
    F = W.shape[0]
    hi = high_dtype(X.dtype)
    Xh, Wh, reg_h = X.astype(hi), W.astype(hi), reg.astype(hi)
    c_ref = jnp.where(occ, cs0, 0).astype(hi)
    if refine:
        R = Xh - _spread(c_ref, atom, occ, F) @ Wh
        E = jnp.take_along_axis(R @ Wh.T, atom, 1)
        if G is None:
            W_A = W[atom]
            G_AA = jnp.einsum("bkd,bjd->bkj", W_A, W_A)
        else:
            G_AA = G[atom[:, :, None], atom[:, None, :]]
        cs, occ, _ = refine_on_gram(
            E,
            G_AA,
            reg_h[atom],
            sign.astype(hi),
            c_ref,
            occ,
            H.astype(hi),
            done,
            steps=refine,
        )
    else:
        cs = c_ref
    C = _spread(cs.astype(X.dtype), atom, occ, F)
    Ch = C.astype(hi)
    R = Xh - Ch @ Wh
    gap, obj = gap_from_residual(Ch, R, R @ Wh.T, reg_h, nonneg)
    return C, gap.astype(X.dtype), obj.astype(X.dtype)


def _spread(c: jax.Array, atom: jax.Array, occ: jax.Array, F: int) -> jax.Array:
    """``(B, F)`` codes from the slots' codes ``c``, atoms ``atom`` and occupancy ``occ``
    ``(B, K)`` (free slots dropped)."""
    rows = jnp.arange(c.shape[0])[:, None]
    return jnp.zeros((c.shape[0], F), c.dtype).at[rows, jnp.where(occ, atom, F)].set(c, mode="drop")


def _finish_on_gram(X, W, G_hi, reg, s: ActiveSet, *, nonneg: bool, refine: int):
    """``path_finish`` from ``W x`` and the rows of ``G_hi = W Wᵀ`` (precision ``G_hi.dtype``):
    at codes ``c`` on the slots ``A``, ``W r = W x − G_{·A} c``, ``⟨c, W r⟩ = c·(W x)_A − cᵀ
    G_AA c`` and ``‖r‖² = ‖x‖² − 2 c·(W x)_A + cᵀ G_AA c``, that is ``F D`` multiply-adds per
    sample for ``W x`` and ``K F`` for the rows, against ``4 F D`` for the dense products (at
    D256 F1024, 512 samples with 16 slots, those took 7.1 ms of a part's 34). In float64 the
    cancellation in ``‖r‖²`` costs ``~1e-16 ‖x‖²``, far below the tolerances a certificate is
    asked."""
    cs0, atom, occ, sign, H, done = s
    hi = G_hi.dtype
    Xh, reg_h = X.astype(hi), reg.astype(hi)
    WX = Xh @ W.astype(hi).T
    wx_A = jnp.take_along_axis(WX, atom, 1)
    G_AA = G_hi[atom[:, :, None], atom[:, None, :]]
    lam = reg_h[atom]
    cs = jnp.where(occ, cs0, 0).astype(hi)
    if refine:
        E = wx_A - jnp.einsum("bij,bj->bi", G_AA, cs)
        args = (lam, sign.astype(hi), cs, occ, H.astype(hi), done)
        cs, occ, _ = refine_on_gram(E, G_AA, *args, steps=refine)
    # the certificate is that of the codes returned, rounded to X.dtype
    cs = jnp.where(occ, cs.astype(X.dtype).astype(hi), 0)
    g = WX - _gram_rows_sum(G_hi, jnp.where(occ, atom, 0), cs)
    Gc = jnp.einsum("bij,bj->bi", G_AA, cs)
    RR = jnp.sum(Xh * Xh, axis=1) - jnp.sum(cs * (2 * wx_A - Gc), axis=1)
    negative = jnp.any(cs < 0, axis=1) if nonneg else None
    gap, obj = gap_from_sums(
        jnp.maximum(RR, 0),
        jnp.sum(cs * (wx_A - Gc), axis=1),
        jnp.sum(lam * jnp.abs(cs), axis=1),
        worst_ratio(g, reg_h, nonneg),
        negative,
    )
    return (
        _spread(cs.astype(X.dtype), atom, occ, W.shape[0]),
        gap.astype(X.dtype),
        obj.astype(X.dtype),
    )


# the certificates take W Wᵀ in their precision (``_finish_on_gram``) up to this many bytes
# (F = 2,048 in float64) and for batches of at least CERT_GRAM_BATCH samples per atom: it costs
# F D multiply-adds per atom and saves 3 F D per sample, but the dense products it saves run
# in the parts' threads at once (D256 F1024 with it: B 8,192 414 → 336 ms, B 1,024 46.8 → 48.4 ms)
CERT_GRAM_BYTES = 1 << 25
CERT_GRAM_BATCH = 4


def certificate_gram(W: jax.Array, B: int) -> jax.Array | None:
    """``W Wᵀ`` in the certificate's precision (float64 when x64 is enabled) for ``B``
    samples, or None: without float64 (the cancellation in ``‖r‖²`` needs it), past
    ``CERT_GRAM_BYTES``, or for fewer than ``CERT_GRAM_BATCH · F`` samples."""
    F = W.shape[0]
    hi = jnp.dtype(high_dtype(W.dtype))
    if hi != jnp.float64 or F * F * hi.itemsize > CERT_GRAM_BYTES or B < CERT_GRAM_BATCH * F:
        return None
    return _gram(W.astype(hi))


def dictionary_gram(W: jax.Array, budget: int = GRAM_BUDGET) -> jax.Array | None:
    """``G = W Wᵀ``, or None above ``budget`` bytes (``GRAM_BUDGET`` for the paths over the
    whole dictionary)."""
    F = W.shape[0]
    return _gram(W) if F * F * W.dtype.itemsize <= budget else None


class Grams(NamedTuple):
    """``W Wᵀ`` for the paths (``dictionary_gram``; see ``_full_direction``) and in the
    certificate's precision (``certificate_gram``; see ``path_finish``), each or None."""

    path: jax.Array | None
    certificate: jax.Array | None


def grams(W: jax.Array, B: int) -> Grams:
    """``follow_paths``' Gram matrices of ``W`` for ``B`` samples."""
    return Grams(dictionary_gram(W), certificate_gram(W, B))


def follow_paths(X, W, reg, tol, *, nonneg: bool, max_slots: int, max_kinks: int, G=None):
    """The lasso path of every sample from ``c = 0`` down to ``λ`` (outside ``jit``), in blocks
    that shrink as samples finish (as ``solve_compacted``) and whose slot count ``K`` doubles,
    from ``min(FIRST_SLOTS, max_slots)``, for the samples whose active set outgrows it. ``G``:
    ``Grams``, or None for ``grams(W, B)``.
    Between blocks the host reads one status array (``path_block``) and the active sets of
    the samples that leave in one ``device_get``, and passes NumPy arguments to the jitted
    steps as they are (with ``_first_join`` and ``_argmin``'s float32 indices, whole solves at
    D64 F256, B 1,024: 28.8 → 25.0 ms, both versions alternating in one process).

    Returns ``(codes (B, F), gap (B,), objective (B,), certified (B,) bool, kinks)`` as NumPy
    arrays and an int: the codes of a sample not certified (relative gap > ``tol``) are a warm
    start for the iterations."""
    B = X.shape[0]
    K = min(FIRST_SLOTS, max_slots)
    G = grams(W, B) if G is None else G
    p = path_init(X, W, reg, K=K, nonneg=nonneg)
    ends = []  # (global rows, ActiveSet of NumPy arrays) of the samples that left a block
    rows = np.arange(B)
    Xb, kinks = X, 0
    while True:
        n = Xb.shape[0]
        min_running = n // 2 if n >= COMPACT_MIN else 0
        p, status = path_block(
            Xb, W, G.path, reg, p, np.int32(min_running), np.int32(max_kinks), nonneg=nonneg
        )
        m = len(rows)
        status = np.asarray(status)
        kinks, flags = int(status[0]), status[1 : m + 1]
        done, paused = flags & 1 > 0, flags & 2 > 0
        grow = paused & ~done if max_slots > K else np.zeros_like(done)
        left = np.flatnonzero(~done & (~paused | grow))
        last = len(left) == 0 or kinks >= max_kinks
        # the codes of the samples that leave: done, out of slots, or after the last block
        stay = np.zeros((m,), bool)
        stay[left] = not last
        out = np.flatnonzero(~stay)
        if len(out):
            s = jax.device_get(ActiveSet(p.codes, p.atom, p.occ, p.sign, p.H, p.done))
            ends.append((rows[out], ActiveSet(*(x[out] for x in s))))
        if last:
            break
        if grow.any():
            K = min(2 * K, max_slots)
        size = bucket(len(left))
        take = pad_index(left, size)
        rows = rows[left]
        Xb, p = _path_take(Xb, p, take, len(left), K=K)
    return (*_certify_ends(X, W, G, reg, ends, tol, nonneg=nonneg), kinks)


def _certify_ends(X, W, G: Grams, reg, ends: list, tol: float, *, nonneg: bool):
    """``follow_paths``' results from the parts ``ends`` of its blocks: the samples finished
    together, one ``path_finish`` per slot count, its rows padded to a power of two (few shapes
    to compile, and none of the padding of the blocks' smaller parts)."""
    B = X.shape[0]
    codes = np.zeros((B, W.shape[0]), X.dtype)
    gap, obj = np.zeros((B,), X.dtype), np.zeros((B,), X.dtype)
    certified = np.zeros((B,), bool)
    X_np = np.asarray(X)
    for rows, s in _group_ends(ends):
        n = len(rows)
        take = pad_index(np.arange(n), bucket(n, smallest=8))
        s = ActiveSet(*(x[take] for x in s))
        Xs = X_np[rows[take]]
        C, g, o = path_finish(Xs, W, G.path, reg, s, G.certificate, nonneg=nonneg, refine=1)
        codes[rows], gap[rows], obj[rows] = (x[:n] for x in jax.device_get((C, g, o)))
        certified[rows] = s.done[:n] & (relative_gaps(gap[rows], obj[rows]) <= tol)
    return codes, gap, obj, certified


def _group_ends(ends: list) -> list:
    """The blocks' parts ``(rows, ActiveSet)`` joined by slot count."""
    by_k: dict[int, list] = {}
    for rows, part in ends:
        by_k.setdefault(part.occ.shape[1], []).append((rows, part))
    return [
        (
            np.concatenate([r for r, _ in parts]),
            ActiveSet(*(np.concatenate(x) for x in zip(*(q for _, q in parts), strict=True))),
        )
        for parts in by_k.values()
    ]


@functools.partial(jax.jit, static_argnames=("n", "K"))
def _path_take(X, p: Path, take, n: int, *, K: int) -> tuple[jax.Array, Path]:
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
