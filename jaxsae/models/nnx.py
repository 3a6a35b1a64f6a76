"""Flax NNX sparse autoencoder: holds the parameters as ``nnx.Param`` and calls the kernels.

No maths lives here: the forward pass and the loss are ``jaxsae.kernels.sae`` (standard L1
SAE, ``k=None``) or ``jaxsae.kernels.topk`` (TopK SAE, ``k`` active features).
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx
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


class SparseAutoencoder(nnx.Module):
    """A sparse autoencoder as a Flax NNX module.

    Args:
      d_in: input dimension.
      d_sae: number of features.
      rngs: ``nnx.Rngs`` for the initialisation (``init_params``: Anthropic's April 2024 recipe).
      k: ``None`` for the standard L1 SAE; an int for a TopK SAE with ``k`` active features.
      dec_norm: initial decoder row norm.
      dtype: parameter dtype.
      params: optional ``SAEParams`` to hold instead of a random initialisation (then ``rngs``
        may be omitted); see ``from_params``.

    Examples:
      >>> sae = SparseAutoencoder(320, 2560, rngs=nnx.Rngs(0))
      >>> out = sae(x)                      # SAEOutput(codes, recon, pre_acts)
      >>> loss, metrics = sae.loss(x, l1_coeff=5.0)
      >>> grads = nnx.grad(lambda m: m.loss(x, 5.0)[0])(sae)
    """

    def __init__(
        self,
        d_in: int,
        d_sae: int,
        *,
        rngs: nnx.Rngs | None = None,
        k: int | None = None,
        dec_norm: float = 0.1,
        dtype: jnp.dtype = jnp.float32,
        params: SAEParams | None = None,
    ):
        if k is not None:
            k = check_k(k, d_sae)
        if params is None:
            if rngs is None:
                raise ValueError("SparseAutoencoder: expected rngs (or params), found neither")
            params = init_params(rngs.params(), d_in, d_sae, dec_norm=dec_norm, dtype=dtype)
        params = check_params(params, d_in, d_sae)
        self.d_in = d_in
        self.d_sae = d_sae
        self.k = k
        self.W_enc = nnx.Param(jnp.asarray(params.W_enc))
        self.b_enc = nnx.Param(jnp.asarray(params.b_enc))
        self.W_dec = nnx.Param(jnp.asarray(params.W_dec))
        self.b_dec = nnx.Param(jnp.asarray(params.b_dec))

    @classmethod
    def from_params(cls, params: SAEParams, *, k: int | None = None) -> SparseAutoencoder:
        """A module holding ``params`` (no random initialisation)."""
        return cls(params.d_in, params.d_sae, k=k, params=params)

    def to_params(self) -> SAEParams:
        """The functional ``SAEParams`` (the arrays themselves, differentiable under nnx.grad)."""
        return SAEParams(
            W_enc=self.W_enc[...],
            b_enc=self.b_enc[...],
            W_dec=self.W_dec[...],
            b_dec=self.b_dec[...],
        )

    def __call__(self, x: ArrayLike) -> SAEOutput:
        """Forward pass on ``x (batch, d_in)`` or ``(d_in,)``: ``forward`` or ``topk_forward``."""
        if self.k is None:
            return forward(self.to_params(), x)
        return topk_forward(self.to_params(), x, self.k)

    def loss(self, x: ArrayLike, l1_coeff: ArrayLike | None = None, **topk_options):
        """``sae_loss(params, x, l1_coeff)``, or ``topk_loss(params, x, k, **topk_options)``.

        Returns:
          ``(loss, metrics)`` (``SAEMetrics`` or ``TopKMetrics``).
        """
        if self.k is None:
            if l1_coeff is None:
                raise ValueError("loss: expected l1_coeff for an L1 SAE (k=None), found None")
            return sae_loss(self.to_params(), x, l1_coeff)
        return topk_loss(self.to_params(), x, self.k, **topk_options)
