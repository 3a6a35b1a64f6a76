"""Resampling of dead features for the L1 SAE (Anthropic, "Towards Monosemanticity", 2023).

At chosen steps, each dead feature ``i`` gets a new direction taken from an input the SAE
reconstructs badly:

1. on a batch of candidate inputs, compute the squared reconstruction error ``e_n = ‖x_n − x̂_n‖²``;
2. draw one input per dead feature with probability ``e_n / Σ e``;
3. its direction ``u = (x − b_dec) / ‖x − b_dec‖`` becomes the decoder row ``W_dec[i]`` (scaled
   to the mean decoder norm of the alive features: the paper's unit norm when decoder rows are
   unit-norm) and the encoder column ``W_enc[:, i]``, scaled to ``0.2 ×`` the mean encoder norm
   of the alive features;
4. ``b_enc[i] = 0``; the Adam moments of the feature's parameters are set to zero; its
   dead-feature counter restarts at 0.

Alive features, ``b_dec`` and the optimiser's step counts are untouched. The function is pure
and jit-compatible (fixed shapes: one candidate is drawn for every feature and used only for the
dead ones). TopK SAEs use the AuxK loss instead (``jaxsae.kernels``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxsae.kernels.sae import SAEParams, forward
from jaxsae.training.optim import FEATURE_AXES
from jaxsae.training.state import TrainState

__all__ = ["ResampleInfo", "resample_dead_features", "reset_feature_moments"]

ENCODER_SCALE = 0.2


class ResampleInfo(NamedTuple):
    """What a resampling did.

    Attributes:
      num_resampled: int32 scalar, dead features given new directions.
      chosen: ``(d_sae,)`` int32 candidate row used for each feature (meaningful where resampled).
    """

    num_resampled: jax.Array
    chosen: jax.Array


def _mask_features(tree: SAEParams, keep: jax.Array) -> SAEParams:
    """Zero the per-feature entries of an ``SAEParams``-shaped tree where ``keep`` is False."""
    out = []
    for leaf, axis in zip(tree, FEATURE_AXES, strict=True):
        if axis is None or leaf is None:
            out.append(leaf)
        else:
            shape = [1] * leaf.ndim
            shape[axis] = keep.shape[0]
            out.append(jnp.where(keep.reshape(shape), leaf, jnp.zeros_like(leaf)))
    return SAEParams(*out)


def reset_feature_moments(opt_state: Any, reset: jax.Array) -> Any:
    """Zero every ``SAEParams``-shaped part of an optimiser state (Adam's moments) at ``reset``.

    Args:
      opt_state: an optax state; its ``SAEParams`` sub-trees (e.g. ``mu``, ``nu``) are masked.
      reset: ``(d_sae,)`` bool, the features whose moments restart from zero.

    Returns:
      The optimiser state with the same structure.
    """
    return jax.tree.map(
        lambda t: _mask_features(t, ~reset) if isinstance(t, SAEParams) else t,
        opt_state,
        is_leaf=lambda t: isinstance(t, SAEParams),
    )


def resample_dead_features(
    state: TrainState, candidates: jax.Array, key: jax.Array, dead: jax.Array
) -> tuple[TrainState, ResampleInfo]:
    """Give dead features new directions from badly reconstructed inputs.

    Args:
      state: the train state (one device's full copy).
      candidates: ``(n, d_in)`` normalised inputs to draw from (e.g. a few recent batches).
      key: PRNG key of the draw.
      dead: ``(d_sae,)`` bool, the features to resample (``state.dead_mask(...)``).

    Returns:
      ``(new_state, ResampleInfo)``; ``new_state`` equals ``state`` where ``dead`` is False.
    """
    params = state.params
    dtype = params.W_dec.dtype
    x = candidates.astype(dtype)
    err = jnp.sum((x - forward(params, x).recon) ** 2, axis=-1)
    total = jnp.sum(err)
    # all-zero error (a perfect SAE): draw uniformly instead
    logits = jnp.where(total > 0, jnp.log(jnp.maximum(err, jnp.finfo(dtype).tiny)), 0.0)
    chosen = jax.random.categorical(key, logits, shape=dead.shape).astype(jnp.int32)
    u = x[chosen] - params.b_dec[None, :]
    u = u / jnp.maximum(jnp.linalg.norm(u, axis=-1, keepdims=True), jnp.finfo(dtype).tiny)

    alive = ~dead
    n_alive = jnp.sum(alive)

    def mean_alive(norms: jax.Array) -> jax.Array:
        return jnp.where(
            n_alive > 0,
            jnp.sum(jnp.where(alive, norms, 0.0)) / jnp.maximum(n_alive, 1),
            jnp.mean(norms),
        )

    dec_norm = mean_alive(jnp.linalg.norm(params.W_dec, axis=-1))
    enc_norm = mean_alive(jnp.linalg.norm(params.W_enc, axis=0))
    new = SAEParams(
        W_enc=jnp.where(dead[None, :], (ENCODER_SCALE * enc_norm * u).T, params.W_enc),
        b_enc=jnp.where(dead, jnp.zeros_like(params.b_enc), params.b_enc),
        W_dec=jnp.where(dead[:, None], dec_norm * u, params.W_dec),
        b_dec=params.b_dec,
    )
    new_state = state._replace(
        params=new,
        opt_state=reset_feature_moments(state.opt_state, dead),
        tokens_since_fired=jnp.where(
            dead, jnp.zeros_like(state.tokens_since_fired), state.tokens_since_fired
        ),
    )
    return new_state, ResampleInfo(num_resampled=jnp.sum(dead).astype(jnp.int32), chosen=chosen)
