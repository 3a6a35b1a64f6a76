"""The train state (a pytree carried from step to step) and the per-step metrics.

Everything that changes during training lives in ``TrainState``, including the dead-feature
counters: there are no hidden buffers, so a checkpoint of the state resumes exactly.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike

from jaxsae.kernels._checks import check_array
from jaxsae.kernels.architectures import from_config
from jaxsae.kernels.sae import SAEParams
from jaxsae.training.config import TrainConfig
from jaxsae.training.optim import make_optimizer

__all__ = ["TrainState", "StepMetrics", "init_state", "dead_mask", "COUNTER_MAX"]

# tokens_since_fired saturates here, so an int32 counter never overflows (2**30 ≈ 1.07e9 tokens).
COUNTER_MAX = 2**30


class TrainState(NamedTuple):
    """What a train step reads and returns.

    Attributes:
      step: int32 scalar, optimiser steps taken so far (drives the schedules).
      params: the SAE in its architecture's training form, ``W_enc (d_in, d_sae)``,
        ``b_enc (d_sae,)``, ``W_dec (d_sae, d_in)``, ``b_dec (d_in,)`` and, for the
        architectures with one, ``threshold (d_sae,)``.
      opt_state: the ``make_optimizer(cfg)`` state (Adam moments shaped like ``params``).
      tokens_since_fired: ``(d_sae,)`` int32, tokens seen since each feature last had a code
        ``> 0`` on any token of a global batch (saturates at ``COUNTER_MAX``).
      key: PRNG key (``uint32[2]``) for whatever the loop randomises (e.g. resampling); the
        step itself does not use it.
    """

    step: jax.Array
    params: SAEParams
    opt_state: optax.OptState
    tokens_since_fired: jax.Array
    key: jax.Array


class StepMetrics(NamedTuple):
    """Scalar diagnostics of one step on the global batch (averaged over devices).

    Attributes:
      loss: the objective that was differentiated: ``mean ‖x − x̂‖² + l1_coeff · l1`` (L1) or
        ``fvu + aux_coeff · aux_loss`` (TopK).
      mse: mean squared error per element, ``mean ‖x − x̂‖² / d_in``.
      l0: mean number of active features per token.
      fvu: fraction of variance unexplained; with data parallelism, the mean over the devices
        of each batch shard's own FVU.
      l1: ``mean Σ_i f_i ‖W_dec[i]‖₂``, the L1 penalty before ``l1_coeff`` (TopK: diagnostic).
      dead_frac: fraction of features that have not fired for ``cfg.dead_tokens`` tokens
        (counted after this step's batch).
      grad_norm: global gradient norm before clipping.
      lr: learning rate used in this step.
      l1_coeff: ``λ`` used in this step (after warm-up; 0 for TopK).
      aux_loss: the AuxK loss before ``aux_coeff`` (TopK, with the dead mask of the state
        before this step; 0 for L1).
    """

    loss: jax.Array
    mse: jax.Array
    l0: jax.Array
    fvu: jax.Array
    l1: jax.Array
    dead_frac: jax.Array
    grad_norm: jax.Array
    lr: jax.Array
    l1_coeff: jax.Array
    aux_loss: jax.Array


def dead_mask(tokens_since_fired: jax.Array, cfg: TrainConfig) -> jax.Array:
    """``(d_sae,)`` bool, True for features that have not fired in the last ``cfg.dead_tokens``."""
    return tokens_since_fired >= cfg.dead_tokens


def init_state(
    cfg: TrainConfig, *, b_dec: ArrayLike | None = None, dtype: jnp.dtype = jnp.float32
) -> TrainState:
    """A fresh train state on the default device (place it with ``parallel.shard_state``).

    Args:
      cfg: sizes, ``dec_init_norm`` and ``seed``.
      b_dec: optional ``(d_in,)`` initial decoder bias (e.g. the data mean or geometric median).
      dtype: parameter dtype (float32; float64 for exactness tests).

    Returns:
      ``TrainState`` with ``step = 0``, ``init_params`` parameters, Adam moments at 0 and every
      counter at 0.
    """
    if b_dec is not None:  # validated here, on concrete values
        b_dec = check_array("b_dec", b_dec, ndim=1)
        if b_dec.shape != (cfg.d_in,):
            raise ValueError(f"b_dec: expected shape ({cfg.d_in},), found {tuple(b_dec.shape)}")
    return _init_state(cfg, jnp.dtype(dtype), b_dec)


@partial(jax.jit, static_argnums=(0, 1))
def _init_state(cfg: TrainConfig, dtype: jnp.dtype, b_dec: jax.Array | None) -> TrainState:
    init_key, state_key = jax.random.split(jax.random.PRNGKey(cfg.seed))
    params = from_config(cfg).init(
        init_key, cfg.d_in, cfg.d_sae, dec_norm=cfg.dec_init_norm, b_dec=b_dec, dtype=dtype
    )
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=make_optimizer(cfg).init(params),
        tokens_since_fired=jnp.zeros((cfg.d_sae,), jnp.int32),
        key=state_key,
    )
