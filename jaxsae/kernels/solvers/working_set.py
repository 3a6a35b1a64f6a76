"""Working sets: each sample's lasso path on a few atoms, checked against all of them.

The homotopy over the whole dictionary pays one product over all ``F`` atoms per kink. Here each
sample ``b`` gets a *working set* ``S_b`` of ``k`` atoms (``k ≪ F``): those most correlated with
its residual, ``|W r|_j / λ_j`` largest (``nonneg``: ``max(W r, 0)_j / λ_j``), with the atoms of
its current active set first. The lasso restricted to ``S_b`` is solved exactly by the same
homotopy (``jaxsae.kernels.solvers.homotopy``) on the set's Gram rows (gathered from ``W Wᵀ``
when that fits ``GRAM_BYTES`` and saves work, else formed from ``W[S_b]``), all samples at once,
so a kink costs ``O(K k + K²)`` per sample (``K`` slots) instead of ``O(F D)``. One product
``R Wᵀ`` over all atoms per round, in blocks of samples (``CERTIFY_ROWS``), then gives the
correlations of every atom and the duality gap over the *full* problem, in float64 when x64 is
enabled: a sample whose relative gap is ``≤ tol`` is certified (its restricted solution is the
global one, Fercoq et al. 2015); the others get a new working set from the new correlations (the
active set kept, the atoms that violate ``|g_j| ≤ λ_j`` most added, ``k`` doubled when the
active set fills half of it) and go round again (celer, Massias et al. 2018, with exact inner
solves). The sets start at ``MIN_SIZE`` atoms and a path stops when its slots fill, so the
first rounds also find out how large a sample's set must be.

A round after the first does not start its paths again from ``c = 0``: each continues from the
previous round's active set, codes and inverse Gram (``Warm``), along the path of penalties
``λ + (τ − 1) Δ`` from ``τ = 2`` to ``1`` whose start the previous codes solve exactly
(``_warm_start``): a round costs the kinks between the two solutions, not a whole path. A
path from ``c = 0``, or one whose set held few atoms besides its active set and its violators
(``FEW``), often ends with more violators off its set: for inputs of ``WIDE`` dimensions or
more (where the next round's Gram matrices cost most) and sets of more than ``√F`` atoms, the
round checks such codes against all atoms at once and, where some violate their constraint,
follows the path on over the set extended by the ``EXTEND`` worst of them (``_extended``), so
that the next round, with its Gram matrices, selections and certificates, is not needed. The
selections over all ``F`` atoms are NumPy's introselect on every core on a CPU (``host_argtop``,
outside the compiled functions), ``row_top_k`` elsewhere. A path run in float32 can miss a
kink within ~1e-6 of its end (a code of the wrong sign, or an atom that violates its constraint
by a hair): the Newton refinement removes such codes, and the samples still uncertified after
the rounds are solved once more, exactly, on their support joined by their worst violators
(``_finish``), before any iterations.

Memory: ``O(F·D + B·F)`` for the dictionary and the correlations, ``F²`` for ``W Wᵀ`` when it is
used (at most ``GRAM_BYTES``), ``O(B·K²)`` for the active sets carried between rounds (1 GB
for 4,096 samples at ``K = 256``), and ``O(n·k·D + n·k²)`` for the working sets of the ``n``
samples of a chunk (without ``W Wᵀ``), with ``n`` chosen so that ``n·k·D`` stays under
``CHUNK_ELEMENTS``.

References:
  M. Massias, A. Gramfort, J. Salmon. Celer: a fast solver for the lasso with dual
  extrapolation. ICML 2018.
  O. Fercoq, A. Gramfort, J. Salmon. Mind the duality gap: safer rules for the lasso. ICML 2015.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxsae.kernels.lasso import excess, gap_from_residual, gap_from_sums, high_dtype
from jaxsae.kernels.row_select import host_argtop, host_workers, row_top_k
from jaxsae.kernels.solvers.common import bucket, map_parts, pad_index, relative_gaps
from jaxsae.kernels.solvers.homotopy import (
    Path,
    dictionary_gram,
    path_start,
    path_step,
    refine_active,
)

# the dictionary's Gram matrix W Wᵀ is formed (once) for the working sets' Gram rows when it
# takes at most this many bytes (F = 16,384 atoms in float32) and saves work (``_gram_pays``):
# at D1280 F10240 a set of 512 atoms costs 2.0 ms per sample to form its Gram matrix and
# 0.7 ms to gather it from W Wᵀ, which takes 0.9 s to form (2-core CPU, float32)
GRAM_BYTES = 1 << 30
# the certificates (one product of the residuals with the whole dictionary) in blocks of at
# most this many samples, and at most CERTIFY_ELEMENTS correlations (1,024 samples at F = 10,240,
# 256 at F = 40,960: each (n, F) array of the block in float64 takes 128 MB)
CERTIFY_ROWS = 1024
CERTIFY_ELEMENTS = 1 << 24
# the smallest working set, and the largest; the first sets have MIN_SIZE atoms, twice as
# many for inputs of WIDE dimensions or more (where each round's gathers and products over D
# cost more than the kinks they save: D1280 F10240 B1024, L0 ≈ 50: 1.3 s against 1.6–2.0 s;
# L0 ≈ 200: 9.8–10.9 s against 9.5–9.8 s; D320 F10240 B4096, L0 ≈ 50: 7.0 s against 4.8 s);
# there too the rounds extend their sets (EXTEND)
MIN_SIZE = 64
MAX_SIZE = 1024
WIDE = 1024
# a chunk of n samples keeps n·k·D ≤ CHUNK_ELEMENTS (the gathered working-set atoms) and
# n·k² ≤ GRAM_ELEMENTS (the working sets' Gram matrices, read at every kink, best kept in cache).
# Measured on a 2-core CPU at k = 128, D = 320: 70 kinks cost 0.3 ms per sample in chunks of
# 32–128 samples, 0.5 ms in chunks of 256 and 0.7 ms in chunks of 1,024; the whole solve at
# D320 F10240 (L0 ≈ 56) was 1.4× faster with 2²¹ than with chunks of 512, 1.1× faster again
# with 2¹⁹, and 1.4× slower with 2¹⁷
CHUNK_ELEMENTS = 1 << 25
GRAM_ELEMENTS = 1 << 19
# ... but never fewer samples than this: at k = 512 (D1280 F10240, L0 ≈ 200) the rule above gives
# chunks of 2, whose per-kink overhead made a round 1.3–2× slower per sample than chunks of 8–32
MIN_CHUNK = 8
# the default pipeline starts with working sets for dictionaries of at least this many atoms
# (measured on a 2-core CPU, float32, B = 1,024: the path over the whole dictionary was 2× faster
# at F = 256, level at F = 1,024; the working sets were 1.5× faster at F = 4,096, 2.2× at
# F = 4,096 with B = 8,192)
MIN_ATOMS = 2048
# Newton steps on the active set after a path (D320 F10240, L0 ≈ 200: one step left a sample at
# a relative gap of 1.1e-6, which then cost the whole fallback, seconds)
REFINE = 3
# the samples left uncertified after the rounds: their support and this many of their worst
# violators solved exactly, at most FINISH_PASSES times
FINISH_VIOLATORS = 8
# a round extends the working set of a path that ends at τ = 1 by this many atoms off it where
# some violate their constraint, and follows the path on (``_extended``): in the first round
# every sample, later the samples whose set of k atoms holds fewer than k / FEW besides the
# active set and the violators; only for inputs of WIDE dimensions or more and sets of k > √F
# atoms (``_extend``). The check costs a product with all F atoms (F D per sample) and the
# kinks that follow cost the whole chunk; the round it saves forms k² D Gram entries besides
# its own product. Measured on a 2-core CPU, configurations alternating in one process,
# medians: D1280 F10240 B1024, L0 ≈ 50 non-negative 1.21 → 1.03 s, L0 ≈ 200 signed 7.7 →
# 6.1 s; at D320 F10240 B4096, L0 ≈ 50, non-negative 3.10 → 3.22 s and signed 3.60 → 3.97 s
# (the samples extended there, about a third of them, had been certified by the next round
# at less cost), and at D256 F4096 B1024 (k = 64 = √F) 213 → 249 ms; checking every sample
# in later rounds, or paths without slots to spare for the new atoms, was slower everywhere
EXTEND = 16
FEW = 4
FINISH_PASSES = 2


class WorkingSetResult(NamedTuple):
    """Codes and certificates of a working-set solve (NumPy arrays).

    Attributes:
      codes: ``(B, F)`` codes.
      gap: ``(B,)`` absolute duality gap over the full problem.
      objective: ``(B,)`` objective.
      certified: ``(B,)`` bool, relative gap ``≤ tol``.
      kinks: the most kinks a sample's paths took, summed over rounds.
    """

    codes: np.ndarray
    gap: np.ndarray
    objective: np.ndarray
    certified: np.ndarray
    kinks: int


def _ratios(G: jax.Array, reg: jax.Array, nonneg: bool) -> jax.Array:
    """``(B, F)`` ``excess(g_j) / λ_j``: ``|g_j| / λ_j`` (``nonneg``: ``max(g_j, 0) / λ_j``)."""
    return excess(G, nonneg) / reg[None, :]


def _scores(ratio: jax.Array, on: jax.Array) -> jax.Array:
    """``(B, F)`` how strongly each atom asks to join (``_ratios``), the atoms ``on`` (the
    active set) first (the largest finite value: ``row_top_k`` takes finite scores)."""
    return jnp.where(on, jnp.finfo(ratio.dtype).max, ratio)


def _next_sets(G, reg, atom, occ, pick, *, k_next: int, k: int, nonneg: bool):
    """The next working sets of the rows ``pick`` (None: all) of the correlations ``G (n, F)``
    with the residuals of the active sets ``(atom, occ) (n, K)``: the ``k_next`` atoms of
    highest ``_scores``, the ``k`` best first (each part in any order; the active set first).
    Returns ``(sets (m, k_next), their correlations, violators (m,))``: the atoms in the sets
    that violate their constraint (all of them unless more than ``k_next`` less the active set
    do).

    The scores are formed here, not with the certificate's product (there a second output over
    ``(n, F)`` and a second reduction took longer than the product itself). On a CPU the
    selection runs on the host (``host_argtop``: NumPy's introselect on every core, the split
    into the ``k`` best and the rest a second introselect of the selected scores; XLA's
    ``TopK`` is a single-threaded heap whose cost grows with ``k``, and sorting the selected
    scores took longer than the selection), between two compiled functions that JAX's
    persistent compilation cache keeps (it keeps none that holds a host callback); elsewhere
    it is ``row_top_k``."""
    scores = _set_scores(G, reg, atom, occ, pick, nonneg=nonneg)
    return _chosen(G, scores, _argtop(scores, k_next, k), pick)


def _argtop(scores: jax.Array, m: int, first: int = 0) -> jax.Array:
    """``(n, m)`` int32 the ``m`` highest of each row of ``scores (n, F)``, the ``first``
    highest first (each part in any order): on a CPU on the host (``host_argtop``, outside any
    compiled function), elsewhere ``row_top_k``."""
    if next(iter(scores.devices())).platform == "cpu":
        return jnp.asarray(host_argtop(np.asarray(scores), m, first))
    return _top_sets(scores, m, first)


@functools.partial(jax.jit, static_argnames="nonneg")
def _set_scores(G, reg, atom, occ, pick, *, nonneg: bool) -> jax.Array:
    """``(m, F)`` float32 ``_scores`` of the rows ``pick`` (None: all) of ``G``. Non-negative:
    the signed ``g_j / λ_j``, which ranks the atoms with ``g_j > 0`` as ``_ratios`` does (and
    the others by how far they are from joining); ``_ratios``' zeros, about half the atoms,
    would all tie, and ties made the introselect 1.9× slower (4,096 × 10,240)."""
    if pick is not None:
        G, atom, occ = G[pick], atom[pick], occ[pick]
    ratio = G / reg[None, :] if nonneg else _ratios(G, reg, nonneg)
    return _scores(ratio.astype(jnp.float32), _active_mask(atom, occ, G.shape[1]))


@functools.partial(jax.jit, static_argnums=(1, 2))
def _top_sets(scores: jax.Array, k: int, first: int) -> jax.Array:
    """``(m, k)`` the ``k`` highest ``scores``, the ``first`` highest first (off a CPU)."""
    return row_top_k(scores, k, split=first)[1]


@jax.jit
def _chosen(G, scores, sets, pick):
    """``_next_sets``' correlations and violators of the chosen ``sets``."""
    corr = jnp.take_along_axis(G, sets, 1) if pick is None else G[pick[:, None], sets]
    chosen = jnp.take_along_axis(scores, sets, 1)
    viol = jnp.sum((chosen > 1) & (chosen < jnp.finfo(chosen.dtype).max), axis=1)
    return sets, corr, viol


