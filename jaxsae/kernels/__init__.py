"""Pure, jittable maths: proximal operators, lasso solvers and SAE kernels."""

from jaxsae.kernels.amortisation import AmortisationGap, amortisation_gap, optimal_codes
from jaxsae.kernels.lasso import duality_gap, lasso_objective, lipschitz_constant
from jaxsae.kernels.prox import nonneg_soft_threshold, prox_l1, soft_threshold
from jaxsae.kernels.recovery import FeatureRecovery, feature_recovery, max_cosines
from jaxsae.kernels.sae import (
    SAEMetrics,
    SAEOutput,
    SAEParams,
    check_params,
    decode,
    decoder_norms,
    encode,
    fold_normalisation,
    forward,
    geometric_median,
    init_params,
    sae_loss,
    sae_objective,
)
from jaxsae.kernels.solvers import (
    Solution,
    SolverTrace,
    fista,
    fista_trace,
    ista,
    ista_trace,
    solve_lasso,
)
from jaxsae.kernels.topk import (
    TopKMetrics,
    topk_decode,
    topk_encode,
    topk_forward,
    topk_loss,
    topk_pre_acts,
)

__all__ = [
    "AmortisationGap",
    "FeatureRecovery",
    "SAEMetrics",
    "SAEOutput",
    "SAEParams",
    "Solution",
    "SolverTrace",
    "TopKMetrics",
    "amortisation_gap",
    "check_params",
    "decode",
    "decoder_norms",
    "duality_gap",
    "encode",
    "feature_recovery",
    "fista",
    "fista_trace",
    "fold_normalisation",
    "forward",
    "geometric_median",
    "init_params",
    "ista",
    "ista_trace",
    "lasso_objective",
    "lipschitz_constant",
    "max_cosines",
    "nonneg_soft_threshold",
    "optimal_codes",
    "prox_l1",
    "sae_loss",
    "sae_objective",
    "soft_threshold",
    "solve_lasso",
    "topk_decode",
    "topk_encode",
    "topk_forward",
    "topk_loss",
    "topk_pre_acts",
]
