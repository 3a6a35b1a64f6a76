"""Running the train step on many devices: a ``("data", "feature")`` mesh, or ``jax.pmap``.

Two ways, the same numbers (tests compare both to one device):

* **Mesh** (the default, JAX's recommended route): ``make_mesh(data, feature)`` then
  ``make_sharded_step(cfg, mesh)``, which is ``jit(shard_map(train_step))``. The batch is split
  over ``"data"``; the dictionary over ``"feature"`` (``feature = 1``: every device holds all of
  it). The state is placed once with ``shard_state`` and the step donates its buffers.
* **pmap** (what Colab TPU users know): ``make_pmap_step(cfg)`` on a state from
  ``replicate_for_pmap``; ``unreplicate`` gives back one copy. One process only: with several
  processes (``jax.distributed``) use the mesh, which spans every process's devices
  (``distributed.Placement`` says so with an error).

Both step functions take the *global* batch ``(batch, d_in)`` (NumPy or JAX) and return
``(state, StepMetrics)`` with scalar metrics. Before any compute they check, on the host, that the
batch is 2-D with ``d_in`` finite columns and that its rows split evenly over the data axis.

Memory per device (``memory_per_device``), with ``n_d × n_f`` devices on the mesh, global
batch ``B``, ``F_s = d_sae / n_f`` features per device, ``b = B / n_d`` rows per device and ``s``
bytes per float::

    P     = 2·d_in·F_s + F_s + d_in                  parameters held by one device
    bytes ≈ s·(4·P + 3·b·F_s + 4·b·d_in) + 4·F_s

``4·P``: parameters, the two Adam moments and the gradient (the state is donated, so it is
updated in place); ``3·b·F_s``: pre-activations, codes and their cotangent; ``4·b·d_in``: the
batch, the (partial) reconstruction, its all-reduce and the error; ``4·F_s``: the int32
dead-feature counters. The dictionary terms shrink as ``1/n_f``, the activation terms as
``1/(n_d·n_f)`` and ``1/n_d``: feature sharding is what lets ``d_sae`` grow past one device.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxsae.kernels._checks import check_array
from jaxsae.kernels.sae import SAEParams
from jaxsae.training.config import TrainConfig
from jaxsae.training.optim import FEATURE_AXES, make_optimizer
from jaxsae.training.state import StepMetrics, TrainState, init_state
from jaxsae.training.step import train_step

__all__ = [
    "DATA",
    "FEATURE",
    "make_mesh",
    "state_specs",
    "shard_state",
    "shard_batch",
    "make_sharded_step",
    "make_pmap_step",
    "replicate_for_pmap",
    "unreplicate",
    "split_for_pmap",
    "memory_per_device",
    "max_d_sae",
]

DATA = "data"
FEATURE = "feature"

StepFn = Callable[[TrainState, Any], tuple[TrainState, StepMetrics]]


def make_mesh(
    data: int | None = None, feature: int = 1, *, devices: Sequence[jax.Device] | None = None
) -> Mesh:
    """A 2-D device mesh with axes ``("data", "feature")``.

    Args:
      data: devices along the batch axis; default: all devices not used by ``feature``.
      feature: devices the dictionary is split over (1: no feature sharding).
      devices: devices to use; default ``jax.devices()``.

    Returns:
      A ``Mesh`` of shape ``(data, feature)`` with ``AxisType.Auto`` axes.
    """
    devices = list(jax.devices() if devices is None else devices)
    if feature < 1 or len(devices) % feature:
        raise ValueError(
            f"make_mesh: expected feature >= 1 dividing the {len(devices)} devices, found {feature}"
        )
    if data is None:
        data = len(devices) // feature
    if data < 1 or data * feature > len(devices):
        raise ValueError(
            f"make_mesh: expected data * feature <= {len(devices)} devices, found "
            f"data={data} * feature={feature}"
        )
    return jax.make_mesh(
        (data, feature),
        (DATA, FEATURE),
        axis_types=(AxisType.Auto, AxisType.Auto),
        devices=devices[: data * feature],
    )


def _param_specs(params: SAEParams) -> SAEParams:
    def spec(leaf: Any, axis: int | None) -> P | None:
        if leaf is None:
            return None
        if axis is None:
            return P()
        return P(*[FEATURE if i == axis else None for i in range(leaf.ndim)])

    return SAEParams(*(spec(leaf, a) for leaf, a in zip(params, FEATURE_AXES, strict=True)))


def state_specs(cfg: TrainConfig) -> TrainState:
    """The ``PartitionSpec`` of every leaf of a ``TrainState`` on a ``("data", "feature")`` mesh.

    Per-feature arrays (``W_enc`` columns, ``b_enc``, ``W_dec`` rows, their Adam moments and
    ``tokens_since_fired``) are split over ``"feature"``; everything else is replicated.
    """
    shapes = jax.eval_shape(lambda: init_state(cfg))
    pspecs = _param_specs(shapes.params)
    opt_specs = optax.tree_map_params(
        make_optimizer(cfg),
        lambda _, spec: spec,
        shapes.opt_state,
        pspecs,
        transform_non_params=lambda _: P(),
        is_leaf=lambda x: isinstance(x, P),
    )
    return TrainState(
        step=P(), params=pspecs, opt_state=opt_specs, tokens_since_fired=P(FEATURE), key=P()
    )


def _shardings(cfg: TrainConfig, mesh: Mesh) -> TrainState:
    return jax.tree.map(
        lambda s: NamedSharding(mesh, s), state_specs(cfg), is_leaf=lambda x: isinstance(x, P)
    )


def _check_mesh(cfg: TrainConfig, mesh: Mesh) -> None:
    if tuple(mesh.axis_names) != (DATA, FEATURE):
        raise ValueError(
            f"mesh: expected axes ('{DATA}', '{FEATURE}') (see make_mesh), found {mesh.axis_names}"
        )
    n_f = mesh.shape[FEATURE]
    if cfg.d_sae % n_f:
        raise ValueError(
            f"mesh: expected the {n_f} feature shards to divide d_sae={cfg.d_sae} evenly"
        )


def shard_state(state: TrainState, mesh: Mesh, cfg: TrainConfig) -> TrainState:
    """Place a (host or single-device) state on ``mesh`` with the layout of ``state_specs``."""
    _check_mesh(cfg, mesh)
    return jax.device_put(state, _shardings(cfg, mesh))


def shard_batch(batch: Any, mesh: Mesh) -> jax.Array:
    """Place a global ``(batch, d_in)`` array on ``mesh``, rows split over ``"data"``."""
    return jax.device_put(batch, NamedSharding(mesh, P(DATA, None)))


def _check_batch(batch: Any, cfg: TrainConfig, n_data: int, *, finite: bool) -> None:
    """Host-side validation of a global batch; raises ``ValueError`` before any compute."""
    shape = tuple(np.shape(batch))
    if len(shape) != 2 or shape[1] != cfg.d_in:
        raise ValueError(f"batch: expected shape (batch, d_in={cfg.d_in}), found {shape}")
    if shape[0] == 0 or shape[0] % n_data:
        raise ValueError(
            f"batch: expected a number of rows divisible by the {n_data} devices of the data "
            f"axis, found {shape[0]}"
        )
    if finite:  # one pass over the batch on the host (check_array names the first bad entry)
        check_array("batch", batch, ndim=2)


def make_sharded_step(
    cfg: TrainConfig, mesh: Mesh, *, check_inputs: bool = True, donate: bool = True
) -> StepFn:
    """``jit(shard_map(train_step))`` on a ``("data", "feature")`` mesh — the default step.

    Args:
      cfg: the run's configuration.
      mesh: from ``make_mesh``; ``d_sae`` must divide evenly over its ``"feature"`` axis.
      check_inputs: check the batch's shape, divisibility and finiteness on the host before
        each step (``False`` when the loader has validated the data already: it saves a pass
        over the batch).
      donate: donate the input state's buffers (do not reuse a state after passing it in).

    Returns:
      ``step_fn(state, batch) -> (state, StepMetrics)``; ``state`` laid out by ``shard_state``
      (other layouts are moved), ``batch`` the global ``(batch, d_in)`` array (NumPy or JAX).
    """
    _check_mesh(cfg, mesh)
    specs = state_specs(cfg)
    core = jax.shard_map(
        partial(train_step, cfg=cfg, data_axis=DATA, feature_axis=FEATURE),
        mesh=mesh,
        in_specs=(specs, P(DATA, None)),
        out_specs=(specs, P()),
        # train_step averages its gradients with lax.pmean itself, as under pmap. With
        # check_vma=True, JAX would instead psum the gradients of replicated parameters
        # automatically; the tests check that the outputs are replicated and exact.
        check_vma=False,
    )
    shardings = _shardings(cfg, mesh)
    jitted = jax.jit(
        core,
        in_shardings=(shardings, NamedSharding(mesh, P(DATA, None))),
        out_shardings=(shardings, NamedSharding(mesh, P())),
        donate_argnums=(0,) if donate else (),
    )
    n_data = mesh.shape[DATA]

    def step_fn(state: TrainState, batch: Any) -> tuple[TrainState, StepMetrics]:
        _check_batch(batch, cfg, n_data, finite=check_inputs)
        return jitted(state, batch)

    step_fn.jitted = jitted  # for lowering / cost analysis
    return step_fn


def split_for_pmap(batch: Any, n_devices: int | None = None) -> Any:
    """``(batch, d_in) → (n_devices, batch / n_devices, d_in)`` (NumPy stays NumPy)."""
    n = jax.local_device_count() if n_devices is None else n_devices
    b, d = np.shape(batch)
    if b % n:
        raise ValueError(
            f"batch: expected a number of rows divisible by the {n} devices, found {b}"
        )
    return batch.reshape(n, b // n, d)


def replicate_for_pmap(
    state: TrainState, devices: Sequence[jax.Device] | None = None
) -> TrainState:
    """One copy of ``state`` per device, stacked on a new leading axis, placed for ``pmap``."""
    devices = list(jax.local_devices() if devices is None else devices)
    mesh = jax.make_mesh((len(devices),), (DATA,), (AxisType.Auto,), devices=devices)
    sharding = NamedSharding(mesh, P(DATA))
    return jax.tree.map(
        lambda x: jax.device_put(jnp.broadcast_to(x[None], (len(devices), *x.shape)), sharding),
        state,
    )


def unreplicate(tree: Any) -> Any:
    """The first device's copy of a ``pmap``-replicated pytree."""
    return jax.tree.map(lambda x: x[0], tree)


