"""Input validation shared by every public entry point.

Checks run on the host, before any compute is traced, so a user gets a ``ValueError`` that says
what was expected and what was found. Under ``jit`` (abstract values) the value checks
(finiteness, sign) are skipped and only the static ones (rank, shape, dtype) run.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def is_concrete(x: Any) -> bool:
    """True when ``x`` holds values (not a tracer inside ``jit``/``vmap``/``grad``)."""
    return not isinstance(x, jax.core.Tracer)


def check_array(
    name: str,
    x: Any,
    *,
    ndim: int | tuple[int, ...] | None = None,
    floating: bool = True,
    finite: bool = True,
    nonempty: bool = True,
) -> jax.Array:
    """Convert ``x`` to a JAX array and check its rank, dtype, size and values.

    Args:
      name: what the caller calls this argument, used in the error message.
      x: array-like.
      ndim: accepted rank(s).
      floating: require a floating dtype.
      finite: require every value to be finite (skipped for tracers).
      nonempty: require at least one element.

    Returns:
      ``x`` as a ``jax.Array``.

    Raises:
      ValueError: naming ``name``, what was expected and what was found.
    """
    if not isinstance(x, jax.Array | np.ndarray):
        x = jnp.asarray(x)
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if x.ndim not in allowed:
            want = " or ".join(str(a) for a in allowed)
            raise ValueError(
                f"{name}: expected an array of rank {want}, found rank {x.ndim} "
                f"with shape {tuple(x.shape)}"
            )
    if floating and not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"{name}: expected a floating dtype, found {x.dtype}")
    if nonempty and x.size == 0:
        raise ValueError(f"{name}: expected a non-empty array, found shape {tuple(x.shape)}")
    if finite and is_concrete(x) and jnp.issubdtype(x.dtype, jnp.floating):
        bad = ~np.isfinite(np.asarray(x))
        if bad.any():
            n_nan = int(np.isnan(np.asarray(x)).sum())
            first = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ValueError(
                f"{name}: expected finite values, found {int(bad.sum())} non-finite "
                f"({n_nan} NaN) of {x.size}, the first at index {first}"
            )
    return jnp.asarray(x)


def check_nonnegative(name: str, value: Any) -> Any:
    """Raise if a concrete scalar or array ``value`` has a negative or non-finite entry."""
    if is_concrete(value):
        v = np.asarray(value)
        if not np.all(np.isfinite(v)):
            raise ValueError(f"{name}: expected a finite value >= 0, found {v}")
        if np.any(v < 0):
            raise ValueError(f"{name}: expected a value >= 0, found {v.min()}")
    return value
