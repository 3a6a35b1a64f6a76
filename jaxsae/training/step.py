"""One SAE train step, written for one device's shard of the global batch.

The step is a pure function ``train_step(state, batch, cfg) -> (state, StepMetrics)``. Run it

* on one device: ``jax.jit(partial(train_step, cfg=cfg, data_axis=None))``;
* data-parallel: under ``jax.shard_map`` on a mesh (``parallel.make_sharded_step``, the default)
  or ``jax.pmap`` (``parallel.make_pmap_step``) with the batch split over the ``"data"`` axis:
  gradients and metrics are averaged with ``lax.pmean(…, "data")`` and the fired-feature masks
  combined with ``lax.psum``, so every device applies the same update as one device on the
  whole batch;
* feature-parallel as well: on a ``("data", "feature")`` mesh each device holds the columns of
  ``W_enc``, the rows of ``W_dec`` and the entries of ``b_enc`` and of the dead-feature counters
  of its slice of the features (``optim.FEATURE_AXES``). The reconstruction is the sum over the
  slices of their partial reconstructions (``lax.psum`` over ``"feature"``), the L1 penalty and
  the gradient norm are summed over the slices too.

The architecture (``cfg.arch``) is read from the registry (``jaxsae.kernels.architectures``):
the step calls its ``loss`` and ``update`` and never branches on its name.

Exactness: the L1 and JumpReLU losses are means over tokens, so the averaged gradient of the
shards is the gradient on the global batch and ``n`` devices give the parameters of one device
(tests: to 1e-10 in float64). The TopK-family losses are fractions of variance unexplained,
normalised by the variance of the batch they see, and BatchTopK selects the top ``k·B`` of the
batch it sees; data-parallel, each device does so on its own shard and the gradients are
averaged (what ``sparsify`` does under DDP), which differs from one device on the whole batch.
Feature sharding is exact for every architecture: the TopK family merges per-slice top-k
candidates into the global top-k (``jaxsae.kernels.topk.select_rows``).

What one step does, in order: ``λ(t)``, ``lr(t)`` from the schedules; the architecture's loss
and gradient on the shard, with the dead mask of the state (AuxK, JumpReLU's pre-activation
loss); average over ``"data"``; clip by the global norm; Adam; the architecture's ``update``
(BatchTopK's running threshold); the dead-feature counters from the global batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from jax import lax

from jaxsae.kernels.architectures import LossContext, from_config
from jaxsae.kernels.axes import axis_size, pmean, psum
from jaxsae.training.config import TrainConfig
from jaxsae.training.optim import global_norm, l1_schedule, lr_schedule, make_optimizer
from jaxsae.training.state import COUNTER_MAX, StepMetrics, TrainState, dead_mask

__all__ = ["train_step", "axis_size"]


def train_step(
    state: TrainState,
    batch: jax.Array,
    cfg: TrainConfig,
    *,
    data_axis: str | None = "data",
    feature_axis: str | None = None,
) -> tuple[TrainState, StepMetrics]:
    """One optimiser step on this device's shard of the global batch.

    Args:
      state: the train state; inside a feature-sharded ``shard_map``, this device's slice.
      batch: ``(batch_local, d_in)`` normalised activations, this device's rows of the global
        batch (every device the same number of rows).
      cfg: static configuration (``arch``, schedules, ``grad_clip``, ``dead_tokens``, …).
      data_axis: mesh/pmap axis the batch is split over, ``None`` on a single device.
      feature_axis: mesh axis the features are split over, or ``None``.

    Returns:
      ``(new_state, StepMetrics)``; the metrics are global (the same on every device).
    """
    arch = from_config(cfg)
    params = state.params
    dtype = params.W_dec.dtype
    if arch.uses_coeff:
        l1_coeff = l1_schedule(cfg)(state.step).astype(dtype)
    else:
        l1_coeff = jnp.zeros((), dtype)
    lr = lr_schedule(cfg)(state.step)
    dead = None if arch.resamples else dead_mask(state.tokens_since_fired, cfg)
    ctx = LossContext(coeff=l1_coeff, dead_mask=dead, feature_axis=feature_axis)

    # (differentiating with respect to W_encᵀ, once 2× faster on CPU, is 1.5–3.5 % slower with
    # jax 0.10 at 320 × 10,240, 1,280 × 10,240 and 1,280 × 40,960: plain value_and_grad)
    (_, out), grads = jax.value_and_grad(lambda p: arch.loss(p, batch, ctx), has_aux=True)(params)
    m, fired = out.metrics, out.fired
    if feature_axis is not None:
        # b_dec's gradient is the same on every feature slice up to rounding; pmean keeps the
        # replicas of b_dec bit-identical.
        grads = grads._replace(b_dec=lax.pmean(grads.b_dec, feature_axis))
    grads = pmean(grads, data_axis)
    grad_norm = global_norm(grads, feature_axis=feature_axis)

    optimizer = make_optimizer(cfg, feature_axis=feature_axis)
    updates, opt_state = optimizer.update(grads, state.opt_state, params)
    params = arch.update(optax.apply_updates(params, updates), out, (data_axis, feature_axis))

    # Dead-feature counters: a feature fired if any code > 0 on any device's rows.
    fired = psum(fired.astype(jnp.int32), data_axis) > 0
    n_tokens = batch.shape[0] * axis_size(data_axis)
    counters = jnp.minimum(state.tokens_since_fired, COUNTER_MAX - n_tokens) + n_tokens
    counters = jnp.where(fired, jnp.zeros_like(counters), counters)
    dead_frac = pmean(jnp.mean(dead_mask(counters, cfg).astype(jnp.float32)), feature_axis)

    metrics = StepMetrics(
        loss=m.loss,
        mse=m.mse,
        l0=m.l0,
        fvu=m.fvu,
        l1=m.l1,
        dead_frac=dead_frac,
        grad_norm=grad_norm,
        lr=lr,
        l1_coeff=l1_coeff,
        aux_loss=m.auxk,
    )
    metrics = metrics._replace(
        **{
            f: pmean(getattr(metrics, f), data_axis)
            for f in ("loss", "mse", "l0", "fvu", "l1", "aux_loss")
        }
    )
    new_state = TrainState(
        step=state.step + 1,
        params=params,
        opt_state=opt_state,
        tokens_since_fired=counters,
        key=state.key,
    )
    return new_state, metrics
