"""Feature recovery: how many ground-truth directions a learned dictionary contains.

For each true feature ``t_j`` (unit-normalised) the best-matching decoder row is the one of
largest cosine ``max_i ⟨t_j, W_dec[i]⟩ / (‖t_j‖ ‖W_dec[i]‖)`` (the "mean max cosine
similarity" of Sharkey et al., 2022). A feature is *recovered* when that cosine is
``≥ threshold``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxsae.kernels._checks import check_array

__all__ = ["FeatureRecovery", "feature_recovery", "max_cosines"]


class FeatureRecovery(NamedTuple):
    """Result of ``feature_recovery``.

    Attributes:
      fraction: scalar, fraction of true features with best cosine ``≥ threshold``.
      max_cosines: ``(n_true,)`` best cosine of each true feature.
      best_match: ``(n_true,)`` index of the best-matching decoder row.
      mean_max_cosine: scalar, mean of ``max_cosines``.
    """

    fraction: jax.Array
    max_cosines: jax.Array
    best_match: jax.Array
    mean_max_cosine: jax.Array


def _unit_rows(A: jax.Array) -> jax.Array:
    norms = jnp.linalg.norm(A, axis=1, keepdims=True)
    return A / jnp.maximum(norms, jnp.finfo(A.dtype).tiny)  # a zero row stays zero (cosine 0)


def max_cosines(true_features: ArrayLike, W_dec: ArrayLike) -> tuple[jax.Array, jax.Array]:
    """``(max_cosines (n_true,), best_match (n_true,))`` of each true feature over decoder rows."""
    T = check_array("true_features", true_features, ndim=2)
    W = check_array("W_dec", W_dec, ndim=2)
    if T.shape[1] != W.shape[1]:
        raise ValueError(
            f"feature_recovery: expected true_features and W_dec with the same d_in, found "
            f"true_features {tuple(T.shape)} and W_dec {tuple(W.shape)} (W_dec is (d_sae, d_in))"
        )
    dtype = jnp.result_type(T.dtype, W.dtype)
    cos = _unit_rows(T.astype(dtype)) @ _unit_rows(W.astype(dtype)).T
    return jnp.max(cos, axis=1), jnp.argmax(cos, axis=1)


def feature_recovery(
    true_features: ArrayLike, W_dec: ArrayLike, threshold: float = 0.9
) -> FeatureRecovery:
    """Fraction of true features whose best-matching decoder row has cosine ``≥ threshold``.

    Args:
      true_features: ``(n_true, d_in)`` ground-truth directions (any norms).
      W_dec: ``(d_sae, d_in)`` learned decoder (rows are features).
      threshold: cosine in ``[-1, 1]`` above which a feature counts as recovered.

    Returns:
      ``FeatureRecovery(fraction, max_cosines, best_match, mean_max_cosine)``.
    """
    if not -1 <= threshold <= 1:
        raise ValueError(f"threshold: expected a cosine in [-1, 1], found {threshold}")
    best, idx = max_cosines(true_features, W_dec)
    return FeatureRecovery(
        fraction=jnp.mean((best >= threshold).astype(best.dtype)),
        max_cosines=best,
        best_match=idx,
        mean_max_cosine=jnp.mean(best),
    )
