"""L1 SAE kernels against NumPy references (loss, metrics, gradients), init, geometric median,
normalisation folding, synthetic data and the feature-recovery metric."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsae.data.synthetic import make_sparse_data
from jaxsae.kernels.recovery import feature_recovery
from jaxsae.kernels.sae import (
    SAEParams,
    encode,
    fold_normalisation,
    forward,
    geometric_median,
    init_params,
    sae_loss,
    sae_objective,
)
from jaxsae.kernels.topk import topk_forward

D, F, B = 5, 12, 9
NAMES = ("W_enc", "b_enc", "W_dec", "b_dec")


@pytest.fixture(scope="module")
def params():
    rng = np.random.default_rng(0)
    return SAEParams(
        W_enc=jnp.asarray(rng.standard_normal((D, F)) * 0.5),
        b_enc=jnp.asarray(rng.uniform(-0.3, 0.3, F)),
        W_dec=jnp.asarray(rng.standard_normal((F, D)) * 0.5),
        b_dec=jnp.asarray(rng.standard_normal(D) * 0.1),
    )


@pytest.fixture(scope="module")
def x():
    return jnp.asarray(np.random.default_rng(1).standard_normal((B, D)))


def numpy_loss_and_grads(p, x, lam):
    """The SAE loss, its metrics and its gradient by hand, in NumPy."""
    W_enc, b_enc, W_dec, b_dec = (np.asarray(getattr(p, n)) for n in NAMES)
    x = np.asarray(x)
    n = len(x)
    pre = x @ W_enc + b_enc
    f = np.maximum(pre, 0)
    r = f @ W_dec + b_dec - x
    norms = np.linalg.norm(W_dec, axis=1)
    recon = (r**2).sum(1).mean()
    l1 = (f @ norms).mean()
    loss = recon + lam * l1
    d_xhat = 2 * r / n
    d_f = d_xhat @ W_dec.T + lam * norms[None, :] / n
    d_pre = d_f * (pre > 0)
    grads = {
        "W_enc": x.T @ d_pre,
        "b_enc": d_pre.sum(0),
        "W_dec": f.T @ d_xhat + (lam / n) * f.sum(0)[:, None] * W_dec / norms[:, None],
        "b_dec": d_xhat.sum(0),
    }
    metrics = {
        "loss": loss,
        "recon": recon,
        "mse": recon / x.shape[1],
        "l1": l1,
        "l0": (f > 0).sum(1).mean(),
        "fvu": (r**2).sum() / ((x - x.mean(0)) ** 2).sum(),
        "dec_norm": norms.mean(),
    }
    return loss, metrics, grads


@pytest.mark.parametrize("lam", [0.0, 0.7])
def test_loss_metrics_and_grads_match_numpy(params, x, lam):
    (loss, m), g = jax.jit(jax.value_and_grad(sae_loss, has_aux=True))(params, x, lam)
    ref_loss, ref_m, ref_g = numpy_loss_and_grads(params, x, lam)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-12)
    for name, v in ref_m.items():
        np.testing.assert_allclose(getattr(m, name), v, rtol=1e-12, err_msg=name)
    np.testing.assert_allclose(m.explained_variance, 1 - ref_m["fvu"], rtol=1e-12)
    for name in NAMES:
        np.testing.assert_allclose(
            getattr(g, name), ref_g[name], rtol=1e-10, atol=1e-13, err_msg=name
        )
    # eager == jit, and the per-input objective averages to the loss
    np.testing.assert_allclose(sae_loss(params, x, lam)[0], loss, rtol=1e-12)
    codes = encode(params, x)[0]
    np.testing.assert_allclose(jnp.mean(sae_objective(params, x, codes, lam)), loss, rtol=1e-12)


def test_forward_shapes_and_single_input(params, x):
    out = forward(params, x)
    assert out.codes.shape == (B, F) and out.recon.shape == (B, D) and out.pre_acts.shape == (B, F)
    assert bool(jnp.all(out.codes >= 0))
    one = forward(params, x[0])
    np.testing.assert_allclose(one.recon, out.recon[0], rtol=1e-12)


def test_init_params_recipe():
    p = init_params(jax.random.PRNGKey(0), 7, 30, dec_norm=0.25)
    assert p.W_dec.dtype == jnp.float32
    W_dec = np.asarray(p.W_dec)
    np.testing.assert_allclose(np.linalg.norm(W_dec, axis=1), 0.25, rtol=1e-5)
    np.testing.assert_array_equal(p.W_enc, W_dec.T)
    assert not np.any(p.b_enc) and not np.any(p.b_dec)
    b = np.arange(7.0)
    np.testing.assert_array_equal(init_params(jax.random.PRNGKey(0), 7, 30, b_dec=b).b_dec, b)
    with pytest.raises(ValueError, match=r"shape \(7,\)"):
        init_params(jax.random.PRNGKey(0), 7, 30, b_dec=jnp.zeros(6))
    with pytest.raises(ValueError, match="d_in > 0"):
        init_params(jax.random.PRNGKey(0), 0, 30)


def test_geometric_median():
    rng = np.random.default_rng(2)
    # 1-D: the geometric median is the median
    v = rng.standard_normal((21, 1))
    np.testing.assert_allclose(geometric_median(v)[0], np.median(v), atol=1e-5)
    # robust to outliers, and a stationary point of Σ‖x_n − y‖ (the gradient vanishes)
    X = np.concatenate([rng.standard_normal((60, 3)), 100 + rng.standard_normal((5, 3))])
    y = np.asarray(geometric_median(X, tol=1e-12, max_steps=2000))
    u = (y - X) / np.linalg.norm(y - X, axis=1, keepdims=True)
    assert np.linalg.norm(u.sum(0)) < 1e-6
    assert np.linalg.norm(y) < 1.0 < np.linalg.norm(X.mean(0))
    with pytest.raises(ValueError, match="finite"):
        geometric_median(np.array([[1.0, np.nan]]))


@pytest.mark.parametrize("vector", [False, True])
def test_fold_normalisation(params, x, vector):
    mean = jnp.asarray([0.5, -1.0, 2.0, 0.0, 1.0])
    scale = jnp.asarray([0.5, 2.0, 3.0, 1.0, 0.7]) if vector else jnp.asarray(1.7)
    xn = (x - mean[None, :]) * (scale[None, :] if vector else scale)

    def unscale(r):
        return r / (scale[None, :] if vector else scale) + mean[None, :]

    folded = fold_normalisation(params, mean, scale)
    a, b = forward(params, xn), forward(folded, x)
    np.testing.assert_allclose(b.codes, a.codes, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(b.recon, unscale(a.recon), rtol=1e-10, atol=1e-12)
    folded = fold_normalisation(params, mean, scale, apply_b_dec_to_input=True)
    a, b = topk_forward(params, xn, 3), topk_forward(folded, x, 3)
    np.testing.assert_allclose(b.codes, a.codes, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(b.recon, unscale(a.recon), rtol=1e-10, atol=1e-12)


def test_fold_normalisation_validation(params):
    with pytest.raises(ValueError, match="scale"):
        fold_normalisation(params, 0.0, -1.0)
    with pytest.raises(ValueError, match="mean"):
        fold_normalisation(params, jnp.zeros(D + 1), 1.0)


def test_validation(params, x):
    with pytest.raises(ValueError, match="l1_coeff"):
        sae_loss(params, x, -0.1)
    with pytest.raises(ValueError, match="finite"):
        sae_loss(params, x.at[1, 2].set(jnp.nan), 0.1)
    with pytest.raises(ValueError, match=f"d_in={D}"):
        sae_loss(params, jnp.ones((3, D + 2)), 0.1)
    with pytest.raises(ValueError, match="rank"):
        forward(params, jnp.ones((2, 3, D)))


def test_make_sparse_data():
    data = make_sparse_data(jax.random.PRNGKey(0), 4000, 10, 40, avg_active=3.0)
    X, T, C = (np.asarray(a) for a in data)
    assert X.shape == (4000, 10) and T.shape == (40, 10) and C.shape == (4000, 40)
    np.testing.assert_allclose(np.linalg.norm(T, axis=1), 1.0, rtol=1e-5)
    assert np.all(C >= 0) and np.all(C <= 1)
    np.testing.assert_allclose((C > 0).sum(1).mean(), 3.0, rtol=0.05)
    np.testing.assert_allclose(X, C @ T, rtol=1e-4, atol=1e-5)
    # power-law frequencies: the first feature fires more often than the last
    _, _, C2 = make_sparse_data(jax.random.PRNGKey(1), 4000, 10, 40, active_prob=0.05, decay=1.0)
    freq = (np.asarray(C2) > 0).mean(0)
    assert freq[0] > 5 * freq[-1]
    np.testing.assert_allclose(freq.sum(), 0.05 * 40, rtol=0.1)
    Xn, Tn, Cn = (
        np.asarray(a)
        for a in make_sparse_data(
            jax.random.PRNGKey(0), 4000, 10, 40, avg_active=3.0, noise_std=0.1
        )
    )
    np.testing.assert_allclose(np.std(Xn - Cn @ Tn), 0.1, rtol=0.05)
    with pytest.raises(ValueError, match="exactly one"):
        make_sparse_data(jax.random.PRNGKey(0), 10, 4, 8)
    with pytest.raises(ValueError, match="avg_active"):
        make_sparse_data(jax.random.PRNGKey(0), 10, 4, 8, avg_active=9)
    with pytest.raises(ValueError, match="magnitude"):
        make_sparse_data(jax.random.PRNGKey(0), 10, 4, 8, avg_active=1, magnitude=(1.0, 0.5))


def test_feature_recovery():
    rng = np.random.default_rng(3)
    T = rng.standard_normal((6, 4))
    T /= np.linalg.norm(T, axis=1, keepdims=True)
    # decoder: a permuted, rescaled copy of the first four features, then two unrelated rows
    ortho = np.linalg.qr(rng.standard_normal((4, 4)))[0]
    W = np.concatenate([3.0 * T[[2, 0, 3, 1]], ortho[:2], np.zeros((1, 4))])
    r = feature_recovery(T, W, threshold=0.999)
    np.testing.assert_allclose(r.max_cosines[:4], 1.0, rtol=1e-12)
    np.testing.assert_array_equal(r.best_match[:4], [1, 3, 0, 2])
    ref = (T / 1.0) @ (W[:6] / np.linalg.norm(W[:6], axis=1, keepdims=True)).T
    np.testing.assert_allclose(r.max_cosines, np.maximum(ref.max(1), 0.0), rtol=1e-12)
    expected = np.mean(np.maximum(ref.max(1), 0.0) >= 0.999)
    np.testing.assert_allclose(r.fraction, expected)
    assert float(r.fraction) >= 4 / 6
    np.testing.assert_allclose(r.mean_max_cosine, np.mean(r.max_cosines))
    with pytest.raises(ValueError, match="same d_in"):
        feature_recovery(T, W[:, :3])
    with pytest.raises(ValueError, match="threshold"):
        feature_recovery(T, W, threshold=1.5)
