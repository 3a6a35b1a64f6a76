"""Feature statistics: density, dead features, and decoder-cosine neighbourhoods."""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jaxsae.kernels._checks import check_array

__all__ = [
    "Neighbours",
    "activation_density",
    "dead_features",
    "decoder_cosine",
    "decoder_neighbours",
]


class Neighbours(NamedTuple):
    """Nearest features by decoder cosine similarity (NumPy arrays).

    Attributes:
      indices: ``(F, n)`` int32 feature indices, most similar first (the feature itself excluded).
      cosines: ``(F, n)`` their cosine similarities ``⟨w_i, w_j⟩ / (‖w_i‖ ‖w_j‖)``.
    """

    indices: np.ndarray
    cosines: np.ndarray


def activation_density(codes: ArrayLike) -> np.ndarray:
    """Fraction of rows where each feature fires (``> 0``): ``(n, F) -> (F,)``."""
    codes = check_array("codes", codes, ndim=2)
    return np.asarray(jnp.mean(codes > 0, axis=0, dtype=codes.dtype))


def dead_features(density: ArrayLike, *, min_density: float = 0.0) -> np.ndarray:
    """Indices of features whose density is ``<= min_density`` (never fire, by default)."""
    density = np.asarray(density)
    if density.ndim != 1:
        raise ValueError(f"density: expected shape (F,), found {density.shape}")
    return np.flatnonzero(density <= min_density)


def _unit_rows(W: jax.Array) -> jax.Array:
    norms = jnp.linalg.norm(W, axis=1, keepdims=True)
    return W / jnp.maximum(norms, jnp.finfo(W.dtype).tiny)


def decoder_cosine(W_dec: ArrayLike, feature: int) -> np.ndarray:
    """Cosine similarity of feature ``feature``'s decoder row with every row: ``(F,)``."""
    W = check_array("W_dec", W_dec, ndim=2)
    if not 0 <= feature < W.shape[0]:
        raise ValueError(f"feature: expected 0 <= feature < {W.shape[0]}, found {feature}")
    U = _unit_rows(W)
    return np.asarray(U @ U[feature])


@functools.partial(jax.jit, static_argnames=("n",))
def _block_neighbours(U: jax.Array, start: jax.Array, block: jax.Array, n: int):
    sims = block @ U.T  # (b, F)
    rows = start + jnp.arange(block.shape[0])
    self_mask = rows[:, None] == jnp.arange(U.shape[0])[None, :]
    sims = jnp.where(self_mask, -jnp.inf, sims)
    return jax.lax.top_k(sims, n)


def decoder_neighbours(W_dec: ArrayLike, n: int = 8, *, block_size: int = 1024) -> Neighbours:
    """The ``n`` nearest features of every feature by decoder cosine similarity.

    Works block by block (memory ``O(block_size · F)``), so it scales to large dictionaries.

    Args:
      W_dec: ``(F, d_in)`` decoder; row ``i`` is feature ``i``'s direction.
      n: neighbours per feature, ``1 <= n < F``.
      block_size: rows compared at once.

    Returns:
      ``Neighbours(indices (F, n), cosines (F, n))``.
    """
    W = check_array("W_dec", W_dec, ndim=2)
    num_f = W.shape[0]
    if not 1 <= n < num_f:
        raise ValueError(f"n: expected 1 <= n < F={num_f}, found {n}")
    U = _unit_rows(W)
    idx, cos = [], []
    for start in range(0, num_f, block_size):
        block = U[start : start + block_size]
        if block.shape[0] < block_size and num_f > block_size:  # pad to one compiled shape
            pad = jnp.zeros((block_size - block.shape[0], W.shape[1]), W.dtype)
            block = jnp.concatenate([block, pad])
        c, i = _block_neighbours(U, jnp.asarray(start, jnp.int32), block, n)
        stop = min(block_size, num_f - start)
        idx.append(np.asarray(i[:stop]))
        cos.append(np.asarray(c[:stop]))
    return Neighbours(indices=np.concatenate(idx).astype(np.int32), cosines=np.concatenate(cos))
