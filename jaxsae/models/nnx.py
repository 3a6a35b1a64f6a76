"""Flax NNX sparse autoencoder: holds the parameters as ``nnx.Param`` and calls the kernels.

No maths lives here: the architecture (``jaxsae.kernels.architectures``: ``"l1"``, ``"topk"``,
``"batchtopk"``, ``"matryoshka_batchtopk"``, ``"jumprelu"``) provides the initialisation, the
forward pass and the loss.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from flax import nnx
from jax.typing import ArrayLike

from jaxsae.kernels.architectures import batch_loss, resolve
from jaxsae.kernels.sae import SAEOutput, SAEParams, check_params
from jaxsae.kernels.topk import check_k

__all__ = ["SparseAutoencoder"]


class SparseAutoencoder(nnx.Module):
    """A sparse autoencoder as a Flax NNX module.

    Args:
      d_in: input dimension.
      d_sae: number of features.
      rngs: ``nnx.Rngs`` for the architecture's initialisation.
      architecture: a registered name; default ``"topk"`` when ``k`` is given, else ``"l1"``.
      k: active features per input (TopK family).
      dec_norm: initial decoder row norm.
      dtype: parameter dtype.
      params: optional ``SAEParams`` (the architecture's training form) to hold instead of a
        random initialisation (then ``rngs`` may be omitted); see ``from_params``.
      **options: the architecture's other options (``aux_k``, ``bandwidth``, …).

    Examples:
      >>> sae = SparseAutoencoder(320, 2560, rngs=nnx.Rngs(0))
      >>> out = sae(x)                      # SAEOutput(codes, recon, pre_acts)
      >>> loss, metrics = sae.loss(x, l1_coeff=5.0)
      >>> grads = nnx.grad(lambda m: m.loss(x, 5.0)[0])(sae)
      >>> jr = SparseAutoencoder(320, 2560, architecture="jumprelu", rngs=nnx.Rngs(0))
    """

    def __init__(
        self,
        d_in: int,
        d_sae: int,
        *,
        rngs: nnx.Rngs | None = None,
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
        self.options = {**options, **({} if k is None else {"k": k})}
        if params is None:
            if rngs is None:
                raise ValueError("SparseAutoencoder: expected rngs (or params), found neither")
            params = self.arch.init(rngs.params(), d_in, d_sae, dec_norm=dec_norm, dtype=dtype)
        params = check_params(params, d_in, d_sae)
        self.d_in = d_in
        self.d_sae = d_sae
        self.k = k
        self.W_enc = nnx.Param(jnp.asarray(params.W_enc))
        self.b_enc = nnx.Param(jnp.asarray(params.b_enc))
        self.W_dec = nnx.Param(jnp.asarray(params.W_dec))
        self.b_dec = nnx.Param(jnp.asarray(params.b_dec))
        if params.threshold is not None:
            self.threshold = nnx.Param(jnp.asarray(params.threshold))

    @classmethod
    def from_params(
        cls, params: SAEParams, *, architecture: str | None = None, k: int | None = None, **kw
    ) -> SparseAutoencoder:
        """A module holding ``params`` (no random initialisation)."""
        return cls(params.d_in, params.d_sae, architecture=architecture, k=k, params=params, **kw)

    def to_params(self) -> SAEParams:
        """The functional ``SAEParams`` in training form (differentiable under nnx.grad)."""
        threshold = getattr(self, "threshold", None)
        return SAEParams(
            W_enc=self.W_enc[...],
            b_enc=self.b_enc[...],
            W_dec=self.W_dec[...],
            b_dec=self.b_dec[...],
            threshold=None if threshold is None else threshold[...],
        )

    def __call__(self, x: ArrayLike) -> SAEOutput:
        """Inference forward pass on ``x (batch, d_in)`` or ``(d_in,)``."""
        return self.arch.forward(self.arch.to_inference(self.to_params()), x)

    def loss(self, x: ArrayLike, l1_coeff: ArrayLike | None = None, *, dead_mask=None, **options):
        """The architecture's training loss: ``(loss, SAEMetrics)``.

        Args:
          x: inputs.
          l1_coeff: the sparsity coefficient (L1 and JumpReLU).
          dead_mask: ``(d_sae,)`` bool for AuxK / the pre-activation loss.
          **options: architecture options that override the module's for this call.
        """
        arch = resolve(self.arch.name, **{**self.options, **options}) if options else self.arch
        return batch_loss(arch, self.to_params(), x, l1_coeff, dead_mask)