def _first_sets(X, W, reg, *, k: int, nonneg: bool) -> tuple[np.ndarray, np.ndarray]:
    """``(sets (B, k), corr (B, k))``: the atoms most correlated with each input (the residual
    at ``c = 0``) and their correlations."""
    none = jnp.zeros((X.shape[0], 1), bool)
    sets, corr, _ = _next_sets(
        _product(X, W), reg, none.astype(jnp.int32), none, None, k_next=k, k=k, nonneg=nonneg
    )
    return np.asarray(sets), np.asarray(corr)


@jax.jit
def _product(X, W):
    return X @ W.T


class Warm(NamedTuple):
    """A previous round's active set, carried into the next round: ``K`` slots with their atoms
    (global indices), occupancy, codes and the inverse Gram of the occupied slots."""

    atom: jax.Array  # (n, K) int32
    occ: jax.Array  # (n, K) bool
    codes: jax.Array  # (n, K)
    H: jax.Array  # (n, K, K)


def _warm_start(rows_of, corr, reg_S, warm: Warm, local, nonneg: bool):
    """The path's state at a previous round's active set ``warm`` (``local (n, K)``: its atoms'
    positions in this working set), and the slope that takes it down to ``λ``: ``Δ_j = p_j −
    λ_j``, with ``p_j`` penalties for which these codes are optimal: on the support ``p_j =
    max(excess(g_j), λ_j)`` (``g_j = p_j s_j``; a path stopped at ``τ > 1`` has ``p_j > λ_j``
    there), elsewhere ``p_j = τ0 λ_j ≥ excess(g_j)``, ``τ0 = max_j excess(g_j) / λ_j`` over the
    atoms off the support (as the usual path from ``c = 0``; the atom that violates its
    constraint most joins first). ``corr (n, k)``: the correlations with the residual of these
    codes; ``rows_of``: see ``_local_paths``. Returns ``(path, slope (n, k), Gram rows of the
    slots (n, K, k))``."""
    n, k = corr.shape
    occ, codes = warm.occ, jnp.where(warm.occ, warm.codes, 0)
    # the sign of a code (of its correlation for an atom that joined at the last kink, code 0)
    g_A = jnp.take_along_axis(corr, local, 1)
    sign = jnp.where(occ, jnp.where(codes != 0, jnp.sign(codes), jnp.sign(g_A)), 0)
    active = _active_mask(local, occ, k)
    rows = jnp.where(occ[:, :, None], rows_of(local), 0)
    over = excess(corr, nonneg)
    # inactive atoms: the penalty of the usual path, τ λ_j from τ0 = max_j excess(g_j) / λ_j
    # (were the violators' penalties their own excess, they would all join at one τ, and
    # joining one at a time can leave an earlier one with a direction of the wrong sign)
    tau0 = jnp.max(jnp.where(active, 0, over / reg_S), axis=1, keepdims=True)
    slope = jnp.where(active, jnp.maximum(over - reg_S, 0), (jnp.maximum(tau0, 1) - 1) * reg_S)
    w = jnp.take_along_axis(slope, local, 1) * sign
    d = jnp.where(occ, jnp.einsum("bij,bj->bi", warm.H, w), 0)
    p = path_start(corr, reg_S, occ.shape[1], nonneg)._replace(
        codes=codes,
        atom=local,
        occ=occ,
        sign=sign,
        H=warm.H,
        d=d,
        active=active,
        tau=jnp.full((n,), 2, corr.dtype),
        done=jnp.zeros((n,), bool),
    )
    return p, slope, rows


