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
encoder's forward ``(x − b_dec) W_enc``. The decoder reads the ``k`` active rows of ``W_dec``
(gather + small contraction); the backward pass (``jax.custom_vjp``) forms ``∂W_dec`` by a
scatter-add of ``f ⊗ ∂x̂`` into ``k`` rows per input and ``∂W_enc`` by a scatter-add of
``∂z ⊗ (x − b_dec)`` from the ``k`` (+ ``aux_k``) selected pre-activations only. On a CPU the
gathers and scatters run over small batch chunks (a ``lax.scan``), which keeps the gathered
``(chunk, k, d_in)`` block in cache: measured at d_in = 1280, d_sae = 10240, k = 64,
batch = 4096, a chunked scatter-add forms ``∂W_enc`` about 5× faster than the dense
``(x − b_dec)ᵀ ∂z`` matmul, and an unchunked gather is no faster than the dense decoder.
``sparse=False`` is the naive dense TopK (codes scattered into ``(batch, d_sae)``, dense
matmuls, autodiff): the reference the fast path is tested against.

References:
  Gao et al., "Scaling and evaluating sparse autoencoders", 2024 (arXiv:2406.04093).
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.typing import ArrayLike

from jaxsae.kernels._checks import check_nonnegative
from jaxsae.kernels.sae import SAEOutput, SAEParams, _row, check_inputs, decoder_norms

__all__ = [
    "TopKMetrics",
    "topk_pre_acts",
    "topk_encode",
    "topk_decode",
    "topk_forward",
    "topk_loss",
    "check_k",
]

#: inputs per step of the chunked gathers/scatters of the sparse path (measured best on CPU)
_CHUNK = 8


class TopKMetrics(NamedTuple):
    """Scalar diagnostics of one batch for a TopK SAE (the fields of ``SAEMetrics`` + AuxK).

    Attributes:
      loss: the training objective ``fvu + aux_coeff · auxk``.
      recon: ``mean ‖x − x̂‖²``.
      mse: ``recon / d_in``.
      l1: ``mean Σ_i f_i ‖W_dec[i]‖₂`` (a diagnostic; not part of the TopK loss).
      l0: mean number of active (non-zero) features per input (``≤ k``).
      fvu: fraction of variance unexplained ``Σ‖x − x̂‖² / Σ‖x − mean(x)‖²``.
      explained_variance: ``1 − fvu``.
      dec_norm: mean decoder row norm.
      auxk: the auxiliary loss ``L_aux`` before multiplying by ``aux_coeff`` (0 with no dead).
      num_dead: number of features flagged dead in ``dead_mask``.
    """

    loss: jax.Array
    recon: jax.Array
    mse: jax.Array
    l1: jax.Array
    l0: jax.Array
    fvu: jax.Array
    explained_variance: jax.Array
    dec_norm: jax.Array
    auxk: jax.Array
    num_dead: jax.Array


def check_k(k: int, d_sae: int, *, name: str = "k") -> int:
    """Raise unless ``k`` is an integer with ``0 < k ≤ d_sae``; return it as an ``int``."""
    if isinstance(k, bool) or not isinstance(k, int | jnp.integer):
        raise ValueError(f"{name}: expected a Python int (a static value), found {k!r}")
    if not 0 < int(k) <= d_sae:
        raise ValueError(f"{name}: expected 0 < {name} <= d_sae={d_sae}, found {int(k)}")
    return int(k)


def topk_pre_acts(params: SAEParams, x: jax.Array) -> jax.Array:
    """Pre-activations ``(x − b_dec) W_enc + b_enc``: ``(..., d_in) → (..., d_sae)``."""
    return (x - _row(params.b_dec, x)) @ params.W_enc + _row(params.b_enc, x)


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
    top, indices = lax.top_k(topk_pre_acts(params, x), k)
    values = jnp.maximum(top, 0)
    return _dense_codes(values, indices, params.d_sae), values, indices


