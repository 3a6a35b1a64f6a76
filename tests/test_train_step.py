"""The train step on one device: configuration, schedules, clipping, the step against an
independent optax reference, dead-feature counters, TopK."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxsae.kernels.sae import encode, sae_loss
from jaxsae.kernels.topk import topk_encode, topk_loss
from jaxsae.training.config import TrainConfig
from jaxsae.training.optim import clip_by_global_norm, global_norm, l1_schedule, lr_schedule
from jaxsae.training.state import COUNTER_MAX, init_state
from jaxsae.training.step import train_step

D, F, B = 8, 32, 16


def _cfg(**kw) -> TrainConfig:
    base = dict(d_in=D, d_sae=F, batch_size=B, total_steps=20, lr=1e-2, lr_warmup_steps=2)
    base.update(kw)
    return TrainConfig(**base)


def _batches(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, B, D))


@pytest.fixture(scope="module")
def step_l1():
    cfg = _cfg(grad_clip=0.5)
    return cfg, jax.jit(partial(train_step, cfg=cfg, data_axis=None))


# ---------------------------------------------------------------------------------------------
# Configuration


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(l1_coeff=-1.0), "l1_coeff"),
        (dict(arch="gated"), "arch"),
        (dict(d_sae=0), "d_sae"),
        (dict(lr=0.0), "lr"),
        (dict(lr_decay_frac=1.5), "lr_decay_frac"),
        (dict(arch="topk", k=F + 1), "k"),
        (dict(grad_clip=0.0), "grad_clip"),
        (dict(l1_coeff=float("nan")), "l1_coeff"),
    ],
)
def test_config_rejects_bad_values(kw, match):
    with pytest.raises(ValueError, match=match):
        _cfg(**kw)


def test_config_round_trip_and_unknown_keys():
    cfg = _cfg(arch="topk", k=4, seed=3)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert hash(cfg) == hash(TrainConfig.from_dict(cfg.to_dict()))
    with pytest.raises(ValueError, match="unknown keys"):
        TrainConfig.from_dict({**cfg.to_dict(), "momentum": 0.9})


# ---------------------------------------------------------------------------------------------
# Schedules and clipping


def test_lr_schedule_closed_form():
    cfg = TrainConfig(d_in=D, d_sae=F, lr=1.0, total_steps=100, lr_warmup_steps=10)
    lr = lr_schedule(cfg)
    # warm-up (t + 1)/10, flat, then (100 - t)/20 over the last 20 steps
    expect = {0: 0.1, 4: 0.5, 9: 1.0, 50: 1.0, 80: 1.0, 81: 0.95, 90: 0.5, 99: 0.05, 100: 0.0}
    for t, v in expect.items():
        np.testing.assert_allclose(float(lr(jnp.int32(t))), v, rtol=1e-6, atol=1e-7)


def test_l1_schedule_closed_form():
    cfg = TrainConfig(d_in=D, d_sae=F, l1_coeff=5.0, total_steps=100, l1_warmup_frac=0.05)
    lam = l1_schedule(cfg)
    for t, v in {0: 1.0, 1: 2.0, 4: 5.0, 60: 5.0}.items():
        np.testing.assert_allclose(float(lam(jnp.int32(t))), v, rtol=1e-6)
    no_warm = l1_schedule(cfg.replace(l1_warmup_frac=0.0))
    assert float(no_warm(jnp.int32(0))) == 5.0


def test_clip_and_norm_match_optax():
    params = init_state(_cfg(), dtype=jnp.float64).params
    g = jax.tree.map(lambda p: 3.0 * p + 0.5, params)
    np.testing.assert_allclose(global_norm(g), optax.tree.norm(g), rtol=1e-12)
    for c in (0.1, 1e3):  # clipping active / inactive
        ours, _ = clip_by_global_norm(c).update(g, None)
        ref, _ = optax.clip_by_global_norm(c).update(g, optax.EmptyState())
        for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-12)


# ---------------------------------------------------------------------------------------------
# The step against an independent reference


def _reference_run(cfg: TrainConfig, batches: np.ndarray):
    """sae_loss + optax's own clip_by_global_norm + adam, λ warm-up by hand."""
    state = init_state(cfg, dtype=jnp.float64)
    params = state.params
    n_lam = round(cfg.l1_warmup_frac * cfg.total_steps)
    opt = optax.chain(
        optax.clip_by_global_norm(cfg.grad_clip),
        optax.adam(lr_schedule(cfg), b1=0.9, b2=0.999, eps=1e-8),
    )
    opt_state = opt.init(params)
    counters = np.zeros(cfg.d_sae, np.int64)

    @jax.jit
    def update(params, opt_state, x, lam):
        fired = jnp.any(encode(params, x)[0] > 0, axis=0)
        grads = jax.grad(lambda p: sae_loss(p, x, lam)[0])(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, fired

    for t, x in enumerate(batches):
        lam = cfg.l1_coeff * min(1.0, (t + 1) / n_lam) if n_lam else cfg.l1_coeff
        params, opt_state, fired = update(params, opt_state, x, lam)
        counters = np.where(fired, 0, counters + x.shape[0])
    return params, counters


def test_l1_step_matches_optax_reference(step_l1):
    cfg, step = step_l1
    X = _batches(4)
    state = init_state(cfg, dtype=jnp.float64)
    for x in X:
        state, m = step(state, x)
    ref_params, ref_counters = _reference_run(cfg, X)
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(ref_params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(state.tokens_since_fired, ref_counters)
    assert int(state.step) == 4 and int(state.opt_state[1][0].count) == 4
    assert state.params.W_enc.dtype == jnp.float64
    # metrics: the loss at the parameters before the step, with this step's λ and lr
    np.testing.assert_allclose(m.lr, lr_schedule(cfg)(jnp.int32(3)), rtol=1e-6)
    np.testing.assert_allclose(m.l1_coeff, l1_schedule(cfg)(jnp.int32(3)), rtol=1e-6)


def test_l1_metrics_are_sae_loss_metrics(step_l1):
    cfg, step = step_l1
    state = init_state(cfg, dtype=jnp.float64)
    x = _batches(1, seed=1)[0]
    lam = l1_schedule(cfg)(jnp.int32(0)).astype(jnp.float64)
    loss, ref = sae_loss(state.params, x, lam)
    g = jax.grad(lambda p: sae_loss(p, x, lam)[0])(state.params)
    _, m = step(state, x)
    for name in ("loss", "mse", "l0", "fvu", "l1"):
        np.testing.assert_allclose(getattr(m, name), getattr(ref, name), rtol=1e-12)
    np.testing.assert_allclose(m.grad_norm, optax.tree.norm(g), rtol=1e-12)
    assert float(m.dead_frac) == 0.0 and float(m.aux_loss) == 0.0


# ---------------------------------------------------------------------------------------------
# Dead features


def test_dead_feature_counters(step_l1):
    cfg, _ = step_l1
    cfg = cfg.replace(dead_tokens=2 * B, lr=1e-6)  # tiny lr: which features fire stays fixed
    step = jax.jit(partial(train_step, cfg=cfg, data_axis=None))
    state = init_state(cfg, dtype=jnp.float64)
    never = np.arange(F) % 4 == 0  # a quarter of the features can never fire
    b_enc = jnp.where(jnp.asarray(never), -1e6, state.params.b_enc)
    state = state._replace(params=state.params._replace(b_enc=b_enc))
    fracs = []
    for x in _batches(3, seed=2):
        state, m = step(state, x)
        fracs.append(float(m.dead_frac))
    counters = np.asarray(state.tokens_since_fired)
    np.testing.assert_array_equal(counters[never], 3 * B)
    # dead = not fired in the last 2·B tokens: after 1 step nobody, after 2 and 3 the quarter
    # (plus any live feature that did not fire on these batches, which the counters show)
    expect = [
        np.mean(c >= 2 * B)
        for c in (np.minimum(counters, 1 * B), np.minimum(counters, 2 * B), counters)
    ]
    np.testing.assert_allclose(fracs, expect)
    assert fracs[2] >= 0.25


def test_dead_counters_saturate(step_l1):
    cfg, step = step_l1
    state = init_state(cfg, dtype=jnp.float64)
    b_enc = jnp.full((F,), -1e6)  # nothing fires
    state = state._replace(
        params=state.params._replace(b_enc=b_enc),
        tokens_since_fired=jnp.full((F,), COUNTER_MAX - 3, jnp.int32),
    )
    state, m = step(state, _batches(1)[0])
    np.testing.assert_array_equal(state.tokens_since_fired, COUNTER_MAX)
    assert float(m.dead_frac) == 1.0


# ---------------------------------------------------------------------------------------------
# TopK


def test_topk_step_matches_reference():
    cfg = _cfg(arch="topk", k=4, aux_k=8, dead_tokens=B)
    step = jax.jit(partial(train_step, cfg=cfg, data_axis=None))
    state = init_state(cfg, dtype=jnp.float64)
    opt = optax.chain(optax.clip_by_global_norm(cfg.grad_clip), optax.adam(lr_schedule(cfg)))
    params, opt_state = state.params, opt.init(state.params)
    counters = np.zeros(F, np.int64)

    @jax.jit
    def update(params, opt_state, x, dead):
        kw = dict(dead_mask=dead, aux_k=cfg.aux_k, aux_coeff=cfg.aux_coeff, sparse=False)
        (loss, ref), grads = jax.value_and_grad(
            lambda p: topk_loss(p, x, cfg.k, **kw), has_aux=True
        )(params)
        fired = jnp.any(topk_encode(params, x, cfg.k)[0] > 0, axis=0)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, ref, fired

    for x in _batches(3, seed=3):
        dead = jnp.asarray(counters >= cfg.dead_tokens)
        params, opt_state, loss, ref, fired = update(params, opt_state, x, dead)
        counters = np.where(np.asarray(fired), 0, counters + B)

        state, m = step(state, x)
        np.testing.assert_allclose(m.loss, loss, rtol=1e-10)
        np.testing.assert_allclose(m.aux_loss, ref.auxk, rtol=1e-10, atol=1e-12)
        assert float(m.l0) <= cfg.k and float(m.l1_coeff) == 0.0
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(state.tokens_since_fired, counters)
    assert counters.max() >= cfg.dead_tokens  # some features were dead: AuxK was exercised
