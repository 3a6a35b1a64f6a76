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

Exactness: the L1 loss is a mean over tokens, so the averaged gradient of the shards is the
gradient on the global batch and ``n`` devices give the parameters of one device (tests: to
1e-10 in float64). The TopK loss (``topk_loss``) is a fraction of variance unexplained, normalised
by the variance of the batch it sees; data-parallel, each device normalises by its own shard's
variance and the gradients are averaged (what ``sparsify`` does under DDP), which differs from
one device on the whole batch by the ratio of the shards' variances. Feature sharding is
implemented for ``arch="l1"``; TopK would need a global top-k across the slices.

What one step does, in order: ``λ(t)``, ``lr(t)`` from the schedules; loss and gradient on the
shard (``jaxsae.kernels.sae.sae_loss`` for ``arch="l1"``, ``jaxsae.kernels.topk.topk_loss`` for
``arch="topk"`` with the dead mask of the state for AuxK); average over ``"data"``; clip by the
global norm; Adam; update the dead-feature counters from the global batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from jax import lax

from jaxsae.kernels.sae import (
    SAEMetrics,
    SAEParams,
    decode,
    decoder_norms,
    encode,
    sae_loss,
    sae_loss_from_parts,
)
from jaxsae.kernels.topk import TopKMetrics, topk_loss, topk_pre_acts
from jaxsae.training.config import TrainConfig
from jaxsae.training.optim import global_norm, l1_schedule, lr_schedule, make_optimizer
from jaxsae.training.state import COUNTER_MAX, StepMetrics, TrainState, dead_mask

__all__ = ["train_step", "axis_size"]


def axis_size(axis: str | None) -> int:
    """Number of devices along a bound mesh axis (1 for ``None``)."""
    return 1 if axis is None else lax.axis_size(axis)


def _pmean(x, axis: str | None):
    return x if axis is None else lax.pmean(x, axis)


def _psum(x, axis: str | None):
    return x if axis is None else lax.psum(x, axis)


def _l1_loss(
    params: SAEParams, x: jax.Array, l1_coeff: jax.Array, feature_axis: str | None
) -> tuple[jax.Array, tuple[SAEMetrics, jax.Array]]:
    """``sae_loss`` on this device's features, plus the ``(d_sae_local,)`` fired mask.

    With the features split over ``feature_axis``, the reconstruction ``x̂ = Σ_s f_s W_dec,s +
    b_dec`` needs every slice ``s``: this slice's ``decode`` plus the other slices' partial
    reconstructions, which enter as a constant (``stop_gradient``), so that the backward pass
    needs no collective. The terms of ``sae_loss`` are then assembled by the same kernel
    (``sae_loss_from_parts``); this slice's objective has the global
    reconstruction term and this slice's penalty, so its gradient with respect to the slice's
    parameters is the gradient of the global loss. The penalty and the active count are summed
    over the slices afterwards.
    """
    codes, _ = encode(params, x)  # the same HLO as inside sae_loss: XLA computes it once
    # Tokens on which each feature is active: the fired mask and, summed, the L0 metric, from
    # one pass over the codes (sae_loss's own count of the same is then left unused). Codes are
    # >= 0, so sign(codes) is the indicator of activity; written so, XLA on CPU fuses it into
    # the reduction instead of materialising a (batch, d_sae) mask.
    counts = jnp.sum(jnp.sign(codes), axis=0)
    fired = counts > 0
    l0 = jnp.sum(counts) / x.shape[0]
    if axis_size(feature_axis) == 1:
        loss, m = sae_loss(params, x, l1_coeff)
        m = m._replace(l0=l0)
    else:
        mine = codes @ params.W_dec
        others = lax.stop_gradient(lax.psum(mine, feature_axis) - mine)
        recon = decode(params, codes) + others
        loss, m = sae_loss_from_parts(x, recon, codes, decoder_norms(params), l1_coeff)
        m = m._replace(l0=l0)
    if feature_axis is not None:
        # Penalty and active count: sums over the slices. Reconstruction terms: equal on every
        # slice up to rounding (pmean makes them identical).
        l1 = lax.psum(m.l1, feature_axis)
        recon, mse, fvu = (lax.pmean(v, feature_axis) for v in (m.recon, m.mse, m.fvu))
        m = m._replace(
            loss=recon + l1_coeff * l1,
            recon=recon,
            mse=mse,
            fvu=fvu,
            explained_variance=1.0 - fvu,
            l1=l1,
            l0=lax.psum(m.l0, feature_axis),
            dec_norm=lax.pmean(m.dec_norm, feature_axis),
        )
    return loss, (m, fired)