# ----------------------------------------------------------------------------------------------
# Sparse building blocks: gathers and scatter-adds over batch chunks, with custom VJPs.


def _pad_rows(a: jax.Array, n_pad: int) -> jax.Array:
    return jnp.pad(a, [(0, n_pad)] + [(0, 0)] * (a.ndim - 1)) if n_pad else a


def _chunked(*arrays: jax.Array) -> tuple[int, list[jax.Array]]:
    """Pad the leading axis to a multiple of ``_CHUNK`` and split it into ``(n/_CHUNK, _CHUNK)``."""
    n = arrays[0].shape[0]
    n_pad = -n % _CHUNK
    out = [_pad_rows(a, n_pad) for a in arrays]
    return n, [a.reshape(-1, _CHUNK, *a.shape[1:]) for a in out]


def _gather_rows_dot(table: jax.Array, indices: jax.Array, vectors: jax.Array) -> jax.Array:
    """``out[n, j] = table[indices[n, j]] · vectors[n]``: ``(F, D), (N, m), (N, D) → (N, m)``."""
    n, (ic, vc) = _chunked(indices, vectors)
    out = lax.map(lambda a: jnp.einsum("bmd,bd->bm", table[a[0]], a[1]), (ic, vc))
    return out.reshape(-1, indices.shape[-1])[:n]


def _gather_rows_combine(table: jax.Array, indices: jax.Array, weights: jax.Array) -> jax.Array:
    """``out[n] = Σ_j weights[n, j] table[indices[n, j]]``: ``(F, D), (N, m), (N, m) → (N, D)``."""
    n, (ic, wc) = _chunked(indices, weights)
    out = lax.map(lambda a: jnp.einsum("bm,bmd->bd", a[1], table[a[0]]), (ic, wc))
    return out.reshape(-1, table.shape[-1])[:n]


def _scatter_outer(weights: jax.Array, indices: jax.Array, vectors: jax.Array, d_sae: int):
    """``out[i] = Σ_{n,j: indices[n,j]=i} weights[n, j] vectors[n]``: ``→ (d_sae, D)``."""
    _, (wc, ic, vc) = _chunked(weights, indices, vectors)  # padded rows have weight 0
    d = vectors.shape[-1]

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
    return out + _row(params.b_dec, out)


def topk_forward(params: SAEParams, x: ArrayLike, k: int) -> SAEOutput:
    """TopK encoder then sparse decoder on ``x (..., d_in)``; see ``SAEOutput`` for the shapes."""
    x = check_inputs(params, x)
    return _topk_forward(params, x, check_k(k, params.d_sae))


@partial(jax.jit, static_argnums=2)
def _topk_forward(params: SAEParams, x: jax.Array, k: int) -> SAEOutput:
    pre = topk_pre_acts(params, x)
    top, indices = lax.top_k(pre, k)
    values = jnp.maximum(top, 0)
    codes = _dense_codes(values, indices, params.d_sae)
    return SAEOutput(codes=codes, recon=_topk_decode(params, values, indices), pre_acts=pre)


# ----------------------------------------------------------------------------------------------
# Loss


def _fvu(target: jax.Array, err2: jax.Array) -> jax.Array:
    """``Σ err2 / Σ‖target − mean(target)‖²`` (guarded against a zero denominator)."""
    centred = jnp.sum((target - jnp.mean(target, axis=0)[None, :]) ** 2)
    return jnp.sum(err2) / jnp.maximum(centred, jnp.finfo(target.dtype).tiny)


