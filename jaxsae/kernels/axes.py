"""Named-axis collectives that also run outside any mapped axis (``axis=None``: identity).

A kernel written for one device's shard takes the names of the mesh axes it is split over
(``None`` when it is not split); these helpers let the same code run on one device, under
``jax.shard_map`` on a mesh and under ``jax.pmap``.
"""

from __future__ import annotations

from typing import Any

import jax
from jax import lax

__all__ = ["axis_size", "axis_index", "psum", "pmean", "pmax", "pmin", "all_gather"]


def axis_size(axis: str | None) -> int:
    """Number of devices along a bound mesh axis (1 for ``None``)."""
    return 1 if axis is None else lax.axis_size(axis)


def axis_index(axis: str | None) -> jax.Array | int:
    """This device's position along ``axis`` (0 for ``None``)."""
    return 0 if axis is None else lax.axis_index(axis)


def psum(x: Any, axis: str | None) -> Any:
    """``lax.psum`` over ``axis``, or ``x`` itself for ``None``."""
    return x if axis is None else lax.psum(x, axis)


def pmean(x: Any, axis: str | None) -> Any:
    """``lax.pmean`` over ``axis``, or ``x`` itself for ``None``."""
    return x if axis is None else lax.pmean(x, axis)


def pmax(x: Any, axis: str | None) -> Any:
    """``lax.pmax`` over ``axis``, or ``x`` itself for ``None``."""
    return x if axis is None else lax.pmax(x, axis)


def pmin(x: Any, axis: str | None) -> Any:
    """``lax.pmin`` over ``axis``, or ``x`` itself for ``None``."""
    return x if axis is None else lax.pmin(x, axis)


def all_gather(x: jax.Array, axis: str | None, *, along: int) -> jax.Array:
    """Concatenate every device's ``x`` along array axis ``along`` (``x`` itself for ``None``)."""
    return x if axis is None else lax.all_gather(x, axis, axis=along, tiled=True)
