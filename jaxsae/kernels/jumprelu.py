"""JumpReLU SAE (Rajamanoharan et al. 2024), as in their paper and SAELens.

    z     = x W_enc + b_enc                                  pre-activations, (batch, d_sae)
    f(x)  = z · H(z − θ)                                      JumpReLU, θ > 0 per feature
    x̂     = f W_dec + b_dec
    L     = mean_x [ ‖x − x̂‖² + λ Σ_i H(z_i − θ_i) ]        (L0 penalty)
          or mean_x [ ‖x − x̂‖² + λ Σ_i tanh(c · f_i ‖W_dec[i]‖) ]   (``sparsity="tanh"``)

``H`` has no useful derivative, so the gradients with respect to ``θ`` use straight-through
estimators with a rectangle-kernel pseudo-derivative of bandwidth ``ε``
(``K(u) = 1{|u| < 1/2}``):

    ∂/∂θ JumpReLU(z, θ) := −(θ / ε) K((z − θ) / ε)        ∂/∂z JumpReLU(z, θ) := H(z − θ)
    ∂/∂θ H(z − θ)       := −(1 / ε) K((z − θ) / ε)        ∂/∂z H(z − θ)       := 0

The threshold is trained in log space (``θ = exp(log θ)``, the paper's pseudo-code and
SAELens' ``log_threshold``): the training form of the parameters holds ``log θ`` in
``SAEParams.threshold``, the inference form (SAELens' ``threshold``) holds ``θ``.

Dead features (not fired for a while) get the pre-activation loss of Anthropic's January 2025
update (SAELens' ``pre_act_loss``): ``coeff · mean_x Σ_{i dead} ReLU(θ_i − z_i) ‖W_dec[i]‖``,
which pulls their pre-activations up towards the threshold.

Defaults of ``ε`` and ``θ₀``: jaxsae normalises its inputs to ``E‖x‖² = d_in`` (unit variance
per coordinate), so that the pre-activations start at a scale of ``0.1`` (decoder rows of norm
0.1) and grow to ``O(1)``. At that scale SAELens' ``ε = θ₀ = 0.001`` hardly moves the
thresholds (the rectangle kernel sees about one pre-activation in a thousand): in the synthetic
recovery benchmark (``benchmarks/recovery.py``, 2,000 steps) ``ε = 0.001`` ends at L0 9.6–10.9
for a true L0 of 5, while ``ε = 0.01, θ₀ = 0.1`` reaches L0 4.5 and recovers 99.8 % of the
true features. Hence ``DEFAULT_BANDWIDTH = 0.01`` and ``DEFAULT_INIT_THRESHOLD = 0.1``.

References:
  Rajamanoharan et al., "Jumping Ahead: Improving Reconstruction Fidelity with JumpReLU Sparse
  Autoencoders", 2024 (arXiv:2407.14435).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from jaxsae.kernels.architectures import (
    Architecture,
    LossContext,
    LossOutput,
    no_update,
    reduce_features,
    register,
    slice_recon,
)
from jaxsae.kernels.axes import psum
from jaxsae.kernels.sae import (
    SAEOutput,
    SAEParams,
    bias_row,
    decode,
    decoder_norms,
    init_params,
    sae_loss_from_parts,
)

__all__ = [
    "rectangle",
    "jumprelu",
    "heaviside_step",
    "jumprelu_pre_acts",
    "jumprelu_encode",
    "jumprelu_forward",
    "jumprelu_loss",
    "jumprelu_architecture",
    "DEFAULT_BANDWIDTH",
    "DEFAULT_INIT_THRESHOLD",
]

SPARSITY = ("l0", "tanh")

#: ``ε`` of the pseudo-derivatives for inputs scaled to ``E‖x‖² = d_in`` (module docstring)
DEFAULT_BANDWIDTH = 0.01
#: ``θ`` at initialisation for inputs scaled to ``E‖x‖² = d_in`` (module docstring)
DEFAULT_INIT_THRESHOLD = 0.1


def rectangle(u: jax.Array) -> jax.Array:
    """The rectangle kernel ``K(u) = 1{-1/2 < u < 1/2}``."""
    return ((u > -0.5) & (u < 0.5)).astype(u.dtype)


def _sum_to(g: jax.Array, threshold: jax.Array) -> jax.Array:
    """Sum a ``(..., d_sae)`` cotangent over the leading axes to ``threshold``'s shape."""
    return (
        jnp.sum(g.reshape(-1, g.shape[-1]), axis=0).reshape(threshold.shape).astype(threshold.dtype)
    )


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def jumprelu(z: jax.Array, threshold: jax.Array, bandwidth: float) -> jax.Array:
    """``z · H(z − θ)`` with the straight-through pseudo-derivative in ``θ`` (module docstring)."""
    return z * (z > bias_row(threshold, z))


