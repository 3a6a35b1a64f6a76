"""``row_top_k``: the TopK family's selection (NumPy's introselect through a host callback on CPU,
``lax.top_k`` elsewhere) against ``lax.top_k``: the same entries, the same gradients, under
``jit``, ``vmap`` and feature sharding on fake devices."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsae.kernels import row_select
from jaxsae.kernels.row_select import row_top_k
from jaxsae.training import parallel as par
from jaxsae.training.config import TrainConfig
from jaxsae.training.state import init_state
from jaxsae.training.step import train_step


@pytest.fixture
def host_everywhere(monkeypatch):
    """Select with NumPy for every block, however small (compiled functions are cleared)."""
    monkeypatch.setattr(row_select, "HOST_SELECT_MIN", 1)
    jax.clear_caches()
    yield
    jax.clear_caches()


def _same_sets(got_idx, ref_idx):
    np.testing.assert_array_equal(np.sort(got_idx, axis=-1), np.sort(ref_idx, axis=-1))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("shape, m", [((300, 257), 40), ((2, 70, 600), 64), ((5, 9), 8)])
def test_same_entries_as_lax_top_k(dtype, shape, m):
    # distinct values (a permutation), so that the set of the m largest is unique
    x = (jax.random.permutation(jax.random.key(0), np.prod(shape)).reshape(shape) / 4).astype(dtype)
    v, i = jax.jit(row_top_k, static_argnums=1)(x, m)
    assert i.dtype == jnp.int32 and v.shape == i.shape == (*shape[:-1], m)
    _same_sets(i, jax.lax.top_k(x, m)[1])
    np.testing.assert_array_equal(v, jnp.take_along_axis(x, i, axis=-1))


def test_ordered_equals_lax_top_k_exactly(host_everywhere):
    x = jax.random.normal(jax.random.key(3), (200, 300))
    # a tie inside the selection (entries 5 and 7 are each row's largest): equal values come by
    # increasing index, as in lax.top_k (a tie at the m-th value may select either entry)
    x = x.at[:, 7].set(jnp.max(x, axis=1) + 1).at[:, 5].set(jnp.max(x, axis=1) + 1)
    for m in (2, 16, 64):
        got = jax.jit(partial(row_top_k, m=m, ordered=True))(x)
        want = jax.lax.top_k(x, m)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])


def test_split_puts_the_largest_first(host_everywhere):
    # distinct values: the first `split` indices are the `split` largest, the rest the others
    x = (jax.random.permutation(jax.random.key(4), 300 * 257).reshape(300, 257) / 4).astype(
        jnp.float32
    )
    _, i = jax.jit(partial(row_top_k, m=40, split=9))(x)
    ref = jax.lax.top_k(x, 40)[1]
    _same_sets(i[:, :9], ref[:, :9])
    _same_sets(i[:, 9:], ref[:, 9:])


def test_bfloat16_selects_the_same_values():
    x = jax.random.normal(jax.random.key(2), (300, 257)).astype(jnp.bfloat16)  # with ties
    v, _ = jax.jit(row_top_k, static_argnums=1)(x, 40)
    assert v.dtype == jnp.bfloat16
    np.testing.assert_array_equal(
        np.sort(np.asarray(v, np.float32), -1),
        np.sort(np.asarray(jax.lax.top_k(x, 40)[0], np.float32), -1),
    )


def test_the_cpu_selects_with_numpy_above_the_size_threshold():
    big = jax.ShapeDtypeStruct((64, row_select.HOST_SELECT_MIN // 64 + 1), jnp.float32)
    small = jax.ShapeDtypeStruct((4, 16), jnp.float32)
    f = jax.jit(row_top_k, static_argnums=1)
    assert "python_cpu_callback" in f.lower(big, 8).as_text()
    assert "python_cpu_callback" not in f.lower(small, 8).as_text()


def test_vmap_and_gradient(host_everywhere):
    x = jax.random.normal(jax.random.key(1), (3, 40, 50), jnp.float64)
    ref = jax.lax.top_k(x, 7)[1]
    for axis in (0, 1):
        i = jax.vmap(lambda r: row_top_k(r, 7)[1], in_axes=axis, out_axes=axis)(x)
        _same_sets(i, ref)

    def loss(select, a):
        v, _ = select(a, 7)
        return jnp.sum(jnp.sin(v) * v)

    got = jax.grad(partial(loss, row_top_k))(x)
    want = jax.grad(partial(loss, jax.lax.top_k))(x)
    np.testing.assert_allclose(got, want, rtol=1e-12)


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_feature_sharding_with_host_selection_equals_one_device(host_everywhere, arch):
    cfg = TrainConfig(
        d_in=6,
        d_sae=48,
        arch=arch,
        k=3,
        aux_k=12,
        batch_size=8,
        total_steps=4,
        lr=1e-2,
        lr_warmup_steps=1,
        dead_tokens=8,
    )
    xs = np.random.default_rng(5).standard_normal((3, 8, 6))
    one = jax.jit(partial(train_step, cfg=cfg, data_axis=None))
    mesh = par.make_mesh(1, 4)
    sharded = par.make_sharded_step(cfg, mesh)
    ref = init_state(cfg, dtype=jnp.float64)
    got = par.shard_state(init_state(cfg, dtype=jnp.float64), mesh, cfg)
    for xb in xs:
        ref, ref_m = one(ref, xb)
        got, got_m = sharded(got, xb)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(got_m.loss, ref_m.loss, rtol=1e-9)
    assert float(ref_m.dead_frac) > 0


@pytest.mark.parametrize("platforms", [("cuda",), ("tpu",), ("cpu", "cuda")])
def test_other_platforms_lower_to_lax_top_k(platforms):
    """GPU and TPU (and a module exported for several platforms) select with ``lax.top_k``."""
    spec = jax.ShapeDtypeStruct((64, row_select.HOST_SELECT_MIN // 64 + 1), jnp.float32)
    f = jax.jit(lambda v: row_top_k(v, 8)[1])
    text = jax.export.export(f, platforms=platforms)(spec).mlir_module()
    assert "python_cpu_callback" not in text
    assert "top_k" in text.lower() or "topk" in text.lower()