def make_pmap_step(
    cfg: TrainConfig,
    *,
    devices: Sequence[jax.Device] | None = None,
    check_inputs: bool = True,
    donate: bool = True,
) -> StepFn:
    """``jax.pmap(train_step, axis_name="data")`` over ``devices`` (default: all local ones).

    Args:
      cfg: the run's configuration.
      devices: devices to map over.
      check_inputs: see ``make_sharded_step``.
      donate: donate the input state's buffers.

    Returns:
      ``step_fn(state, batch) -> (state, StepMetrics)``; ``state`` from ``replicate_for_pmap``
      (and returned replicated), ``batch`` the global ``(batch, d_in)`` array, split here with
      ``split_for_pmap``; the metrics are scalars.
    """
    devices = list(jax.local_devices() if devices is None else devices)
    n = len(devices)
    pstep = jax.pmap(
        partial(train_step, cfg=cfg, data_axis=DATA, feature_axis=None),
        axis_name=DATA,
        devices=devices,
        donate_argnums=(0,) if donate else (),
    )

    def step_fn(state: TrainState, batch: Any) -> tuple[TrainState, StepMetrics]:
        _check_batch(batch, cfg, n, finite=check_inputs)
        state, metrics = pstep(state, split_for_pmap(batch, n))
        return state, unreplicate(metrics)

    return step_fn


