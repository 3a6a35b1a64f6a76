"""Sparse autoencoder maths: parameters, initialisation, encoder, decoder, loss and metrics.

The L1 SAE of the seed lecture, in the SAE community's layout (``W_enc (d_in, d_sae)``,
``W_dec (d_sae, d_in)``; row ``i`` of ``W_dec`` is feature ``i``'s direction):

    f(x)  = ReLU(x W_enc + b_enc)                      codes,          (batch, d_sae)
    x̂(x)  = f(x) W_dec + b_dec                         reconstruction, (batch, d_in)
    L     = mean_x [ ‖x − x̂‖² + λ Σ_i f_i(x) ‖W_dec[i]‖₂ ]

The encoder is one step of the non-negative proximal-gradient solver: ``ReLU(u + b_enc)`` is
``nonneg_soft_threshold(u, −b_enc)``, so a negative encoder bias is a per-feature threshold.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxsae.kernels._checks import check_array, check_nonnegative
from jaxsae.kernels.prox import nonneg_soft_threshold

__all__ = [
    "SAEParams",
    "SAEOutput",
    "SAEMetrics",
    "init_params",
    "encode",
    "decode",
    "forward",
    "sae_loss",
    "sae_loss_from_parts",
    "reconstruction_metrics",
    "bias_row",
    "decoder_norms",
    "check_inputs",
    "check_params",
    "sae_objective",
    "geometric_median",
    "fold_normalisation",
]


class SAEParams(NamedTuple):
    """Parameters of a sparse autoencoder (a pytree).

    Attributes:
      W_enc: ``(d_in, d_sae)`` encoder.
      b_enc: ``(d_sae,)`` encoder bias (minus the per-feature threshold).
      W_dec: ``(d_sae, d_in)`` decoder; row ``i`` is feature ``i``'s direction.
      b_dec: ``(d_in,)`` decoder bias.
      threshold: ``(d_sae,)`` per-feature threshold of the architectures that have one
        (JumpReLU ``θ``, or its logarithm in JumpReLU's training form; BatchTopK's running
        global threshold, the same in every entry), ``None`` for the others. ``None`` is an
        empty pytree node, so the leaves of an L1 or TopK SAE are the four arrays above.
    """

    W_enc: jax.Array
    b_enc: jax.Array
    W_dec: jax.Array
    b_dec: jax.Array
    threshold: jax.Array | None = None

    @property
    def d_in(self) -> int:
        return self.W_dec.shape[-1]

    @property
    def d_sae(self) -> int:
        return self.W_dec.shape[-2]


class SAEOutput(NamedTuple):
    """What the forward pass computes, for a batch ``(batch, d_in)``.

    Attributes:
      codes: ``(batch, d_sae)`` feature activations ``f(x) ≥ 0``.
      recon: ``(batch, d_in)`` reconstruction ``x̂``.
      pre_acts: ``(batch, d_sae)`` pre-activations ``x W_enc + b_enc``.
    """

    codes: jax.Array
    recon: jax.Array
    pre_acts: jax.Array


class SAEMetrics(NamedTuple):
    """Scalar diagnostics of one batch (means over the batch).

    Attributes:
      loss: the training objective.
      recon: ``mean ‖x − x̂‖²`` (the reconstruction term).
      mse: ``recon / d_in``, the mean squared error per element.
      l1: ``mean Σ_i f_i ‖W_dec[i]‖₂`` (the penalty before multiplying by ``l1_coeff``).
      l0: mean number of active features per input.
      fvu: fraction of variance unexplained, ``Σ‖x − x̂‖² / Σ‖x − mean(x)‖²``.
      explained_variance: ``1 − fvu``.
      dec_norm: mean decoder row norm.
      auxk: the dead-feature auxiliary loss before its coefficient (TopK family: AuxK; JumpReLU:
        the pre-activation loss), 0 where the architecture has none or no feature is dead.
      num_dead: number of features flagged dead in the dead mask given to the loss (0 without).
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


