"""Synthetic activations with known sparse features in superposition (for recovery tests).

``n_features`` unit-norm feature directions live in ``R^{d_in}`` with ``n_features > d_in``
allowed (superposition); each datum activates a few of them with non-negative magnitudes:

    X = C · features + noise,     C ≥ 0 sparse,  (n, n_features) · (n_features, d_in)

Feature ``i`` fires independently with probability ``p_i`` (the same for all, or decaying as a
power law ``p_i ∝ (i + 1)^(−decay)``, rescaled so that the expected number of active features
per datum is ``avg_active``), with a magnitude uniform in ``magnitude = (lo, hi)``.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp

__all__ = ["SyntheticData", "make_sparse_data"]


class SyntheticData(NamedTuple):
    """A synthetic data set (unpacks as ``X, true_features, codes``).

    Attributes:
      X: ``(n, d_in)`` data.
      true_features: ``(n_features, d_in)`` unit-norm ground-truth directions.
      codes: ``(n, n_features)`` non-negative ground-truth activations.
    """

    X: jax.Array
    true_features: jax.Array
    codes: jax.Array


def make_sparse_data(
    key: jax.Array,
    n: int,
    d_in: int,
    n_features: int,
    *,
    active_prob: float | None = None,
    avg_active: float | None = None,
    decay: float = 0.0,
    magnitude: tuple[float, float] = (0.0, 1.0),
    noise_std: float = 0.0,
    dtype: jnp.dtype = jnp.float32,
) -> SyntheticData:
    """Sample sparse non-negative combinations of random unit-norm features.

    Args:
      key: PRNG key.
      n: number of data.
      d_in: ambient dimension.
      n_features: number of ground-truth features (may exceed ``d_in``).
      active_prob: probability that a feature fires (uniform over features), or
      avg_active: expected number of active features per datum (give exactly one of the two).
      decay: power-law exponent of the firing probabilities over features (0: all equal).
      magnitude: ``(lo, hi)`` range of the uniform magnitudes of active features, ``0 ≤ lo < hi``.
      noise_std: standard deviation of isotropic Gaussian noise added to ``X``.
      dtype: floating dtype of the outputs.

    Returns:
      ``SyntheticData(X (n, d_in), true_features (n_features, d_in), codes (n, n_features))``.

    Raises:
      ValueError: non-positive sizes, neither or both of ``active_prob``/``avg_active``,
        probabilities outside ``(0, 1]``, a bad ``magnitude`` range, ``noise_std < 0``.
    """
    if min(n, d_in, n_features) <= 0:
        raise ValueError(
            f"make_sparse_data: expected n, d_in, n_features > 0, found {n}, {d_in}, {n_features}"
        )
    if (active_prob is None) == (avg_active is None):
        raise ValueError("make_sparse_data: give exactly one of active_prob and avg_active")
    if avg_active is None:
        avg_active = active_prob * n_features
    if not 0 < avg_active <= n_features:
        raise ValueError(
            f"make_sparse_data: expected 0 < avg_active <= n_features={n_features} "
            f"(0 < active_prob <= 1), found avg_active={avg_active}"
        )
    lo, hi = magnitude
    if not 0 <= lo < hi:
        raise ValueError(f"magnitude: expected 0 <= lo < hi, found {magnitude}")
    if noise_std < 0 or decay < 0:
        raise ValueError(f"expected noise_std >= 0 and decay >= 0, found {noise_std}, {decay}")

    return _sample(key, avg_active, decay, lo, hi, noise_std, n, d_in, n_features, jnp.dtype(dtype))


@partial(jax.jit, static_argnums=(6, 7, 8, 9))
def _sample(key, avg_active, decay, lo, hi, noise_std, n, d_in, n_features, dtype):
    # One uniform draw on (−1, 1) feeds every random quantity (a single random-bits kernel
    # compiles several times faster than one per distribution): Gaussians as √2·erfinv(v),
    # uniforms on [0, 1) as (v + 1)/2.
    sizes = (n_features * d_in, n * n_features, n * n_features, n * d_in)
    lo_v = jnp.nextafter(jnp.asarray(-1, dtype), jnp.asarray(0, dtype))
    v = jax.random.uniform(key, (sum(sizes),), dtype, minval=lo_v, maxval=1)
    parts, start = [], 0
    for size in sizes:
        parts.append(v[start : start + size])
        start += size
    v_feat, v_on, v_mag, v_noise = parts
    gauss = jnp.sqrt(jnp.asarray(2, dtype))
    feats = (gauss * jax.lax.erf_inv(v_feat)).reshape(n_features, d_in)
    feats = feats / jnp.linalg.norm(feats, axis=1, keepdims=True)
    weights = (jnp.arange(n_features, dtype=dtype) + 1) ** (-jnp.asarray(decay, dtype))
    probs = jnp.clip(avg_active * weights / jnp.sum(weights), 0, 1)
    on = (v_on.reshape(n, n_features) + 1) / 2 < probs[None, :]
    mags = lo + (hi - lo) * (v_mag.reshape(n, n_features) + 1) / 2
    codes = jnp.where(on, mags, jnp.zeros((), dtype)).astype(dtype)
    noise = (noise_std * gauss * jax.lax.erf_inv(v_noise)).reshape(n, d_in).astype(dtype)
    return SyntheticData(X=codes @ feats + noise, true_features=feats, codes=codes)
