"""The ``m`` largest entries of each row, fast on every backend (the TopK family's selection).

``row_top_k(x, m)`` returns the same entries as ``lax.top_k(x, m)``, in no particular order
within a row. On GPU and TPU it *is* ``lax.top_k``. On CPU, XLA's ``TopK`` is a single-threaded
partial sort (a heap of ``m`` entries) whose cost grows with ``m`` and with how late a row's large
entries come: measured at 4,096 rows × 2,560 (2 cores), 67 ms for ``m = 64``, 120 ms for
``m = 128``, 94 ms for ``m = 64`` when the row begins with 256 very negative entries (dead
features). There the indices come instead from NumPy's introselect (``np.argpartition``, linear
in the row, the GIL released) run on every core over slices of the rows, through a host
callback that hands XLA's buffers to NumPy without a copy: about 20 ms for either ``m``
(``benchmarks/topk_step.py`` times the whole train step).

The callback is lowered with JAX's own Python-callback emitter (``jax._src.callback``, the one
``jax.pure_callback`` uses; ``pure_callback`` itself first copies its operands into a
``jax.Array``, which costs as much as the selection here). If a JAX release moves that emitter,
the CPU falls back to ``lax.top_k``: the results are the same, only slower. JAX's persistent
compilation cache does not keep an executable that holds a host callback: a function that must
be cached across runs selects in a function of its own (as the solvers' working sets do).

Ties: for distinct values the selected set equals ``lax.top_k``'s; among entries equal to the
``m``-th largest value, which ones are taken is up to the introselect (``lax.top_k`` takes the
lowest indices). Everything in jaxsae that selects (the sparse path and its dense reference)
goes through this one function, so they agree with each other.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend.core import Primitive
from jax.interpreters import batching, mlir

__all__ = ["row_top_k", "host_argtop", "HOST_SELECT_MIN"]

try:  # JAX's Python-callback emitter (internal; see the module docstring)
    from jax._src.callback import _callback_op_sharding, emit_python_callback
except ImportError:  # pragma: no cover - depends on the JAX release
    emit_python_callback = None

#: elements of a block from which a CPU selects with NumPy (below it XLA's ``TopK`` is faster;
#: measured: 32 rows × 512, m = 16: 0.04 ms vs 0.06 ms; 64 × 1,024, m = 32: 0.41 ms vs 0.14 ms)
HOST_SELECT_MIN = 1 << 15

# each worker selects this many rows at a time: ``argpartition``'s int64 index array of the
# whole slice (84 MB for 1,024 rows of 10,240) costs more to allocate and write than the
# selection; measured on real working-set scores, 1,024 × 10,240, m = 128, 2 cores: 12.0 ms
# at once, 9.2 ms by 64 rows (4,096 rows: 49 → 35 ms)
_HOST_ROWS = 64

_POOL: list[ThreadPoolExecutor] = []


def host_workers() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def host_argtop(a: np.ndarray, m: int, split: int = 0) -> np.ndarray:
    """Indices (int32) of the ``m`` largest entries of each row of ``a (..., n)``: in any order,
    or with ``0 < split < m`` the ``split`` largest first (each part in any order). NumPy's
    introselect on every core: ``row_top_k``'s CPU selection, for a caller that holds the array
    on the host (outside ``jit``: JAX's persistent compilation cache keeps no executable with a
    host callback)."""
    n = a.shape[-1]
    rows = np.ascontiguousarray(a).reshape(-1, n)
    out = np.empty((rows.shape[0], m), np.int32)

    def work(lo: int, hi: int) -> None:
        for s in range(lo, hi, _HOST_ROWS):
            block = rows[s : min(s + _HOST_ROWS, hi)]
            idx = np.argpartition(block, n - m, axis=1)[:, n - m :]
            if 0 < split < m:  # a second partition of the m selected, largest first
                order = np.argpartition(-np.take_along_axis(block, idx, 1), split - 1, axis=1)
                idx = np.take_along_axis(idx, order, 1)
            out[s : s + len(block)] = idx

    workers = min(host_workers(), max(1, rows.shape[0] // 64))
    if workers == 1:
        work(0, rows.shape[0])
    else:
        if not _POOL:
            _POOL.append(ThreadPoolExecutor(max_workers=host_workers()))
        bounds = np.linspace(0, rows.shape[0], workers + 1).astype(int)
        list(_POOL[0].map(work, bounds[:-1], bounds[1:]))
    return out.reshape(*a.shape[:-1], m)


def _lax_indices(x: jax.Array, *, m: int, split: int) -> jax.Array:
    return lax.top_k(x, m)[1]  # (ordered: the split largest come first)


_argtop_p = Primitive("jaxsae_row_argtop")
_argtop_p.def_impl(partial(jax.jit, static_argnames=("m", "split"))(_lax_indices))
_argtop_p.def_abstract_eval(
    lambda x, *, m, split: jax.core.ShapedArray((*x.shape[:-1], m), jnp.int32)
)


def _batch_rule(args, dims, *, m, split):
    (x,), (d,) = args, dims
    return _argtop_p.bind(jnp.moveaxis(x, d, 0), m=m, split=split), 0


batching.primitive_batchers[_argtop_p] = _batch_rule


_lax_lowering = mlir.lower_fun(_lax_indices, multiple_results=False)
mlir.register_lowering(_argtop_p, _lax_lowering)  # GPU, TPU (and CPU without the emitter)


def _cpu_lowering(ctx, x, *, m, split):
    if len(ctx.module_context.platforms) > 1:  # exported for several platforms: no callbacks
        return _lax_lowering(ctx, x, m=m, split=split)

    def callback(a: np.ndarray) -> tuple[np.ndarray]:
        return (host_argtop(a, m, split),)

    sharding = _callback_op_sharding(ctx.module_context.axis_context, None, ctx.avals_out)
    results, _, _ = emit_python_callback(
        ctx,
        callback,
        None,
        [x],
        ctx.avals_in,
        ctx.avals_out,
        has_side_effect=False,
        returns_token=False,
        sharding=sharding,
    )
    return results


if emit_python_callback is not None:
    mlir.register_lowering(_argtop_p, _cpu_lowering, platform="cpu")


def row_top_k(
    x: jax.Array, m: int, *, ordered: bool = False, split: int = 0
) -> tuple[jax.Array, jax.Array]:
    """The ``m`` largest entries of each row of ``x``.

    Args:
      x: ``(..., n)`` float array (finite).
      m: entries per row (static), ``0 < m ≤ n``.
      ordered: ``False`` (default): in no particular order within a row. ``True``: as
        ``lax.top_k`` orders them, values descending and equal values by increasing index (a
        sort of the ``m`` selected entries only).
      split: with ``ordered=False`` and ``0 < split < m``, the ``split`` largest entries come
        first, then the others, each part in no particular order (a second partition of the
        ``m`` selected: on a CPU far cheaper than ``ordered``'s sort, 27 ms for 1,024 rows of
        256). Ignored with ``ordered=True`` (which implies it).

    Returns:
      ``(values, indices)``, each ``(..., m)``; ``indices`` int32. ``values`` is differentiable
      with respect to ``x`` (a gather), as ``lax.top_k``'s values are.
    """
    n = x.shape[-1]
    if m >= n or x.size < HOST_SELECT_MIN:
        return lax.top_k(x, m)
    keys = lax.stop_gradient(x)
    if keys.dtype not in (jnp.float32, jnp.float64):
        keys = keys.astype(jnp.float32)  # NumPy has no fast path for bfloat16; order unchanged
    idx = _argtop_p.bind(keys, m=m, split=0 if ordered or not 0 < split < m else split)
    if ordered:
        _, idx = lax.sort((-jnp.take_along_axis(keys, idx, axis=-1), idx), num_keys=2)
    return jnp.take_along_axis(x, idx, axis=-1), idx
