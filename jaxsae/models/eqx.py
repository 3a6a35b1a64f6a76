"""Equinox sparse autoencoder: a frozen pytree of the four arrays that calls the kernels."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxsae.kernels.sae import (
    SAEOutput,
    SAEParams,
    check_params,
    forward,
    init_params,
    sae_loss,
)
from jaxsae.kernels.topk import check_k, topk_forward, topk_loss

__all__ = ["SparseAutoencoder"]


class SparseAutoencoder(eqx.Module):
    """A sparse autoencoder as an Equinox module (same API as the NNX one).

    Args:
      d_in: input dimension.
      d_sae: number of features.
      key: PRNG key for ``init_params``.
      k: ``None`` for the standard L1 SAE; an int for a TopK SAE.
      dec_norm: initial decoder row norm.
      dtype: parameter dtype.
      params: optional ``SAEParams`` to hold instead (then ``key`` may be omitted).

    Examples:
      >>> sae = SparseAutoencoder(320, 2560, key=jax.random.PRNGKey(0))
      >>> loss, metrics = sae.loss(x, 5.0)
      >>> grads = eqx.filter_grad(lambda m: m.loss(x, 5.0)[0])(sae)
    """

    W_enc: jax.Array
    b_enc: jax.Array
    W_dec: jax.Array
    b_dec: jax.Array
    k: int | None = eqx.field(static=True)

    def __init__(
        self,
        d_in: int,
        d_sae: int,
        *,
        key: jax.Array | None = None,
        k: int | None = None,
        dec_norm: float = 0.1,
        dtype: jnp.dtype = jnp.float32,
        params: SAEParams | None = None,
    ):
        if params is None:
            if key is None:
                raise ValueError("SparseAutoencoder: expected key (or params), found neither")
            params = init_params(key, d_in, d_sae, dec_norm=dec_norm, dtype=dtype)
        params = check_params(params, d_in, d_sae)
        self.k = None if k is None else check_k(k, d_sae)
        self.W_enc = jnp.asarray(params.W_enc)
        self.b_enc = jnp.asarray(params.b_enc)
        self.W_dec = jnp.asarray(params.W_dec)
        self.b_dec = jnp.asarray(params.b_dec)

    @classmethod
    def from_params(cls, params: SAEParams, *, k: int | None = None) -> SparseAutoencoder:
        """A module holding ``params``."""
        return cls(params.d_in, params.d_sae, k=k, params=params)

    def to_params(self) -> SAEParams:
        """The functional ``SAEParams``."""
        return SAEParams(W_enc=self.W_enc, b_enc=self.b_enc, W_dec=self.W_dec, b_dec=self.b_dec)

    def __call__(self, x: ArrayLike) -> SAEOutput:
        """Forward pass on ``x (batch, d_in)`` or ``(d_in,)``."""
        if self.k is None:
            return forward(self.to_params(), x)
        return topk_forward(self.to_params(), x, self.k)

    def loss(self, x: ArrayLike, l1_coeff: ArrayLike | None = None, **topk_options):
        """``sae_loss`` (L1 SAE) or ``topk_loss`` (TopK SAE): ``(loss, metrics)``."""
        if self.k is None:
            if l1_coeff is None:
                raise ValueError("loss: expected l1_coeff for an L1 SAE (k=None), found None")
            return sae_loss(self.to_params(), x, l1_coeff)
        return topk_loss(self.to_params(), x, self.k, **topk_options)
