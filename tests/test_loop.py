import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxsae.kernels.sae import encode
from jaxsae.training.config import TrainConfig
from jaxsae.training.resample import resample_dead_features
from jaxsae.training.state import init_state


_resample = jax.jit(resample_dead_features)


@functools.cache
def _state(d_in=5, d_sae=8):
    """A float64 state with non-zero Adam moments, a non-zero b_dec and varied norms."""
    cfg = TrainConfig(d_in=d_in, d_sae=d_sae, batch_size=4)
    state = jax.jit(lambda: init_state(cfg, dtype=jnp.float64))()
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda x: jnp.asarray(rng.standard_normal(x.shape)), state.params)
    opt = jax.tree.map(
        lambda x: jnp.asarray(rng.standard_normal(x.shape), x.dtype)
        if jnp.issubdtype(x.dtype, jnp.floating) else x,
        state.opt_state,
    )
    counters = jnp.asarray(rng.integers(1, 1000, d_sae), jnp.int32)
    return state._replace(params=params, opt_state=opt, tokens_since_fired=counters)


def _moments(opt_state):
    adam = opt_state[1][0]
    return adam.mu, adam.nu


def test_dead_features_revived_alive_untouched():
    state = _state()
    dead = jnp.array([False, True, False, False, True, False, False, False])
    X = jnp.asarray(np.random.default_rng(1).standard_normal((32, 5)))
    new, info = _resample(state, X, jax.random.PRNGKey(0), dead)
    assert int(info.num_resampled) == 2
    p, q = state.params, new.params
    alive = np.flatnonzero(~np.asarray(dead))
    np.testing.assert_array_equal(q.W_enc[:, alive], p.W_enc[:, alive])
    np.testing.assert_array_equal(q.W_dec[alive], p.W_dec[alive])
    np.testing.assert_array_equal(q.b_enc[alive], p.b_enc[alive])
    np.testing.assert_array_equal(q.b_dec, p.b_dec)
    np.testing.assert_array_equal(new.tokens_since_fired[alive], state.tokens_since_fired[alive])
    for old_m, new_m in zip(_moments(state.opt_state), _moments(new.opt_state), strict=True):
        np.testing.assert_array_equal(new_m.W_enc[:, alive], old_m.W_enc[:, alive])
        np.testing.assert_array_equal(new_m.W_dec[alive], old_m.W_dec[alive])
        np.testing.assert_array_equal(new_m.b_dec, old_m.b_dec)
        for i in (1, 4):
            assert not np.any(new_m.W_enc[:, i]) and not np.any(new_m.W_dec[i]) and new_m.b_enc[i] == 0
    assert new.opt_state[1][0].count == state.opt_state[1][0].count
    enc_alive = np.linalg.norm(p.W_enc[:, alive], axis=0).mean()
    dec_alive = np.linalg.norm(p.W_dec[alive], axis=1).mean()
    for i in (1, 4):
        x = X[int(info.chosen[i])]
        u = (x - p.b_dec) / np.linalg.norm(x - p.b_dec)
        np.testing.assert_allclose(q.W_dec[i], dec_alive * u, rtol=1e-12)
        np.testing.assert_allclose(q.W_enc[:, i], 0.2 * enc_alive * u, rtol=1e-12)
        assert q.b_enc[i] == 0 and new.tokens_since_fired[i] == 0
        codes, _ = encode(q._replace(b_dec=jnp.zeros(5)), (x - p.b_dec)[None, :])
        assert codes[0, i] > 0  # the revived feature fires on the input it came from


def test_no_dead_features_is_identity():
    state = _state()
    new, info = _resample(state, jnp.ones((4, 5)), jax.random.PRNGKey(0), jnp.zeros(8, bool))
    assert int(info.num_resampled) == 0
    for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(state), strict=True):
        np.testing.assert_array_equal(a, b)


def test_inputs_drawn_in_proportion_to_squared_error():
    d_sae = 2000
    state = _state(d_in=2, d_sae=d_sae)
    zero = jax.tree.map(jnp.zeros_like, state.params)  # x̂ = 0: the error is ‖x‖²
    state = state._replace(params=zero._replace(W_enc=state.params.W_enc))
    X = jnp.array([[0.0, 0.0], [1.0, 0.0], [0.0, 0.0], [0.0, np.sqrt(3.0)]])
    _, info = _resample(state, X, jax.random.PRNGKey(3), jnp.ones(d_sae, bool))
    counts = np.bincount(np.asarray(info.chosen), minlength=4)
    assert counts[0] == counts[2] == 0
    np.testing.assert_allclose(counts[3] / d_sae, 0.75, atol=0.04)
