"""The TopK family's sparse path (custom-VJP gathers and scatter-adds: the encoder's gradient is
k-sparse per input like the decoder's) against the dense formula written out here, over several
chunks of its loops, with and without AuxK.

Sizes are chosen so that the chunked loops run more than one step with padding: 400 inputs of
``d_in = 64`` with ``k = 32`` are two chunks of the per-input layout and ``k · 400`` pairs are
two chunks of BatchTopK's flat layout.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsae.kernels.sae import SAEParams
from jaxsae.kernels.topk import TopKFamily, topk_family_loss

D, F, B, K = 64, 128, 400, 32
NAMES = ("W_enc", "b_enc", "W_dec", "b_dec")
AUX_COEFF = 1 / 32


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    W_dec = rng.standard_normal((F, D)) / np.sqrt(D)
    params = SAEParams(
        W_enc=jnp.asarray(W_dec.T + 0.05 * rng.standard_normal((D, F))),
        b_enc=jnp.asarray(0.05 * rng.standard_normal(F)),
        W_dec=jnp.asarray(W_dec),
        b_dec=jnp.asarray(0.1 * rng.standard_normal(D)),
    )
    x = jnp.asarray(rng.standard_normal((B, D)) * np.exp(0.3 * rng.standard_normal((B, 1))))
    return params, x


def _masks(params, x, batch, dead, aux_k):
    """The selected (input, feature) pairs, found in NumPy by sorting."""
    p = {n: np.asarray(getattr(params, n)) for n in NAMES}
    pre = (np.asarray(x) - p["b_dec"]) @ p["W_enc"] + p["b_enc"]
    if batch:
        relu = np.maximum(pre, 0)
        mask = relu >= np.sort(relu.ravel())[-K * B]
    else:
        mask = np.zeros(pre.shape, bool)
        np.put_along_axis(mask, np.argsort(-pre, axis=1)[:, :K], True, axis=1)
    aux = np.zeros(pre.shape, bool)
    if dead is not None:
        cand = np.flatnonzero(dead)
        order = np.argsort(-pre[:, cand], axis=1)[:, :aux_k]
        np.put_along_axis(aux, cand[order], True, axis=1)
    return jnp.asarray(mask), jnp.asarray(aux)


def _fvu(target, err):
    return jnp.sum(err**2) / jnp.sum((target - jnp.mean(target, axis=0)[None, :]) ** 2)


def dense_loss(q, x, mask, aux_mask):
    """``fvu(x, x̂) + α fvu(e, ê)`` with dense codes: the formula the sparse path differentiates."""
    pre = (x - q.b_dec[None, :]) @ q.W_enc + q.b_enc[None, :]
    recon = jnp.where(mask, jnp.maximum(pre, 0), 0) @ q.W_dec + q.b_dec[None, :]
    e = jax.lax.stop_gradient(x - recon)
    aux = _fvu(e, e - jnp.where(aux_mask, jnp.maximum(pre, 0), 0) @ q.W_dec)
    return _fvu(x, x - recon) + AUX_COEFF * jnp.where(jnp.any(aux_mask), aux, 0)


@pytest.mark.parametrize(
    "batch, n_dead, aux_k",
    [
        (False, 0, 512),  # TopK, no AuxK
        (False, 20, 8),  # TopK, AuxK picks the 8 largest of 20 dead features
        (True, 20, 512),  # BatchTopK (flat layout), every dead feature in AuxK
    ],
)
def test_sparse_gradients_equal_dense_formula(problem, batch, n_dead, aux_k):
    params, x = problem
    dead = np.zeros(F, bool)
    dead[1 : 3 * n_dead : 3] = True
    dead_mask = jnp.asarray(dead) if n_dead else None
    opts = TopKFamily(k=K, batch=batch, aux_k=min(aux_k, F))

    def sparse(q):
        return topk_family_loss(q, x, opts, dead_mask=dead_mask, aux_coeff=AUX_COEFF)[0]

    mask, aux_mask = _masks(params, x, batch, dead if n_dead else None, min(aux_k, F))
    loss, grads = jax.jit(jax.value_and_grad(sparse))(params)
    ref, ref_grads = jax.value_and_grad(dense_loss)(params, x, mask, aux_mask)
    np.testing.assert_allclose(loss, ref, rtol=1e-10)
    for n in NAMES:
        np.testing.assert_allclose(
            getattr(grads, n), getattr(ref_grads, n), rtol=1e-8, atol=1e-12, err_msg=n
        )
    # the encoder's gradient is k-sparse per input: features never selected get none
    touched = np.asarray(mask | aux_mask).any(0)
    assert not np.any(np.asarray(grads.W_enc)[:, ~touched])
