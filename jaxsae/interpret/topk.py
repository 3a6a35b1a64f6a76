"""Streaming pass over an activation store: top-k activations, density and maximum per feature.

Memory is bounded by ``O(d_sae · (k + chunk))``: each chunk is encoded by a jitted featurizer
and merged into the running top-k with ``jax.lax.top_k`` on (current ∪ chunk). Chunks are padded
to one fixed size (so the step compiles once) and padding rows are masked out.

A *featurizer* turns activations ``(n, d)`` into non-negative feature activations ``(n, F)``:
the SAE encoder, the model's neurons, PCA components (``jaxsae.interpret.baselines``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxsae.kernels._checks import check_array
from jaxsae.kernels.architectures import Architecture, inference_architecture
from jaxsae.kernels.sae import SAEParams

__all__ = [
    "Featurizer",
    "FeatureStats",
    "sae_featurizer",
    "iter_chunks",
    "merge_topk",
    "scan_features",
]


class Featurizer(NamedTuple):
    """Non-negative features of activations.

    Attributes:
      name: short name for tables (``"SAE"``, ``"neurons"``, ``"PCA"``).
      apply: pure function ``apply(params, x (n, d)) -> (n, F)`` with values ``>= 0`` (jitted by
        the callers; keep the same function object to reuse the compilation).
      params: pytree of arrays passed to ``apply``.
      num_features: ``F``.
      labels: one label per feature, for tables (e.g. ``"pc3+"``).
    """

    name: str
    apply: Callable[[Any, jax.Array], jax.Array]
    params: Any
    num_features: int
    labels: tuple[str, ...]


@functools.cache
def _sae_apply(arch: Architecture) -> Callable[[dict, jax.Array], jax.Array]:
    """The featurizer function of ``arch`` (one function object per architecture)."""

    def apply(params: dict, x: jax.Array) -> jax.Array:
        sae = params["sae"]
        x = (x.astype(sae.W_enc.dtype) - params["mean"][None, :]) * params["scale"]
        return arch.encode(sae, x)

    return apply


def sae_featurizer(
    params: SAEParams,
    *,
    mean: Any = None,
    scale: float = 1.0,
    name: str = "SAE",
    architecture: Architecture | None = None,
) -> Featurizer:
    """The SAE encoder as a featurizer with ``d_sae`` features.

    ``f(x) = encode(params, (x − mean) · scale)``: the architecture's inference encoder
    (default the L1 SAE's ``ReLU(x W_enc + b_enc)``); give the input normalisation the SAE was
    trained with (``jaxsae.data.loader.Normalisation``'s ``mean`` and ``scale``).

    Args:
      params: the SAE in its architecture's inference form (as ``load_saelens`` or
        ``jaxsae.training.train`` return it).
      mean: ``(d_in,)`` offset subtracted from the activations (default none).
      scale: factor applied after centring (default 1).
      name: name for tables.
      architecture: the ``Architecture`` (``saelens_architecture(cfg)`` for a loaded SAELens
        file, ``from_config(cfg)`` for a trained one); ``None``: the L1 SAE.
    """
    arch = architecture if architecture is not None else inference_architecture("standard")
    dtype = params.W_enc.dtype
    mu = jnp.zeros((params.d_in,), dtype) if mean is None else jnp.asarray(mean, dtype)
    if mu.shape != (params.d_in,):
        raise ValueError(f"mean: expected shape ({params.d_in},), found {tuple(mu.shape)}")
    return Featurizer(
        name=name,
        apply=_sae_apply(arch),
        params={"sae": params, "mean": mu, "scale": jnp.asarray(scale, dtype)},
        num_features=int(params.d_sae),
        labels=tuple(f"f{i}" for i in range(params.d_sae)),
    )


class FeatureStats(NamedTuple):
    """What one streaming pass measures, per feature (NumPy arrays).

    Attributes:
      num_rows: number of rows (residues) seen.
      active_count: ``(F,)`` rows where the feature is ``> 0``.
      density: ``(F,)`` ``active_count / num_rows``: fraction of residues where it fires.
      max_act: ``(F,)`` maximum activation (``0`` for a feature that never fires).
      sum_act: ``(F,)`` sum of activations.
      top_values: ``(F, k)`` the ``k`` largest activations, descending.
      top_protein: ``(F, k)`` int32 protein index of each (``-1`` where fewer than ``k`` rows).
      top_position: ``(F, k)`` int32 residue position of each (``-1`` likewise).
    """

    num_rows: int
    active_count: np.ndarray
    density: np.ndarray
    max_act: np.ndarray
    sum_act: np.ndarray
    top_values: np.ndarray
    top_protein: np.ndarray
    top_position: np.ndarray


def iter_chunks(source: Any, chunk_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Chunks ``(acts (n, d) float32, index (n, 2) int32)`` of a store or of an array pair.

    Args:
      source: an ``ActivationStore`` (anything with ``iter_chunks``) or a tuple
        ``(acts (N, d), index (N, 2))`` of arrays.
      chunk_size: rows per chunk (the last chunk may be shorter).
    """
    if chunk_size <= 0:
        raise ValueError(f"chunk_size: expected > 0, found {chunk_size}")
    if hasattr(source, "iter_chunks"):
        yield from source.iter_chunks(chunk_size)
        return
    acts, index = source
    acts = np.asarray(acts)
    index = np.asarray(index)
    if acts.ndim != 2 or index.shape != (acts.shape[0], 2):
        raise ValueError(
            f"source: expected acts (N, d) and index (N, 2), found {acts.shape} and {index.shape}"
        )
    for start in range(0, acts.shape[0], chunk_size):
        yield (
            np.asarray(acts[start : start + chunk_size], np.float32),
            np.asarray(index[start : start + chunk_size], np.int32),
        )


def pad_chunk(
    acts: np.ndarray, index: np.ndarray, size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pad a chunk to ``size`` rows; returns ``(acts, index, valid (size,) bool)``."""
    n = acts.shape[0]
    if n > size:
        raise ValueError(f"chunk of {n} rows is larger than the chunk size {size}")
    valid = np.zeros((size,), bool)
    valid[:n] = True
    if n == size:
        return acts, index, valid
    acts_p = np.zeros((size, acts.shape[1]), acts.dtype)
    acts_p[:n] = acts
    index_p = np.full((size, 2), -1, np.int32)
    index_p[:n] = index
    return acts_p, index_p, valid


def merge_topk(
    values: jax.Array,
    ids: jax.Array,
    new_values: jax.Array,
    new_ids: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """Merge a running top-k with a chunk: ``top_k`` of (current ∪ chunk) per feature.

    Args:
      values: ``(F, k)`` current top values.
      ids: ``(F, k, m)`` integer payload of each (e.g. ``m = 2``: protein, position).
      new_values: ``(n, F)`` chunk values (``-inf`` for rows to ignore).
      new_ids: ``(n, m)`` payload of each chunk row.

    Returns:
      ``(values (F, k), ids (F, k, m))``: the ``k`` largest of the union, descending (ties keep
      the earlier row).
    """
    k = values.shape[1]
    num_f = values.shape[0]
    all_values = jnp.concatenate([values, new_values.T], axis=1)
    top, pos = jax.lax.top_k(all_values, k)
    chunk_ids = jnp.broadcast_to(new_ids[None, :, :], (num_f,) + new_ids.shape)
    all_ids = jnp.concatenate([ids, chunk_ids], axis=1)
    return top, jnp.take_along_axis(all_ids, pos[:, :, None], axis=1)


@functools.cache
def _stats_step(apply: Callable) -> Callable:
    def step(carry, params, x, index, valid):
        values, ids, count, mx, total = carry
        f = apply(params, x)
        f = f.astype(values.dtype)
        v = valid[:, None]
        neg = jnp.asarray(-jnp.inf, f.dtype)
        values, ids = merge_topk(values, ids, jnp.where(v, f, neg), index)
        count = count + jnp.sum((f > 0) & v, axis=0, dtype=count.dtype)
        mx = jnp.maximum(mx, jnp.max(jnp.where(v, f, 0), axis=0))
        total = total + jnp.sum(jnp.where(v, f, 0), axis=0, dtype=total.dtype)
        return values, ids, count, mx, total

    return jax.jit(step, donate_argnums=0)


def scan_features(
    source: Any,
    featurizer: Featurizer,
    *,
    k: int = 16,
    chunk_size: int = 2048,
    progress: Callable[[Iterable], Iterable] | None = None,
) -> FeatureStats:
    """One streaming pass: top-k rows, density, maximum and sum of every feature.

    Args:
      source: an ``ActivationStore`` or ``(acts (N, d), index (N, 2))``.
      featurizer: maps ``(n, d)`` activations to ``(n, F)`` non-negative features.
      k: activations kept per feature.
      chunk_size: rows encoded at once (memory ``O(F · (k + chunk_size))``).
      progress: optional wrapper of the chunk iterator (e.g. ``tqdm``).

    Returns:
      ``FeatureStats``.
    """
    if k <= 0:
        raise ValueError(f"k: expected > 0, found {k}")
    num_f = featurizer.num_features
    step = _stats_step(featurizer.apply)
    carry = (
        jnp.full((num_f, k), -jnp.inf, jnp.float32),
        jnp.full((num_f, k, 2), -1, jnp.int32),
        jnp.zeros((num_f,), jnp.int32),
        jnp.zeros((num_f,), jnp.float32),
        jnp.zeros((num_f,), jnp.float32),
    )
    n = 0
    chunks = iter_chunks(source, chunk_size)
    if progress is not None:
        chunks = progress(chunks)
    for acts, index in chunks:
        if n == 0:
            check_array("activations", acts[: min(len(acts), 4096)], ndim=2)
        n += acts.shape[0]
        acts, index, valid = pad_chunk(acts, index, chunk_size)
        carry = step(carry, featurizer.params, acts, index.astype(np.int32), valid)
    if n == 0:
        raise ValueError("scan_features: expected at least one row, found an empty source")
    values, ids, count, mx, total = (np.asarray(a) for a in carry)
    values = np.where(np.isfinite(values), values, np.nan).astype(np.float32)
    ids = np.where(np.isnan(values)[:, :, None], -1, ids).astype(np.int32)
    count = count.astype(np.int64)
    return FeatureStats(
        num_rows=n,
        active_count=count,
        density=count / n,
        max_act=mx,
        sum_act=total,
        top_values=values,
        top_protein=ids[:, :, 0],
        top_position=ids[:, :, 1],
    )