def _topk_loss(
    params: SAEParams, x: jax.Array, cfg: TrainConfig, dead: jax.Array
) -> tuple[jax.Array, tuple[TopKMetrics, jax.Array]]:
    """``topk_loss`` with AuxK on the dead features, plus the ``(d_sae,)`` fired mask."""
    # The same HLO as the selection inside topk_loss: XLA computes it once.
    top, idx = lax.top_k(lax.stop_gradient(topk_pre_acts(params, x)), cfg.k)
    fired = jnp.zeros((params.d_sae,), jnp.bool_).at[idx.reshape(-1)].max(top.reshape(-1) > 0)
    loss, m = topk_loss(params, x, cfg.k, dead_mask=dead, aux_k=cfg.aux_k, aux_coeff=cfg.aux_coeff)
    return loss, (m, fired)


def _value_and_grad(loss_fn, params: SAEParams):
    """``jax.value_and_grad(loss_fn, has_aux=True)(params)``, with ``W_enc`` differentiated in
    the ``(d_sae, d_in)`` layout on CPU.

    The gradient ``xᵀ ∂z`` of ``W_enc (d_in, d_sae)`` is a matmul over the batch; XLA's CPU
    matmul produces it about 2× faster as ``(∂z)ᵀ x`` of shape ``(d_sae, d_in)`` than in the
    ``(d_in, d_sae)`` layout (measured at d_in 1280, d_sae 4096, batch 4096: 22.6 vs 12.4
    GFLOP/s). So, on CPU, the step differentiates with respect to ``W_encᵀ`` and transposes the
    gradient afterwards (an ``optimization_barrier`` keeps XLA from folding the transpose back
    into the matmul). The values are the same; only the layout of the work changes.
    """
    if jax.default_backend() != "cpu":
        return jax.value_and_grad(loss_fn, has_aux=True)(params)

    def loss_t(p_t: SAEParams):
        return loss_fn(p_t._replace(W_enc=p_t.W_enc.T))

    out, g_t = jax.value_and_grad(loss_t, has_aux=True)(params._replace(W_enc=params.W_enc.T))
    return out, g_t._replace(W_enc=lax.optimization_barrier(g_t.W_enc).T)


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
    params = state.params
    dtype = params.W_dec.dtype
    l1_coeff = l1_schedule(cfg)(state.step).astype(dtype)
    lr = lr_schedule(cfg)(state.step)

    if cfg.arch == "l1":
        loss_fn = lambda p: _l1_loss(p, batch, l1_coeff, feature_axis)  # noqa: E731
    else:
        if axis_size(feature_axis) > 1:
            raise NotImplementedError(
                "arch='topk' with the features split over devices (it needs a global top-k "
                "across the slices): use a mesh with feature=1"
            )
        dead = dead_mask(state.tokens_since_fired, cfg)
        loss_fn = lambda p: _topk_loss(p, batch, cfg, dead)  # noqa: E731
        l1_coeff = jnp.zeros((), dtype)

    (_, (m, fired)), grads = _value_and_grad(loss_fn, params)
    if feature_axis is not None:
        # b_dec's gradient is the same on every feature slice up to rounding; pmean keeps the
        # replicas of b_dec bit-identical.
        grads = grads._replace(b_dec=lax.pmean(grads.b_dec, feature_axis))
    grads = _pmean(grads, data_axis)
    grad_norm = global_norm(grads, feature_axis=feature_axis)

    optimizer = make_optimizer(cfg, feature_axis=feature_axis)
    updates, opt_state = optimizer.update(grads, state.opt_state, params)
    params = optax.apply_updates(params, updates)

    # Dead-feature counters: a feature fired if any code > 0 on any device's rows.
    fired = _psum(fired.astype(jnp.int32), data_axis) > 0
    n_tokens = batch.shape[0] * axis_size(data_axis)
    counters = jnp.minimum(state.tokens_since_fired, COUNTER_MAX - n_tokens) + n_tokens
    counters = jnp.where(fired, jnp.zeros_like(counters), counters)
    dead_frac = _pmean(jnp.mean(dead_mask(counters, cfg).astype(jnp.float32)), feature_axis)

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
        aux_loss=m.auxk if cfg.arch == "topk" else jnp.zeros((), dtype),
    )
    metrics = metrics._replace(
        **{
            f: _pmean(getattr(metrics, f), data_axis)
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
