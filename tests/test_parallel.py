"""Data- and feature-parallel train steps on 1, 2 and 4 fake CPU devices give one device's
numbers; bad input is refused before compute; the memory formula matches XLA's."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxsae.kernels.topk import topk_encode, topk_loss
from jaxsae.training import parallel as par
from jaxsae.training.config import TrainConfig
from jaxsae.training.optim import lr_schedule
from jaxsae.training.state import init_state
from jaxsae.training.step import train_step

D, F, B, STEPS = 8, 32, 16, 3
# a small lr_warmup and clip that binds, so that the schedules and the global norm matter
CFG = TrainConfig(
    d_in=D,
    d_sae=F,
    batch_size=B,
    total_steps=10,
    lr=1e-2,
    lr_warmup_steps=2,
    grad_clip=0.5,
    dead_tokens=2 * B,
    l1_coeff=1.0,
)
X = np.random.default_rng(0).standard_normal((STEPS, B, D))
METRICS = ("loss", "mse", "l0", "l1", "grad_norm", "dead_frac", "lr", "l1_coeff")


def _state(cfg: TrainConfig = CFG):
    return init_state(cfg, dtype=jnp.float64)


def _assert_trees_close(a, b, rtol=1e-10, atol=1e-12):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    for u, v in zip(la, lb, strict=True):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=rtol, atol=atol)


@pytest.fixture(scope="module")
def one_device():
    """The reference: the step on one device, unmapped, on the whole batch."""
    step = jax.jit(partial(train_step, cfg=CFG, data_axis=None))
    state = _state()
    for x in X:
        state, m = step(state, x)
    return state, m


def _run(step, state):
    for x in X:
        state, m = step(state, x)
    return state, m


# ---------------------------------------------------------------------------------------------
# Mesh (shard_map) and pmap == one device


@pytest.mark.parametrize("shape", [(1, 1), (2, 1), (4, 1), (2, 2), (1, 4)])
def test_sharded_step_matches_one_device(one_device, shape):
    ref_state, ref_m = one_device
    mesh = par.make_mesh(*shape)
    state = par.shard_state(_state(), mesh, CFG)
    n_f = shape[1]
    w_enc_shards = {s.data.shape for s in state.params.W_enc.addressable_shards}
    assert w_enc_shards == {(D, F // n_f)}
    state, m = _run(par.make_sharded_step(CFG, mesh), state)
    _assert_trees_close(state.params, ref_state.params)
    _assert_trees_close(state.opt_state, ref_state.opt_state)
    np.testing.assert_array_equal(state.tokens_since_fired, ref_state.tokens_since_fired)
    assert int(state.step) == STEPS
    for name in METRICS:
        np.testing.assert_allclose(getattr(m, name), getattr(ref_m, name), rtol=1e-10)
    if shape[0] == 1:  # fvu is per batch shard
        np.testing.assert_allclose(m.fvu, ref_m.fvu, rtol=1e-10)
    # the layout is kept across steps (the state is donated and updated in place)
    assert state.params.W_dec.sharding.spec == par.state_specs(CFG).params.W_dec


@pytest.mark.parametrize("n", [2, 4])
def test_pmap_step_matches_one_device(one_device, n):
    ref_state, ref_m = one_device
    devices = jax.devices()[:n]
    state = par.replicate_for_pmap(_state(), devices)
    state, m = _run(par.make_pmap_step(CFG, devices=devices), state)
    assert state.params.W_enc.shape == (n, D, F)
    one = par.unreplicate(state)
    _assert_trees_close(one.params, ref_state.params)
    np.testing.assert_array_equal(one.tokens_since_fired, ref_state.tokens_since_fired)
    # every replica is the same
    _assert_trees_close(jax.tree.map(lambda a: a[-1], state.params), one.params, rtol=0, atol=0)
    for name in METRICS:
        np.testing.assert_allclose(getattr(m, name), getattr(ref_m, name), rtol=1e-10)


def test_topk_data_parallel_is_the_mean_of_shard_losses():
    """TopK's loss is normalised per batch shard: n devices average n shard losses. Mesh and
    pmap steps equal that, computed on one device with the dense reference TopK."""
    cfg = CFG.replace(arch="topk", k=4, aux_k=8, dead_tokens=B)
    n = 2
    opt = optax.chain(optax.clip_by_global_norm(cfg.grad_clip), optax.adam(lr_schedule(cfg)))

    @jax.jit
    def ref_update(params, opt_state, x, dead):
        def loss(p, xs):
            kw = dict(dead_mask=dead, aux_k=cfg.aux_k, aux_coeff=cfg.aux_coeff, sparse=False)
            return topk_loss(p, xs, cfg.k, **kw)[0]

        shards = x.reshape(n, B // n, D)
        grads = jax.tree.map(
            lambda g: jnp.mean(g, axis=0), jax.vmap(jax.grad(loss), (None, 0))(params, shards)
        )
        fired = jnp.any(topk_encode(params, x, cfg.k)[0] > 0, axis=0)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, fired

    params = _state(cfg).params
    opt_state = opt.init(params)
    counters = np.zeros(F, np.int64)
    for x in X:
        params, opt_state, fired = ref_update(params, opt_state, x, jnp.asarray(counters >= B))
        counters = np.where(np.asarray(fired), 0, counters + B)
    assert counters.max() >= B  # AuxK was active

    mesh = par.make_mesh(n, 1)
    sharded, _ = _run(par.make_sharded_step(cfg, mesh), par.shard_state(_state(cfg), mesh, cfg))
    devices = jax.devices()[:n]
    pmapped, _ = _run(
        par.make_pmap_step(cfg, devices=devices), par.replicate_for_pmap(_state(cfg), devices)
    )
    pmapped = par.unreplicate(pmapped)
    for got in (sharded, pmapped):
        _assert_trees_close(got.params, params, rtol=1e-8, atol=1e-10)
        np.testing.assert_array_equal(got.tokens_since_fired, counters)


# ---------------------------------------------------------------------------------------------
# Errors before compute


@pytest.fixture(scope="module")
def steps():
    mesh = par.make_mesh(4, 1)
    return {"mesh": par.make_sharded_step(CFG, mesh), "pmap": par.make_pmap_step(CFG)}


@pytest.mark.parametrize("kind", ["mesh", "pmap"])
@pytest.mark.parametrize(
    "batch, match",
    [
        (np.full((B, D), np.nan), "finite"),
        (np.where(np.eye(B, D) > 0, np.inf, 0.0), "finite"),
        (np.zeros((B, D + 1)), "d_in=8"),
        (np.zeros((B * D,)), "shape"),
        (np.zeros((B + 2, D)), "divisible by the 4 devices"),
        (np.zeros((B, D), np.int32), "floating"),
    ],
)
def test_bad_batch_is_refused(steps, kind, batch, match):
    with pytest.raises(ValueError, match=match):
        steps[kind](None, batch)  # the check runs before the state is even looked at


def test_bad_mesh_and_config_are_refused():
    with pytest.raises(ValueError, match="divide d_sae"):
        par.make_sharded_step(CFG.replace(d_sae=30), par.make_mesh(1, 4))
    with pytest.raises(ValueError, match="feature >= 1 dividing"):
        par.make_mesh(feature=3)
    with pytest.raises(ValueError, match="data \\* feature"):
        par.make_mesh(data=4, feature=2)
    with pytest.raises(ValueError, match="l1_coeff"):
        CFG.replace(l1_coeff=-0.1)


# ---------------------------------------------------------------------------------------------
# Memory


@pytest.mark.parametrize("shape", [(1, 1), (2, 2)])
def test_memory_formula_matches_xla(shape):
    cfg = TrainConfig(d_in=64, d_sae=1024, batch_size=256)
    mesh = par.make_mesh(*shape)
    state = jax.eval_shape(lambda: init_state(cfg))
    batch = jax.ShapeDtypeStruct((cfg.batch_size, cfg.d_in), jnp.float32)
    ma = par.make_sharded_step(cfg, mesh).jitted.lower(state, batch).compile().memory_analysis()
    xla = (
        ma.argument_size_in_bytes
        + ma.output_size_in_bytes
        + ma.temp_size_in_bytes
        - ma.alias_size_in_bytes
    )
    formula = par.memory_per_device(cfg.d_in, cfg.d_sae, shape, cfg.batch_size, jnp.float32)
    assert 0.7 < xla / formula < 1.3, (xla, formula)


def test_max_d_sae_inverts_the_formula():
    for d_in, mem, shape in [(1280, 16e9, (1, 1)), (5120, 80e9, (2, 4))]:
        f = par.max_d_sae(d_in, mem, shape)
        assert f % shape[1] == 0
        assert par.memory_per_device(d_in, f, shape) <= mem
        assert par.memory_per_device(d_in, f + shape[1], shape) > mem
    # the dictionary part shrinks with the feature axis
    one = par.memory_per_device(1280, 2**16, (1, 1), batch=1)
    four = par.memory_per_device(1280, 2**16, (1, 4), batch=1)
    assert 3.9 < one / four < 4.0
