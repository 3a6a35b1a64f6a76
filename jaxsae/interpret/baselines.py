"""Baselines the SAE's features are compared with, as featurizers: neurons, PCA, FISTA codes.

Neurons and PCA components are signed, while the association protocol binarises non-negative
activations scaled by their maximum. Each signed direction therefore gives two features, the
ReLU of each sign: ``neuron i+ = max(x_i − μ_i, 0)`` and ``neuron i− = max(μ_i − x_i, 0)``
(likewise ``pc j±`` for the projection on component ``j``), with ``μ`` the mean activation.
Mean-centring matters: without it a neuron with a large offset fires on every residue.

InterPLM's neuron baseline is an identity dictionary (``IdentityDict`` in their
``sae/dictionary.py``): the raw activation ``x_i``, not centred, divided by its maximum, so only
its positive side can pass a threshold — ``d`` features. ``neuron_featurizer(None, d,
signs="positive")`` is that baseline exactly, and the analysis' default (``neurons="interplm"``);
the centred two-sided neurons are its named variant ``neurons="centred"``. InterPLM has no PCA
baseline.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jaxsae.interpret.concepts import SPLIT_NAMES, split_codes, split_name
from jaxsae.interpret.topk import Featurizer
from jaxsae.kernels._checks import check_array

__all__ = [
    "PCAResult",
    "fit_pca",
    "pca_featurizer",
    "neuron_featurizer",
    "sample_rows",
    "fista_featurizer",
]


class PCAResult(NamedTuple):
    """Principal components of a sample of activations.

    Attributes:
      mean: ``(d,)`` mean of the sample.
      components: ``(c, d)`` orthonormal rows, by decreasing variance; sign fixed so that the
        entry of largest magnitude in each row is positive.
      explained_variance: ``(c,)`` variance along each component (``σ² / (n − 1)``).
      explained_variance_ratio: ``(c,)`` its fraction of the total variance.
    """

    mean: np.ndarray
    components: np.ndarray
    explained_variance: np.ndarray
    explained_variance_ratio: np.ndarray


def fit_pca(X: ArrayLike, n_components: int | None = None) -> PCAResult:
    """PCA by SVD of the mean-centred sample ``X (n, d)``.

    Args:
      X: ``(n, d)`` activations, ``n >= 2``.
      n_components: components kept (default ``min(n, d)``).

    Returns:
      ``PCAResult``.
    """
    X = check_array("X", X, ndim=2)
    n, d = X.shape
    if n < 2:
        raise ValueError(f"X: expected at least 2 rows for PCA, found {n}")
    c = min(n, d) if n_components is None else int(n_components)
    if not 1 <= c <= min(n, d):
        raise ValueError(f"n_components: expected 1 <= n_components <= {min(n, d)}, found {c}")
    mean = jnp.mean(X, axis=0)
    _, s, vt = jnp.linalg.svd(X - mean[None, :], full_matrices=False)
    vt = vt[:c]
    signs = jnp.sign(vt[jnp.arange(c), jnp.argmax(jnp.abs(vt), axis=1)])
    vt = vt * signs[:, None]
    var = s**2 / (n - 1)
    return PCAResult(
        mean=np.asarray(mean),
        components=np.asarray(vt),
        explained_variance=np.asarray(var[:c]),
        explained_variance_ratio=np.asarray(var[:c] / jnp.sum(var)),
    )


def _both_signs(z: jax.Array) -> jax.Array:
    return jnp.concatenate([jnp.maximum(z, 0), jnp.maximum(-z, 0)], axis=-1)


def _pca_apply(params: dict, x: jax.Array) -> jax.Array:
    z = (x.astype(params["mean"].dtype) - params["mean"][None, :]) @ params["components"].T
    return _both_signs(z)


def _positive(params: dict, x: jax.Array) -> jax.Array:
    return jnp.maximum(x.astype(params["mean"].dtype) - params["mean"][None, :], 0)


def neuron_featurizer(
    mean: ArrayLike | None, d: int | None = None, *, signs: str = "both"
) -> Featurizer:
    """The model's neurons (dimensions of ``h^l``), mean-centred, both signs: ``2 d`` features.

    Args:
      mean: ``(d,)`` mean activation to centre with (``None``: no centring, then give ``d``).
      d: activation width, when ``mean`` is ``None``.
      signs: ``"both"`` (``n i+`` and ``n i−``, ``2 d`` features) or ``"positive"``
        (``max(x_i − μ_i, 0)`` only, ``d`` features; with ``mean=None`` InterPLM's baseline).
    """
    if signs not in ("both", "positive"):
        raise ValueError(f"signs: expected 'both' or 'positive', found {signs!r}")
    if mean is None:
        if d is None:
            raise ValueError("neuron_featurizer: give mean or d")
        mu = np.zeros((d,), np.float32)
    else:
        mu = np.asarray(mean, np.float32)
    d = mu.shape[0]
    if signs == "positive":
        labels = tuple(f"n{i}" for i in range(d))
        return Featurizer("neurons", _positive, {"mean": jnp.asarray(mu)}, d, labels)
    labels = tuple(f"n{i}+" for i in range(d)) + tuple(f"n{i}-" for i in range(d))
    # the projection on the identity: the same compiled code as a full-rank PCA featurizer
    params = {"mean": jnp.asarray(mu), "components": jnp.eye(d, dtype=jnp.float32)}
    return Featurizer("neurons", _pca_apply, params, 2 * d, labels)


def pca_featurizer(pca: PCAResult) -> Featurizer:
    """Projections on PCA components, both signs: ``2 c`` features (``pc j+``, ``pc j−``)."""
    c = pca.components.shape[0]
    params = {
        "mean": jnp.asarray(pca.mean, jnp.float32),
        "components": jnp.asarray(pca.components, jnp.float32),
    }
    labels = tuple(f"pc{j}+" for j in range(c)) + tuple(f"pc{j}-" for j in range(c))
    return Featurizer("PCA", _pca_apply, params, 2 * c, labels)


def sample_rows(
    source: Any,
    proteins: list[dict] | None,
    *,
    split: str | None = "train",
    max_rows: int = 20000,
    seed: int = 0,
) -> np.ndarray:
    """A uniform random sample of rows (of one split's proteins) as ``(m, d)`` float32.

    Args:
      source: an ``ActivationStore`` or ``(acts (N, d), index (N, 2))``.
      proteins: the protein records (for their ``"split"``); ``None`` or ``split=None``: all rows.
      split: ``"train"``, ``"valid"`` or ``"test"`` (``"validation"`` is read as ``"valid"``).
      max_rows: sample size cap.
      seed: random seed.
    """
    if hasattr(source, "index") and hasattr(source, "num_shards"):
        prot = np.concatenate([np.asarray(source.index(i))[:, 0] for i in range(source.num_shards)])
    else:
        prot = np.asarray(source[1])[:, 0]
    rows = np.arange(prot.shape[0])
    if split is not None and proteins is not None:
        code = SPLIT_NAMES.index(split_name(split))
        rows = rows[split_codes(proteins)[prot] == code]
        if rows.size == 0:
            raise ValueError(f"sample_rows: no rows of split {split!r} found")
    rng = np.random.default_rng(seed)
    if rows.size > max_rows:
        rows = np.sort(rng.choice(rows, size=max_rows, replace=False))
    if hasattr(source, "take"):
        return source.take(rows)
    return np.asarray(np.asarray(source[0])[rows], np.float32)


def fista_featurizer(
    params: Any,
    l1_coeff: float,
    *,
    mean: Any = None,
    scale: float = 1.0,
    max_steps: int = 300,
    tol: float | None = None,
) -> Featurizer:
    """Sparse codes from FISTA on the SAE's decoder: the exact (non-amortised) features.

    Minimises, per residue, the SAE's own objective with its decoder held fixed,
    ``min_{f >= 0} ‖x − b_dec − f W_dec‖² + λ Σ_i f_i ‖W_dec[i]‖₂``
    (``jaxsae.kernels.amortisation.optimal_codes``).

    Args:
      params: ``SAEParams``.
      l1_coeff: the SAE's ``λ``.
      mean, scale: the input normalisation the SAE was trained with (see ``sae_featurizer``).
      max_steps: FISTA iterations at most.
      tol: relative duality-gap tolerance (default: the solver's).
    """
    from jaxsae.kernels.amortisation import optimal_codes

    dtype = params.W_dec.dtype
    d = params.W_dec.shape[1]
    fparams = {
        "sae": params,
        "l1_coeff": jnp.asarray(l1_coeff, dtype),
        "mean": jnp.zeros((d,), dtype) if mean is None else jnp.asarray(mean, dtype),
        "scale": jnp.asarray(scale, dtype),
    }

    def apply(p: dict, x: jax.Array) -> jax.Array:
        x = (x.astype(p["mean"].dtype) - p["mean"][None, :]) * p["scale"]
        sol = optimal_codes(p["sae"], x, p["l1_coeff"], max_steps=max_steps, tol=tol)
        return jnp.maximum(sol.codes, 0)

    num_f = int(params.W_dec.shape[0])
    return Featurizer("FISTA", apply, fparams, num_f, tuple(f"f{i}" for i in range(num_f)))
