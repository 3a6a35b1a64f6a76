"""jaxsae: sparse dictionary learning in JAX for the features of protein language models."""

from jaxsae.kernels import (
    SAEMetrics,
    SAEOutput,
    SAEParams,
    decode,
    encode,
    forward,
    init_params,
    nonneg_soft_threshold,
    sae_loss,
    soft_threshold,
)

__version__ = "0.1.0"
