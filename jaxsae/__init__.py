"""jaxsae: sparse dictionary learning in JAX for the features of protein language models.

Layers (each imports only the ones below it): ``jaxsae.kernels`` (pure maths: soft-thresholding,
ISTA/FISTA lasso solvers, SAE and TopK kernels), ``jaxsae.models`` (Flax NNX and Equinox
wrappers, SAELens export), ``jaxsae.training`` (optax recipe, data- and feature-parallel train
step, the loop with checkpoints), ``jaxsae.data`` (activation stores, loaders, synthetic data),
``jaxsae.protein`` (ESM-2 in JAX, weights, the embedded default, extraction) and
``jaxsae.interpret`` (top activations, concept association, baselines, report).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# name -> module; imported on first use so that `jaxsae --help` does not import JAX
_EXPORTS: dict[str, str] = {
    "SyntheticData": "jaxsae.data.synthetic",
    "make_sparse_data": "jaxsae.data.synthetic",
    "AmortisationGap": "jaxsae.kernels",
    "SAEMetrics": "jaxsae.kernels",
    "SAEOutput": "jaxsae.kernels",
    "SAEParams": "jaxsae.kernels",
    "Solution": "jaxsae.kernels",
    "TopKMetrics": "jaxsae.kernels",
    "amortisation_gap": "jaxsae.kernels",
    "decode": "jaxsae.kernels",
    "duality_gap": "jaxsae.kernels",
    "encode": "jaxsae.kernels",
    "feature_recovery": "jaxsae.kernels",
    "fista": "jaxsae.kernels",
    "fista_trace": "jaxsae.kernels",
    "fold_normalisation": "jaxsae.kernels",
    "forward": "jaxsae.kernels",
    "geometric_median": "jaxsae.kernels",
    "init_params": "jaxsae.kernels",
    "ista": "jaxsae.kernels",
    "ista_trace": "jaxsae.kernels",
    "lasso_objective": "jaxsae.kernels",
    "lipschitz_constant": "jaxsae.kernels",
    "nonneg_soft_threshold": "jaxsae.kernels",
    "sae_loss": "jaxsae.kernels",
    "soft_threshold": "jaxsae.kernels",
    "solve_lasso": "jaxsae.kernels",
    "topk_encode": "jaxsae.kernels",
    "topk_loss": "jaxsae.kernels",
    "SparseAutoencoder": "jaxsae.models",
    "load_saelens": "jaxsae.models",
    "save_saelens": "jaxsae.models",
    "TrainConfig": "jaxsae.training",
    "train": "jaxsae.training",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # for static analysis and IDEs
    from jaxsae.data.synthetic import (  # noqa: F401
        SyntheticData,
        make_sparse_data,
    )
    from jaxsae.kernels import (  # noqa: F401
        AmortisationGap,
        SAEMetrics,
        SAEOutput,
        SAEParams,
        Solution,
        TopKMetrics,
        amortisation_gap,
        decode,
        duality_gap,
        encode,
        feature_recovery,
        fista,
        fista_trace,
        fold_normalisation,
        forward,
        geometric_median,
        init_params,
        ista,
        ista_trace,
        lasso_objective,
        lipschitz_constant,
        nonneg_soft_threshold,
        sae_loss,
        soft_threshold,
        solve_lasso,
        topk_encode,
        topk_loss,
    )
    from jaxsae.models import (  # noqa: F401
        SparseAutoencoder,
        load_saelens,
        save_saelens,
    )
    from jaxsae.training import (  # noqa: F401
        TrainConfig,
        train,
    )


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'jaxsae' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
