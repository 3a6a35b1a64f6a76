"""Several processes (hosts) on JAX's multi-controller runtime: set-up, data in, results out.

Every process runs the same program; ``jax.devices()`` lists the devices of all of them and
``jax.local_devices()`` its own. What changes from one process is kept here:

* ``initialize``: ``jax.distributed.initialize`` with explicit ``coordinator``,
  ``num_processes`` and ``process_id`` or JAX's cluster detection (TPU pods, SLURM, Open MPI),
  gloo collectives on CPU, and a heartbeat timeout after which the survivors of a dead process
  stop (JAX aborts them with "Terminating process because the JAX distributed service detected
  fatal errors ... another task died") instead of waiting forever.
* ``Placement``: where the train state and batches live — a ``("data", "feature")`` mesh over
  the devices of every process, or ``jax.pmap`` over one process's devices. Each process reads
  only the rows of the global batch its devices hold (``local_rows``) and the global batch is
  assembled with ``jax.make_array_from_process_local_data``; the state is created, placed and
  gathered without any process holding data it does not need until a gather is asked for.
* ``is_main`` / ``barrier``: files that exist once (metadata, logs, exports) are written by
  process 0; ``barrier`` makes the others wait for them.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, SingleDeviceSharding
from jax.sharding import PartitionSpec as P

from jaxsae.errors import JaxsaeError
from jaxsae.training.config import TrainConfig
from jaxsae.training.parallel import (
    DATA,
    StepFn,
    make_mesh,
    make_pmap_step,
    make_sharded_step,
    replicate_for_pmap,
    state_specs,
    unreplicate,
)
from jaxsae.training.state import TrainState, init_state

__all__ = [
    "DistributedSetupError",
    "initialize",
    "is_main",
    "barrier",
    "local_rows",
    "Placement",
]

#: Seconds without a heartbeat after which a process counts as dead (JAX's default).
HEARTBEAT_TIMEOUT_S = 100


class DistributedSetupError(JaxsaeError, RuntimeError):
    """The processes could not be connected, or were given inconsistent settings."""


def initialize(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    heartbeat_timeout_s: int = HEARTBEAT_TIMEOUT_S,
    init_timeout_s: int = 300,
) -> bool:
    """Join the processes of a run, before any JAX computation.

    With ``coordinator`` (``"HOST:PORT"`` of process 0), ``num_processes`` and ``process_id``
    all given, they are used. With none given, JAX's cluster detection is tried (TPU pod slices,
    SLURM, Open MPI); outside a cluster the run stays a single process. On CPU the collectives
    go through gloo.

    Args:
      coordinator: ``"HOST:PORT"`` where process 0 listens (any free port, the same for all).
      num_processes: how many processes take part.
      process_id: this process's number, ``0 .. num_processes - 1``.
      heartbeat_timeout_s: a process silent this long counts as dead and JAX stops the others
        (non-zero exit, a message naming the dead task).
      init_timeout_s: how long to wait for every process to join.

    Returns:
      ``True`` when several processes are connected, ``False`` for a single process.

    Raises:
      DistributedSetupError: only some of the three settings given, a bad value, a connection
        that timed out, or JAX already computing (initialise first).
    """
    given = [coordinator is not None, num_processes is not None, process_id is not None]
    if jax.distributed.is_initialized():
        return jax.process_count() > 1
    if any(given) and not all(given):
        raise DistributedSetupError(
            "expected --coordinator HOST:PORT, --num-processes N and --process-id I together, "
            f"found coordinator={coordinator}, num_processes={num_processes}, "
            f"process_id={process_id}"
        )
    if all(given) and (":" not in str(coordinator) or not 0 <= process_id < num_processes):
        raise DistributedSetupError(
            "expected a coordinator HOST:PORT and 0 <= process id < number of processes, "
            f"found {coordinator!r}, process id {process_id} of {num_processes}"
        )
    previous = jax.config.jax_cpu_collectives_implementation
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(
            coordinator,
            None if num_processes is None else int(num_processes),
            None if process_id is None else int(process_id),
            initialization_timeout=int(init_timeout_s),
            heartbeat_timeout_seconds=int(heartbeat_timeout_s),
        )
    except (ValueError, RuntimeError) as err:
        jax.config.update("jax_cpu_collectives_implementation", previous)
        if not all(given) and ("should be defined" in str(err) or "before" in str(err)):
            return False  # no cluster detected, or JAX already running here: one process
        raise DistributedSetupError(f"could not join the other processes: {err}") from err
    return jax.process_count() > 1


def is_main() -> bool:
    """Whether this process writes the files that exist once (process 0)."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Wait until every process reaches the barrier ``name`` (nothing to do for one process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def local_rows(sharding: jax.sharding.Sharding, num_rows: int) -> tuple[int, int]:
    """The rows ``[lo, hi)`` of a ``(num_rows, ...)`` global array this process's devices hold.

    Raises:
      ValueError: rows that are not one contiguous range (a mesh whose devices are not grouped
        by process along the data axis).
    """
    spans = set()
    for index in sharding.addressable_devices_indices_map((num_rows, 1)).values():
        rows = index[0]
        spans.add((rows.start or 0, num_rows if rows.stop is None else rows.stop))
    lo, hi = min(s for s, _ in spans), max(e for _, e in spans)
    if not _covers(spans, lo, hi):
        raise ValueError(
            f"mesh: this process's devices hold rows {sorted(spans)} of the batch, expected one "
            "contiguous range; build the mesh with parallel.make_mesh over jax.devices()"
        )
    return int(lo), int(hi)


