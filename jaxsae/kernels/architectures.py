"""The SAE architectures as one family: an ``Architecture`` of pure functions and a registry.

An architecture is a ``NamedTuple`` of pure functions over ``SAEParams`` (the shape of optax's
``GradientTransformation``): ``init`` and ``loss`` on the *training form* of the parameters
(what the optimiser updates), ``update`` for the state that is estimated rather than trained
(BatchTopK's threshold), ``to_inference``/``from_inference`` between the training form and the
*inference form* that SAELens stores, and ``encode``/``forward`` on the inference form. The
trainer, the Flax NNX and Equinox wrappers, the SAELens export and the interpretation read an
architecture from here; none of them branches on its name.

Adding an architecture is one module: write its kernels, build an ``Architecture`` in a factory
and ``register`` it with the names of the ``TrainConfig`` fields the factory takes. The built-in
ones (registered when ``jaxsae.kernels`` is imported):

| name | SAELens name (inference form) | encoder | loss | dead features |
| --- | --- | --- | --- | --- |
| ``l1`` | ``standard`` | ``ReLU(x W_enc + b_enc)`` | ``‖x − x̂‖² + λ Σ f_i ‖W_dec[i]‖`` | resample |
| ``topk`` | ``topk`` | top ``k`` of ``(x − b_dec) W_enc + b_enc`` | ``fvu`` | AuxK |
| ``batchtopk`` | ``jumprelu`` | top ``k·B`` of the batch | ``fvu`` | AuxK |
| ``matryoshka_batchtopk`` | ``jumprelu`` | as ``batchtopk`` | ``Σ_prefixes fvu`` | AuxK |
| ``jumprelu`` | ``jumprelu`` | ``z · H(z − θ)`` | ``‖x − x̂‖² + λ L0`` (or tanh) | pre-act loss |
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxsae.kernels._checks import check_nonnegative
from jaxsae.kernels.axes import axis_size, pmean, psum
from jaxsae.kernels.sae import (
    SAEMetrics,
    SAEOutput,
    SAEParams,
    check_inputs,
    decoder_norms,
    encode,
    forward,
    init_params,
    sae_loss_from_parts,
)
from jaxsae.kernels.topk import (
    TopKFamily,
    check_dead_mask,
    check_k,
    topk_encode,
    topk_family_loss,
    topk_forward,
)

__all__ = [
    "Architecture",
    "LossContext",
    "LossOutput",
    "register",
    "architecture",
    "from_config",
    "architecture_names",
    "architecture_options",
    "inference_architecture",
    "SAELENS_NAMES",
    "resolve",
    "batch_loss",
]


class LossContext(NamedTuple):
    """What a train step hands an architecture's loss besides the parameters and the batch.

    Attributes:
      coeff: the sparsity coefficient ``λ`` of this step (after its warm-up; L1 and JumpReLU).
      dead_mask: ``(d_sae_local,)`` bool, features that have not fired for a while, or ``None``.
      feature_axis: the mesh axis the features are split over, or ``None`` (static).
    """

    coeff: jax.Array
    dead_mask: jax.Array | None = None
    feature_axis: str | None = None


class LossOutput(NamedTuple):
    """An architecture loss's auxiliary output.

    Attributes:
      metrics: ``SAEMetrics`` of the batch (global over the feature shards).
      fired: ``(d_sae_local,)`` bool, features with a code ``> 0`` on some input.
      min_active: smallest non-zero code of the batch on this device (``inf`` if none).
    """

    metrics: SAEMetrics
    fired: jax.Array
    min_active: jax.Array


class Architecture(NamedTuple):
    """An SAE architecture as pure functions (see the module docstring).

    Attributes:
      name: the registry name (``jaxsae train --architecture``).
      saelens_name: SAELens' ``architecture`` of the inference form.
      apply_b_dec_to_input: whether the inference form's encoder reads ``x − b_dec``.
      uses_coeff: whether the loss reads ``LossContext.coeff`` (its warm-up schedule applies).
      resamples: whether dead features are handled by resampling (no auxiliary loss).
      init: ``init(key, d_in, d_sae, *, dec_norm, b_dec, dtype) -> SAEParams`` (training form).
      loss: ``loss(params, x, ctx) -> (loss, LossOutput)`` on the training form.
      update: ``update(params, out, axes) -> params`` after each optimiser step (``axes``: the
        ``(data_axis, feature_axis)`` names): non-gradient state such as a running threshold.
      to_inference: training form → inference form.
      from_inference: inference form → training form.
      encode: ``encode(params, x) -> codes (..., d_sae)`` on the inference form.
      forward: ``forward(params, x) -> SAEOutput`` on the inference form.
      saelens_options: extra SAELens config fields of the inference form (e.g. ``k``).
    """

    name: str
    saelens_name: str
    apply_b_dec_to_input: bool
    uses_coeff: bool
    resamples: bool
    init: Callable[..., SAEParams]
    loss: Callable[[SAEParams, jax.Array, LossContext], tuple[jax.Array, LossOutput]]
    update: Callable[[SAEParams, LossOutput, tuple[str | None, str | None]], SAEParams]
    to_inference: Callable[[SAEParams], SAEParams]
    from_inference: Callable[[SAEParams], SAEParams]
    encode: Callable[[SAEParams, jax.Array], jax.Array]
    forward: Callable[[SAEParams, jax.Array], SAEOutput]
    saelens_options: tuple[tuple[str, Any], ...] = ()


_FACTORIES: dict[str, tuple[Callable[..., Architecture], tuple[str, ...]]] = {}

#: SAELens architecture name of an inference form → the registry name that reads it
SAELENS_NAMES = {"standard": "l1", "topk": "topk", "jumprelu": "jumprelu"}


def register(name: str, factory: Callable[..., Architecture], options: tuple[str, ...]) -> None:
    """Register ``factory(**options) -> Architecture`` under ``name``.

    Args:
      name: the registry name.
      factory: builds the architecture from keyword options (hashable values).
      options: the ``TrainConfig`` fields the factory takes (``from_config`` passes them).
    """
    _FACTORIES[name] = (factory, tuple(options))


def architecture_names() -> tuple[str, ...]:
    """The registered names."""
    return tuple(_FACTORIES)


def architecture_options(name: str) -> tuple[str, ...]:
    """The ``TrainConfig`` fields that architecture ``name`` reads."""
    return _FACTORIES[name][1]


@cache
def _build(name: str, options: tuple[tuple[str, Any], ...]) -> Architecture:
    return _FACTORIES[name][0](**dict(options))


def architecture(name: str, **options: Any) -> Architecture:
    """The architecture ``name`` with the given options (the same object for the same options).

    Raises:
      ValueError: an unknown name or option.
    """
    if name not in _FACTORIES:
        raise ValueError(f"architecture: expected one of {architecture_names()}, found {name!r}")
    known = _FACTORIES[name][1]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(f"architecture {name!r}: expected options among {known}, found {unknown}")
    return _build(name, tuple(sorted(options.items())))


def from_config(cfg: Any) -> Architecture:
    """The architecture of a ``TrainConfig`` (``cfg.arch`` with the options it names)."""
    if cfg.arch not in _FACTORIES:
        raise ValueError(f"arch: expected one of {architecture_names()}, found {cfg.arch!r}")
    return architecture(cfg.arch, **{o: getattr(cfg, o) for o in _FACTORIES[cfg.arch][1]})


def inference_architecture(saelens_name: str, **options: Any) -> Architecture:
    """The architecture that reads SAELens' inference form ``saelens_name`` (with e.g. ``k``)."""
    if saelens_name not in SAELENS_NAMES:
        raise ValueError(
            f"architecture: expected a SAELens architecture in {sorted(SAELENS_NAMES)}, found "
            f"{saelens_name!r}"
        )
    return architecture(SAELENS_NAMES[saelens_name], **options)


