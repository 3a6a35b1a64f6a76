"""TopK SAE: the sparse custom-VJP path equals the naive dense TopK and a NumPy reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsae.kernels.sae import SAEParams
from jaxsae.kernels.topk import topk_decode, topk_encode, topk_forward, topk_loss

D, F, K, AUX = 8, 40, 4, 6
NAMES = ("W_enc", "b_enc", "W_dec", "b_dec")


@pytest.fixture(scope="module")
def params():
    rng = np.random.default_rng(0)
    W_dec = rng.standard_normal((F, D))
    W_dec /= np.linalg.norm(W_dec, axis=1, keepdims=True)
    return SAEParams(
        W_enc=jnp.asarray(W_dec.T + 0.1 * rng.standard_normal((D, F))),
        b_enc=jnp.asarray(0.05 * rng.standard_normal(F)),
        W_dec=jnp.asarray(W_dec),
        b_dec=jnp.asarray(0.1 * rng.standard_normal(D)),
    )


@pytest.fixture(scope="module")
def x():
    # 13 rows: not a multiple of the sparse path's chunk
    return jnp.asarray(np.random.default_rng(3).standard_normal((13, D)))


def numpy_topk_loss(p, x, k, dead=None, aux_k=AUX, aux_coeff=1 / 32):
    """Independent NumPy TopK + AuxK loss (OpenAI's normalised MSE for the auxiliary term)."""
    W_enc, b_enc, W_dec, b_dec = (np.asarray(getattr(p, n)) for n in NAMES)
    x = np.asarray(x)
    pre = (x - b_dec) @ W_enc + b_enc
    codes = np.zeros_like(pre)
    for n in range(len(x)):
        top = np.argsort(-pre[n])[:k]
        codes[n, top] = np.maximum(pre[n, top], 0)
    e = x - (codes @ W_dec + b_dec)
    fvu = (e**2).sum() / ((x - x.mean(0)) ** 2).sum()
    aux = 0.0
    if dead is not None and dead.any():
        dead = np.asarray(dead)
        aux_codes = np.zeros_like(pre)
        for n in range(len(x)):
            cand = np.where(dead)[0]
            top = cand[np.argsort(-pre[n, cand])[:aux_k]]
            aux_codes[n, top] = np.maximum(pre[n, top], 0)
        e_hat = aux_codes @ W_dec
        aux = ((e - e_hat) ** 2).sum() / ((e - e.mean(0)) ** 2).sum()
    return fvu + aux_coeff * aux, fvu, aux, codes


@jax.jit
def _all_paths(p, x, dead):
    """Loss and gradients of the sparse and dense paths, with and without AuxK (one compile)."""
    out = {}
    for sparse in (True, False):
        for aux in (False, True):

            def f(q, sparse=sparse, aux=aux):
                return topk_loss(q, x, K, dead_mask=dead if aux else None, aux_k=AUX, sparse=sparse)

            out[sparse, aux] = jax.value_and_grad(f, has_aux=True)(p)
    return out


@pytest.mark.parametrize("n_dead", [0, 3, 17])  # none, fewer than aux_k, more than aux_k
def test_sparse_equals_dense_and_numpy(params, x, n_dead):
    dead = np.zeros(F, bool)
    dead[: 2 * n_dead : 2] = True
    dead = jnp.asarray(dead)
    out = _all_paths(params, x, dead)
    for aux in (False, True):
        (l_s, m_s), g_s = out[True, aux]
        (l_d, m_d), g_d = out[False, aux]
        np.testing.assert_allclose(l_s, l_d, rtol=1e-12)
        for name in NAMES:
            np.testing.assert_allclose(
                getattr(g_s, name),
                getattr(g_d, name),
                rtol=1e-5,
                atol=1e-10,
                err_msg=f"{name}, aux={aux}",
            )
        ref, fvu, auxk, _ = numpy_topk_loss(params, x, K, np.asarray(dead) if aux else None)
        np.testing.assert_allclose(l_s, ref, rtol=1e-10)
        np.testing.assert_allclose(m_s.fvu, fvu, rtol=1e-10)
        np.testing.assert_allclose(m_s.auxk, auxk, rtol=1e-10, atol=1e-14)
        assert float(m_s.num_dead) == (n_dead if aux else 0)
        if aux and n_dead:
            assert float(m_s.auxk) > 0
            # AuxK gradients reach dead decoder rows
            assert float(jnp.abs(g_s.W_dec[np.asarray(dead)]).sum()) > 0
        else:
            assert float(m_s.auxk) == 0


def test_sparse_gradient_matches_finite_differences(params, x):
    # Without AuxK: its target e = x − x̂ is held constant (stop_gradient, as in OpenAI's code),
    # so the AuxK gradient is deliberately not the derivative of the loss value.
    # ``_all_paths`` is already compiled for these shapes: reuse it.
    dead = jnp.zeros((F,), bool)

    def loss_and_grad(p):
        (loss, _), grad = _all_paths(p, x, dead)[True, False]
        return loss, grad

    _, g = loss_and_grad(params)
    rng = np.random.default_rng(9)
    direction = jax.tree.map(lambda a: jnp.asarray(rng.standard_normal(a.shape)), params)
    eps = 1e-6
    plus = jax.tree.map(lambda a, d: a + eps * d, params, direction)
    minus = jax.tree.map(lambda a, d: a - eps * d, params, direction)
    fd = (loss_and_grad(plus)[0] - loss_and_grad(minus)[0]) / (2 * eps)
    an = sum(
        float(np.vdot(np.asarray(a), np.asarray(d)))
        for a, d in zip(jax.tree.leaves(g), jax.tree.leaves(direction), strict=True)
    )
    np.testing.assert_allclose(an, fd, rtol=1e-6)


def test_encode_decode_forward(params, x):
    codes, values, indices = topk_encode(params, x, K)
    _, _, _, ref_codes = numpy_topk_loss(params, x, K)
    np.testing.assert_allclose(codes, ref_codes, rtol=1e-12)
    assert codes.shape == (13, F) and values.shape == indices.shape == (13, K)
    assert np.all(np.asarray((codes > 0).sum(1)) <= K)
    np.testing.assert_allclose(jnp.take_along_axis(codes, indices, axis=1), values)
    recon = topk_decode(params, values, indices)
    np.testing.assert_allclose(recon, codes @ params.W_dec + params.b_dec[None, :], rtol=1e-12)
    out = topk_forward(params, x, K)
    np.testing.assert_allclose(out.recon, recon, rtol=1e-12)
    np.testing.assert_allclose(out.codes, codes)
    one = topk_forward(params, x[0], K)  # a single input
    np.testing.assert_allclose(one.recon, recon[0], rtol=1e-12)


def test_metrics(params, x):
    loss, m = topk_loss(params, x, K)
    _, _, _, codes = numpy_topk_loss(params, x, K)
    recon = codes @ np.asarray(params.W_dec) + np.asarray(params.b_dec)
    err = ((np.asarray(x) - recon) ** 2).sum(1)
    np.testing.assert_allclose(m.recon, err.mean(), rtol=1e-12)
    np.testing.assert_allclose(m.mse, err.mean() / D, rtol=1e-12)
    np.testing.assert_allclose(m.l0, (codes > 0).sum(1).mean())
    norms = np.linalg.norm(np.asarray(params.W_dec), axis=1)
    np.testing.assert_allclose(m.l1, (codes @ norms).mean(), rtol=1e-12)
    np.testing.assert_allclose(m.explained_variance, 1 - m.fvu)
    np.testing.assert_allclose(loss, m.loss)


def test_validation(params, x):
    with pytest.raises(ValueError, match="k"):
        topk_loss(params, x, F + 1)
    with pytest.raises(ValueError, match="k"):
        topk_loss(params, x, 0)
    with pytest.raises(ValueError, match="k"):
        topk_encode(params, x, -2)
    with pytest.raises(ValueError, match="Python int"):
        topk_encode(params, x, 2.5)
    with pytest.raises(ValueError, match="finite"):
        topk_loss(params, x.at[2, 3].set(jnp.inf), K)
    with pytest.raises(ValueError, match="d_in=8"):
        topk_loss(params, jnp.ones((4, D + 1)), K)
    with pytest.raises(ValueError, match="dead_mask"):
        topk_loss(params, x, K, dead_mask=jnp.ones((F - 1,), bool))
    with pytest.raises(ValueError, match="dead_mask"):
        topk_loss(params, x, K, dead_mask=jnp.ones((F,)))
    with pytest.raises(ValueError, match="aux_coeff"):
        topk_loss(params, x, K, aux_coeff=-1.0)
    with pytest.raises(ValueError, match="same shape"):
        topk_decode(params, jnp.ones((3, K)), jnp.zeros((3, K + 1), jnp.int32))
