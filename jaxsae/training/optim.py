"""The optimiser of SAE training: schedules, global-norm clipping across shards, Adam.

Anthropic's April 2024 recipe (see ``jaxsae.training.config``):

    lr(t) = lr · min(1, (t + 1) / W) · min(1, (T − t) / R)       W warm-up, R = decay steps
    λ(t)  = λ  · min(1, (t + 1) / V)                             V = λ warm-up steps
    g ← g · min(1, c / ‖g‖)                                      global norm over every parameter
    Adam(β₁ = 0.9, β₂ = 0.999, ε = 1e-8) with step size lr(t)

``t`` counts optimiser steps from 0. When the dictionary is split over a ``"feature"`` mesh axis,
each device holds a slice of ``W_enc``, ``b_enc`` and ``W_dec``; the squared norms of those
slices are summed over the axis with ``lax.psum`` so that every device clips by the same global
norm (``b_dec`` is replicated and counted once).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax

from jaxsae.kernels.sae import SAEParams
from jaxsae.training.config import TrainConfig

__all__ = [
    "FEATURE_AXES",
    "lr_schedule",
    "l1_schedule",
    "global_norm",
    "clip_by_global_norm",
    "make_optimizer",
]

# Which axis of each parameter indexes the features (None: not per-feature, replicated when
# the dictionary is split over a "feature" mesh axis). The one description of the layout.
FEATURE_AXES = SAEParams(W_enc=1, b_enc=0, W_dec=0, b_dec=None, threshold=0)


def _ramp(t: jax.Array, n: int) -> jax.Array:
    """``min(1, (t + 1) / n)`` as float32 (1 when ``n = 0``)."""
    if n <= 0:
        return jnp.ones((), jnp.float32)
    return jnp.minimum(1.0, (jnp.asarray(t, jnp.float32) + 1.0) / jnp.float32(n))


def lr_schedule(cfg: TrainConfig) -> Callable[[jax.Array], jax.Array]:
    """Learning rate as a function of the step: linear warm-up, constant, linear decay to 0.

    Args:
      cfg: uses ``lr``, ``lr_warmup_steps``, ``lr_decay_frac`` and ``total_steps``.

    Returns:
      ``schedule(step) -> float32 scalar``, an ``optax.Schedule``.
    """
    peak, warm, decay, total = cfg.lr, cfg.lr_warmup_steps, cfg.lr_decay_steps, cfg.total_steps

    def schedule(step: jax.Array) -> jax.Array:
        up = _ramp(step, warm)
        if decay > 0:
            left = jnp.float32(total) - jnp.asarray(step, jnp.float32)
            down = jnp.clip(left / jnp.float32(decay), 0.0, 1.0)
        else:
            down = jnp.ones((), jnp.float32)
        return jnp.float32(peak) * up * down

    return schedule


def l1_schedule(cfg: TrainConfig) -> Callable[[jax.Array], jax.Array]:
    """``l1_coeff`` as a function of the step: linear warm-up over ``l1_warmup_frac``, then flat.

    Returns:
      ``schedule(step) -> float32 scalar``.
    """
    lam, warm = cfg.l1_coeff, cfg.l1_warmup_steps

    def schedule(step: jax.Array) -> jax.Array:
        return jnp.float32(lam) * _ramp(step, warm)

    return schedule


def global_norm(tree: SAEParams, *, feature_axis: str | None = None) -> jax.Array:
    """Euclidean norm of all the leaves of ``tree`` taken together, across feature shards.

    Args:
      tree: an ``SAEParams``-shaped pytree (parameters, gradients or updates); inside a
        ``shard_map`` over a ``"feature"`` axis, each device's slice.
      feature_axis: the mesh axis the per-feature leaves are split over, or ``None``.

    Returns:
      A scalar, the same on every device.
    """
    dtype = jnp.result_type(*jax.tree.leaves(tree))
    sharded = jnp.zeros((), dtype)
    replicated = jnp.zeros((), dtype)
    for leaf, axis in zip(tree, FEATURE_AXES, strict=True):
        if leaf is None:  # no threshold
            continue
        sq = jnp.sum(jnp.square(leaf))
        if axis is None:
            replicated = replicated + sq
        else:
            sharded = sharded + sq
    if feature_axis is not None:
        sharded = lax.psum(sharded, feature_axis)
    return jnp.sqrt(sharded + replicated)


class ClipState(NamedTuple):
    """Clipping keeps no state."""


def clip_by_global_norm(
    max_norm: float, *, feature_axis: str | None = None
) -> optax.GradientTransformation:
    """``optax.clip_by_global_norm`` for ``SAEParams`` whose features may be split over devices.

    Updates are scaled by ``min(1, max_norm / ‖g‖)``, ``‖g‖ = global_norm(g, feature_axis)``.

    Args:
      max_norm: the clipping threshold ``c > 0``.
      feature_axis: see ``global_norm``.

    Returns:
      An ``optax.GradientTransformation`` with an empty state.
    """

    def init(params: Any) -> ClipState:
        del params
        return ClipState()

    def update(updates: SAEParams, state: ClipState, params: Any = None):
        del params
        norm = global_norm(updates, feature_axis=feature_axis)
        scale = jnp.minimum(1.0, max_norm / jnp.maximum(norm, jnp.finfo(norm.dtype).tiny))
        updates = jax.tree.map(lambda g: g * scale.astype(g.dtype), updates)
        return updates, state

    return optax.GradientTransformation(init, update)


def make_optimizer(
    cfg: TrainConfig, *, feature_axis: str | None = None
) -> optax.GradientTransformation:
    """Gradient clipping at ``cfg.grad_clip`` then Adam with ``lr_schedule(cfg)``.

    The optimiser state has the same structure whatever ``feature_axis`` is, so a state made
    with ``feature_axis=None`` (``init_state``) serves every layout.

    Args:
      cfg: the run's configuration.
      feature_axis: the mesh axis the dictionary is split over (inside ``shard_map``), or None.

    Returns:
      An ``optax.GradientTransformation`` on ``SAEParams``.
    """
    return optax.chain(
        clip_by_global_norm(cfg.grad_clip, feature_axis=feature_axis),
        optax.adam(lr_schedule(cfg), b1=0.9, b2=0.999, eps=1e-8),
    )
