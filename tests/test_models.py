"""Flax NNX and Equinox wrappers equal the functional kernels: outputs and gradients."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxsae.kernels.sae import SAEParams, forward, init_params, sae_loss
from jaxsae.kernels.topk import topk_forward, topk_loss
from jaxsae.models import SparseAutoencoder as NnxSAE
from jaxsae.models.eqx import SparseAutoencoder as EqxSAE

D, F, K = 6, 16, 3


@pytest.fixture(scope="module")
def params():
    rng = np.random.default_rng(0)
    W_dec = rng.standard_normal((F, D))
    return SAEParams(
        W_enc=jnp.asarray(W_dec.T),
        b_enc=jnp.asarray(0.05 * rng.standard_normal(F)),
        W_dec=jnp.asarray(W_dec),
        b_dec=jnp.asarray(0.1 * rng.standard_normal(D)),
    )


@pytest.fixture(scope="module")
def x():
    return jnp.asarray(np.random.default_rng(3).standard_normal((5, D)))


def assert_trees_equal(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    for u, v in zip(la, lb, strict=True):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


def test_nnx_init_matches_init_params():
    m = NnxSAE(D, F, rngs=nnx.Rngs(params=7), dtype=jnp.float64)
    p = m.to_params()
    assert p.W_enc.shape == (D, F) and p.W_dec.shape == (F, D)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(p.W_dec), axis=1), 0.1, rtol=1e-12)
    np.testing.assert_array_equal(p.W_enc, p.W_dec.T)
    assert len(jax.tree.leaves(nnx.state(m, nnx.Param))) == 4


def test_nnx_l1_outputs_and_grads_equal_functional(params, x):
    m = NnxSAE.from_params(params)
    assert_trees_equal(m(x), forward(params, x))
    lam = 0.3
    (l_m, met_m) = m.loss(x, lam)
    (l_f, met_f) = sae_loss(params, x, lam)
    assert_trees_equal((l_m, met_m), (l_f, met_f))
    g_m = nnx.jit(nnx.grad(lambda mod: mod.loss(x, lam)[0]))(m)
    g_f = jax.jit(jax.grad(lambda p: sae_loss(p, x, lam)[0]))(params)
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        np.testing.assert_array_equal(g_m[name][...], getattr(g_f, name))


def test_nnx_topk_outputs_and_grads_equal_functional(params, x):
    m = NnxSAE.from_params(params, k=K)
    assert_trees_equal(m(x), topk_forward(params, x, K))
    dead = jnp.asarray(np.arange(F) % 3 == 0)
    g_m = nnx.jit(nnx.grad(lambda mod: mod.loss(x, dead_mask=dead, aux_k=4)[0]))(m)
    g_f = jax.jit(jax.grad(lambda p: topk_loss(p, x, K, dead_mask=dead, aux_k=4)[0]))(params)
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        np.testing.assert_array_equal(g_m[name][...], getattr(g_f, name))


def test_nnx_under_jit(params, x):
    m = NnxSAE.from_params(params)

    @nnx.jit
    def loss(mod, xb):
        return mod.loss(xb, 0.1)[0]

    np.testing.assert_allclose(loss(m, x), sae_loss(params, x, 0.1)[0], rtol=1e-12)


@pytest.mark.parametrize("k", [None, K])
def test_eqx_outputs_and_grads_equal_functional(params, x, k):
    m = EqxSAE.from_params(params, k=k)
    assert_trees_equal(m.to_params(), params)
    if k is None:
        assert_trees_equal(m(x), forward(params, x))
        g_m = eqx.filter_jit(eqx.filter_grad(lambda mod: mod.loss(x, 0.2)[0]))(m)
        g_f = jax.jit(jax.grad(lambda p: sae_loss(p, x, 0.2)[0]))(params)
    else:
        assert_trees_equal(m(x), topk_forward(params, x, k))
        g_m = eqx.filter_jit(eqx.filter_grad(lambda mod: mod.loss(x)[0]))(m)
        g_f = jax.jit(jax.grad(lambda p: topk_loss(p, x, k)[0]))(params)
    assert_trees_equal(g_m.to_params(), g_f)


def test_eqx_init_and_jit():
    m = EqxSAE(D, F, key=jax.random.PRNGKey(0), dtype=jnp.float64)
    np.testing.assert_array_equal(
        m.to_params().W_enc, init_params(jax.random.PRNGKey(0), D, F, dtype=jnp.float64).W_enc
    )
    xb = jnp.ones((2, D))
    out = eqx.filter_jit(lambda mod, xx: mod(xx))(m, xb)
    assert out.recon.shape == (2, D)


def test_wrapper_validation(params, x):
    with pytest.raises(ValueError, match="rngs"):
        NnxSAE(D, F)
    with pytest.raises(ValueError, match="key"):
        EqxSAE(D, F)
    with pytest.raises(ValueError, match="k"):
        NnxSAE(D, F, rngs=nnx.Rngs(0), k=F + 1)
    with pytest.raises(ValueError, match="k"):
        EqxSAE(D, F, key=jax.random.PRNGKey(0), k=0)
    with pytest.raises(ValueError, match="l1_coeff"):
        NnxSAE.from_params(params).loss(x)
    with pytest.raises(ValueError, match="wrong shapes"):
        NnxSAE(D + 1, F, params=params)
    with pytest.raises(ValueError, match="d_in=6"):
        NnxSAE.from_params(params)(jnp.ones((2, D + 1)))
