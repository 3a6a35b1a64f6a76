"""Checkpoints: the whole train state and what is needed to resume exactly.

A checkpoint is the directory ``ckpt_{step:09d}/`` written by Orbax, the JAX ecosystem's
checkpointer:

* ``state/``: every leaf of the train-state pytree (parameters, optimiser moments and counts,
  step, dead-feature counters, PRNG key). Each process writes the shards its devices hold, so a
  dictionary split over many hosts is never gathered; a checkpoint restores onto another mesh or
  another number of processes (``Checkpointer.restore`` reads each device's shard).
* ``info/``: a JSON document with the format and version, the step, the run's configuration,
  the data stream's position (``Loader.state_dict()``), the input normalisation, every leaf's
  shape and dtype, and free-form ``extra`` fields;
* ``jaxsae.sha256.json``: the SHA-256 of every file above, written once the checkpoint is
  complete.

``Checkpointer.save`` returns as soon as the arrays are copied off the devices: the files are
written in the background, to a temporary directory renamed into place when every process has
finished (a checkpoint on disk is always complete), and the ``keep`` most recent are kept.
``Checkpointer.restore`` takes the newest checkpoint that is intact: one whose files differ
from their checksums or cannot be read is reported with a warning naming it, moved aside to
``damaged_ckpt_{step:09d}`` (never deleted), and the next older one is tried.

Single-file checkpoints of earlier versions (``ckpt_{step:09d}.npz``: the leaves under their
tree paths plus an ``__info__`` JSON array; ``save_checkpoint`` still writes them) are read the
same way, and a run resumed from one continues with Orbax checkpoints. ``load_checkpoint`` reads
either format into NumPy, checking the stored tree against a template state (same paths, shapes,
dtypes) and the stored configuration against the run's, naming every mismatch.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import threading
import warnings
import zipfile
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

from jaxsae.data.loader import Normalisation
from jaxsae.data.store import atomic_write

__all__ = [
    "Checkpoint",
    "Checkpointer",
    "checkpoint_step",
    "latest_step",
    "CheckpointDamagedError",
    "write_checksums",
    "verify_checksums",
    "save_checkpoint",
    "load_checkpoint",
    "latest_checkpoint",
    "list_checkpoints",
    "CheckpointMismatchError",
]

FORMAT = "jaxsae-checkpoint"
VERSION = 1
_NAME_RE = re.compile(r"^ckpt_(\d{9})(\.npz)?$")
CHECKSUMS = "jaxsae.sha256.json"
DAMAGED = "damaged_"


class CheckpointMismatchError(ValueError):
    """A checkpoint that does not fit the run (another shape, dtype or configuration)."""


class CheckpointDamagedError(ValueError):
    """A checkpoint that cannot be read back, or whose files differ from their checksums."""


class Checkpoint(NamedTuple):
    """What ``load_checkpoint`` returns.

    Attributes:
      state: the train-state pytree, with the template's structure and NumPy leaves.
      step: the step the checkpoint was taken after.
      config: the configuration dict saved with it.
      data_state: the data stream's ``state_dict`` (position, seed, ...), or ``{}``.
      normalisation: the input normalisation, or ``None``.
      extra: free-form fields saved with it.
      path: the file.
    """

    state: Any
    step: int
    config: dict
    data_state: dict
    normalisation: Normalisation | None
    extra: dict
    path: Path


def _leaf_names(tree: Any) -> tuple[list[str], list[Any], Any]:
    flat, treedef = jax.tree_util.tree_flatten_with_path(tree)
    names = [jax.tree_util.keystr(path, simple=True, separator=".") or "root" for path, _ in flat]
    return names, [leaf for _, leaf in flat], treedef


def _is_key(leaf: Any) -> bool:
    return isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def _to_numpy(leaf: Any) -> np.ndarray:
    """A leaf on the host (typed PRNG keys as their raw ``uint32`` data)."""
    if _is_key(leaf):
        leaf = jax.random.key_data(leaf)
    return np.asarray(jax.device_get(leaf))


def _spec(leaf: Any) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype a leaf is stored with, without moving its data."""
    if _is_key(leaf):
        leaf = jax.random.key_data(leaf)
    if not (hasattr(leaf, "shape") and hasattr(leaf, "dtype")):
        leaf = np.asarray(leaf)
    return tuple(leaf.shape), np.dtype(leaf.dtype)


