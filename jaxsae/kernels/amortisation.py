"""Amortisation gap of an L1 sparse autoencoder: its encoder vs the exact sparse codes.

An L1 SAE's encoder ``f(x) = ReLU(x W_enc + b_enc)`` amortises, in one matrix product, the
problem its loss poses for each input on the *same* decoder:

    J(f; x) = ‖x − (f W_dec + b_dec)‖² + λ Σ_i f_i ‖W_dec[i]‖₂,     f ≥ 0.

Its exact minimiser is a non-negative lasso. The lasso solvers minimise
``P(c) = ½‖x' − c W‖² + Σ_i reg_i |c_i|``; with ``x' = x − b_dec``, ``W = W_dec`` and
``reg_i = (λ / 2) ‖W_dec[i]‖₂`` (``nonneg=True``), ``J = 2 P``: the same minimiser, and the
SAE objective of any codes is twice the solver's. (Equivalently, with unit-norm atoms
``W̃_i = W_dec[i] / ‖W_dec[i]‖`` and codes ``g_i = f_i ‖W_dec[i]‖``, the penalty is the plain
``(λ/2)‖g‖₁``; the per-feature ``reg`` does that rescaling implicitly. A dead feature with a
zero decoder row has ``reg_i = 0`` and no effect on the reconstruction.)

The *amortisation gap* is ``J(f_enc) − J(f*) ≥ 0``: how much objective the encoder leaves on
the table. ``amortisation_gap`` reports it with the sparsity and reconstruction of both codes.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jaxsae.kernels._checks import check_nonnegative, is_concrete
from jaxsae.kernels.sae import SAEParams, check_inputs, decode, decoder_norms, encode, sae_objective

__all__ = ["AmortisationGap", "amortisation_gap", "optimal_codes"]


class AmortisationGap(NamedTuple):
    """The encoder's codes vs the optimal codes of the SAE objective, on a batch.

    Objectives are ``J`` (see the module docstring) averaged over the batch, i.e. on the scale
    of ``sae_loss``.

    Attributes:
      objective_encoder: ``mean J(f_enc)`` (equals ``sae_loss``).
      objective_optimal: ``mean J(f*)``.
      gap: ``objective_encoder − objective_optimal``.
      relative_gap: ``gap / objective_optimal``.
      l0_encoder: mean number of non-zero codes of the encoder.
      l0_optimal: the same for the optimal codes.
      mse_encoder: mean squared reconstruction error per element, encoder codes.
      mse_optimal: the same for the optimal codes.
      cosine: mean over inputs of the cosine between ``f_enc`` and ``f*`` (1 where both are 0,
        0 where exactly one is).
      relative_distance: ``‖F_enc − F*‖_F / ‖F*‖_F`` over the batch.
      codes_optimal: ``(batch, d_sae)`` the optimal codes ``f*``.
      num_steps: solver iterations.
      converged: whether every input's relative duality gap reached the solver's tolerance.
      max_relative_duality_gap: the largest certified ``(P(c) − P*) / P(c)`` bound.
    """

    objective_encoder: jax.Array
    objective_optimal: jax.Array
    gap: jax.Array
    relative_gap: jax.Array
    l0_encoder: jax.Array
    l0_optimal: jax.Array
    mse_encoder: jax.Array
    mse_optimal: jax.Array
    cosine: jax.Array
    relative_distance: jax.Array
    codes_optimal: jax.Array
    num_steps: jax.Array
    converged: jax.Array
    max_relative_duality_gap: jax.Array


def optimal_codes(
    params: SAEParams,
    x: ArrayLike,
    l1_coeff: ArrayLike,
    *,
    init: ArrayLike | None = None,
    max_steps: int = 5000,
    tol: float | None = None,
    **solver_options,
):
    """Minimise the SAE objective ``J(f; x)`` over ``f ≥ 0`` exactly, on the SAE's decoder.

    Solves the non-negative lasso ``½‖(x − b_dec) − c W_dec‖² + Σ_i (λ/2)‖W_dec[i]‖ c_i`` by
    ``jaxsae.kernels.solvers.fista`` (with its defaults and no ``init``: the exact path, then
    FISTA for what it does not certify), whose minimiser is that of ``J`` (``J = 2P``). Dead
    features (zero decoder rows) do not change the reconstruction and get code 0; outside
    ``jit`` they are left out of the solve, so that every remaining ``λ_i > 0`` (the exact path
    needs it).

    Args:
      params: the SAE.
      x: ``(batch, d_in)`` inputs.
      l1_coeff: ``λ ≥ 0``, the SAE's L1 coefficient.
      init: optional ``(batch, d_sae)`` warm start (e.g. the encoder's codes).
      max_steps, tol: the solver's iteration cap and relative duality-gap tolerance.
      **solver_options: passed to ``fista``.

    Returns:
      The solver's ``Solution`` (``codes``, ``num_steps``, ``converged``, ``objective = J/2``,
      ``gap``).
    """
    from jaxsae.kernels.solvers import fista

    x = check_inputs(params, x)
    check_nonnegative("l1_coeff", l1_coeff)
    reg = 0.5 * jnp.asarray(l1_coeff, x.dtype) * decoder_norms(params)
    xc = x - params.b_dec.reshape((1,) * (x.ndim - 1) + (params.d_in,))
    solve = functools.partial(fista, nonneg=True, max_steps=max_steps, tol=tol, **solver_options)
    live = _live_features(reg, lam=l1_coeff)
    if live is None:
        return solve(xc, params.W_dec, reg, init=init)
    keep = jnp.asarray(live)
    sub_init = None if init is None else jnp.asarray(init)[..., keep]
    sol = solve(xc, params.W_dec[keep], reg[keep], init=sub_init)
    codes = jnp.zeros(sol.codes.shape[:-1] + (params.d_sae,), sol.codes.dtype)
    return sol._replace(codes=codes.at[..., keep].set(sol.codes))


def _live_features(reg: jax.Array, lam: ArrayLike) -> np.ndarray | None:
    """Indices of the features with ``reg_i > 0`` when some have ``reg_i = 0`` and ``λ > 0``
    (concrete values only), else None (solve on the whole decoder)."""
    if not (is_concrete(reg) and is_concrete(lam)) or not float(np.asarray(lam)) > 0:
        return None
    r = np.asarray(reg)
    live = np.flatnonzero(r > 0)
    return live if 0 < len(live) < len(r) else None


def amortisation_gap(
    params: SAEParams,
    x: ArrayLike,
    l1_coeff: ArrayLike,
    *,
    warm_start: bool = True,
    max_steps: int = 5000,
    tol: float | None = None,
    **solver_options,
) -> AmortisationGap:
    """How far an L1 SAE's encoder is from the optimal codes of its own objective.

    Args:
      params: a trained L1 SAE (standard architecture, encoder ``ReLU(x W_enc + b_enc)``).
      x: ``(batch, d_in)`` inputs, on the scale the SAE was trained on.
      l1_coeff: ``λ ≥ 0`` the SAE was trained with.
      warm_start: start the solver from the encoder's codes.
      max_steps, tol, **solver_options: passed to ``optimal_codes``/``fista``.

    Returns:
      ``AmortisationGap``; ``gap ≥ 0`` up to the solver's certified tolerance.

    Examples:
      >>> r = amortisation_gap(params, x, l1_coeff=5.0)
      >>> float(r.relative_gap), float(r.l0_encoder), float(r.l0_optimal)
    """
    x = check_inputs(params, x)
    if x.ndim == 1:
        x = x[None, :]
    codes_enc, _ = encode(params, x)
    sol = optimal_codes(
        params,
        x,
        l1_coeff,
        init=codes_enc if warm_start else None,
        max_steps=max_steps,
        tol=tol,
        **solver_options,
    )
    codes_opt = jnp.maximum(sol.codes, 0)  # exact zeros below 0 (the solver's prox gives ≥ 0)
    j_enc = jnp.mean(sae_objective(params, x, codes_enc, l1_coeff))
    j_opt = jnp.mean(sae_objective(params, x, codes_opt, l1_coeff))
    tiny = jnp.finfo(x.dtype).tiny

    def mse(codes):
        return jnp.mean((x - decode(params, codes)) ** 2)

    def l0(codes):
        return jnp.mean(jnp.sum(codes > 0, axis=-1).astype(x.dtype))

    n_enc = jnp.linalg.norm(codes_enc, axis=-1)
    n_opt = jnp.linalg.norm(codes_opt, axis=-1)
    dot = jnp.sum(codes_enc * codes_opt, axis=-1)
    both_zero = (n_enc == 0) & (n_opt == 0)
    cos = jnp.where(both_zero, 1.0, dot / jnp.maximum(n_enc * n_opt, tiny))
    rel_dist = jnp.linalg.norm(codes_enc - codes_opt) / jnp.maximum(
        jnp.linalg.norm(codes_opt), tiny
    )
    gap = j_enc - j_opt
    return AmortisationGap(
        objective_encoder=j_enc,
        objective_optimal=j_opt,
        gap=gap,
        relative_gap=gap / jnp.maximum(j_opt, tiny),
        l0_encoder=l0(codes_enc),
        l0_optimal=l0(codes_opt),
        mse_encoder=mse(codes_enc),
        mse_optimal=mse(codes_opt),
        cosine=jnp.mean(cos),
        relative_distance=rel_dist,
        codes_optimal=codes_opt,
        num_steps=sol.num_steps,
        converged=sol.converged,
        max_relative_duality_gap=jnp.max(sol.gap / jnp.maximum(sol.objective, tiny)),
    )