def _local_paths(corr, reg_S, rows_of, max_kinks, warm, local, *, K: int, nonneg: bool) -> Path:
    """Every sample's path on its working set down to ``τ = 1``, with ``K`` slots: from
    ``c = 0`` (``warm`` None), or from a previous round's active set ``warm`` whose atoms sit at
    ``local (n, K)`` in the set (``_warm_start``). ``corr (n, k)``: the correlations of the
    set's atoms with the residual (of ``x`` for a path from ``c = 0``);
    ``reg_S (n, k)``; ``rows_of(i (n, m)) -> (n, m, k)``: the Gram rows of the set's atoms
    ``i`` with the set."""
    n, k = corr.shape
    if warm is None:
        p, slope = path_start(corr, reg_S, K, nonneg), None
        rows = jnp.zeros((n, K, k), corr.dtype)
    else:
        p, slope, rows = _warm_start(rows_of, corr, reg_S, warm, local, nonneg)
    return _follow(p, rows, slope, reg_S, rows_of, max_kinks, nonneg=nonneg)


def _follow(p: Path, rows, slope, reg_S, rows_of, max_kinks, *, nonneg: bool) -> Path:
    """The paths ``p`` on their working sets (see ``_local_paths``) followed until none runs
    (or ``max_kinks`` kinks in all). ``rows (n, K, k)``: the Gram rows of the atoms in the
    slots; the Gram row of an atom is cached in its slot when it joins, so a kink costs
    ``O(K k + K²)`` per sample."""
    n, K = p.occ.shape

    def gram_row(q, j):
        g_j = rows_of(j[:, None])[:, 0]  # (n, k)
        gjj = jnp.take_along_axis(g_j, j[:, None], 1)[:, 0]
        return jnp.take_along_axis(g_j, q.atom, 1), gjj, g_j

    def cond(c):
        q = c[0]
        return (q.steps < max_kinks) & jnp.any(~q.done & ~q.paused)

    def body(c):
        q, rows = c
        q, _, new, g_j = path_step(
            q,
            reg_S,
            nonneg=nonneg,
            direction=lambda _, d: jnp.einsum("bs,bsk->bk", d, rows),
            gram_row=gram_row,
            slope=slope,
        )
        # the joining atom's Gram row into its slot, in place (a select would rewrite all rows)
        slot = jnp.where(jnp.any(new, axis=1), jnp.argmax(new, axis=1), K)
        return q, rows.at[jnp.arange(n), slot].set(g_j, mode="drop")

    return jax.lax.while_loop(cond, body, (p, rows))[0]


class Atoms(NamedTuple):
    """The dictionary as the rounds use it."""

    W: jax.Array  # (F, D)
    W_hi: jax.Array  # (F, D) in the certificate's precision
    gram: jax.Array | None  # (F, F) W Wᵀ where it pays (``_gram_pays``), else None
    reg: jax.Array  # (F,) λ
    spread: jax.Array  # () max_i ‖w_i‖ / λ_i, for the certificate's rounding bound


def _atoms(W, W_hi, reg) -> Atoms:
    """``Atoms`` without ``W Wᵀ`` (formed later, where it pays)."""
    return Atoms(W, W_hi, None, reg, jnp.max(jnp.linalg.norm(W, axis=1) / reg))