def init_params(
    key: jax.Array,
    d_in: int,
    d_sae: int,
    *,
    dec_norm: float = 0.1,
    b_dec: ArrayLike | None = None,
    dtype: jnp.dtype = jnp.float32,
) -> SAEParams:
    """Initialise an SAE the way Anthropic's April 2024 update recommends.

    Decoder rows point in random (Gaussian) directions with norm ``dec_norm``; the encoder is the
    decoder's transpose; ``b_enc = 0``; ``b_dec`` is zero or the given vector (e.g. the data mean
    or geometric median).

    Args:
      key: PRNG key.
      d_in: input dimension ``D``.
      d_sae: number of features ``F``.
      dec_norm: norm of each initial decoder row.
      b_dec: optional ``(d_in,)`` initial decoder bias.
      dtype: parameter dtype.

    Returns:
      ``SAEParams`` with ``W_enc (d_in, d_sae)``, ``b_enc (d_sae,)``, ``W_dec (d_sae, d_in)``,
      ``b_dec (d_in,)``.
    """
    if d_in <= 0 or d_sae <= 0:
        raise ValueError(f"init_params: expected d_in > 0 and d_sae > 0, found {d_in}, {d_sae}")
    if b_dec is None:
        bd = jnp.zeros((d_in,), dtype)
    else:
        bd = check_array("b_dec", b_dec, ndim=1).astype(dtype)
        if bd.shape != (d_in,):
            raise ValueError(f"b_dec: expected shape ({d_in},), found {tuple(bd.shape)}")
    return _init_params(key, bd, jnp.asarray(dec_norm, dtype), d_sae)


@partial(jax.jit, static_argnums=3)
def _init_params(key: jax.Array, b_dec: jax.Array, dec_norm: jax.Array, d_sae: int) -> SAEParams:
    d_in, dtype = b_dec.shape[0], b_dec.dtype
    W = jax.random.normal(key, (d_sae, d_in), dtype=dtype)
    W = dec_norm * W / jnp.linalg.norm(W, axis=1, keepdims=True)
    return SAEParams(W_enc=W.T, b_enc=jnp.zeros((d_sae,), dtype), W_dec=W, b_dec=b_dec)


def check_inputs(params: SAEParams, x: ArrayLike, *, name: str = "x") -> jax.Array:
    """Validate a batch against ``params``: rank 1 or 2, ``d_in`` columns, finite values."""
    x = check_array(name, x, ndim=(1, 2))
    if x.shape[-1] != params.d_in:
        raise ValueError(
            f"{name}: expected last dimension d_in={params.d_in} (the SAE's input size), "
            f"found shape {tuple(x.shape)}"
        )
    return x


def check_params(params: SAEParams, d_in: int, d_sae: int) -> SAEParams:
    """Raise unless ``params`` has the shapes of an SAE with ``d_in`` inputs, ``d_sae`` features."""
    want = {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_in), "b_dec": (d_in,)}
    if params.threshold is not None:
        want["threshold"] = (d_sae,)
    found = {n: tuple(jnp.shape(getattr(params, n))) for n in want}
    bad = {n: s for n, s in found.items() if s != want[n]}
    if bad:
        raise ValueError(
            f"params: expected shapes {want} (d_in={d_in}, d_sae={d_sae}), found wrong shapes {bad}"
        )
    return params


def bias_row(b: jax.Array, like: jax.Array) -> jax.Array:
    """A bias ``(n,)`` reshaped to broadcast explicitly against ``like (..., n)``."""
    return b.reshape((1,) * (like.ndim - 1) + b.shape)


def decoder_norms(params: SAEParams) -> jax.Array:
    """``(d_sae,)`` Euclidean norms of the decoder rows ``‖W_dec[i]‖₂``."""
    return jnp.linalg.norm(params.W_dec, axis=-1)