def topk_loss(
    params: SAEParams,
    x: ArrayLike,
    k: int,
    *,
    dead_mask: ArrayLike | None = None,
    aux_k: int = 512,
    aux_coeff: ArrayLike = 1 / 32,
    sparse: bool = True,
) -> tuple[jax.Array, TopKMetrics]:
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
      ``(loss, TopKMetrics)``.
    """
    x = check_inputs(params, x)
    k = check_k(k, params.d_sae)
    check_nonnegative("aux_coeff", aux_coeff)
    d_sae = params.d_sae
    if dead_mask is not None:
        dead_mask = jnp.asarray(dead_mask)
        if dead_mask.shape != (d_sae,) or dead_mask.dtype != jnp.bool_:
            raise ValueError(
                f"dead_mask: expected a bool array of shape ({d_sae},), found "
                f"{dead_mask.dtype} {tuple(dead_mask.shape)}"
            )
        aux_k = check_k(min(int(aux_k), d_sae), d_sae, name="aux_k")
    else:
        aux_k = 0  # unused: one compilation whatever the value
    return _topk_loss(params, x, dead_mask, jnp.asarray(aux_coeff, x.dtype), k, aux_k, sparse)


@partial(jax.jit, static_argnums=(4, 5, 6))
def _topk_loss(
    params: SAEParams,
    x: jax.Array,
    dead_mask: jax.Array | None,
    aux_coeff: jax.Array,
    k: int,
    aux_k: int,
    sparse: bool,
) -> tuple[jax.Array, TopKMetrics]:
    d_sae = params.d_sae
    xf = x.reshape(-1, params.d_in)
    use_aux = dead_mask is not None

    pre = topk_pre_acts(params, xf)
    if sparse:
        pre = lax.stop_gradient(pre)
    _, idx = lax.top_k(lax.stop_gradient(pre), k)

    def pre_at(p: SAEParams, ind: jax.Array) -> jax.Array:  # z at the given indices
        if sparse:
            return _pre_acts_at(p.W_enc, p.b_enc, p.b_dec, xf, pre, ind)
        return jnp.take_along_axis(pre, ind, axis=1)

    def dec(p: SAEParams, vals: jax.Array, ind: jax.Array) -> jax.Array:  # no bias
        if sparse:
            return _sparse_decode(p.W_dec, vals, ind)
        return _dense_codes(vals, ind, d_sae) @ p.W_dec

    values = jnp.maximum(pre_at(params, idx), 0)
    recon = dec(params, values, idx) + params.b_dec[None, :]
    err = xf - recon
    err2 = jnp.sum(err**2, axis=-1)
    fvu = _fvu(xf, err2)

    zero = jnp.zeros((), xf.dtype)
    if use_aux:
        e = lax.stop_gradient(err)

        def aux_loss(p: SAEParams) -> jax.Array:
            dead_pre = jnp.where(dead_mask[None, :], lax.stop_gradient(pre), -jnp.inf)
            _, aux_idx = lax.top_k(dead_pre, aux_k)
            aux_vals = jnp.maximum(pre_at(p, aux_idx), 0) * dead_mask[aux_idx].astype(xf.dtype)
            aux_err2 = jnp.sum((e - dec(p, aux_vals, aux_idx)) ** 2, axis=-1)
            return _fvu(e, aux_err2)

        num_dead = jnp.sum(dead_mask).astype(xf.dtype)
        # skipped at run time (and in the backward pass) when no feature is dead
        auxk = lax.cond(num_dead > 0, aux_loss, lambda p: zero, params)
    else:
        num_dead = zero
        auxk = zero

    loss = fvu + aux_coeff * auxk
    norms = decoder_norms(params)
    recon_err = jnp.mean(err2)
    metrics = TopKMetrics(
        loss=loss,
        recon=recon_err,
        mse=recon_err / params.d_in,
        l1=jnp.mean(jnp.sum(values * norms[idx], axis=-1)),
        l0=jnp.mean(jnp.sum(values > 0, axis=-1).astype(xf.dtype)),
        fvu=fvu,
        explained_variance=1.0 - fvu,
        dec_norm=jnp.mean(norms),
        auxk=auxk,
        num_dead=num_dead,
    )
    return loss, metrics