def _set_gram(W, gram, sets, base=None):
    """``(G, rows_of)``: a function ``rows_of`` giving the Gram rows of the atoms ``i (n, m)``
    of the working sets ``sets (n, k)`` with their set ``(n, m, k)``: gathered from the
    dictionary's Gram matrix ``gram (F, F)`` (``G`` None), or with ``gram`` None from the sets'
    own Gram matrices ``G (n, k, k)`` (``O(k² D)`` per sample; with ``base (n, k0, k0)`` the
    Gram matrices of the sets' first ``k0`` atoms, only the rows of the others are formed)."""
    if gram is not None:
        return None, lambda i: gram[jnp.take_along_axis(sets, i, 1)[:, :, None], sets[:, None, :]]
    W_S = W[sets]  # (n, k, D)
    if base is None:
        G = jnp.einsum("bkd,bjd->bkj", W_S, W_S)  # (n, k, k)
    else:
        k0 = base.shape[1]
        new = jnp.einsum("bvd,bjd->bvj", W_S[:, k0:], W_S)  # (n, k − k0, k)
        G = jnp.concatenate([jnp.concatenate([base, new[:, :, :k0].mT], axis=2), new], axis=1)
    return G, lambda i: jnp.take_along_axis(G, i[:, :, None], axis=1)


@functools.partial(jax.jit, static_argnames=("K", "nonneg", "extend"))
def _round(X, atoms: Atoms, sets, corr, max_kinks, warm, few, *, K: int, nonneg: bool, extend: int):
    """The restricted paths of a chunk, refined on their active sets.

    ``X (n, D)``, ``sets (n, k)``, ``corr (n, k)`` the correlations of the sets' atoms with the
    residual of the codes ``warm`` (of ``X`` when ``warm`` is None: paths from ``c = 0``),
    ``warm``: None or the previous round's active set (``Warm``, ``K`` slots; its atoms are in
    ``sets``). ``extend``: 0, or the atoms by which the paths of the samples ``few (n,)``
    (bool) that reach ``τ = 1`` extend their sets at once where atoms off the set violate
    their constraint (``_extended``).
    Returns ``(residuals (n, D) in W_hi's precision, sums (4, n) for the certificate,
    path_done (n,) bool, kinks, active set (Warm))``, refined by ``_refined`` where a path is
    done."""
    W, W_hi, gram, reg, _ = atoms
    reg_S = reg[sets]  # (n, k)
    local = None
    if warm is not None:  # the position of each slot's atom in the set
        local = jnp.argmax(sets[:, None, :] == warm.atom[:, :, None], axis=2).astype(jnp.int32)
    G_S, rows_of = _set_gram(W, gram, sets)
    p = _local_paths(corr, reg_S, rows_of, max_kinks, warm, local, K=K, nonneg=nonneg)
    if extend:
        slot_atoms, lam, p = _extended(
            X, atoms, (sets, reg_S, G_S), p, max_kinks, few, extend=extend, nonneg=nonneg
        )
    else:
        slot_atoms, lam = _in_slots(p, sets, reg_S)
    branches = (functools.partial(f, nonneg=nonneg) for f in (_refined, _as_is))
    cs, occ, H, R, sums = jax.lax.cond(jnp.any(p.done), *branches, X, W, W_hi, slot_atoms, lam, p)
    return R, sums, p.done, p.steps, Warm(slot_atoms, occ, cs, H)


def _in_slots(p: Path, sets, reg_S) -> tuple[jax.Array, jax.Array]:
    """``(atoms, λ)`` ``(n, K)`` of the slots of the paths ``p`` on the sets ``sets (n, k)``
    with penalties ``reg_S (n, k)``."""
    return jnp.take_along_axis(sets, p.atom, 1), jnp.take_along_axis(reg_S, p.atom, 1)


def _extended(X, atoms: Atoms, S, p: Path, max_kinks, few, *, extend: int, nonneg: bool):
    """The paths ``p`` on the working sets ``S = (sets (n, k), their λ (n, k), their Gram
    matrices or None)`` (see ``_set_gram``) of the samples ``few (n,)`` that reached ``τ = 1``
    with slots to spare for ``extend`` more atoms checked against every atom (one product of
    their residuals with the dictionary, skipped where there are none), and those whose
    constraints some atom off the set violates continued at once (``_warm_start``) on the set
    extended by the ``extend`` atoms off it of highest ``_ratios``: the kinks that a next round
    would take, without forming its working sets' Gram matrices again (nor its selections, its
    certificates and the Newton steps of this one). Returns ``(slot atoms (n, K), their λ,
    path)``."""
    W, _, gram, reg, _ = atoms
    sets, reg_S, G_S = S
    # (only paths with slots for all the new atoms: one whose slots fill pauses, and its set
    # must grow)
    check = p.done & few & (jnp.sum(p.occ, axis=1) + extend <= p.occ.shape[1])
    slot_atoms, lam = _in_slots(p, sets, reg_S)

    def keep(p):
        return slot_atoms, lam, p

    def checked(p):
        cs = jnp.where(p.occ, p.codes, 0)
        g = (X - jnp.einsum("bs,bsd->bd", cs, W[slot_atoms])) @ W.T  # (n, F)
        in_set = _active_mask(sets, jnp.ones(sets.shape, bool), W.shape[0])
        score = jnp.where(in_set, -1, _ratios(g, reg, nonneg))
        # (whether to extend from the scores, not from top_k's values: with those the kinks
        # that follow ran 6× slower on XLA:CPU, 42 against 7 ms for a chunk of 32 samples)
        ext = check & (jnp.max(score, axis=1) > 1)
        new = jax.lax.top_k(score, extend)[1]
        sets2 = jnp.concatenate([sets, new], axis=1)

        def grow(p):
            reg2 = jnp.concatenate([reg_S, reg[new]], axis=1)
            _, rows_of = _set_gram(W, gram, sets2, base=G_S)
            warm = Warm(p.atom, p.occ, p.codes, p.H)
            q, slope, rows = _warm_start(
                rows_of, jnp.take_along_axis(g, sets2, 1), reg2, warm, p.atom, nonneg
            )
            q = q._replace(done=~ext, steps=p.steps)
            q = _follow(q, rows, slope, reg2, rows_of, max_kinks, nonneg=nonneg)
            both = ext[:, None]
            p = p._replace(
                codes=jnp.where(both, q.codes, p.codes),
                atom=jnp.where(both, q.atom, p.atom),
                occ=jnp.where(both, q.occ, p.occ),
                sign=jnp.where(both, q.sign, p.sign),
                H=jnp.where(both[:, :, None], q.H, p.H),
                done=jnp.where(ext, q.done, p.done),
                steps=q.steps,
            )
            return *_in_slots(p, sets2, reg2), p

        return jax.lax.cond(jnp.any(ext), grow, keep, p)

    return jax.lax.cond(jnp.any(check), checked, keep, p)