def _covers(spans: set[tuple[int, int]], lo: int, hi: int) -> bool:
    reach = lo
    for s, e in sorted(spans):
        if s > reach:
            return False
        reach = max(reach, e)
    return reach >= hi


class Placement:
    """Where a run's state and batches live, for one process or several.

    Args:
      cfg: the run's configuration.
      mesh: a ``("data", "feature")`` mesh (default: every device of every process on
        ``"data"``); ignored with ``pmap``.
      devices: devices for the default mesh or for ``pmap`` (default: all / all local ones).
      pmap: run the step under ``jax.pmap`` (one process only).

    Raises:
      ValueError: ``pmap`` with several processes, or a batch that does not split over the
        data axis.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        *,
        mesh: Mesh | None = None,
        devices: Sequence[jax.Device] | None = None,
        pmap: bool = False,
    ):
        self.cfg, self.pmap = cfg, pmap
        if pmap:
            if jax.process_count() > 1:
                raise ValueError(
                    f"pmap: runs on one process's devices; with {jax.process_count()} processes "
                    "use the default device mesh (drop --pmap / pmap=True)"
                )
            self.devices = list(jax.local_devices() if devices is None else devices)
            self.mesh, n_data = None, len(self.devices)
        else:
            self.mesh = mesh if mesh is not None else make_mesh(devices=devices)
            n_data = self.mesh.shape[DATA]
        if cfg.batch_size % n_data:
            raise ValueError(
                f"train: expected batch_size={cfg.batch_size} divisible by the {n_data} "
                "data-parallel devices"
            )
        self.batch_sharding = None if pmap else NamedSharding(self.mesh, P(DATA, None))
        self.rows = (0, cfg.batch_size) if pmap else local_rows(self.batch_sharding, cfg.batch_size)
        self.multi = jax.process_count() > 1

    def step_fn(self) -> StepFn:
        """The jitted step for this placement (batches validated by the loader already).

        The mesh's step is built once per configuration and mesh: a second run on them (a
        resumed run in the same program) does not compile it again.
        """
        if self.pmap:
            return make_pmap_step(self.cfg, devices=self.devices, check_inputs=False)
        return _sharded_step(self.cfg, self.mesh)

    def shardings(self) -> TrainState:
        """The sharding of every state leaf (pmap: the first local device, before replication)."""
        if self.pmap:
            one = SingleDeviceSharding(self.devices[0])
            return jax.tree.map(lambda _: one, state_specs(self.cfg), is_leaf=_is_spec)
        return jax.tree.map(
            lambda s: NamedSharding(self.mesh, s), state_specs(self.cfg), is_leaf=_is_spec
        )

    def abstract_state(self, dtype: Any) -> TrainState:
        """Shapes, dtypes and shardings of the state (what a checkpoint is restored into)."""
        shapes = jax.eval_shape(lambda: init_state(self.cfg, dtype=dtype))
        return jax.tree.map(
            lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
            shapes,
            self.shardings(),
        )

    def init_state(self, b_dec: np.ndarray | None, dtype: Any) -> TrainState:
        """A fresh state, created where it lives (each device computes only its shard)."""
        b = None if b_dec is None else jnp.asarray(b_dec)
        return self.distribute(_initialiser(self.cfg, jnp.dtype(dtype), self.shardings())(b))

    def distribute(self, state: TrainState) -> TrainState:
        """A state laid out by ``shardings()`` made ready for the step (pmap: replicated)."""
        return replicate_for_pmap(state, self.devices) if self.pmap else state

    def place(self, host: TrainState) -> TrainState:
        """A host (NumPy) state, the same on every process, placed for the step."""
        return self.distribute(put_global(host, self.shardings()))

    def gather(self, tree: Any) -> Any:
        """A pytree of the step's arrays as NumPy, whole, on every process."""
        if self.pmap:
            tree = unreplicate(tree)
        if self.multi:
            return multihost_utils.process_allgather(tree, tiled=True)
        return jax.device_get(tree)

    def batch(self, loader: Any, step: int) -> Any:
        """Global batch ``step`` of ``loader``, of which this process reads only its rows.

        One process passes its NumPy batch to the step as it is; several assemble a global
        ``jax.Array`` with ``jax.make_array_from_process_local_data``.
        """
        lo, hi = self.rows
        if (lo, hi) == (0, self.cfg.batch_size):
            local = loader.batch_at(step)
        else:
            local = loader.batch_at(step, lo, hi)
        if not self.multi:
            return local
        shape = (self.cfg.batch_size, local.shape[1])
        return jax.make_array_from_process_local_data(self.batch_sharding, local, shape)


@functools.lru_cache(maxsize=8)
def _sharded_step(cfg: TrainConfig, mesh: Mesh) -> StepFn:
    return make_sharded_step(cfg, mesh, check_inputs=False)


@functools.lru_cache(maxsize=8)
def _initialiser(cfg: TrainConfig, dtype: Any, shardings: TrainState) -> Any:
    """``b_dec -> init_state(cfg, b_dec=b_dec)``, jitted to create each shard where it lives."""
    return jax.jit(lambda b_dec: init_state(cfg, b_dec=b_dec, dtype=dtype), out_shardings=shardings)


def _is_spec(x: Any) -> bool:
    return isinstance(x, P)


def put_global(host: Any, shardings: Any) -> Any:
    """Host arrays (the same on every process) placed with ``shardings``, shard by shard."""

    def put(x: Any, sharding: Any) -> jax.Array:
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])

    return jax.tree.map(put, host, shardings)
