"""Proximal operators of the L1 norm: soft-thresholding, signed and non-negative.

Each operator takes the point ``v`` and the threshold ``t`` (a scalar or an array that broadcasts
against ``v``, e.g. one threshold per feature on the last axis) and returns

    prox_{t‖·‖₁}(v)       = argmin_u ½‖u − v‖² + Σ t_i |u_i|      = sign(v)·max(|v| − t, 0)
    prox_{t‖·‖₁ + ι≥0}(v) = argmin_{u ≥ 0} ½‖u − v‖² + Σ t_i u_i  = max(v − t, 0)

They are elementwise, so ``jit``, ``vmap`` and ``grad`` work (the derivative is 1 on the support,
0 off it).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

__all__ = ["soft_threshold", "nonneg_soft_threshold", "prox_l1"]


def _broadcast_threshold(t: ArrayLike, v: jax.Array) -> jax.Array:
    """``t`` in ``v``'s dtype, broadcast explicitly to ``v``'s shape (a per-feature ``(F,)``
    threshold against a ``(batch, F)`` point works under strict rank promotion)."""
    t = jnp.asarray(t, dtype=v.dtype)
    return jnp.broadcast_to(t, v.shape) if t.ndim else t


def soft_threshold(v: ArrayLike, t: ArrayLike) -> jax.Array:
    """Signed soft-thresholding ``S_t(v) = sign(v)·max(|v| − t, 0)``.

    Args:
      v: array of any shape, e.g. ``(batch, d_sae)``.
      t: threshold ``≥ 0``, a scalar or an array broadcastable to ``v`` (e.g. ``(d_sae,)``).

    Returns:
      An array of ``v``'s shape and dtype.

    Examples:
      >>> soft_threshold(jnp.array([-2.0, 0.5, 3.0]), 1.0)
      Array([-1.,  0.,  2.], dtype=float32)
    """
    v = jnp.asarray(v)
    t = _broadcast_threshold(t, v)
    return jnp.sign(v) * jnp.maximum(jnp.abs(v) - t, 0)


def nonneg_soft_threshold(v: ArrayLike, t: ArrayLike = 0.0) -> jax.Array:
    """Non-negative soft-thresholding ``max(v − t, 0)``; with ``t = 0`` it is ReLU.

    Args:
      v: array of any shape.
      t: threshold, a scalar or an array broadcastable to ``v``.

    Returns:
      An array of ``v``'s shape and dtype.
    """
    v = jnp.asarray(v)
    t = _broadcast_threshold(t, v)
    return jnp.maximum(v - t, 0)


def prox_l1(v: ArrayLike, t: ArrayLike, *, nonneg: bool = False) -> jax.Array:
    """``soft_threshold`` or, with ``nonneg=True``, ``nonneg_soft_threshold``."""
    return nonneg_soft_threshold(v, t) if nonneg else soft_threshold(v, t)
