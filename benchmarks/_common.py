"""Timing helpers shared by the benchmark scripts (never imported by the package or tests).

Rules: JIT warm-up excluded, ``block_until_ready`` included, methods alternated in rounds,
medians reported, and ratios printed next to absolute times (this machine is noisy).
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np


def block(x: Any) -> Any:
    """Wait for every JAX array in a pytree (no-op for NumPy / torch results)."""
    try:
        import jax

        return jax.block_until_ready(x)
    except ImportError:  # pragma: no cover
        return x


def time_once(fn: Callable[[], Any]) -> float:
    """Seconds for one call of ``fn`` including ``block_until_ready`` of its result."""
    t0 = time.perf_counter()
    block(fn())
    return time.perf_counter() - t0


def time_rounds(
    fns: dict[str, Callable[[], Any]],
    *,
    rounds: int = 5,
    warmup: int = 1,
    budget_s: float | None = None,
) -> dict[str, float]:
    """Median seconds per call of each function, alternating methods round by round.

    A method whose warm-up call exceeds ``budget_s`` is timed no further and reported as ``inf``.
    """
    times: dict[str, list[float]] = {k: [] for k in fns}
    over: set[str] = set()
    for name, fn in fns.items():
        for _ in range(warmup):
            t = time_once(fn)
            if budget_s is not None and t > budget_s:
                over.add(name)
                break
    for _ in range(rounds):
        for name, fn in fns.items():
            if name not in over:
                times[name].append(time_once(fn))
    return {k: (float("inf") if k in over else statistics.median(v)) for k, v in times.items()}


def matmul_gflops(n: int = 1024, dtype: str = "float32", repeats: int = 5) -> dict[str, float]:
    """Measured GFLOP/s of an ``n×n @ n×n`` matmul in NumPy and in JAX on this machine."""
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(dtype)
    b = rng.standard_normal((n, n)).astype(dtype)
    ja, jb = jnp.asarray(a), jnp.asarray(b)
    mm = jax.jit(jnp.matmul)
    res = time_rounds({"numpy": lambda: a @ b, "jax": lambda: mm(ja, jb)}, rounds=repeats)
    flops = 2.0 * n**3
    return {k: flops / v / 1e9 for k, v in res.items()}


def machine_line() -> str:
    """One line naming this machine, for the header of a benchmark's output."""
    import jax

    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"jax {jax.__version__} on {jax.devices()[0].platform}"
    )


def fmt_time(t: float, budget_s: float | None = None) -> str:
    if t == float("inf"):
        return f"> {budget_s:g} s" if budget_s else "> budget"
    return f"{t * 1e3:.1f} ms" if t < 1 else f"{t:.2f} s"