def memory_per_device(
    d_in: int,
    d_sae: int,
    mesh_shape: tuple[int, int] = (1, 1),
    batch: int = 4096,
    dtype: Any = jnp.float32,
) -> int:
    """Bytes one device needs for a train step (formula in the module docstring).

    Args:
      d_in: input dimension.
      d_sae: number of features (global).
      mesh_shape: ``(data, feature)`` devices.
      batch: global batch.
      dtype: parameter and activation dtype.

    Returns:
      Estimated peak bytes per device (state, gradient and step activations).
    """
    n_d, n_f = mesh_shape
    s = np.dtype(dtype).itemsize
    f = -(-d_sae // n_f)
    b = -(-batch // n_d)
    n_params = 2 * d_in * f + f + d_in
    return int(s * (4 * n_params + 3 * b * f + 4 * b * d_in) + 4 * f)


def max_d_sae(
    d_in: int,
    mem_bytes: float,
    mesh_shape: tuple[int, int] = (1, 1),
    batch: int = 4096,
    dtype: Any = jnp.float32,
) -> int:
    """Largest ``d_sae`` (a multiple of the feature shards) with memory_per_device <= mem_bytes."""
    n_f = mesh_shape[1]
    fixed = memory_per_device(d_in, 0, mesh_shape, batch, dtype)
    per_shard_feature = memory_per_device(d_in, n_f, mesh_shape, batch, dtype) - fixed
    return max(0, int((mem_bytes - fixed) // per_shard_feature) * n_f)