def _jumprelu_fwd(z, threshold, bandwidth):
    return jumprelu(z, threshold, bandwidth), (z, threshold)


def _jumprelu_bwd(bandwidth, res, g):
    z, threshold = res
    t = bias_row(threshold, z)
    d_z = (z > t) * g
    d_t = -(t / bandwidth) * rectangle((z - t) / bandwidth) * g
    return d_z.astype(z.dtype), _sum_to(d_t, threshold)


jumprelu.defvjp(_jumprelu_fwd, _jumprelu_bwd)


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def heaviside_step(z: jax.Array, threshold: jax.Array, bandwidth: float) -> jax.Array:
    """``H(z − θ)`` with the straight-through pseudo-derivative in ``θ`` (module docstring)."""
    return (z > bias_row(threshold, z)).astype(z.dtype)


def _step_fwd(z, threshold, bandwidth):
    return heaviside_step(z, threshold, bandwidth), (z, threshold)


def _step_bwd(bandwidth, res, g):
    z, threshold = res
    d_t = -(1.0 / bandwidth) * rectangle((z - bias_row(threshold, z)) / bandwidth) * g
    return jnp.zeros_like(z), _sum_to(d_t, threshold)


heaviside_step.defvjp(_step_fwd, _step_bwd)


def jumprelu_pre_acts(params: SAEParams, x: jax.Array) -> jax.Array:
    """``z = x W_enc + b_enc``: ``(..., d_in) → (..., d_sae)``."""
    pre = x @ params.W_enc
    return pre + bias_row(params.b_enc, pre)


def jumprelu_encode(params: SAEParams, x: jax.Array) -> jax.Array:
    """Inference encoder ``f = z · H(z − θ)`` (``params.threshold`` holds ``θ``)."""
    pre = jumprelu_pre_acts(params, x)
    return jnp.where(pre > bias_row(params.threshold, pre), pre, 0)


def jumprelu_forward(params: SAEParams, x: jax.Array) -> SAEOutput:
    """Inference forward pass on ``x (..., d_in)`` (inference form: ``θ`` in ``threshold``)."""
    pre = jumprelu_pre_acts(params, x)
    codes = jnp.where(pre > bias_row(params.threshold, pre), pre, 0)
    return SAEOutput(codes=codes, recon=decode(params, codes), pre_acts=pre)