def checkpoint_step(path: str | os.PathLike) -> int:
    """The step a checkpoint (``ckpt_{step:09d}`` or ``ckpt_{step:09d}.npz``) was taken after."""
    m = _NAME_RE.match(Path(path).name)
    if m is None:
        raise ValueError(f"checkpoint {path}: expected a name ckpt_<9 digits>[.npz]")
    return int(m.group(1))


def list_checkpoints(ckpt_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints in ``ckpt_dir`` (both formats), oldest step first."""
    root = Path(ckpt_dir)
    if not root.is_dir():
        return []
    found = [
        (int(m.group(1)), p)
        for p in root.iterdir()
        if (m := _NAME_RE.match(p.name)) and (p.is_dir() == (m.group(2) is None))
    ]
    return [p for _, p in sorted(found)]


def latest_checkpoint(ckpt_dir: str | os.PathLike) -> Path | None:
    """The checkpoint with the highest step in ``ckpt_dir``, or ``None``."""
    found = list_checkpoints(ckpt_dir)
    return found[-1] if found else None


def latest_step(ckpt_dir: str | os.PathLike) -> int | None:
    """The step of the latest checkpoint in ``ckpt_dir``, or ``None`` if there is none."""
    found = latest_checkpoint(ckpt_dir)
    return None if found is None else checkpoint_step(found)


def save_checkpoint(
    ckpt_dir: str | os.PathLike,
    state: Any,
    *,
    step: int,
    config: dict,
    data_state: dict | None = None,
    normalisation: Normalisation | None = None,
    extra: dict | None = None,
    keep: int = 2,
) -> Path:
    """Write a checkpoint atomically and delete all but the ``keep`` most recent.

    Args:
      ckpt_dir: directory of the checkpoints (created if missing).
      state: the train-state pytree (host or device arrays; a sharded array is gathered). For a
        ``pmap`` state pass one replica.
      step: the step the state is at (names the file).
      config: the run's configuration as a JSON-serialisable dict (``TrainConfig.to_dict()``).
      data_state: the data stream's ``state_dict()`` at this step.
      normalisation: the input normalisation of the run.
      extra: other JSON-serialisable fields.
      keep: how many checkpoints to keep (``>= 1``).

    Returns:
      The path of the new checkpoint.
    """
    if keep < 1:
        raise ValueError(f"save_checkpoint: expected keep >= 1, found {keep}")
    names, leaves, _ = _leaf_names(state)
    arrays = {f"state/{n}": _to_numpy(leaf) for n, leaf in zip(names, leaves, strict=True)}
    info = {
        "format": FORMAT,
        "version": VERSION,
        "step": int(step),
        "config": config,
        "data_state": data_state or {},
        "norm_scale": None if normalisation is None else float(normalisation.scale),
        "leaves": {
            n: [list(a.shape), a.dtype.name] for n, a in zip(names, arrays.values(), strict=True)
        },
        "extra": extra or {},
    }
    if normalisation is not None:
        arrays["__norm_mean__"] = np.asarray(normalisation.mean, np.float64)
    arrays["__info__"] = np.frombuffer(json.dumps(info).encode("utf-8"), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    root = Path(ckpt_dir)
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"ckpt_{int(step):09d}.npz"
    atomic_write(path, lambda f: f.write(buf.getbuffer()))
    for old in list_checkpoints(root)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def _read(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    try:
        with open(path, "rb") as f, np.load(f, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        info = json.loads(arrays.pop("__info__").tobytes().decode("utf-8"))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        raise CheckpointDamagedError(f"checkpoint {path}: unreadable ({err})") from err
    _check_format(path, info)
    return info, arrays


def _check_format(path: Path, info: dict) -> None:
    if info.get("format") != FORMAT or info.get("version") != VERSION:
        raise ValueError(
            f"checkpoint {path}: expected format {FORMAT!r} version {VERSION}, found "
            f"{info.get('format')!r} version {info.get('version')!r}"
        )


def _config_diff(saved: dict, current: dict) -> list[str]:
    keys = sorted(set(saved) | set(current))
    return [
        f"{k}: checkpoint {saved.get(k, '<absent>')!r}, now {current.get(k, '<absent>')!r}"
        for k in keys
        if saved.get(k, "<absent>") != current.get(k, "<absent>")
    ]


def _fit_problems(info: dict, like: Any, config: dict | None) -> list[str]:
    """Every way the checkpoint described by ``info`` does not fit ``like`` and ``config``."""
    problems = []
    if config is not None:
        problems += [f"config {d}" for d in _config_diff(info["config"], config)]
    names, leaves, _ = _leaf_names(like)
    saved = {n: (tuple(shape), np.dtype(dt)) for n, (shape, dt) in info["leaves"].items()}
    missing = [n for n in names if n not in saved]
    unexpected = sorted(set(saved) - set(names))
    if missing:
        problems.append(f"missing {missing}")
    if unexpected:
        problems.append(f"unexpected {unexpected}")
    for n, leaf in zip(names, leaves, strict=True):
        if n not in saved:
            continue
        (shape, dtype), (want_shape, want_dtype) = saved[n], _spec(leaf)
        if shape != want_shape:
            problems.append(f"{n} has shape {shape}, expected {want_shape}")
        elif dtype != want_dtype:
            problems.append(f"{n} has dtype {dtype}, expected {want_dtype}")
    return problems


def _check_fits(path: Path, info: dict, like: Any, config: dict | None) -> None:
    problems = _fit_problems(info, like, config)
    if problems:
        raise CheckpointMismatchError(
            f"checkpoint {path} does not fit this run: "
            + "; ".join(problems)
            + ". Use the same settings to resume, or start afresh (--no-resume / another --out)."
        )


def _normalisation(info: dict, mean: Any) -> Normalisation | None:
    if info.get("norm_scale") is None:
        return None
    return Normalisation(mean=np.asarray(mean, np.float64), scale=float(info["norm_scale"]))


def _checkpoint(path: Path, info: dict, state: Any, norm_mean: Any) -> Checkpoint:
    return Checkpoint(
        state=state,
        step=int(info["step"]),
        config=info["config"],
        data_state=info.get("data_state", {}),
        normalisation=_normalisation(info, norm_mean),
        extra=info.get("extra", {}),
        path=path,
    )


def _target(leaf: Any) -> jax.sharding.Sharding | None:
    """The sharding a template leaf asks to be restored onto (``None``: NumPy)."""
    return leaf.sharding if isinstance(leaf, jax.ShapeDtypeStruct) else None


def _load_npz(path: Path, like: Any, config: dict | None) -> Checkpoint:
    info, arrays = _read(path)
    _check_fits(path, info, like, config)
    names, leaves, treedef = _leaf_names(like)
    out = []
    for n, leaf in zip(names, leaves, strict=True):
        got = arrays[f"state/{n}"]
        if _is_key(leaf):
            got = jax.random.wrap_key_data(got, impl=jax.random.key_impl(leaf))
        out.append(got)
    state = jax.tree_util.tree_unflatten(treedef, out)
    return _checkpoint(path, info, state, arrays.get("__norm_mean__"))


def _orbax_args(state: Any = None, info: dict | None = None, *, restore: bool = False) -> Any:
    import orbax.checkpoint as ocp

    if restore:
        items = {"info": ocp.args.JsonRestore()}
        if state is not None:
            items["state"] = ocp.args.StandardRestore(state)
        return ocp.args.Composite(**items)
    return ocp.args.Composite(state=ocp.args.StandardSave(state), info=ocp.args.JsonSave(info))


def _orbax_reader() -> Any:
    import orbax.checkpoint as ocp

    return ocp.Checkpointer(ocp.CompositeCheckpointHandler())


def _load_orbax(path: Path, like: Any, config: dict | None) -> Checkpoint:
    """Read an Orbax checkpoint onto the shardings of ``like``'s leaves (default: NumPy)."""
    verify_checksums(path)
    reader = _orbax_reader()
    try:
        info = reader.restore(path, args=_orbax_args(restore=True)).info
    except Exception as err:  # noqa: BLE001 - any failure to read is damage, reported by name
        raise CheckpointDamagedError(f"checkpoint {path}: unreadable ({err})") from err
    _check_format(path, info)
    _check_fits(path, info, like, config)
    host = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    placed = all(_target(x) is not None for x in jax.tree.leaves(like))
    target = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(*_spec(x), sharding=_target(x) or host), like
    )
    try:
        state = reader.restore(path, args=_orbax_args(target, restore=True)).state
    except Exception as err:  # noqa: BLE001
        raise CheckpointDamagedError(f"checkpoint {path}: unreadable ({err})") from err
    finally:
        reader.close()
    if not placed:
        state = jax.tree.map(np.asarray, state)
    return _checkpoint(path, info, state, info.get("norm_mean"))