def _refined(X, W, W_hi, slot_atoms, lam, p: Path, *, nonneg: bool):
    """Newton steps on the active sets of the paths at ``τ = 1`` in the highest available
    precision (they undo the drift of the incremental updates; with a float32 inverse Gram each
    step gains a few digits, and a support of a few hundred atoms needs more than one). Returns
    ``(codes, occupied, inverse Gram, residuals, sums)`` with the residuals ``r`` and the sums
    in ``W_hi``'s precision: ``(‖r‖², ⟨c, g⟩, Σ λ |c|, max |g_i| / λ_i)`` (``g = W r``, over
    the active atoms), for ``_certify``."""
    hi = W_hi.dtype
    W_A = W_hi[slot_atoms]  # (n, K, D)
    X_h = X.astype(hi)
    cs, occ, H = refine_active(
        X_h,
        W_A,
        lam.astype(hi),
        p.sign.astype(hi),
        p.codes.astype(hi),
        p.occ,
        p.H.astype(hi),
        p.done,
        steps=REFINE,
    )
    cs = cs.astype(X.dtype)
    c, lam = cs.astype(hi), jnp.where(occ, lam, 1).astype(hi)
    R = X_h - jnp.einsum("bs,bsd->bd", c, W_A)
    g = jnp.einsum("bsd,bd->bs", W_A, R)
    sums = (
        jnp.sum(R * R, axis=1),
        jnp.sum(c * g, axis=1),
        jnp.sum(lam * jnp.abs(c), axis=1),
        jnp.max(jnp.where(occ, excess(g, nonneg) / lam, 0), axis=1),
    )
    return cs, occ, H.astype(X.dtype), R, jnp.stack(sums)


def _as_is(X, W, W_hi, slot_atoms, lam, p: Path, *, nonneg: bool):
    """``_refined`` for a chunk whose paths all stopped short of ``τ = 1`` (nothing to refine
    or certify: the residuals in ``X``'s precision only choose the next working sets)."""
    cs = jnp.where(p.occ, p.codes, 0)
    R = X - jnp.einsum("bs,bsd->bd", cs, W[slot_atoms])
    return cs, p.occ, p.H, R.astype(W_hi.dtype), jnp.zeros((4, X.shape[0]), W_hi.dtype)


@functools.partial(jax.jit, static_argnames=("nonneg",))
def _certify(R, sums, W, reg, spread, active: Warm, done, *, nonneg: bool):
    """The duality gaps and objectives over all atoms of the codes of the active sets
    ``active`` (``inf`` and 0 unless some path is ``done``: only those can be certified), where
    these gaps rest on a bound, and the correlations ``G = W R`` (the codes' dtype).

    ``R (n, D)``: the residuals and ``sums (4, n)`` the sums over the active atoms
    (``_refined``), in the certificate's precision; ``spread``: ``Atoms.spread``. The product
    with the whole dictionary is in the codes' precision: the gap needs ``max_i |g_i| / λ_i``
    over the atoms off the active set only through an upper bound, ``max_i (|G_i| + e_i) /
    λ_i`` with ``e_i = (D + 2) u ‖r‖ ‖w_i‖`` a bound on the rounding error of ``G_i`` (``u`` the
    unit roundoff; the rounding of ``r`` and a sum of ``D`` products in any order): the dual
    point stays feasible, and the gap is an upper bound of the gap in exact arithmetic, equal to
    it unless the bound exceeds the ratios of the active atoms. ``low (n,)``: the gap with the
    rounding error taken off instead (``max_i (|G_i| − e_i) / λ_i``), below the exact gap
    wherever the gap grows with ``max_i |g_i| / λ_i`` (as near a solution, where ``⟨c, g⟩ ≥
    0``); ``_certify_block`` certifies again by ``_exact_gap`` only where ``low`` passes the
    tolerance and ``gap`` does not (no sample is certified by ``low``)."""
    n = R.shape[0]
    dt, hi = active.codes.dtype, R.dtype
    G = jnp.dot(R.astype(dt), W.T, precision="highest")

    def certificate(sums):
        # max_i (|G_i| + e_i) / λ_i ≤ max_i |G_i| / λ_i + (D + 2) u ‖r‖ max_i ‖w_i‖ / λ_i, each
        # term rounded up for the rounding of its own evaluation
        u = jnp.finfo(dt).eps / 2
        up = 1 + 4 * u
        e = (W.shape[1] + 2) * u * 1.01 * jnp.sqrt(sums[0]) * (spread * up).astype(hi)
        off_max = _off_max(G, reg, active, nonneg).astype(hi)
        gap, obj = _gap(sums, off_max * up + e, active, nonneg)
        low, _ = _gap(sums, jnp.maximum(off_max / up - e, 0), active, nonneg)
        return gap.astype(dt), low.astype(dt), obj.astype(dt)

    def none(sums):
        inf = jnp.full((n,), jnp.inf, dt)
        return inf, inf, jnp.zeros((n,), dt)

    gap, low, obj = jax.lax.cond(jnp.any(done), certificate, none, sums)
    return gap, low, obj, G


@functools.partial(jax.jit, static_argnames=("nonneg",))
def _exact_gap(R, sums, W_hi, reg, active: Warm, *, nonneg: bool):
    """``_certify``'s gaps with the correlations off the active set in the certificate's
    precision, for the few samples where its bound decides (an atom off the active set within
    the rounding error of its constraint)."""
    off_worst = _off_max(R @ W_hi.T, reg.astype(R.dtype), active, nonneg)
    return _gap(sums, off_worst, active, nonneg)[0].astype(active.codes.dtype)


def _off_max(G, reg, active: Warm, nonneg: bool) -> jax.Array:
    """``(n,)`` ``max_i excess(g_i) / λ_i`` over the atoms off the active sets ``active``."""
    on = _active_mask(active.atom, active.occ, G.shape[1])
    return jnp.max(jnp.where(on, 0, _ratios(G, reg, nonneg)), axis=1)


def _active_mask(atom: jax.Array, occ: jax.Array, F: int) -> jax.Array:
    """``(n, F)`` bool: the atoms ``atom (n, K)`` of the occupied slots ``occ``."""
    idx = jnp.where(occ, atom, F)
    return (
        jnp.zeros((atom.shape[0], F), bool)
        .at[jnp.arange(atom.shape[0])[:, None], idx]
        .set(True, mode="drop")
    )


def _gap(sums, off_worst, active: Warm, nonneg: bool):
    """``(gap, objective)`` from ``_refined``'s sums and the largest ratio off the active set
    (or an upper bound of it)."""
    RR, CG, pen, worst_on = sums
    negative = jnp.any(active.occ & (active.codes < 0), axis=1) if nonneg else None
    return gap_from_sums(RR, CG, pen, jnp.maximum(worst_on, off_worst), negative)


def dense_codes(active: Warm, F: int) -> np.ndarray:
    """``(n, F)`` the codes of the active sets ``active`` (NumPy)."""
    n = active.occ.shape[0]
    return _scatter_codes(np.zeros((n, F), active.codes.dtype), np.arange(n), active, np.arange(n))


