"""TopK sparse autoencoder (Gao et al. 2024) with AuxK, and a fast sparse path for training.

The TopK SAE follows OpenAI's ``sparse_autoencoder`` and EleutherAI's ``sparsify``: the decoder
bias is subtracted from the input before encoding, only the ``k`` largest pre-activations of each
input are kept (then ReLU), and the reconstruction is decoded from those ``k`` features:

    z   = (x − b_dec) W_enc + b_enc                       pre-activations, (batch, d_sae)
    S   = indices of the k largest entries of z           (batch, k)
    f_i = ReLU(z_i) if i ∈ S else 0                        codes, k non-zeros per row
    x̂   = Σ_{i∈S} f_i W_dec[i] + b_dec                    reconstruction, (batch, d_in)

Loss (as in ``sparsify``: the fraction of variance unexplained, so that it does not depend on
the scale of ``x``, plus OpenAI's auxiliary loss):

    L     = Σ_x ‖x − x̂‖² / Σ_x ‖x − mean(x)‖²  +  aux_coeff · L_aux
    L_aux = Σ_x ‖e − ê‖² / Σ_x ‖e − mean(e)‖²,     e = stop_gradient(x − x̂)

where ``ê = Σ_{i∈A} ReLU(z_i) W_dec[i]`` (no bias) is decoded from the ``aux_k`` largest
pre-activations among *dead* features ``A`` (OpenAI's ``normalized_mse(ê, e)``, Gao et al.
2024, §A.2; their ``k_aux = 512``, ``α = 1/32``). ``L_aux = 0`` when no feature is dead, and
then the auxiliary branch is not computed at all (``lax.cond``). Its cost grows with ``aux_k``:
the sparse work per input is ``k + aux_k`` rows instead of ``k``.

Fast path (``sparse=True``, the default of ``topk_loss``): the only dense matmul is the
encoder's forward ``(x − b_dec) W_enc`` (computed without gradient, its biases inside the
matmul). The decoder reads the ``k`` active rows of ``W_dec`` (gather + small contraction); the
backward pass (``jax.custom_vjp``) forms ``∂W_dec`` by a scatter-add of ``f ⊗ ∂x̂`` into ``k``
rows per input and ``∂W_enc`` by a scatter-add of ``∂z ⊗ (x − b_dec)`` from the ``k``
(+ ``aux_k``) selected pre-activations only: the encoder's gradient is k-sparse per input like
the decoder's. On a CPU the gathers and scatters run over chunks of the batch (a ``lax.scan``)
sized so that the gathered block holds about 655 k floats (8 inputs × k = 64 × d_in = 1,280;
32 inputs at d_in = 320, measured 1.2× faster there than 8), which keeps it in cache: measured
at d_in = 1280, d_sae = 10240, k = 64, batch = 4096, a chunked scatter-add forms ``∂W_enc``
about 5× faster than the dense ``(x − b_dec)ᵀ ∂z`` matmul, and an unchunked gather is no faster
than the dense decoder. (One loop doing the decoder's and the encoder's scatter-adds together
measured no faster than the separate loops.) What is left dense is the encoder's matmul and the
selection (``row_select.row_top_k``: on CPU NumPy's introselect on every core, ≈ 20 ms for
4,096 rows of 2,560 against 67 ms for XLA's single-threaded ``TopK``; ``lax.top_k`` elsewhere).
``sparse=False`` is the naive dense TopK (codes scattered into ``(batch, d_sae)``, dense
matmuls, autodiff): the reference the fast path is tested against.

References:
  Gao et al., "Scaling and evaluating sparse autoencoders", 2024 (arXiv:2406.04093).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.typing import ArrayLike

from jaxsae.kernels._checks import check_nonnegative
from jaxsae.kernels.axes import all_gather, axis_index, axis_size, pmean, psum
from jaxsae.kernels.row_select import row_top_k
from jaxsae.kernels.sae import (
    SAEMetrics,
    SAEOutput,
    SAEParams,
    bias_row,
    check_inputs,
    decoder_norms,
)

__all__ = [
    "TopKMetrics",
    "TopKFamily",
    "FamilyOutput",
    "Selection",
    "select_rows",
    "batch_cutoff",
    "nth_largest_positive",
    "topk_family_loss",
    "check_dead_mask",
    "encoder_view",
    "scale_cotangent",
    "topk_pre_acts",
    "topk_encode",
    "topk_decode",
    "topk_forward",
    "topk_loss",
    "check_k",
]

#: elements of the block of gathered rows per step of the chunked gathers/scatters (2.6 MB in
#: float32; measured on CPU: 8 inputs × k = 64 rows × d_in = 1,280 faster than 4 inputs, and
#: 32 × 64 × 320 1.2× faster than 8)
_BLOCK = 655_360


def _chunk_size(n: int, row_elems: int) -> int:
    """Items per step of a chunked loop: ``_BLOCK / row_elems``, at least 1, at most ``n``."""
    return max(1, min(n, _BLOCK // max(row_elems, 1)))


#: the metrics of a TopK SAE are ``SAEMetrics`` (with ``auxk`` and ``num_dead`` filled in)
TopKMetrics = SAEMetrics


def check_k(k: int, d_sae: int, *, name: str = "k") -> int:
    """Raise unless ``k`` is an integer with ``0 < k ≤ d_sae``; return it as an ``int``."""
    if isinstance(k, bool) or not isinstance(k, int | jnp.integer):
        raise ValueError(f"{name}: expected a Python int (a static value), found {k!r}")
    if not 0 < int(k) <= d_sae:
        raise ValueError(f"{name}: expected 0 < {name} <= d_sae={d_sae}, found {int(k)}")
    return int(k)


def topk_pre_acts(params: SAEParams, x: jax.Array) -> jax.Array:
    """Pre-activations ``(x − b_dec) W_enc + b_enc``: ``(..., d_in) → (..., d_sae)``."""
    return (x - bias_row(params.b_dec, x)) @ params.W_enc + bias_row(params.b_enc, x)


def _selection_pre_acts(params: SAEParams, x: jax.Array) -> jax.Array:
    """``topk_pre_acts`` without gradient (what the sparse path selects from), with both biases
    inside the matmul: ``[x, 1] · [W_enc; b_enc − b_dec W_enc]``, which saves XLA's CPU a pass
    over the ``(batch, d_sae)`` block. ``x``: ``(batch, d_in)``."""
    p = lax.stop_gradient(params)
    bias = p.b_enc - p.b_dec @ p.W_enc
    w_t = jnp.concatenate([p.W_enc.T, bias[:, None]], axis=1)  # (d_sae, d_in + 1)
    x1 = jnp.concatenate([x, jnp.ones((x.shape[0], 1), x.dtype)], axis=1)
    return lax.dot_general(x1, w_t, (((1,), (1,)), ((), ())))


def _dense_codes(values: jax.Array, indices: jax.Array, d_sae: int) -> jax.Array:
    """Scatter ``values (..., m)`` at ``indices (..., m)`` into zeros ``(..., d_sae)``."""
    flat_v = values.reshape(-1, values.shape[-1])
    flat_i = indices.reshape(flat_v.shape)
    rows = jnp.arange(flat_v.shape[0])[:, None]
    codes = jnp.zeros((flat_v.shape[0], d_sae), values.dtype).at[rows, flat_i].set(flat_v)
    return codes.reshape(*values.shape[:-1], d_sae)


def topk_encode(params: SAEParams, x: ArrayLike, k: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """TopK encoder: ReLU of the ``k`` largest pre-activations of each input.

    Args:
      params: the SAE.
      x: ``(..., d_in)`` inputs (finite).
      k: number of active features per input, ``0 < k ≤ d_sae`` (static).

    Returns:
      ``(codes, values, indices)``: ``codes (..., d_sae)`` dense with at most ``k`` non-zeros
      per row, ``values (..., k)`` the ReLU'd top-k pre-activations (descending) and
      ``indices (..., k)`` their feature indices (int32).
    """
    x = check_inputs(params, x)
    return _topk_encode(params, x, check_k(k, params.d_sae))


@partial(jax.jit, static_argnums=2)
def _topk_encode(params: SAEParams, x: jax.Array, k: int):
    top, indices = row_top_k(topk_pre_acts(params, x), k, ordered=True)
    values = jnp.maximum(top, 0)
    return _dense_codes(values, indices, params.d_sae), values, indices


# ----------------------------------------------------------------------------------------------
# Sparse building blocks: gathers and scatter-adds over batch chunks, with custom VJPs.


def _pad_rows(a: jax.Array, n_pad: int) -> jax.Array:
    return jnp.pad(a, [(0, n_pad)] + [(0, 0)] * (a.ndim - 1)) if n_pad else a


def _chunked(row_elems: int, *arrays: jax.Array) -> tuple[int, list[jax.Array]]:
    """Pad the leading axis to a multiple of the chunk size (``_chunk_size``; ``row_elems``:
    gathered elements per item) and split it into ``(n / chunk, chunk)``."""
    n = arrays[0].shape[0]
    c = _chunk_size(n, row_elems)
    n_pad = -n % c
    return n, [_pad_rows(a, n_pad).reshape(-1, c, *a.shape[1:]) for a in arrays]


def _gather_rows_dot(table: jax.Array, indices: jax.Array, vectors: jax.Array) -> jax.Array:
    """``out[n, j] = table[indices[n, j]] · vectors[n]``: ``(F, D), (N, m), (N, D) → (N, m)``."""
    n, (ic, vc) = _chunked(indices.shape[-1] * table.shape[-1], indices, vectors)
    out = lax.map(lambda a: jnp.einsum("bmd,bd->bm", table[a[0]], a[1]), (ic, vc))
    return out.reshape(-1, indices.shape[-1])[:n]


def _gather_rows_combine(table: jax.Array, indices: jax.Array, weights: jax.Array) -> jax.Array:
    """``out[n] = Σ_j weights[n, j] table[indices[n, j]]``: ``(F, D), (N, m), (N, m) → (N, D)``."""
    n, (ic, wc) = _chunked(indices.shape[-1] * table.shape[-1], indices, weights)
    out = lax.map(lambda a: jnp.einsum("bm,bmd->bd", a[1], table[a[0]]), (ic, wc))
    return out.reshape(-1, table.shape[-1])[:n]


def _scatter_outer(weights: jax.Array, indices: jax.Array, vectors: jax.Array, d_sae: int):
    """``out[i] = Σ_{n,j: indices[n,j]=i} weights[n, j] vectors[n]``: ``→ (d_sae, D)``."""
    d = vectors.shape[-1]
    _, (wc, ic, vc) = _chunked(indices.shape[-1] * d, weights, indices, vectors)  # pads: weight 0

    def body(acc, a):
        w, i, v = a
        upd = (w[..., None] * v[:, None, :]).reshape(-1, d)
        return acc.at[i.reshape(-1)].add(upd), None

    zero = jnp.zeros((d_sae, d), jnp.result_type(weights, vectors))
    return lax.scan(body, zero, (wc, ic, vc))[0]


@jax.custom_vjp
def _sparse_decode(W_dec: jax.Array, values: jax.Array, indices: jax.Array) -> jax.Array:
    """``Σ_j values[n, j] W_dec[indices[n, j]]``: ``(F, D), (N, m), (N, m) → (N, D)``."""
    return _gather_rows_combine(W_dec, indices, values)


def _sparse_decode_fwd(W_dec, values, indices):
    return _sparse_decode(W_dec, values, indices), (W_dec, values, indices)


def _sparse_decode_bwd(res, g):
    W_dec, values, indices = res
    d_values = _gather_rows_dot(W_dec, indices, g)
    d_W_dec = _scatter_outer(values, indices, g, W_dec.shape[0]).astype(W_dec.dtype)
    return d_W_dec, d_values.astype(values.dtype), None


_sparse_decode.defvjp(_sparse_decode_fwd, _sparse_decode_bwd)


@jax.custom_vjp
def _pre_acts_at(
    W_enc: jax.Array,
    b_enc: jax.Array,
    b_dec: jax.Array,
    x: jax.Array,
    pre: jax.Array,
    indices: jax.Array,
) -> jax.Array:
    """``z[n, indices[n, j]]`` where ``z = (x − b_dec) W_enc + b_enc``, differentiated sparsely.

    ``pre`` must equal ``topk_pre_acts`` of the same arguments (computed once, densely, to
    select ``indices``); the forward pass only gathers from it. The backward pass differentiates
    ``z`` with respect to ``W_enc, b_enc, b_dec, x`` from the selected entries only.
    """
    return jnp.take_along_axis(pre, indices, axis=-1)


def _pre_acts_at_fwd(W_enc, b_enc, b_dec, x, pre, indices):
    return _pre_acts_at(W_enc, b_enc, b_dec, x, pre, indices), (W_enc, b_dec, x, indices)


def _pre_acts_at_bwd(res, g):
    W_enc, b_dec, x, indices = res
    d_sae = W_enc.shape[1]
    d_b_enc = jax.ops.segment_sum(g.reshape(-1), indices.reshape(-1), d_sae)
    d_W_enc = _scatter_outer(g, indices, x - b_dec[None, :], d_sae).T
    d_x = _gather_rows_combine(W_enc.T, indices, g)  # dropped by XLA unless x is differentiated
    d_b_dec = -(W_enc @ d_b_enc)  # = −Σ_n d_x[n]
    return (
        d_W_enc.astype(W_enc.dtype),
        d_b_enc.astype(W_enc.dtype),
        d_b_dec.astype(b_dec.dtype),
        d_x.astype(x.dtype),
        None,
        None,
    )


_pre_acts_at.defvjp(_pre_acts_at_fwd, _pre_acts_at_bwd)


# Flat layout: a list of (row, feature) pairs, processed in chunks of _BLOCK / d_in pairs.


def _flat_chunked(d: int, *arrays: jax.Array) -> list[jax.Array]:
    """``_chunked`` for pairs that each gather a row of ``d`` elements (padding dropped)."""
    return _chunked(d, *arrays)[1]


def _flat_scatter(src, src_idx, dst_idx, w, n_out):
    """``out[dst_idx[p]] += w[p] src[src_idx[p]]``: ``(N, D), (P,), (P,), (P,) → (n_out, D)``."""

    def body(acc, a):
        s, d, wt = a
        return acc.at[d].add(wt[:, None] * src[s]), None

    zero = jnp.zeros((n_out, src.shape[-1]), jnp.result_type(src, w))
    return lax.scan(body, zero, tuple(_flat_chunked(src.shape[-1], src_idx, dst_idx, w)))[0]


def _flat_combine(table, rows, idx, w, n_rows):
    """``out[rows[p]] += w[p] table[idx[p]]``: ``(F, D), (P,), (P,), (P,) → (n_rows, D)``."""
    return _flat_scatter(table, idx, rows, w, n_rows)


def _flat_dot(table, rows, idx, vectors):
    """``out[p] = table[idx[p]] · vectors[rows[p]]``: ``→ (P,)``."""
    rc, ic = _flat_chunked(table.shape[-1], rows, idx)
    out = lax.map(lambda a: jnp.sum(table[a[1]] * vectors[a[0]], axis=-1), (rc, ic))
    return out.reshape(-1)[: rows.shape[0]]


def _flat_outer(w, rows, idx, vectors, n_out):
    """``out[idx[p]] += w[p] vectors[rows[p]]``: ``→ (n_out, D)``."""
    return _flat_scatter(vectors, rows, idx, w, n_out)


@partial(jax.custom_vjp, nondiff_argnums=(4,))
def _flat_decode(W_dec, values, rows, idx, n_rows):
    """``out[n] = Σ_{p: rows[p] = n} values[p] W_dec[idx[p]]``: ``→ (n_rows, D)``."""
    return _flat_combine(W_dec, rows, idx, values, n_rows)


def _flat_decode_fwd(W_dec, values, rows, idx, n_rows):
    return _flat_decode(W_dec, values, rows, idx, n_rows), (W_dec, values, rows, idx)


def _flat_decode_bwd(n_rows, res, g):
    W_dec, values, rows, idx = res
    d_values = _flat_dot(W_dec, rows, idx, g)
    d_W_dec = _flat_outer(values, rows, idx, g, W_dec.shape[0])
    return d_W_dec.astype(W_dec.dtype), d_values.astype(values.dtype), None, None


_flat_decode.defvjp(_flat_decode_fwd, _flat_decode_bwd)


@jax.custom_vjp
def _flat_pre_acts_at(W_enc, b_enc, b_dec, x, pre, rows, idx):
    """``z[rows[p], idx[p]]`` with ``z = (x − b_dec) W_enc + b_enc`` (``pre``), differentiated
    sparsely (the flat counterpart of ``_pre_acts_at``)."""
    return pre[rows, idx]


def _flat_pre_acts_at_fwd(W_enc, b_enc, b_dec, x, pre, rows, idx):
    out = _flat_pre_acts_at(W_enc, b_enc, b_dec, x, pre, rows, idx)
    return out, (W_enc, b_dec, x, rows, idx)


def _flat_pre_acts_at_bwd(res, g):
    W_enc, b_dec, x, rows, idx = res
    d_sae = W_enc.shape[1]
    d_b_enc = jax.ops.segment_sum(g, idx, d_sae)
    d_W_enc = _flat_outer(g, rows, idx, x - b_dec[None, :], d_sae).T
    d_x = _flat_combine(W_enc.T, rows, idx, g, x.shape[0])  # dropped unless x is differentiated
    d_b_dec = -(W_enc @ d_b_enc)
    return (
        d_W_enc.astype(W_enc.dtype),
        d_b_enc.astype(W_enc.dtype),
        d_b_dec.astype(b_dec.dtype),
        d_x.astype(x.dtype),
        None,
        None,
        None,
    )


_flat_pre_acts_at.defvjp(_flat_pre_acts_at_fwd, _flat_pre_acts_at_bwd)


def topk_decode(params: SAEParams, values: ArrayLike, indices: ArrayLike) -> jax.Array:
    """Decode from the active features only: ``x̂ = Σ_j values_j W_dec[indices_j] + b_dec``.

    Args:
      params: the SAE.
      values: ``(..., k)`` code values.
      indices: ``(..., k)`` their feature indices.

    Returns:
      ``(..., d_in)`` reconstruction (gradients by the sparse custom VJP).
    """
    values = jnp.asarray(values)
    indices = jnp.asarray(indices)
    if values.shape != indices.shape:
        raise ValueError(
            f"topk_decode: expected values and indices of the same shape, found "
            f"{tuple(values.shape)} and {tuple(indices.shape)}"
        )
    return _topk_decode(params, values, indices)


@jax.jit
def _topk_decode(params: SAEParams, values: jax.Array, indices: jax.Array) -> jax.Array:
    lead = values.shape[:-1]
    m = values.shape[-1]
    flat = _sparse_decode(params.W_dec, values.reshape(-1, m), indices.reshape(-1, m))
    out = flat.reshape(*lead, params.d_in)
    return out + bias_row(params.b_dec, out)


def topk_forward(params: SAEParams, x: ArrayLike, k: int) -> SAEOutput:
    """TopK encoder then sparse decoder on ``x (..., d_in)``; see ``SAEOutput`` for the shapes."""
    x = check_inputs(params, x)
    return _topk_forward(params, x, check_k(k, params.d_sae))


@partial(jax.jit, static_argnums=2)
def _topk_forward(params: SAEParams, x: jax.Array, k: int) -> SAEOutput:
    pre = topk_pre_acts(params, x)
    top, indices = row_top_k(pre, k, ordered=True)
    values = jnp.maximum(top, 0)
    codes = _dense_codes(values, indices, params.d_sae)
    return SAEOutput(codes=codes, recon=_topk_decode(params, values, indices), pre_acts=pre)


# ----------------------------------------------------------------------------------------------
# Selection: per-row top-m, with the features possibly split over a mesh axis


class Selection(NamedTuple):
    """Active features of a batch in the sparse layout ``(batch, m)``.

    Attributes:
      top: ``(batch, m)`` the selected pre-activations, in no particular order within a row
        (no gradient).
      local: ``(batch, m)`` int32 index of each slot into this device's features (0 where the
        slot is not this device's).
      keep: ``(batch, m)`` bool, the slot is active and held by this device.
      index: ``(batch, m)`` int32 global feature index of each slot.
    """

    top: jax.Array
    local: jax.Array
    keep: jax.Array
    index: jax.Array


def select_rows(pre: jax.Array, m: int, feature_axis: str | None = None) -> Selection:
    """The ``m`` largest pre-activations of each row over all features.

    With the features split over ``feature_axis``, each device takes the top ``m`` of its
    slice, the candidates of all slices are gathered and merged by a second top ``m``: the
    result selects the same features as one device's ``row_top_k`` on the whole row (up to ties).

    Args:
      pre: ``(batch, d_sae_local)`` pre-activations of this device's features.
      m: slots per row (static), ``m ≤ d_sae``.
      feature_axis: the mesh axis the features are split over, or ``None``.

    Returns:
      ``Selection`` with ``keep`` = "held by this device".
    """
    f = pre.shape[-1]
    top, idx = row_top_k(pre, min(m, f))
    if axis_size(feature_axis) == 1:
        return Selection(top, idx, jnp.ones(top.shape, jnp.bool_), idx)
    off = axis_index(feature_axis) * f
    top, pos = row_top_k(all_gather(top, feature_axis, along=1), m)
    index = jnp.take_along_axis(all_gather(idx + off, feature_axis, along=1), pos, axis=1)
    mine = (index >= off) & (index < off + f)
    return Selection(top, jnp.where(mine, index - off, 0), mine, index)


def nth_largest_positive(v: jax.Array, n: int, *, axis_name: str | None = None) -> jax.Array:
    """The ``n``-th largest of the positive part of ``v`` (``0`` if fewer are positive).

    Over all of ``v`` and over every device's ``v`` along the mesh axis ``axis_name`` (counts
    summed with ``psum``). Found exactly by bisection on the bit patterns of the non-negative
    values, which order like the values: one count per bit, much cheaper on a CPU than a
    selection or a sort when ``n`` is large (BatchTopK's ``k · batch``).
    """
    v = jnp.where(v > 0, v, 0).reshape(-1)
    itype = jnp.int64 if v.dtype == jnp.float64 else jnp.int32
    bits = lax.bitcast_convert_type(v, itype)
    nbits = jnp.finfo(v.dtype).bits - 1

    def body(_, lohi):
        lo, hi = lohi
        mid = lo + (hi - lo) // 2
        enough = psum(jnp.sum(bits >= mid), axis_name) >= n
        return jnp.where(enough, mid, lo), jnp.where(enough, hi, mid)

    start = (jnp.zeros((), itype), jnp.array(jnp.iinfo(itype).max, itype))
    lo, _ = lax.fori_loop(0, nbits, body, start)
    return lax.bitcast_convert_type(lo, v.dtype)


def batch_cutoff(top: jax.Array, n_active: int) -> jax.Array:
    """The ``n_active``-th largest positive entry of ``top`` (all rows): BatchTopK's cut."""
    return nth_largest_positive(top, n_active)


# ----------------------------------------------------------------------------------------------
# Loss of the TopK family (TopK, BatchTopK, Matryoshka BatchTopK), one place


@dataclass(frozen=True)
class TopKFamily:
    """Static options of a TopK-family loss.

    Attributes:
      k: active features per input (per row for TopK, on average over the batch for BatchTopK).
      batch: ``False``: the top ``k`` of each input (TopK); ``True``: the top ``k · batch`` of
        the whole batch (BatchTopK).
      max_per_row: BatchTopK's candidates per input. ``0`` (default): exact: the top ``2k`` of
        each input are the candidates, and when an input has all of its candidates among the
        batch's top ``k · batch`` the cut is found over every feature instead (``lax.cond``;
        a bisection over the whole ``(batch, d_sae)`` block, no sort). ``m > 0``: a named
        variant: an input holds at most ``m`` of the batch's active codes. Ignored for TopK
        (``k`` slots).
      levels: Matryoshka prefix widths, increasing, the last ``d_sae`` (``()``: one level).
      aux_k: dead features used by AuxK (clipped to ``d_sae``).
      sparse: sparse custom-VJP path (``True``) or the dense autodiff reference.
    """

    k: int
    batch: bool = False
    max_per_row: int = 0
    levels: tuple[int, ...] = ()
    aux_k: int = 512
    sparse: bool = True

    def slots(self, d_sae: int) -> int:
        """Slots per input of the per-input layout (TopK: ``k``; BatchTopK: the candidates)."""
        if not self.batch:
            return self.k
        if self.max_per_row:
            return min(d_sae, self.max_per_row)
        return min(d_sae, 2 * self.k) if self.sparse else d_sae


class FamilyOutput(NamedTuple):
    """What the TopK-family loss reports besides the loss value.

    Attributes:
      metrics: ``SAEMetrics`` of the batch (global over feature shards).
      fired: ``(d_sae_local,)`` bool, features active on some input of the batch.
      min_active: the smallest non-zero code of the batch on this device (``inf`` if none):
        BatchTopK's threshold estimate reads it.
    """

    metrics: SAEMetrics
    fired: jax.Array
    min_active: jax.Array


def _fvu(target: jax.Array, err2: jax.Array) -> jax.Array:
    """``Σ err2 / Σ‖target − mean(target)‖²`` (guarded against a zero denominator)."""
    centred = jnp.sum((target - jnp.mean(target, axis=0)[None, :]) ** 2)
    return jnp.sum(err2) / jnp.maximum(centred, jnp.finfo(target.dtype).tiny)


@partial(jax.custom_vjp, nondiff_argnums=(1,))
def scale_cotangent(x: jax.Array, factor: float) -> jax.Array:
    """``x`` itself, with its cotangent multiplied by ``factor`` in the backward pass."""
    return x


scale_cotangent.defvjp(lambda x, factor: (x, None), lambda factor, _, g: (g * factor,))


def encoder_view(params: SAEParams, feature_axis: str | None) -> SAEParams:
    """``params`` as the encoder of a feature slice reads them.

    The encoder reads ``x − b_dec`` with ``b_dec`` replicated on every slice: the gradient of
    ``b_dec`` through this slice's pre-activations is a partial sum over the slice's features,
    while its gradient through the reconstruction is the same on every slice. The train step
    averages ``b_dec``'s gradient over the slices (``pmean``); scaling the encoder's part by
    the number of slices makes that average the total.
    """
    n = axis_size(feature_axis)
    return params if n == 1 else params._replace(b_dec=scale_cotangent(params.b_dec, float(n)))


def _combine(mine: jax.Array, feature_axis: str | None) -> jax.Array:
    """``mine`` + the other feature slices' partial reconstructions, held constant."""
    if axis_size(feature_axis) == 1:
        return mine
    return mine + lax.stop_gradient(psum(mine, feature_axis) - mine)


def _select(
    pre: jax.Array, opts: TopKFamily, feature_axis: str | None, m: int
) -> tuple[Selection, jax.Array]:
    """TopK: per-row top ``m = k``. BatchTopK: per-row top ``m`` candidates, then the batch's
    cut. Also returns whether some input had all ``m`` candidates kept (it may have more)."""
    sel = select_rows(pre, m, feature_axis)
    if not opts.batch:
        return sel, jnp.zeros((), jnp.bool_)
    cut = batch_cutoff(sel.top, opts.k * pre.shape[0])
    kept = (sel.top >= cut) & (sel.top > 0)
    return sel._replace(keep=sel.keep & kept), jnp.any(jnp.all(kept, axis=1))


def _aux_dense_compact(xf, e, dead_mask, aux_k, p, *, cap):
    """AuxK on the first ``cap`` dead features, gathered into a dense ``(batch, cap)`` block."""
    dead_idx = jnp.nonzero(dead_mask, size=cap, fill_value=0)[0]
    valid = jnp.arange(cap) < jnp.sum(dead_mask)
    # the dead features' pre-activations, computed again rather than gathered from ``pre``
    # (a column gather of the (batch, d_sae) block costs more than this small matmul)
    z = (xf - p.b_dec[None, :]) @ jnp.take(p.W_enc, dead_idx, axis=1) + p.b_enc[dead_idx][None, :]
    if aux_k >= cap:  # every dead feature is among the aux_k largest
        chosen = jnp.broadcast_to(valid[None, :], z.shape)
    else:  # the aux_k largest (only positive ones matter: the codes are ReLU'd)
        z_stop = jnp.where(valid[None, :], lax.stop_gradient(z), 0)
        # each row's aux_k-th largest positive entry (row_top_k: 1.8–3.9× faster than a
        # bisection on the bits at 4,096 × 1,024–2,048, aux_k = 512, on CPU)
        cut = jnp.maximum(jnp.min(row_top_k(z_stop, aux_k)[0], axis=1), 0)
        chosen = valid[None, :] & (z_stop >= cut[:, None])
    codes = jnp.where(chosen, jnp.maximum(z, 0), 0)
    aux_err2 = jnp.sum((e - codes @ jnp.take(p.W_dec, dead_idx, axis=0)) ** 2, axis=-1)
    return _fvu(e, aux_err2)


def _aux_buckets(d_sae: int, aux_k: int) -> tuple[int, ...]:
    """Static sizes of the dead-feature block: ``c₀ · 2^j`` up to ``d_sae``, from
    ``c₀ = max(aux_k / 4, min(aux_k, 64))`` (so that, e.g., 256 dead features of 2,560 take a
    block of 256 and not of ``aux_k = 512``)."""
    caps, c = [], max(aux_k // 4, min(aux_k, 64), 1)
    while c < d_sae:
        caps.append(c)
        c *= 2
    return (*caps, d_sae)


class ActiveCodes(NamedTuple):
    """The active codes of a batch in one of two sparse layouts, with how to use them.

    Per input (TopK, and the dense reference): ``(batch, m)`` slots. Flat (BatchTopK's sparse
    path): a list of ``k · batch`` (input, feature) pairs, so that the work is ``k`` per input on
    average whatever the spread of the batch's active codes over its inputs.

    Attributes:
      local: this device's feature index of each slot/pair.
      index: the global feature index of each slot/pair.
      values: ``values(params) -> ReLU'd pre-activations`` of the kept slots (0 elsewhere).
      decode: ``decode(params, values) -> (batch, d_in)`` this device's partial reconstruction.
    """

    local: jax.Array
    index: jax.Array
    values: Callable[[SAEParams], jax.Array]
    decode: Callable[[SAEParams, jax.Array], jax.Array]


def _active_codes(params, xf, pre, opts: TopKFamily, feature_axis) -> ActiveCodes:
    """Select the active codes of the batch (``pre`` without gradient) as ``ActiveCodes``."""
    n, f_local = xf.shape[0], params.d_sae
    d_sae = f_local * axis_size(feature_axis)
    m = opts.slots(d_sae)

    if opts.sparse and opts.batch:
        size = min(opts.k * n, n * m)

        def flat(slots: int) -> tuple[jax.Array, ...]:
            sel, saturated = _select(lax.stop_gradient(pre), opts, feature_axis, slots)
            keep = sel.keep.reshape(-1)
            pos = jnp.nonzero(keep, size=size, fill_value=0)[0]
            rows = (pos // slots).astype(jnp.int32)
            count = jnp.sum(keep)
            return rows, sel.local.reshape(-1)[pos], sel.index.reshape(-1)[pos], count, saturated

        def exact() -> tuple[jax.Array, ...]:  # the batch's cut over every feature
            stop = lax.stop_gradient(pre)
            cut = nth_largest_positive(stop, opts.k * n, axis_name=feature_axis)
            keep = ((stop >= cut) & (stop > 0)).reshape(-1)
            pos = jnp.nonzero(keep, size=size, fill_value=0)[0]
            local = (pos % f_local).astype(jnp.int32)
            offset = axis_index(feature_axis) * f_local
            return (pos // f_local).astype(jnp.int32), local, local + offset, jnp.sum(keep)

        rows, local, index, count, saturated = flat(m)
        if not opts.max_per_row and m < d_sae:  # exact: redo over every feature if needed
            rows, local, index, count = lax.cond(
                saturated, exact, lambda: (rows, local, index, count)
            )
        valid = jnp.arange(size) < count

        def flat_values(p: SAEParams) -> jax.Array:
            e = encoder_view(p, feature_axis)
            z = _flat_pre_acts_at(e.W_enc, e.b_enc, e.b_dec, xf, pre, rows, local)
            return jnp.where(valid, jnp.maximum(z, 0), 0)

        return ActiveCodes(
            local, index, flat_values, lambda p, v: _flat_decode(p.W_dec, v, rows, local, n)
        )

    sel, _ = _select(lax.stop_gradient(pre), opts, feature_axis, m)

    def row_values(p: SAEParams) -> jax.Array:
        if opts.sparse:
            e = encoder_view(p, feature_axis)
            z = _pre_acts_at(e.W_enc, e.b_enc, e.b_dec, xf, pre, sel.local)
        else:
            z = jnp.take_along_axis(pre, sel.local, axis=1)
        return jnp.where(sel.keep, jnp.maximum(z, 0), 0)

    def row_decode(p: SAEParams, v: jax.Array) -> jax.Array:
        if opts.sparse:
            return _sparse_decode(p.W_dec, v, sel.local)
        return _dense_codes(v, sel.local, f_local) @ p.W_dec

    return ActiveCodes(sel.local, sel.index, row_values, row_decode)


def topk_family_loss(
    params: SAEParams,
    x: jax.Array,
    opts: TopKFamily,
    *,
    dead_mask: jax.Array | None = None,
    aux_coeff: ArrayLike = 1 / 32,
    feature_axis: str | None = None,
) -> tuple[jax.Array, FamilyOutput]:
    """Loss of a TopK-family SAE: ``Σ_levels fvu_level + aux_coeff · L_aux`` (no input checks).

    The one implementation behind ``topk_loss``, BatchTopK and Matryoshka BatchTopK, on one
    device or on one device's slice of the features (``feature_axis``): the top-k is a per-slice
    top-k merged across the slices (``select_rows``), each slice decodes its own active
    features and the partial reconstructions are summed (``psum``), the other slices' entering
    as constants, so that each slice's gradient is the gradient of the global loss.

    Matryoshka (``opts.levels``): the reconstruction from the features of each prefix
    ``[0, w)`` of the dictionary is scored on its own, with the same active codes, and the
    losses of the prefixes are summed (the last prefix is the whole dictionary).

    AuxK (with ``dead_mask``): the residual ``e = x − x̂`` (held constant) is reconstructed from
    the ``aux_k`` largest pre-activations of the dead features, scored as ``fvu(e, ê)``. On one
    device the dead features are first gathered into a dense block of a static size
    (the smallest of ``aux_k · 2^j`` or ``d_sae`` that holds them, chosen by ``lax.switch``), so
    that the auxiliary work is three small matmuls rather than ``aux_k`` gathers per input.

    Args:
      params: the SAE (this device's features when split).
      x: ``(batch, d_in)`` inputs.
      opts: static options (``TopKFamily``).
      dead_mask: ``(d_sae_local,)`` bool, or ``None`` (no AuxK).
      aux_coeff: ``α ≥ 0``, weight of AuxK.
      feature_axis: the mesh axis the features are split over, or ``None``.

    Returns:
      ``(loss, FamilyOutput)``.
    """
    xf = x.reshape(-1, params.d_in)
    if opts.sparse:
        pre = _selection_pre_acts(params, xf)
    else:
        pre = topk_pre_acts(encoder_view(params, feature_axis), xf)
    codes = _active_codes(params, xf, pre, opts, feature_axis)
    values = codes.values(params)
    err = xf - _reconstruction(params, codes, values, feature_axis)
    err2 = jnp.sum(err**2, axis=-1)
    fvu = _fvu(xf, err2)
    loss = sum(_inner_prefix_losses(params, xf, codes, values, opts.levels, feature_axis), fvu)

    zero = jnp.zeros((), xf.dtype)
    if dead_mask is not None:
        auxk = _auxk(params, xf, pre, lax.stop_gradient(err), dead_mask, opts, feature_axis)
        num_dead = psum(jnp.sum(dead_mask).astype(xf.dtype), feature_axis)
    else:
        auxk = num_dead = zero
    loss = loss + jnp.asarray(aux_coeff, xf.dtype) * auxk
    metrics = _family_metrics(
        params, codes, values, err2, feature_axis, loss=loss, fvu=fvu, auxk=auxk, num_dead=num_dead
    )
    active = values > 0
    fired = (
        jnp.zeros((params.d_sae,), jnp.bool_).at[codes.local.reshape(-1)].max(active.reshape(-1))
    )
    min_active = jnp.min(jnp.where(active, lax.stop_gradient(values), jnp.inf))
    return loss, FamilyOutput(metrics, fired, min_active)


def _reconstruction(params: SAEParams, codes: ActiveCodes, values, feature_axis) -> jax.Array:
    """``x̂ = Σ`` (every slice's decoded active codes) ``+ b_dec``: ``(batch, d_in)``."""
    return _combine(codes.decode(params, values), feature_axis) + params.b_dec[None, :]


def _inner_prefix_losses(params, xf, codes: ActiveCodes, values, levels, feature_axis) -> list:
    """``fvu(x, x̂_w)`` of each inner Matryoshka prefix ``[0, w)`` (none with one level), each
    decoded from the batch's active codes of the features below ``w``."""
    return [
        _fvu(xf, jnp.sum((xf - _reconstruction(params, codes, v_w, feature_axis)) ** 2, axis=-1))
        for v_w in (jnp.where(codes.index < w, values, 0) for w in levels[:-1])
    ]


def _family_metrics(params, codes: ActiveCodes, values, err2, feature_axis, **terms) -> SAEMetrics:
    """``SAEMetrics`` of a batch from its codes and squared errors (``terms``: ``loss``, ``fvu``,
    ``auxk``, ``num_dead``), global over the feature slices."""
    n = err2.shape[0]
    norms = decoder_norms(params)
    recon_err = jnp.mean(err2)
    return SAEMetrics(
        recon=recon_err,
        mse=recon_err / params.d_in,
        l1=psum(jnp.sum(values * norms[codes.local]) / n, feature_axis),
        l0=psum(jnp.sum(values > 0).astype(err2.dtype) / n, feature_axis),
        explained_variance=1.0 - terms["fvu"],
        dec_norm=pmean(jnp.mean(norms), feature_axis),
        **terms,
    )


def _switched_auxk(p, xf, e, dead_mask, which, aux_k, caps):
    """``lax.switch`` over the dead-feature blocks, differentiated inside the chosen branch.

    Differentiating through ``lax.switch`` would carry every branch's residuals (the union of
    their types, zero-filled in the branches not taken); instead each branch returns its value
    and its gradient, and the custom VJP scales that gradient by the cotangent.
    """

    def branches(xf, e, dead_mask):
        def nobody(q: SAEParams):
            zero = jnp.zeros((), jnp.result_type(xf, q.W_dec))
            return zero, jax.tree.map(jnp.zeros_like, q)

        args = (xf, e, dead_mask, aux_k)
        return [nobody] + [
            jax.value_and_grad(partial(_aux_dense_compact, *args, cap=c)) for c in caps
        ]

    @jax.custom_vjp
    def auxk(q, xf, e, dead_mask, which):
        return lax.switch(which, branches(xf, e, dead_mask), q)[0]

    def fwd(q, xf, e, dead_mask, which):
        return lax.switch(which, branches(xf, e, dead_mask), q)

    def bwd(grads, g):
        scaled = jax.tree.map(lambda t: (t * g).astype(t.dtype), grads)
        return scaled, None, None, None, None

    auxk.defvjp(fwd, bwd)
    return auxk(p, xf, e, dead_mask, which)


def _auxk(p, xf, pre, e, dead_mask, opts, feature_axis):
    """AuxK: ``fvu(e, ê)`` from the ``aux_k`` largest dead pre-activations (0 with none dead)."""
    f_local = p.d_sae
    d_sae = f_local * axis_size(feature_axis)
    aux_k = min(opts.aux_k, d_sae)
    zero = jnp.zeros((), jnp.result_type(xf, p.W_dec))
    num_dead = psum(jnp.sum(dead_mask), feature_axis)
    if opts.sparse and axis_size(feature_axis) == 1:
        caps = _aux_buckets(d_sae, aux_k)
        # branch 0: nobody dead (skipped at run time); then the smallest block that holds them
        which = jnp.where(num_dead == 0, 0, 1 + jnp.searchsorted(jnp.asarray(caps), num_dead))
        return _switched_auxk(p, xf, e, dead_mask, which, aux_k, caps)

    def aux_loss(q: SAEParams) -> jax.Array:
        dead_pre = jnp.where(dead_mask[None, :], lax.stop_gradient(pre), -jnp.inf)
        sel = select_rows(dead_pre, aux_k, feature_axis)
        keep = sel.keep & (sel.top > -jnp.inf)
        if opts.sparse:
            v = encoder_view(q, feature_axis)
            z = _pre_acts_at(v.W_enc, v.b_enc, v.b_dec, xf, pre, sel.local)
            part = _sparse_decode(q.W_dec, jnp.where(keep, jnp.maximum(z, 0), 0), sel.local)
        else:
            z = jnp.take_along_axis(pre, sel.local, axis=1)
            vals = jnp.where(keep, jnp.maximum(z, 0), 0)
            part = _dense_codes(vals, sel.local, f_local) @ q.W_dec
        aux_err2 = jnp.sum((e - _combine(part, feature_axis)) ** 2, axis=-1)
        return _fvu(e, aux_err2)

    return lax.cond(num_dead > 0, aux_loss, lambda q: zero, p)


def topk_loss(
    params: SAEParams,
    x: ArrayLike,
    k: int,
    *,
    dead_mask: ArrayLike | None = None,
    aux_k: int = 512,
    aux_coeff: ArrayLike = 1 / 32,
    sparse: bool = True,
) -> tuple[jax.Array, SAEMetrics]:
    """TopK SAE loss ``fvu + aux_coeff · L_aux`` and its metrics on a batch.

    See the module docstring for the maths. ``jax.grad(topk_loss, has_aux=True)`` gives the
    gradients; with ``sparse=True`` they come from the sparse custom VJPs (only the encoder's
    forward is a dense matmul), with ``sparse=False`` from autodiff of the dense reference.

    Args:
      params: the SAE.
      x: ``(batch, d_in)`` inputs (or ``(..., d_in)``, flattened).
      k: active features per input, ``0 < k ≤ d_sae`` (static).
      dead_mask: optional ``(d_sae,)`` bool, ``True`` for dead features (e.g. not active for
        the last N tokens); enables the AuxK loss. ``None``: no auxiliary loss.
      aux_k: number of dead features used to reconstruct the residual (static; clipped to
        ``d_sae``). OpenAI's default, 512.
      aux_coeff: ``α ≥ 0``, weight of the auxiliary loss (OpenAI: 1/32).
      sparse: use the fast sparse path (default) or the dense reference.

    Returns:
      ``(loss, SAEMetrics)``.
    """
    x = check_inputs(params, x)
    k = check_k(k, params.d_sae)
    check_nonnegative("aux_coeff", aux_coeff)
    dead_mask = check_dead_mask(dead_mask, params.d_sae)
    aux_k = check_k(min(int(aux_k), params.d_sae), params.d_sae, name="aux_k")
    if dead_mask is None:
        aux_k = 1  # unused: one compilation whatever the value
    opts = TopKFamily(k=k, aux_k=aux_k, sparse=sparse)
    return _family_loss_jit(params, x, dead_mask, jnp.asarray(aux_coeff, x.dtype), opts)


@partial(jax.jit, static_argnums=4)
def _family_loss_jit(params, x, dead_mask, aux_coeff, opts):
    loss, out = topk_family_loss(params, x, opts, dead_mask=dead_mask, aux_coeff=aux_coeff)
    return loss, out.metrics


def check_dead_mask(dead_mask: ArrayLike | None, d_sae: int) -> jax.Array | None:
    """``None``, or a ``(d_sae,)`` bool array (raises otherwise)."""
    if dead_mask is None:
        return None
    dead_mask = jnp.asarray(dead_mask)
    if dead_mask.shape != (d_sae,) or dead_mask.dtype != jnp.bool_:
        raise ValueError(
            f"dead_mask: expected a bool array of shape ({d_sae},), found "
            f"{dead_mask.dtype} {tuple(dead_mask.shape)}"
        )
    return dead_mask
