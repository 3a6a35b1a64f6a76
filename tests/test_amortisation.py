"""Amortisation gap: optimal codes beat the encoder and match a brute-force solution."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsae.kernels.amortisation import amortisation_gap, optimal_codes
from jaxsae.kernels.sae import SAEParams, encode, sae_loss, sae_objective


def brute_force(W: np.ndarray, b_dec: np.ndarray, x: np.ndarray, lam: float) -> float:
    """min_{f ≥ 0} ‖x − f W − b_dec‖² + λ Σ f_i ‖W_i‖ by enumerating supports (KKT on each)."""
    norms = np.linalg.norm(W, axis=1)
    r = x - b_dec
    best = float(r @ r)
    F = W.shape[0]
    for size in range(1, F + 1):
        for S in itertools.combinations(range(F), size):
            WS = W[list(S)]
            G = WS @ WS.T
            if np.linalg.matrix_rank(G) < size:
                continue
            # stationarity on S: 2 (f W_S − r) W_Sᵀ + λ n_S = 0
            f = np.linalg.solve(G, WS @ r - 0.5 * lam * norms[list(S)])
            if np.all(f >= 0):
                e = r - f @ WS
                best = min(best, float(e @ e + lam * f @ norms[list(S)]))
    return best


@pytest.fixture
def tiny_sae():
    rng = np.random.default_rng(0)
    d_in, d_sae = 3, 5
    W_dec = rng.standard_normal((d_sae, d_in))
    W_dec /= np.linalg.norm(W_dec, axis=1, keepdims=True) * rng.uniform(0.5, 2.0, (d_sae, 1))
    params = SAEParams(
        W_enc=jnp.asarray(W_dec.T * 0.8),
        b_enc=jnp.asarray(rng.uniform(-0.3, 0.0, d_sae)),
        W_dec=jnp.asarray(W_dec),
        b_dec=jnp.asarray(0.1 * rng.standard_normal(d_in)),
    )
    x = jnp.asarray(rng.standard_normal((6, d_in)))
    return params, x


def test_optimal_codes_match_brute_force_and_beat_encoder(tiny_sae):
    params, x = tiny_sae
    lam = 0.7
    r = amortisation_gap(params, x, lam, tol=1e-12, max_steps=20000, polish=False)
    per_sample = sae_objective(params, x, r.codes_optimal, lam)
    ref = [
        brute_force(np.asarray(params.W_dec), np.asarray(params.b_dec), np.asarray(xi), lam)
        for xi in x
    ]
    np.testing.assert_allclose(per_sample, ref, rtol=1e-8, atol=1e-10)
    enc_obj = sae_objective(params, x, encode(params, x)[0], lam)
    assert np.all(np.asarray(per_sample) <= np.asarray(enc_obj) + 1e-12)
    assert float(r.gap) >= 0
    np.testing.assert_allclose(r.objective_encoder, sae_loss(params, x, lam)[0], rtol=1e-12)
    np.testing.assert_allclose(r.relative_gap, r.gap / r.objective_optimal, rtol=1e-12)
    assert bool(r.converged)


def test_solver_objective_is_half_the_sae_objective(tiny_sae):
    params, x = tiny_sae
    lam = 0.4
    sol = optimal_codes(params, x, lam, tol=1e-12, max_steps=20000, polish=False)
    np.testing.assert_allclose(
        2 * sol.objective, sae_objective(params, x, sol.codes, lam), rtol=1e-10
    )


def test_zero_gap_when_encoder_is_optimal():
    # Orthonormal decoder rows (plus two zero rows: dead features), W_enc = W_decᵀ,
    # b_enc = −λ/2: the encoder is the exact non-negative soft-threshold, i.e. the lasso
    # solution in closed form. Shapes as in ``tiny_sae`` (one compilation of the solver).
    d = 3
    Q = np.linalg.qr(np.random.default_rng(1).standard_normal((d, d)))[0]
    W_dec = jnp.asarray(np.concatenate([Q, np.zeros((2, d))]))
    lam = 0.6
    params = SAEParams(
        W_enc=W_dec.T, b_enc=jnp.full((5,), -lam / 2), W_dec=W_dec, b_dec=jnp.zeros((d,))
    )
    x = jax.random.normal(jax.random.PRNGKey(0), (6, d), jnp.float64)
    r = amortisation_gap(params, x, lam, tol=1e-12, max_steps=20000, polish=False)
    assert abs(float(r.gap)) < 1e-10
    np.testing.assert_allclose(r.cosine, 1.0, atol=1e-10)
    assert float(r.relative_distance) < 1e-8
    np.testing.assert_allclose(r.l0_encoder, r.l0_optimal)
    np.testing.assert_allclose(r.mse_encoder, r.mse_optimal, atol=1e-12)


def test_validation(tiny_sae):
    params, x = tiny_sae
    with pytest.raises(ValueError, match="l1_coeff"):
        amortisation_gap(params, x, -1.0)
    with pytest.raises(ValueError, match="d_in=3"):
        amortisation_gap(params, jnp.ones((2, 4)), 0.1)
    with pytest.raises(ValueError, match="finite"):
        amortisation_gap(params, x.at[0, 0].set(jnp.nan), 0.1)
