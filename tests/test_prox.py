import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import soft_threshold_loop

from jaxsae.kernels.prox import nonneg_soft_threshold, prox_l1, soft_threshold

RNG = np.random.default_rng(0)
V = RNG.standard_normal((5, 7)) * 2
T_FEAT = np.abs(RNG.standard_normal(7))


@pytest.mark.parametrize("nonneg", [False, True])
@pytest.mark.parametrize("t", [0.0, 0.7, "per-feature"])
def test_matches_scalar_loop(nonneg, t):
    t_arr = T_FEAT[None, :] if isinstance(t, str) else t
    got = prox_l1(jnp.asarray(V), jnp.asarray(t_arr), nonneg=nonneg)
    np.testing.assert_allclose(got, soft_threshold_loop(V, t_arr, nonneg), rtol=0, atol=1e-12)


def test_signed_and_nonneg_forms():
    v = jnp.array([-2.0, -0.5, 0.5, 3.0])
    np.testing.assert_array_equal(soft_threshold(v, 1.0), [-1.0, 0.0, 0.0, 2.0])
    np.testing.assert_array_equal(nonneg_soft_threshold(v, 1.0), [0.0, 0.0, 0.0, 2.0])
    np.testing.assert_array_equal(nonneg_soft_threshold(v), [0.0, 0.0, 0.5, 3.0])


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_dtype_kept(dtype):
    v = jnp.asarray(V, dtype)
    assert soft_threshold(v, 0.3).dtype == dtype
    assert nonneg_soft_threshold(v, 0.3).dtype == dtype


def test_jit_and_vmap():
    v, t = jnp.asarray(V), jnp.asarray(T_FEAT)
    f = jax.jit(soft_threshold)
    np.testing.assert_array_equal(f(v, t[None, :]), soft_threshold(v, t[None, :]))
    # vmap over rows with a per-feature threshold of the row's shape
    rows = jax.vmap(soft_threshold, in_axes=(0, None))(v, t)
    np.testing.assert_allclose(rows, soft_threshold_loop(V, T_FEAT[None, :]), atol=1e-12)


def test_grad():
    # d/dv S_t(v) = 1 off the dead zone, 0 inside; d/dt = −sign(v) off the dead zone.
    v, t = jnp.asarray(V[0]), jnp.asarray(T_FEAT)
    gv = jax.grad(lambda v: jnp.sum(soft_threshold(v, t)))(v)
    gt = jax.grad(lambda t: jnp.sum(soft_threshold(v, t)))(t)
    live = np.abs(V[0]) > T_FEAT
    np.testing.assert_array_equal(gv, live.astype(float))
    np.testing.assert_array_equal(gt, -np.sign(V[0]) * live)
    gn = jax.grad(lambda v: jnp.sum(nonneg_soft_threshold(v, t)))(v)
    np.testing.assert_array_equal(gn, (V[0] > T_FEAT).astype(float))


@pytest.mark.parametrize("nonneg", [False, True])
def test_per_feature_threshold_of_shape_F_against_a_batch(nonneg):
    # (F,) thresholds against a (B, F) point, as the docstring promises, under strict promotion
    got = prox_l1(jnp.asarray(V), jnp.asarray(T_FEAT), nonneg=nonneg)
    np.testing.assert_allclose(got, soft_threshold_loop(V, T_FEAT[None, :], nonneg), atol=1e-12)
