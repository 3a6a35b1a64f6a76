"""Compaction: a large batch solved in blocks of shrinking static size as samples finish."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jaxsae.kernels.solvers.common import COMPACT_MIN, IterOptions, Solution, bucket, pad_index
from jaxsae.kernels.solvers.proximal import Carry, solve_core


def solve_compacted(X, W, reg, C0, step_size, tol, max_steps: int, opts: IterOptions) -> Solution:
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
        sol, carry = solve_core(
            Xb,
            W,
            reg,
            Cb,
            carry,
            step_size,
            tol,
            jnp.asarray(max_steps - steps, jnp.int32),
            jnp.asarray(min_running, jnp.int32),
            opts=opts,
        )
        steps += int(sol.num_steps)
        m = len(rows)
        codes = codes.at[rows].set(sol.codes[:m])
        gap = gap.at[rows].set(sol.gap[:m])
        obj = obj.at[rows].set(sol.objective[:m])
        left = np.flatnonzero(~np.asarray(carry.done[:m]))
        if len(left) == 0 or steps >= max_steps or min_running == 0:
            break
        size = bucket(len(left))
        take = jnp.asarray(pad_index(left, size))
        real = (jnp.arange(size) < len(left))[:, None]
        rows = rows[left]
        Xb = jnp.where(real, Xb[take], 0)
        Cb = jnp.where(real, sol.codes[take], 0)
        carry = Carry(
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