def _scatter_codes(codes: np.ndarray, rows: np.ndarray, active: Warm, i: np.ndarray) -> np.ndarray:
    """``codes`` with the rows ``rows[i]`` holding the codes of the active sets ``i`` of
    ``active`` (their rows assumed zero)."""
    r, slot = np.nonzero(active.occ[i])
    codes[rows[i][r], active.atom[i][r, slot]] = active.codes[i][r, slot]
    return codes


def _last_codes(ends: list, B: int, F: int) -> np.ndarray:
    """``(B, F)`` each sample's codes at the end of its last round, from the rounds' ``(rows,
    active sets)`` in order (each sample written once, not once a round)."""
    codes = np.zeros((B, F), ends[0][1].codes.dtype)
    written = np.zeros((B,), bool)
    for rows, active in reversed(ends):
        new = np.flatnonzero(~written[rows])
        _scatter_codes(codes, rows, active, new)
        written[rows[new]] = True
    return codes


def _chunk(k: int, D: int, n: int) -> int:
    """Samples per chunk: a power of two with ``chunk·k·D ≤ CHUNK_ELEMENTS`` and
    ``chunk·k² ≤ GRAM_ELEMENTS`` (but at least ``MIN_CHUNK``), at most ``n``'s bucket."""
    fit = max(MIN_CHUNK, min(CHUNK_ELEMENTS // (k * D), GRAM_ELEMENTS // (k * k)))
    return min(bucket(n), 1 << (fit.bit_length() - 1))


def _extend(k: int, F: int, D: int) -> int:
    """The atoms by which a round on sets of ``k`` atoms of a dictionary ``(F, D)`` extends its
    sets (``_extended``; 0: it does not)."""
    return EXTEND if D >= WIDE and k * k > F else 0


def _slots(k: int, D: int) -> int:
    """The slots of a working set of ``k`` atoms: at most ``k / 2`` atoms active (more and the
    set grows), and at most ``D``."""
    return min(max(k // 2, 1), D)


class Ends(NamedTuple):
    """Where a round's paths ended (NumPy): residuals ``(n, D)`` and sums ``(n, 4)`` in the
    certificate's precision (``_refined``), paths done ``(n,)`` and active sets (``Warm``)."""

    R: np.ndarray
    sums: np.ndarray
    done: np.ndarray
    active: Warm


def _paths(X, atoms: Atoms, sets, corr, warm, few=None, *, nonneg: bool, max_kinks: int):
    """``_round`` over chunks of samples (the last one padded), as many at once as the host
    has cores (``map_parts``: a chunk's kinks are small operations that leave cores idle):
    ``(Ends, the most kinks of a chunk)``. ``warm``: None or the previous active sets (``Warm``
    of NumPy arrays, ``_slots`` slots); ``few``: ``(n,)`` bool, the samples whose paths may
    extend their working sets (``_extended``) when they reach ``τ = 1`` (None: all)."""
    n, k = sets.shape
    size, extend = _chunk(k, X.shape[1], n), _extend(k, *atoms.W.shape)
    max_kinks = jnp.asarray(max_kinks, jnp.int32)

    def chunk(start: int) -> tuple[list, int]:
        take = pad_index(np.arange(start, min(start + size, n)), size)
        R, sums, done, kinks, active = _round(
            jnp.asarray(X[take]),
            atoms,
            jnp.asarray(sets[take]),
            jnp.asarray(corr[take]),
            max_kinks,
            None if warm is None else Warm(*(jnp.asarray(a[take]) for a in warm)),
            jnp.ones((size,), bool) if few is None else jnp.asarray(few[take]),
            K=_slots(k, X.shape[1]),
            nonneg=nonneg,
            extend=extend,
        )
        return [np.asarray(x) for x in (R, sums.T, done, *active)], int(kinks)

    starts = list(range(0, n, size))
    outs, steps = None, 0
    for start, (part, kinks) in zip(starts, map_parts(chunk, starts, host_workers()), strict=True):
        steps = max(steps, kinks)
        if outs is None:  # the results of all chunks, filled in place (the inverse Grams of
            # thousands of samples take gigabytes)
            outs = [np.empty((n, *x.shape[1:]), x.dtype) for x in part]
        m = min(size, n - start)
        for out, x in zip(outs, part, strict=True):
            out[start : start + m] = x[:m]
    return Ends(outs[0], outs[1], outs[2], Warm(*outs[3:])), steps


def _chunked_round(X, atoms: Atoms, sets, corr, warm, few=None, *, tol, nonneg, k_next, max_kinks):
    """One round of a group of samples: the paths (``_paths``, in chunks), then the
    certificates and the next working sets of the samples not certified (relative gap ``≤
    tol``), in blocks of ``CERTIFY_ROWS`` or fewer samples (``_certify_block``: one product with
    the whole dictionary per block, where a chunk of paths is too small to read it
    efficiently). NumPy results: ``(gaps, objectives, certified, paths done, next working sets,
    their correlations, violators, active sets (Warm), most kinks of a chunk)``; the next sets
    of certified samples are zeros."""
    ends, steps = _paths(X, atoms, sets, corr, warm, few, nonneg=nonneg, max_kinks=max_kinks)
    n, k = sets.shape
    F = atoms.W.shape[0]
    block = min(CERTIFY_ROWS, 1 << (max(CERTIFY_ELEMENTS // F, 8).bit_length() - 1))
    outs = [
        _certify_block(
            np.arange(start, min(start + block, n)), ends, atoms,
            tol=tol, nonneg=nonneg, k=k, k_next=k_next,
        )
        for start in range(0, n, block)
    ]  # fmt: skip
    gap, obj, ok, next_sets, next_corr, viol = (np.concatenate(x) for x in zip(*outs, strict=True))
    return gap, obj, ok, ends.done, next_sets, next_corr, viol, ends.active, steps


def _certify_block(part, ends: Ends, atoms: Atoms, *, tol, nonneg, k, k_next):
    """The rows ``part`` of a round's results (``_paths``): their gaps (``_certify``, those
    resting on its bound again by ``_exact_gap``), objectives, certified, next working sets
    and their correlations (for the samples that go on), and violators, as NumPy arrays."""
    R, sums, done, active = ends
    take = pad_index(part, bucket(len(part), smallest=8))
    # (the inverse Grams stay on the host: the certificates do not read them)
    block_active = Warm(*(jnp.asarray(a[take]) for a in active[:3]), None)
    gap, low, obj, G = _certify(
        jnp.asarray(R[take]),
        jnp.asarray(sums[take].T),
        atoms.W,
        atoms.reg,
        atoms.spread,
        block_active,
        jnp.asarray(done[take]),
        nonneg=nonneg,
    )
    gap, low, obj = (np.array(x)[: len(part)] for x in (gap, low, obj))
    # certified again in full precision where the bound on the rounding decides
    again = np.flatnonzero(
        done[part] & (relative_gaps(gap, obj) > tol) & (relative_gaps(low, obj) <= tol)
    )
    if len(again):
        pick = pad_index(again, bucket(len(again), smallest=8))
        exact = _exact_gap(
            jnp.asarray(R[part[pick]]),
            jnp.asarray(sums[part[pick]].T),
            atoms.W_hi,
            atoms.reg,
            Warm(*(a[pick] for a in block_active[:3]), None),
            nonneg=nonneg,
        )
        gap[again] = np.asarray(exact)[: len(again)]
    ok = done[part] & (relative_gaps(gap, obj) <= tol)
    go = np.flatnonzero(~ok)
    nxt = [np.zeros((len(part), k_next), np.int32), np.zeros((len(part), k_next), G.dtype)]
    nxt.append(np.zeros((len(part),), np.int32))
    if len(go):  # the selections only for the samples that go on (for all if most do: cheaper
        # than taking their rows)
        every = 2 * len(go) >= len(take)
        pick = None if every else jnp.asarray(pad_index(go, bucket(len(go), smallest=8)))
        chosen = _next_sets(
            G, atoms.reg, block_active.atom, block_active.occ, pick,
            k_next=k_next, k=k, nonneg=nonneg,
        )  # fmt: skip
        for out, x in zip(nxt, chosen, strict=True):
            out[go] = np.asarray(x)[go] if every else np.asarray(x)[: len(go)]
    return gap, obj, ok, *nxt


def _unchanged(sets: np.ndarray, next_sets: np.ndarray) -> np.ndarray:
    """``(n,)`` bool: the next working set holds the same atoms (another round would repeat
    this one: the sample's path is complete, and only its precision missed the tolerance)."""
    return np.all(np.sort(sets, axis=1) == np.sort(next_sets, axis=1), axis=1)


def _merge(groups: list, D: int, work: np.ndarray) -> list:
    """The groups ``(rows, sets, corr, k, warm, i)`` (their active sets: the rows ``i`` of
    ``warm``) of equal ``k`` joined, their active sets in ``_slots(k, D)`` slots (free slots
    padded): fewer, larger calls (and fewer shapes to compile); each group's rows in the order
    of ``work (B,)`` (a sample's paths run in chunks, as long as the longest of its chunk:
    similar samples together waste fewer kinks). Returns groups ``(rows, sets, corr, k,
    warm)``."""
    by_k: dict[int, list] = {}
    for group in groups:
        by_k.setdefault(group[3], []).append(group)
    merged = []
    for k, parts in sorted(by_k.items()):
        rows = np.concatenate([part[0] for part in parts])
        order = np.argsort(work[rows], kind="stable")
        at = np.empty_like(order)
        at[order] = np.arange(len(order))  # where each row of the parts goes
        n, K, first = len(rows), _slots(k, D), parts[0]
        sets, corr = np.empty((n, k), first[1].dtype), np.empty((n, k), first[2].dtype)
        dt = first[4].codes.dtype
        warm = Warm(
            np.zeros((n, K), np.int32), np.zeros((n, K), bool), np.zeros((n, K), dt),
            np.zeros((n, K, K), dt),
        )  # fmt: skip
        start = 0
        for r, s, c, _, w, i in parts:
            to, m = at[start : start + len(r)], w.occ.shape[1]
            start += len(r)
            sets[to], corr[to] = s, c
            warm.atom[to, :m], warm.occ[to, :m] = w.atom[i], w.occ[i]
            warm.codes[to, :m], warm.H[to, :m, :m] = w.codes[i], w.H[i]
        # the samples with few atoms in their set besides the active set and the violators: the
        # paths that reach τ = 1 then often find more violators off the set (``_extended``)
        few = k - warm.occ.sum(axis=1) - work[rows[order]] < k // FEW
        merged.append((rows[order], sets, corr, k, warm, few))
    return merged


def _gram_pays(n: int, k: int, W) -> bool:
    """Whether the rounds use the dictionary's Gram matrix ``W Wᵀ`` from now on: it fits in
    ``GRAM_BYTES`` and a round of ``n`` samples with sets of ``k`` atoms would otherwise form
    at least as many Gram entries (``n k²``) as it has (``F²``)."""
    F = W.shape[0]
    return F * F * W.dtype.itemsize <= GRAM_BYTES and n * k * k >= F * F


def solve_working_sets(
    X, W, reg, tol: float, *, nonneg: bool, rounds: int = 8, max_kinks: int = 4096
) -> WorkingSetResult:
    """Every sample's lasso by exact paths on working sets (outside ``jit``; see the module
    docstring). Samples not certified after ``rounds`` rounds (or whose working set would pass
    ``MAX_SIZE``) keep their last codes, a warm start for other methods."""
    B, D = X.shape
    F = W.shape[0]
    X_np = np.asarray(X)
    gap = np.full((B,), np.inf, X_np.dtype)
    obj = np.zeros((B,), X_np.dtype)
    certified = np.zeros((B,), bool)
    atoms = _atoms(W, W.astype(high_dtype(X.dtype)), reg)
    k = min(F, MIN_SIZE * (2 if D >= WIDE else 1))
    groups = [(np.arange(B), *_first_sets(X, W, reg, k=k, nonneg=nonneg), k, None, None)]
    kinks, viol, ends = 0, np.zeros((B,), np.int64), []
    for _ in range(rounds):
        todo, most = [], 0
        for rows, sets, corr, k, warm, few in groups:
            k_next = min(F, 2 * k)
            if atoms.gram is None and _gram_pays(len(rows), k, W):
                atoms = atoms._replace(gram=dictionary_gram(W, GRAM_BYTES))
            # after the first round, each path starts from the previous round's active set
            gap_r, obj_r, ok, done_r, nxt, nxt_corr, viol[rows], active, steps = _chunked_round(
                X_np[rows],
                atoms,
                sets,
                corr,
                warm,
                few,
                tol=tol,
                nonneg=nonneg,
                k_next=k_next,
                max_kinks=max_kinks,
            )
            most = max(most, steps)
            gap[rows], obj[rows], certified[rows] = gap_r, obj_r, ok
            ends.append((rows, active._replace(H=None)))
            # the others go round again, with twice the atoms where the support fills half
            grow = (2 * active.occ.sum(axis=1) > k) | ~done_r
            same = np.flatnonzero(~ok & ~grow & ~_unchanged(sets, nxt[:, :k]))
            if len(same):
                todo.append((rows[same], nxt[same][:, :k], nxt_corr[same][:, :k], k, active, same))
            more = np.flatnonzero(~ok & grow)
            if len(more) and k < k_next <= MAX_SIZE:
                todo.append((rows[more], nxt[more], nxt_corr[more], k_next, active, more))
        kinks += most
        groups = _merge(todo, D, viol)
        if not groups:
            break
    codes = _last_codes(ends, B, F)
    _finish(X_np, atoms.W_hi, reg, codes, gap, obj, certified, tol, nonneg=nonneg)
    return WorkingSetResult(codes, gap, obj, certified, kinks)


def _support_and_violators(X, W_hi, reg, C, *, S: int, V: int, nonneg: bool):
    """Each row's support (at most ``S`` atoms) joined by its ``V`` atoms that violate their
    constraint most (``|g_j| > λ_j``), the equations solved on that set in the certificate's
    precision (``refine_active`` with the inverse of its Gram matrix, which also removes codes
    of the wrong sign), rounded to ``C.dtype`` to nearest or toward zero, whichever has the
    smaller duality gap. (The selections run between compiled functions: ``_argtop``.)

    Returns ``(codes (n, F) in C.dtype, gap (n,), objective (n,))``."""
    g, violation, on = _violations(X, W_hi, reg, C, nonneg=nonneg)
    atom = jnp.concatenate([_argtop(on, S), _argtop(violation, V)], axis=1)  # (n, S + V)
    return _solve_on_sets(X, W_hi, reg, C, g, violation, atom, S=S, nonneg=nonneg)


@functools.partial(jax.jit, static_argnames="nonneg")
def _violations(X, W_hi, reg, C, *, nonneg: bool):
    """``(g, violation, on)``: the correlations ``g = W r`` of the codes ``C`` in the
    certificate's precision, ``excess(g_j) / λ_j`` off the support (0 on it) and the support
    (1.0 on it), both float32 ``(n, F)``."""
    hi = W_hi.dtype
    g = (X.astype(hi) - C.astype(hi) @ W_hi) @ W_hi.T
    on = C != 0
    violation = jnp.where(on, 0, _ratios(g, reg.astype(hi), nonneg)).astype(jnp.float32)
    return g, violation, on.astype(jnp.float32)


@functools.partial(jax.jit, static_argnames=("S", "nonneg"))
def _solve_on_sets(X, W_hi, reg, C, g, violation, atom, *, S: int, nonneg: bool):
    """``_support_and_violators`` on the sets ``atom (n, S + V)``: the first ``S`` from the
    support, the others the worst violators (``_violations``)."""
    n, F = C.shape
    hi = W_hi.dtype
    X_h, reg_h = X.astype(hi), reg.astype(hi)
    on = jnp.take_along_axis(C, atom[:, :S], 1) != 0
    occ = jnp.concatenate([on, jnp.take_along_axis(violation, atom[:, S:], 1) > 1], axis=1)
    c0 = jnp.take_along_axis(C, atom, 1).astype(hi)
    g_A = jnp.take_along_axis(g, atom, 1)
    sign = jnp.ones_like(c0) if nonneg else jnp.where(c0 != 0, jnp.sign(c0), jnp.sign(g_A))
    W_A = W_hi[atom]  # (n, S + V, D)
    both = occ[:, :, None] & occ[:, None, :]
    eye = jnp.eye(atom.shape[1], dtype=hi)[None]
    Gram = jnp.where(both, jnp.einsum("bkd,bjd->bkj", W_A, W_A), eye)
    L = jax.lax.linalg.cholesky(Gram)
    L_inv = jax.lax.linalg.triangular_solve(
        L, jnp.broadcast_to(eye, L.shape), left_side=True, lower=True
    )
    H = jnp.where(both, jnp.einsum("bki,bkj->bij", L_inv, L_inv), 0)
    lam = reg_h[atom]
    cs, occ, _ = refine_active(X_h, W_A, lam, sign, c0, occ, H, jnp.ones((n,), bool), steps=REFINE)
    idx = jnp.where(occ, atom, F)

    def rounded(c):
        C2 = jnp.zeros_like(C).at[jnp.arange(n)[:, None], idx].set(c, mode="drop")
        R = X_h - jnp.einsum("bs,bsd->bd", c.astype(hi), W_A)
        gap, obj = gap_from_residual(C2.astype(hi), R, R @ W_hi.T, reg_h, nonneg)
        return C2, gap.astype(C.dtype), obj.astype(C.dtype)

    # the exact codes rounded to C.dtype to nearest, and toward zero: the gap of the rounded
    # codes is first order in the rounding errors, and toward zero their first-order term is
    # negative (a support of a few hundred atoms can miss 1e-6 by the nearest rounding alone)
    near = cs.astype(C.dtype)
    zero = jnp.where(
        jnp.abs(near.astype(hi)) > jnp.abs(cs), jnp.nextafter(near, jnp.zeros_like(near)), near
    )
    (C_a, gap_a, obj_a), (C_b, gap_b, obj_b) = rounded(near), rounded(zero)
    pick = gap_b < gap_a
    return (
        jnp.where(pick[:, None], C_b, C_a),
        jnp.where(pick, gap_b, gap_a),
        jnp.where(pick, obj_b, obj_a),
    )


def _finish(X, W_hi, reg, codes, gap, obj, certified, tol: float, *, nonneg: bool) -> None:
    """The samples the rounds leave uncertified (few: a path that, in float32, missed a kink
    within a hair of its end, so that an atom violates its constraint by ~1e-6 or a code has
    the wrong sign), tried on their support joined by their worst violators, up to
    ``FINISH_PASSES`` times (again only where the previous pass improved the codes); a result
    is kept where its gap is smaller. Updates the arrays in place."""
    D = X.shape[1]
    left = np.flatnonzero(~certified)
    for _ in range(FINISH_PASSES):
        nnz = (codes[left] != 0).sum(axis=1)
        fits = (nnz > 0) & (nnz + FINISH_VIOLATORS <= D)
        left, nnz = left[fits], nnz[fits]
        if len(left) == 0:
            return
        take = pad_index(left, bucket(len(left), smallest=8))
        C2, gap2, obj2 = (
            np.asarray(a)[: len(left)]
            for a in _support_and_violators(
                jnp.asarray(X[take]),
                W_hi,
                reg,
                jnp.asarray(codes[take]),
                S=bucket(int(nnz.max()), smallest=8),
                V=FINISH_VIOLATORS,
                nonneg=nonneg,
            )
        )
        better = gap2 < gap[left]
        rows = left[better]
        codes[rows], gap[rows], obj[rows] = C2[better], gap2[better], obj2[better]
        certified[rows] = relative_gaps(gap2[better], obj2[better]) <= tol
        left = rows[~certified[rows]]  # another pass only where this one changed the codes