def jumprelu_loss(
    params: SAEParams,
    x: jax.Array,
    coeff: jax.Array,
    *,
    bandwidth: float = DEFAULT_BANDWIDTH,
    sparsity: str = "l0",
    tanh_scale: float = 4.0,
    dead_mask: jax.Array | None = None,
    pre_act_coeff: float = 0.0,
    feature_axis: str | None = None,
) -> tuple[jax.Array, LossOutput]:
    """JumpReLU training loss on the training form (``threshold`` holds ``log θ``).

    Args:
      params: the SAE in training form (this device's features when split).
      x: ``(batch, d_in)`` inputs.
      coeff: ``λ ≥ 0``, the sparsity coefficient.
      bandwidth: ``ε`` of the pseudo-derivatives (static).
      sparsity: ``"l0"`` (the paper) or ``"tanh"`` (``Σ tanh(c f_i ‖W_dec[i]‖)``).
      tanh_scale: ``c`` of the tanh penalty.
      dead_mask: ``(d_sae_local,)`` bool for the pre-activation loss, or ``None``.
      pre_act_coeff: weight of the pre-activation loss on dead features.
      feature_axis: the mesh axis the features are split over, or ``None``.

    Returns:
      ``(loss, LossOutput)``; ``metrics.l1`` is the sparsity penalty before ``λ``.
    """
    theta = jnp.exp(params.threshold)
    pre = jumprelu_pre_acts(params, x)
    codes = jumprelu(pre, theta, bandwidth)
    recon = slice_recon(codes @ params.W_dec, feature_axis) + params.b_dec[None, :]
    norms = decoder_norms(params)
    if sparsity == "l0":
        penalty = jnp.sum(heaviside_step(pre, theta, bandwidth), axis=-1)
    else:
        penalty = jnp.sum(jnp.tanh(tanh_scale * codes * norms[None, :]), axis=-1)
    active = codes != 0
    loss, m = sae_loss_from_parts(x, recon, codes, norms, coeff)  # its l1 term is replaced
    loss = loss - coeff * m.l1 + coeff * jnp.mean(penalty)
    m = m._replace(loss=loss, l1=jnp.mean(penalty))
    if dead_mask is not None:
        gap = jnp.maximum(theta[None, :] - pre, 0) * (dead_mask * norms)[None, :]
        pre_act = jnp.mean(jnp.sum(gap, axis=-1))
        loss = loss + pre_act_coeff * pre_act
        m = m._replace(
            loss=loss,
            auxk=pre_act,
            num_dead=psum(jnp.sum(dead_mask).astype(x.dtype), feature_axis),
        )
    m = reduce_features(m, coeff, feature_axis)
    aux = psum(m.auxk, feature_axis)  # the pre-activation loss: a sum over the slices too
    m = m._replace(loss=m.loss + pre_act_coeff * (aux - m.auxk), auxk=aux)
    fired = jnp.any(active.reshape(-1, active.shape[-1]), axis=0)
    min_active = jnp.min(jnp.where(active, jax.lax.stop_gradient(codes), jnp.inf))
    return loss, LossOutput(m, fired, min_active)


def jumprelu_architecture(
    bandwidth: float = DEFAULT_BANDWIDTH,
    init_threshold: float = DEFAULT_INIT_THRESHOLD,
    sparsity: str = "l0",
    pre_act_coeff: float = 0.0,
) -> Architecture:
    """JumpReLU SAE; options as in ``jumprelu_loss`` (``init_threshold``: ``θ`` at step 0)."""
    if sparsity not in SPARSITY:
        raise ValueError(f"jumprelu: expected sparsity in {SPARSITY}, found {sparsity!r}")
    if not bandwidth > 0 or not init_threshold > 0:
        raise ValueError(
            f"jumprelu: expected bandwidth > 0 and init_threshold > 0, found {bandwidth}, "
            f"{init_threshold}"
        )

    def init(key, d_in, d_sae, *, dec_norm=0.1, b_dec=None, dtype=jnp.float32):
        p = init_params(key, d_in, d_sae, dec_norm=dec_norm, b_dec=b_dec, dtype=dtype)
        return p._replace(threshold=jnp.full((d_sae,), jnp.log(init_threshold), dtype))

    def loss(params: SAEParams, x: jax.Array, ctx: LossContext):
        return jumprelu_loss(
            params,
            x,
            ctx.coeff,
            bandwidth=bandwidth,
            sparsity=sparsity,
            dead_mask=ctx.dead_mask,
            pre_act_coeff=pre_act_coeff,
            feature_axis=ctx.feature_axis,
        )

    return Architecture(
        name="jumprelu",
        saelens_name="jumprelu",
        apply_b_dec_to_input=False,
        uses_coeff=True,
        resamples=False,
        init=init,
        loss=loss,
        update=no_update,
        to_inference=lambda p: p._replace(threshold=jnp.exp(p.threshold)),
        from_inference=lambda p: p._replace(threshold=jnp.log(p.threshold)),
        encode=jumprelu_encode,
        forward=jumprelu_forward,
    )


register(
    "jumprelu",
    jumprelu_architecture,
    ("bandwidth", "init_threshold", "sparsity", "pre_act_coeff"),
)