def load_checkpoint(
    path: str | os.PathLike, like: Any, *, config: dict | None = None
) -> Checkpoint:
    """Read a checkpoint into the structure of ``like``, checking it fits.

    Args:
      path: a checkpoint (``ckpt_*`` directory or ``ckpt_*.npz`` file), or a directory of
        checkpoints (its latest one is read).
      like: a template train state of the run (e.g. ``jax.eval_shape(init_state)``): the tree
        structure, shapes and dtypes the checkpoint must have. Leaves with a ``sharding``
        (``jax.ShapeDtypeStruct(..., sharding=...)``) are restored onto it, shard by shard.
      config: the run's configuration dict; if given, it must equal the saved one.

    Returns:
      A ``Checkpoint`` whose ``state`` has ``like``'s structure: NumPy leaves, or ``jax.Array``
      leaves laid out as ``like``'s shardings.

    Raises:
      CheckpointMismatchError: naming each configuration field, leaf, shape or dtype that
        differs.
      CheckpointDamagedError: a checkpoint that cannot be read or fails its checksums.
      ValueError: no checkpoint, or one of another format.
    """
    path = Path(path)
    if path.is_dir() and _NAME_RE.match(path.name) is None:
        found = latest_checkpoint(path)
        if found is None:
            raise ValueError(f"checkpoint: no ckpt_* checkpoint in {path}")
        path = found
    if path.suffix == ".npz":
        ck = _load_npz(path, like, config)
        if all(_target(x) is not None for x in jax.tree.leaves(like)):
            from jaxsae.training.distributed import put_global

            ck = ck._replace(state=put_global(ck.state, jax.tree.map(_target, like)))
        return ck
    return _load_orbax(path, like, config)


