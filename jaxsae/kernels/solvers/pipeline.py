"""The default pipeline: working sets, the full path, then FISTA for what is left."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jaxsae.kernels.lasso import relative_gap
from jaxsae.kernels.row_select import host_workers
from jaxsae.kernels.solvers import working_set
from jaxsae.kernels.solvers.common import (
    COMPACT_MIN,
    IterOptions,
    Solution,
    bucket,
    default_step,
    map_parts,
    pad_index,
)
from jaxsae.kernels.solvers.compaction import solve_compacted
from jaxsae.kernels.solvers.homotopy import follow_paths, grams
from jaxsae.kernels.solvers.proximal import solve_core

# the paths over the whole dictionary run on at most this many samples at a time, and at most
# PATH_CHUNK_ELEMENTS correlations (their (B, F) state then stays in cache; measured on a 2-core
# CPU, B = 8,192: D64 F256 0.50 → 0.37 s, D256 F1024 1.56 → 1.18 s; chunks of 512 or 2,048 were
# no faster then; with the atoms' sum in the direction (homotopy.ROWS_PER_DIM), D64 F1024 in
# chunks of 512 instead of 1,024: 1.00 → 0.82 s, medians of 6, level at D256 F1024 and D64 F256)
PATH_CHUNK = 1024
PATH_CHUNK_ELEMENTS = 1 << 19

# ... and in parts of at least this many samples, as many at once as the host has cores: a
# kink's many small XLA:CPU operations leave cores idle, and independent parts fill them
# (measured on 2 cores, whole solves against one part at a time: D64 F256 B1k 52.5 -> 36.9 ms
# in two parts of 512, B8k 231 -> 194 ms; D64 F1024 B1k 120 -> 109 ms; D256 F1024 level)
PATH_PART_MIN = 256


def solve_from_path(X, W, reg, step_size, tol, max_steps: int, opts: IterOptions) -> Solution:
    """Exact paths on working sets for every sample (``solve_working_sets``) when ``F ≥
    working_set.MIN_ATOMS``, else the path over the whole dictionary (``follow_paths``, in
    parts of at most ``PATH_CHUNK`` samples and ``PATH_CHUNK_ELEMENTS`` correlations on a thread
    pool), then the iterations (``solve_compacted``, or one block zero-padded to a power of two
    ``≥ 8``) for any sample still not certified, from the best codes so far. (After working
    sets the path over all atoms is not tried: the samples they leave have supports past its
    slots or codes whose float32 rounding misses ``tol`` by a hair, and at ``F = 10,240`` its
    kinks over a padded block cost seconds.) ``step_size``: ``None`` for ``1 / L``, computed
    only if iterations are needed."""
    if W.shape[0] >= working_set.MIN_ATOMS:
        r = working_set.solve_working_sets(X, W, reg, float(tol), nonneg=opts.nonneg)
        best = [r.codes, r.gap, r.objective, r.certified, r.kinks]
    else:
        best = _full_paths(X, W, reg, float(tol), nonneg=opts.nonneg)
    codes, gap, obj, certified, steps = best
    left = np.flatnonzero(~certified)
    if len(left):
        steps += _iterate(X, W, reg, step_size, tol, max_steps, opts, (codes, gap, obj), left)
    gap, obj = jnp.asarray(gap), jnp.asarray(obj)
    return Solution(
        codes=jnp.asarray(codes),
        num_steps=jnp.asarray(steps, jnp.int32),
        converged=jnp.all(relative_gap(gap, obj) <= tol),
        objective=obj,
        gap=gap,
    )


def _full_paths(X, W, reg, tol: float, *, nonneg: bool) -> list:
    """``[codes (B, F), gap, objective, certified, kinks]`` (NumPy, an int) of the paths over
    the whole dictionary, in parts of at most ``PATH_CHUNK`` samples (and ``PATH_CHUNK_ELEMENTS``
    correlations), several at once (``PATH_PART_MIN``)."""
    B, F = X.shape[0], W.shape[0]
    X_np, G = np.asarray(X), grams(W, B)
    workers = host_workers()
    chunk = max(min(PATH_CHUNK, PATH_CHUNK_ELEMENTS // F), 1)
    n_parts = max(-(-B // chunk), min(workers, B // PATH_PART_MIN), 1)
    parts = np.array_split(np.arange(B), n_parts)

    def paths(part):
        return follow_paths(
            jnp.asarray(X_np[part]),
            W,
            reg,
            tol,
            nonneg=nonneg,
            G=G,
            **path_limits(W),
        )

    codes = np.zeros((B, F), X.dtype)
    gap, obj = np.full((B,), np.inf, X.dtype), np.zeros((B,), X.dtype)
    certified, steps = np.zeros((B,), bool), 0
    for part, (c, g, o, ok, kinks) in zip(parts, map_parts(paths, parts, workers), strict=True):
        better = g < gap[part]  # (finite gaps only: else the iterations start from zero)
        sel = part[better]
        codes[sel], gap[sel], obj[sel] = c[better], g[better], o[better]
        certified[part] = ok
        steps = max(steps, kinks)
    return [codes, gap, obj, certified, steps]


def path_limits(W) -> dict[str, int]:
    """``follow_paths``' slots and kinks for the dictionary ``W (F, D)``: at most ``min(128,
    F, D)`` slots, and four kinks per slot plus 64."""
    max_slots = min(128, *W.shape)
    return {"max_slots": max_slots, "max_kinks": 4 * max_slots + 64}


def _iterate(X, W, reg, step_size, tol, max_steps, opts, best: tuple, left) -> int:
    """The iterations for the samples ``left``, from their codes so far: ``best = (codes,
    gap, objective)`` (NumPy, updated in place). Returns the iterations run."""
    codes, gap, obj = best
    n = len(left)
    size = n if n >= COMPACT_MIN else bucket(n, smallest=8)
    take = pad_index(left, size)
    real = (np.arange(size) < n)[:, None]
    eta = default_step(W, X.dtype) if step_size is None else step_size
    sub = (
        jnp.asarray(np.where(real, np.asarray(X)[take], 0)),
        W,
        reg,
        jnp.asarray(np.where(real, codes[take], 0)),
        eta,
        tol,
    )
    rest = iterate(*sub, max_steps, opts, compact=size >= COMPACT_MIN)
    codes[left] = np.asarray(rest.codes)[:n]
    gap[left] = np.asarray(rest.gap)[:n]
    obj[left] = np.asarray(rest.objective)[:n]
    return int(rest.num_steps)


def iterate(X, W, reg, init, eta, tol, max_steps: int, opts: IterOptions, *, compact: bool):
    """The iterations from ``init``: ``solve_compacted`` (``compact``, outside ``jit``) or one
    ``solve_core`` block. Returns the ``Solution``."""
    if compact:
        return solve_compacted(X, W, reg, init, eta, tol, max_steps, opts)
    steps, zero = jnp.asarray(max_steps, jnp.int32), jnp.asarray(0, jnp.int32)
    return solve_core(X, W, reg, init, None, eta, tol, steps, zero, opts=opts)[0]
