"""Equinox sparse autoencoder: a frozen pytree of the arrays that calls the kernels."""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxsae.kernels.architectures import Architecture, batch_loss, resolve
from jaxsae.kernels.sae import SAEOutput, SAEParams, check_params
from jaxsae.kernels.topk import check_k

__all__ = ["SparseAutoencoder"]


class SparseAutoencoder(eqx.Module):
    """A sparse autoencoder as an Equinox module (same API as the NNX one).

    Args:
      d_in: input dimension.
      d_sae: number of features.
      key: PRNG key for the architecture's initialisation.
      architecture: a registered name; default ``"topk"`` when ``k`` is given, else ``"l1"``.
      k: active features per input (TopK family).
      dec_norm: initial decoder row norm.
      dtype: parameter dtype.
      params: optional ``SAEParams`` (training form) to hold instead (then ``key`` may be
        omitted).
      **options: the architecture's other options.

    Examples:
      >>> sae = SparseAutoencoder(320, 2560, key=jax.random.PRNGKey(0))
      >>> loss, metrics = sae.loss(x, 5.0)
      >>> grads = eqx.filter_grad(lambda m: m.loss(x, 5.0)[0])(sae)
    """

    W_enc: jax.Array
    b_enc: jax.Array
    W_dec: jax.Array
    b_dec: jax.Array
    threshold: jax.Array | None
    arch: Architecture = eqx.field(static=True)
    options: tuple[tuple[str, Any], ...] = eqx.field(static=True)

    def __init__(
        self,
        d_in: int,
        d_sae: int,
        *,
        key: jax.Array | None = None,
        architecture: str | None = None,
        k: int | None = None,
        dec_norm: float = 0.1,
        dtype: jnp.dtype = jnp.float32,
        params: SAEParams | None = None,
        **options: Any,
    ):
        if k is not None:
            k = check_k(k, d_sae)
        self.arch = resolve(architecture, k=k, **options)
        self.options = tuple(sorted({**options, **({} if k is None else {"k": k})}.items()))
        if params is None:
            if key is None:
                raise ValueError("SparseAutoencoder: expected key (or params), found neither")
            params = self.arch.init(key, d_in, d_sae, dec_norm=dec_norm, dtype=dtype)
        params = check_params(params, d_in, d_sae)
        self.W_enc = jnp.asarray(params.W_enc)
        self.b_enc = jnp.asarray(params.b_enc)
        self.W_dec = jnp.asarray(params.W_dec)
        self.b_dec = jnp.asarray(params.b_dec)
        self.threshold = None if params.threshold is None else jnp.asarray(params.threshold)

    @property
    def k(self) -> int | None:
        """Active features per input (TopK family), else ``None``."""
        return dict(self.options).get("k")

    @classmethod
    def from_params(
        cls, params: SAEParams, *, architecture: str | None = None, k: int | None = None, **kw
    ) -> SparseAutoencoder:
        """A module holding ``params``."""
        return cls(params.d_in, params.d_sae, architecture=architecture, k=k, params=params, **kw)

    def to_params(self) -> SAEParams:
        """The functional ``SAEParams`` (training form)."""
        return SAEParams(self.W_enc, self.b_enc, self.W_dec, self.b_dec, self.threshold)

    def __call__(self, x: ArrayLike) -> SAEOutput:
        """Inference forward pass on ``x (batch, d_in)`` or ``(d_in,)``."""
        return self.arch.forward(self.arch.to_inference(self.to_params()), x)

    def loss(self, x: ArrayLike, l1_coeff: ArrayLike | None = None, *, dead_mask=None, **options):
        """The architecture's training loss: ``(loss, SAEMetrics)`` (see the NNX module)."""
        arch = self.arch
        if options:
            arch = resolve(arch.name, **{**dict(self.options), **options})
        return batch_loss(arch, self.to_params(), x, l1_coeff, dead_mask)