# -- integrity ------------------------------------------------------------------------------


def _file_digests(step_dir: Path) -> dict[str, str]:
    out = {}
    for f in sorted(step_dir.rglob("*")):
        if f.is_file() and f.name != CHECKSUMS:
            h = hashlib.sha256()
            with open(f, "rb") as fh:
                for chunk in iter(lambda fh=fh: fh.read(1 << 20), b""):
                    h.update(chunk)
            out[f.relative_to(step_dir).as_posix()] = h.hexdigest()
    return out


def write_checksums(step_dir: str | os.PathLike) -> None:
    """Write ``jaxsae.sha256.json``: the SHA-256 of every file of a complete checkpoint."""
    step_dir = Path(step_dir)
    text = json.dumps({"sha256": _file_digests(step_dir)}, indent=1)
    atomic_write(step_dir / CHECKSUMS, lambda f: f.write(text.encode("utf-8")))


def _checksum_if_kept(step_dir: Path) -> None:
    """``write_checksums``, unless the checkpoint was deleted meanwhile (``keep`` reached)."""
    with contextlib.suppress(FileNotFoundError):
        write_checksums(step_dir)


def verify_checksums(step_dir: str | os.PathLike) -> None:
    """Check a checkpoint's files against ``jaxsae.sha256.json`` (when it has been written).

    A checkpoint whose process stopped after writing it but before its checksums is checked by
    reading it back only.

    Raises:
      CheckpointDamagedError: naming the first file that is missing, added or changed.
    """
    step_dir = Path(step_dir)
    sums = step_dir / CHECKSUMS
    if not sums.is_file():
        return
    try:
        want = json.loads(sums.read_text())["sha256"]
    except (ValueError, KeyError, OSError) as err:
        msg = f"checkpoint {step_dir}: unreadable {CHECKSUMS} ({err})"
        raise CheckpointDamagedError(msg) from err
    got = _file_digests(step_dir)
    for name in sorted(set(want) | set(got)):
        if want.get(name) != got.get(name):
            what = "missing" if name not in got else "changed" if name in want else "unexpected"
            raise CheckpointDamagedError(
                f"checkpoint {step_dir}: file {name} is {what} (it differs from {CHECKSUMS})"
            )


# -- the run's checkpointer -----------------------------------------------------------------