# ----------------------------------------------------------------------------------------------
# Shared pieces


def identity(params: SAEParams) -> SAEParams:
    """The training form is the inference form."""
    return params


def no_update(params: SAEParams, out: LossOutput, axes: tuple[str | None, str | None]):
    """No state besides the trained parameters."""
    del out, axes
    return params


def init_plain(key, d_in, d_sae, *, dec_norm=0.1, b_dec=None, dtype=jnp.float32) -> SAEParams:
    """``init_params`` (Anthropic's April 2024 initialisation), no threshold."""
    return init_params(key, d_in, d_sae, dec_norm=dec_norm, b_dec=b_dec, dtype=dtype)


def reduce_features(m: SAEMetrics, coeff: jax.Array, feature_axis: str | None) -> SAEMetrics:
    """Metrics of a feature slice made global: penalty and counts summed, the rest averaged."""
    if feature_axis is None:
        return m
    l1 = psum(m.l1, feature_axis)
    recon, mse, fvu = (pmean(v, feature_axis) for v in (m.recon, m.mse, m.fvu))
    return m._replace(
        loss=m.loss - m.recon - coeff * m.l1 + recon + coeff * l1,
        recon=recon,
        mse=mse,
        fvu=fvu,
        explained_variance=1.0 - fvu,
        l1=l1,
        l0=psum(m.l0, feature_axis),
        dec_norm=pmean(m.dec_norm, feature_axis),
    )


def slice_recon(mine: jax.Array, feature_axis: str | None) -> jax.Array:
    """This slice's partial reconstruction plus the others', held constant (no collective in
    the backward pass; the gradient with respect to this slice's parameters is the global one).
    """
    if axis_size(feature_axis) == 1:
        return mine
    return mine + lax.stop_gradient(psum(mine, feature_axis) - mine)