def encode(params: SAEParams, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Encoder ``f = ReLU(x W_enc + b_enc)`` as a non-negative soft-threshold.

    Args:
      params: the SAE.
      x: ``(..., d_in)`` inputs.

    Returns:
      ``(codes, pre_acts)``, both ``(..., d_sae)``.
    """
    pre = x @ params.W_enc
    pre = pre + bias_row(params.b_enc, pre)
    return nonneg_soft_threshold(pre, 0.0), pre


def decode(params: SAEParams, codes: jax.Array) -> jax.Array:
    """Decoder ``x̂ = f W_dec + b_dec``: ``(..., d_sae) → (..., d_in)``."""
    out = codes @ params.W_dec
    return out + bias_row(params.b_dec, out)


def forward(params: SAEParams, x: jax.Array) -> SAEOutput:
    """Encoder then decoder on ``x (batch, d_in)`` or ``(d_in,)``; see ``SAEOutput`` for shapes.

    Raises:
      ValueError: ``x`` of the wrong rank or ``d_in``, or non-finite (outside ``jit``).
    """
    return _forward(params, check_inputs(params, x))


def _forward(params: SAEParams, x: jax.Array) -> SAEOutput:
    codes, pre = encode(params, x)
    return SAEOutput(codes=codes, recon=decode(params, codes), pre_acts=pre)


def reconstruction_metrics(
    x: jax.Array, recon: jax.Array, codes: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(recon, l0, fvu)``: mean squared error norm, mean active count, variance unexplained."""
    x2 = x.reshape(-1, x.shape[-1])
    err = jnp.sum((x2 - recon.reshape(x2.shape)) ** 2, axis=-1)
    centred = jnp.sum((x2 - jnp.mean(x2, axis=0)[None, :]) ** 2)
    recon_err = jnp.mean(err)
    fvu = jnp.sum(err) / jnp.maximum(centred, jnp.finfo(x2.dtype).tiny)
    l0 = jnp.mean(jnp.sum(codes > 0, axis=-1).astype(x2.dtype))
    return recon_err, l0, fvu


def sae_loss(params: SAEParams, x: jax.Array, l1_coeff: ArrayLike) -> tuple[jax.Array, SAEMetrics]:
    """The seed's SAE loss and its metrics on a batch.

    ``L = mean_x ‖x − x̂‖² + l1_coeff · mean_x Σ_i f_i(x) ‖W_dec[i]‖₂``

    Args:
      params: the SAE.
      x: ``(batch, d_in)`` inputs.
      l1_coeff: ``λ ≥ 0`` (a scalar; may be traced, e.g. during a warm-up).

    Returns:
      ``(loss, SAEMetrics)``; differentiate with ``jax.grad(sae_loss, has_aux=True)``.

    Raises:
      ValueError: ``x`` of the wrong rank or ``d_in``, non-finite ``x`` (outside ``jit``),
        ``l1_coeff < 0``.
    """
    x = check_inputs(params, x)
    check_nonnegative("l1_coeff", l1_coeff)
    out = _forward(params, x)
    return sae_loss_from_parts(x, out.recon, out.codes, decoder_norms(params), l1_coeff)


def sae_loss_from_parts(
    x: jax.Array, recon: jax.Array, codes: jax.Array, norms: jax.Array, l1_coeff: ArrayLike
) -> tuple[jax.Array, SAEMetrics]:
    """The seed's loss and its metrics from the forward pass's parts (no input checks).

    ``sae_loss`` calls this on its own forward pass; a feature-sharded train step calls it with
    the reconstruction summed over the shards.

    Args:
      x: ``(batch, d_in)`` inputs.
      recon: ``(batch, d_in)`` reconstruction ``x̂``.
      codes: ``(batch, d_sae)`` codes ``f ≥ 0`` (a shard's features, when sharded).
      norms: ``(d_sae,)`` decoder row norms of the same features.
      l1_coeff: ``λ ≥ 0``.

    Returns:
      ``(loss, SAEMetrics)``.
    """
    l1 = jnp.mean(codes @ norms)
    recon_err, l0, fvu = reconstruction_metrics(x, recon, codes)
    loss = recon_err + l1_coeff * l1
    zero = jnp.zeros((), recon_err.dtype)
    metrics = SAEMetrics(
        loss=loss,
        recon=recon_err,
        mse=recon_err / x.shape[-1],
        l1=l1,
        l0=l0,
        fvu=fvu,
        explained_variance=1.0 - fvu,
        dec_norm=jnp.mean(norms),
        auxk=zero,
        num_dead=zero,
    )
    return loss, metrics


def sae_objective(
    params: SAEParams, x: jax.Array, codes: jax.Array, l1_coeff: ArrayLike
) -> jax.Array:
    """The SAE objective of given codes, per input (the summand of ``sae_loss``).

    ``J(f; x) = ‖x − (f W_dec + b_dec)‖² + l1_coeff · Σ_i f_i ‖W_dec[i]‖₂``

    Args:
      params: the SAE (its decoder and decoder bias are used).
      x: ``(..., d_in)`` inputs.
      codes: ``(..., d_sae)`` any codes (e.g. the encoder's, or optimal ones).
      l1_coeff: ``λ ≥ 0``.

    Returns:
      ``(...)`` objective values; ``mean(sae_objective(p, x, encode(p, x)[0], λ))`` is
      ``sae_loss(p, x, λ)[0]``.
    """
    err = jnp.sum((x - decode(params, codes)) ** 2, axis=-1)
    return err + l1_coeff * (codes @ decoder_norms(params))


def geometric_median(
    X: ArrayLike, *, max_steps: int = 200, tol: float = 1e-7, eps: float = 1e-12
) -> jax.Array:
    """Geometric median ``argmin_y Σ_n ‖x_n − y‖₂`` by Weiszfeld's algorithm.

    Iterates ``y ← Σ_n w_n x_n / Σ_n w_n`` with ``w_n = 1 / max(‖x_n − y‖, eps)`` from the mean,
    until the step is at most ``tol · (1 + ‖y‖)`` or after ``max_steps``. The robust choice of
    initial ``b_dec`` (Anthropic, April 2024; SAELens' ``b_dec_init_method="geometric_median"``).

    Args:
      X: ``(n, d)`` points (finite).
      max_steps: the most Weiszfeld iterations.
      tol: relative step tolerance.
      eps: floor on the distances (a point that coincides with ``y`` keeps a finite weight).

    Returns:
      ``(d,)`` the geometric median, in ``X``'s dtype.

    References:
      E. Weiszfeld, "Sur le point pour lequel la somme des distances de n points donnés est
      minimum", Tôhoku Math. J., 1937.
    """
    X = check_array("X", X, ndim=2)
    if max_steps < 1:
        raise ValueError(f"geometric_median: expected max_steps >= 1, found {max_steps}")
    return _weiszfeld(X, max_steps, jnp.asarray(tol, X.dtype), jnp.asarray(eps, X.dtype))


@partial(jax.jit, static_argnums=1)
def _weiszfeld(X: jax.Array, max_steps: int, tol: jax.Array, eps: jax.Array) -> jax.Array:
    def step(y):
        dist = jnp.maximum(jnp.linalg.norm(X - y[None, :], axis=1), eps)
        w = 1.0 / dist
        return (w @ X) / jnp.sum(w)

    def cond(state):
        y, delta, i = state
        return (i < max_steps) & (delta > tol * (1 + jnp.linalg.norm(y)))

    def body(state):
        y, _, i = state
        y_new = step(y)
        return y_new, jnp.linalg.norm(y_new - y), i + 1

    y0 = jnp.mean(X, axis=0)
    state = (y0, jnp.asarray(jnp.inf, X.dtype), jnp.asarray(0, jnp.int32))
    return jax.lax.while_loop(cond, body, state)[0]


def fold_normalisation(
    params: SAEParams,
    mean: ArrayLike,
    scale: ArrayLike,
    *,
    apply_b_dec_to_input: bool = False,
) -> SAEParams:
    """Turn an SAE trained on normalised inputs ``x' = (x − mean) · scale`` into one on raw ``x``.

    With ``s = scale`` (a scalar or ``(d_in,)``) and ``m = mean``, the returned SAE gives the
    same codes on ``x`` as ``params`` on ``x'``, and reconstructs ``x̂ = x̂' / s + m``:

        W_enc ← s · W_enc (row-wise)       W_dec ← W_dec / s (column-wise)
        b_dec ← b_dec / s + m              b_enc ← b_enc − (m s) W_enc   (standard SAE)
                                           b_enc ← b_enc                (``apply_b_dec_to_input``)

    With ``apply_b_dec_to_input`` (a TopK SAE, whose encoder reads ``x' − b_dec``) the mean is
    absorbed by ``b_dec`` alone, since ``(x − m) s − b_dec = s (x − (m + b_dec / s))``. The
    decoder norms change by ``1 / s``, so an L1 penalty value on the raw scale differs; the codes
    and the reconstruction do not.

    Args:
      params: the SAE trained on normalised inputs.
      mean: ``(d_in,)`` mean subtracted before scaling (zeros if none), or a scalar.
      scale: ``> 0``, scalar or ``(d_in,)``, the factor applied after centring.
      apply_b_dec_to_input: whether the encoder reads ``x − b_dec`` (TopK) or ``x`` (standard).

    Returns:
      ``SAEParams`` acting on raw inputs.
    """
    dtype = params.W_dec.dtype
    d_in = params.d_in
    m = check_array("mean", mean, ndim=(0, 1)).astype(dtype)
    s = check_array("scale", scale, ndim=(0, 1)).astype(dtype)
    for name, v in (("mean", m), ("scale", s)):
        if v.ndim == 1 and v.shape != (d_in,):
            raise ValueError(f"{name}: expected a scalar or shape ({d_in},), found {v.shape}")
    if bool(jnp.any(s <= 0)):
        raise ValueError(f"scale: expected values > 0, found min {float(jnp.min(s))}")
    m = jnp.broadcast_to(m, (d_in,))
    s = jnp.broadcast_to(s, (d_in,))
    W_enc = s[:, None] * params.W_enc
    # the encoder reads x' = (x − m) s (standard) or x' − b_dec = s (x − b_dec_new) (TopK)
    b_enc = params.b_enc if apply_b_dec_to_input else params.b_enc - (m * s) @ params.W_enc
    return SAEParams(
        W_enc=W_enc,
        b_enc=b_enc,
        W_dec=params.W_dec / s[None, :],
        b_dec=params.b_dec / s + m,
        threshold=params.threshold,  # the pre-activations, hence their thresholds, are unchanged
    )