class Checkpointer:
    """Sharded, asynchronous, atomic checkpoints of a run in ``ckpt_dir`` (Orbax).

    Every process of a run creates one and calls ``save`` and ``restore`` at the same steps.

    Args:
      ckpt_dir: the directory of the checkpoints (created).
      keep: how many checkpoints to keep (``>= 1``).
      primary: whether this process writes the checksums and moves damaged checkpoints aside
        (process 0).
      barrier: called with a name to wait for every process (for several processes).
    """

    def __init__(
        self,
        ckpt_dir: str | os.PathLike,
        *,
        keep: int = 2,
        primary: bool = True,
        barrier: Any = None,
    ):
        if keep < 1:
            raise ValueError(f"Checkpointer: expected keep >= 1, found {keep}")
        self.dir, self.keep, self.primary = Path(ckpt_dir).absolute(), int(keep), primary
        self._barrier = barrier or (lambda name: None)
        self._manager: Any = None
        self._pending: int | None = None
        self._hasher: threading.Thread | None = None

    def _open(self) -> Any:
        if self._manager is None:
            import orbax.checkpoint as ocp

            options = ocp.CheckpointManagerOptions(
                max_to_keep=self.keep,
                step_prefix="ckpt",
                step_format_fixed_length=9,
                enable_async_checkpointing=True,
                cleanup_tmp_directories=True,
            )
            self._manager = ocp.CheckpointManager(self.dir, options=options)
        return self._manager

    def delete_all(self) -> None:
        """Delete every checkpoint (both formats) to start afresh."""
        if self.primary:
            for old in list_checkpoints(self.dir):
                shutil.rmtree(old) if old.is_dir() else old.unlink()
        self._barrier("jaxsae-checkpoints-deleted")

    def restore(self, like: Any, *, config: dict | None = None) -> Checkpoint | None:
        """The newest intact checkpoint that fits, read onto ``like``'s shardings, or ``None``.

        Damaged ones (unreadable, or differing from their checksums) are reported in a warning
        naming them and moved aside to ``damaged_ckpt_*``; the next older one is tried.

        Raises:
          CheckpointMismatchError: the newest intact checkpoint does not fit the run.
        """
        found = list_checkpoints(self.dir)
        for i in reversed(range(len(found))):
            path = found[i]
            try:
                return load_checkpoint(path, like, config=config)
            except CheckpointDamagedError as err:
                aside = path.with_name(DAMAGED + path.name)
                then = "trying the previous checkpoint" if i else "no older one: starting afresh"
                warnings.warn(f"{err}; kept as {aside}, {then}", stacklevel=2)
                self._barrier(f"jaxsae-damaged-{path.name}")
                if self.primary:
                    os.replace(path, aside)
                self._barrier(f"jaxsae-moved-{path.name}")
        return None

    def save(
        self,
        step: int,
        state: Any,
        *,
        config: dict,
        data_state: dict | None = None,
        normalisation: Normalisation | None = None,
        extra: dict | None = None,
    ) -> None:
        """Start writing the checkpoint of ``step`` (returns once the arrays are off the devices).

        Args:
          step: the step the state is at (names the checkpoint).
          state: the train state, as laid out for the step (sharded ``jax.Array`` leaves).
          config: the run's configuration as a JSON-serialisable dict.
          data_state: the data stream's ``state_dict()`` at this step.
          normalisation: the input normalisation of the run.
          extra: other JSON-serialisable fields.
        """
        manager = self._open()
        self._finish_previous()
        if step in manager.all_steps():
            return
        names, leaves, _ = _leaf_names(state)
        info = {
            "format": FORMAT,
            "version": VERSION,
            "step": int(step),
            "config": config,
            "data_state": data_state or {},
            "norm_scale": None if normalisation is None else float(normalisation.scale),
            "norm_mean": None if normalisation is None else np.asarray(normalisation.mean).tolist(),
            "leaves": {
                n: [list(shape), dtype.name]
                for n, (shape, dtype) in zip(names, map(_spec, leaves), strict=True)
            },
            "extra": extra or {},
        }
        manager.save(int(step), args=_orbax_args(state, info))
        self._pending = int(step)

    def _finish_previous(self) -> None:
        """Wait for the save in flight, then checksum it in the background (process 0)."""
        if self._pending is None:
            return
        self._manager.wait_until_finished()
        if self._hasher is not None:
            self._hasher.join()
        step_dir = self.dir / f"ckpt_{self._pending:09d}"
        self._pending = None
        if self.primary and step_dir.is_dir():
            self._hasher = threading.Thread(target=_checksum_if_kept, args=(step_dir,))
            self._hasher.start()

    def close(self) -> None:
        """Wait until every checkpoint started is on disk with its checksums."""
        if self._manager is not None:
            self._finish_previous()
            if self._hasher is not None:
                self._hasher.join()
                self._hasher = None
            self._manager.close()
            self._manager = None