# ----------------------------------------------------------------------------------------------
# L1 (the seed's standard SAE)


def _l1_loss(params: SAEParams, x: jax.Array, ctx: LossContext):
    """``sae_loss`` on this device's features, plus the fired mask."""
    codes, _ = encode(params, x)
    # Codes are >= 0, so sign(codes) is the indicator of activity; written so, XLA on CPU fuses
    # it into the reduction instead of materialising a (batch, d_sae) mask.
    counts = jnp.sum(jnp.sign(codes), axis=0)
    recon = slice_recon(codes @ params.W_dec, ctx.feature_axis) + params.b_dec[None, :]
    loss, m = sae_loss_from_parts(x, recon, codes, decoder_norms(params), ctx.coeff)
    m = m._replace(l0=jnp.sum(counts) / x.shape[0])
    m = reduce_features(m, ctx.coeff, ctx.feature_axis)
    return loss, LossOutput(m, counts > 0, jnp.asarray(jnp.inf, x.dtype))


def l1_architecture() -> Architecture:
    """The seed's L1 SAE (``jaxsae.kernels.sae``)."""
    return Architecture(
        name="l1",
        saelens_name="standard",
        apply_b_dec_to_input=False,
        uses_coeff=True,
        resamples=True,
        init=init_plain,
        loss=_l1_loss,
        update=no_update,
        to_inference=identity,
        from_inference=identity,
        encode=lambda p, x: encode(p, x)[0],
        forward=forward,
    )


# ----------------------------------------------------------------------------------------------
# TopK (Gao et al. 2024)


def family_loss(opts: TopKFamily, aux_coeff: float) -> Callable:
    """The ``Architecture.loss`` of a TopK-family member (``topk_family_loss``)."""

    def loss(params: SAEParams, x: jax.Array, ctx: LossContext):
        value, out = topk_family_loss(
            params,
            x,
            opts,
            dead_mask=ctx.dead_mask,
            aux_coeff=aux_coeff,
            feature_axis=ctx.feature_axis,
        )
        return value, LossOutput(out.metrics, out.fired, out.min_active)

    return loss


def topk_architecture(k: int = 32, aux_k: int = 512, aux_coeff: float = 1 / 32) -> Architecture:
    """TopK SAE with AuxK (``jaxsae.kernels.topk``)."""
    check_k(k, 2**62)
    return Architecture(
        name="topk",
        saelens_name="topk",
        apply_b_dec_to_input=True,
        uses_coeff=False,
        resamples=False,
        init=init_plain,
        loss=family_loss(TopKFamily(k=k, aux_k=aux_k), aux_coeff),
        update=no_update,
        to_inference=identity,
        from_inference=identity,
        encode=lambda p, x: topk_encode(p, x, k)[0],
        forward=lambda p, x: topk_forward(p, x, k),
        saelens_options=(("k", k),),
    )


register("l1", l1_architecture, ())
register("topk", topk_architecture, ("k", "aux_k", "aux_coeff"))


# ----------------------------------------------------------------------------------------------
# What the Flax NNX and Equinox wrappers call


def resolve(name: str | None = None, *, k: int | None = None, **options: Any) -> Architecture:
    """The architecture a wrapper was asked for: ``name`` (default ``"topk"`` when ``k`` is
    given, else ``"l1"``) with ``k`` and the other options."""
    if name is None:
        name = "l1" if k is None else "topk"
    if k is not None:
        options["k"] = k
    return architecture(name, **options)


def batch_loss(
    arch: Architecture,
    params: SAEParams,
    x: jax.Array,
    coeff: Any = None,
    dead_mask: jax.Array | None = None,
) -> tuple[jax.Array, SAEMetrics]:
    """``arch.loss`` on one device with checked inputs: ``(loss, SAEMetrics)``.

    Args:
      arch: the architecture.
      params: its training form.
      x: ``(batch, d_in)`` or ``(d_in,)`` inputs.
      coeff: the sparsity coefficient ``λ ≥ 0`` (required when ``arch.uses_coeff``).
      dead_mask: ``(d_sae,)`` bool for the dead-feature loss, or ``None``.
    """
    x = check_inputs(params, x)
    if arch.uses_coeff and coeff is None:
        raise ValueError(
            f"loss: expected l1_coeff (the sparsity coefficient) of {arch.name!r}, found None"
        )
    check_nonnegative("coeff", 0.0 if coeff is None else coeff)
    dead_mask = check_dead_mask(dead_mask, params.d_sae)
    c = jnp.asarray(0.0 if coeff is None else coeff, x.dtype)
    loss, out = arch.loss(params, x.reshape(-1, params.d_in), LossContext(c, dead_mask))
    return loss, out.metrics
