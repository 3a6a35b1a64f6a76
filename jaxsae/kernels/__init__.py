"""Pure, jittable maths: proximal operators, lasso solvers and SAE kernels."""

from jaxsae.kernels.prox import nonneg_soft_threshold, prox_l1, soft_threshold
from jaxsae.kernels.sae import (
    SAEMetrics,
    SAEOutput,
    SAEParams,
    decode,
    decoder_norms,
    encode,
    forward,
    init_params,
    sae_loss,
)
