"""Checkpoints: the whole train state and what is needed to resume exactly, in one atomic file.

A checkpoint is one ``.npz`` file ``ckpt_{step:09d}.npz`` holding

* every leaf of the train-state pytree (parameters, optimiser moments and counts, step,
  dead-feature counters, PRNG key), under its tree path (``params.W_enc``, ...);
* ``__info__``: a JSON document with the format and version, the step, the run's configuration,
  the data stream's position (``Loader.state_dict()``), the input normalisation's scale (its
  mean is the array ``__norm_mean__``) and free-form ``extra`` fields.

It is written to a temporary file, fsynced and renamed into place, so a checkpoint on disk is
always complete; the ``keep`` most recent ones are kept, so a crash while writing leaves the
previous good one. ``load_checkpoint`` checks the stored tree against a template state (same
paths, shapes, dtypes) and the stored configuration against the run's, naming every mismatch.
"""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

from jaxsae.data.loader import Normalisation
from jaxsae.data.store import atomic_write

__all__ = [
    "Checkpoint",
    "save_checkpoint",
    "load_checkpoint",
    "latest_checkpoint",
    "list_checkpoints",
    "CheckpointMismatchError",
]

FORMAT = "jaxsae-checkpoint"
VERSION = 1
_NAME_RE = re.compile(r"^ckpt_(\d{9})\.npz$")


class CheckpointMismatchError(ValueError):
    """A checkpoint that does not fit the run (another shape, dtype or configuration)."""


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


def list_checkpoints(ckpt_dir: str | os.PathLike) -> list[Path]:
    """Checkpoint files in ``ckpt_dir``, oldest step first."""
    root = Path(ckpt_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _NAME_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(ckpt_dir: str | os.PathLike) -> Path | None:
    """The checkpoint with the highest step in ``ckpt_dir``, or ``None``."""
    found = list_checkpoints(ckpt_dir)
    return found[-1] if found else None


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
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        info = json.loads(arrays.pop("__info__").tobytes().decode("utf-8"))
    except (OSError, ValueError, KeyError, EOFError) as err:
        raise ValueError(f"checkpoint {path}: unreadable ({err})") from err
    if info.get("format") != FORMAT or info.get("version") != VERSION:
        raise ValueError(
            f"checkpoint {path}: expected format {FORMAT!r} version {VERSION}, found "
            f"{info.get('format')!r} version {info.get('version')!r}"
        )
    return info, arrays


def _config_diff(saved: dict, current: dict) -> list[str]:
    keys = sorted(set(saved) | set(current))
    return [
        f"{k}: checkpoint {saved.get(k, '<absent>')!r}, now {current.get(k, '<absent>')!r}"
        for k in keys
        if saved.get(k, "<absent>") != current.get(k, "<absent>")
    ]


def load_checkpoint(
    path: str | os.PathLike, like: Any, *, config: dict | None = None
) -> Checkpoint:
    """Read a checkpoint into the structure of ``like``, checking it fits.

    Args:
      path: a checkpoint file (or a directory: its latest checkpoint).
      like: a template train state of the run (e.g. ``init_state(cfg)``): the tree structure,
        shapes and dtypes the checkpoint must have.
      config: the run's configuration dict; if given, it must equal the saved one.

    Returns:
      A ``Checkpoint`` whose ``state`` has ``like``'s structure and NumPy leaves.

    Raises:
      CheckpointMismatchError: naming each configuration field, leaf, shape or dtype that
        differs.
      ValueError: no checkpoint, or an unreadable one.
    """
    path = Path(path)
    if path.is_dir():
        found = latest_checkpoint(path)
        if found is None:
            raise ValueError(f"checkpoint: no ckpt_*.npz file in {path}")
        path = found
    info, arrays = _read(path)
    problems = []
    if config is not None:
        problems += [f"config {d}" for d in _config_diff(info["config"], config)]
    names, leaves, treedef = _leaf_names(like)
    saved = {k[len("state/") :]: v for k, v in arrays.items() if k.startswith("state/")}
    missing = [n for n in names if n not in saved]
    unexpected = sorted(set(saved) - set(names))
    if missing:
        problems.append(f"missing {missing}")
    if unexpected:
        problems.append(f"unexpected {unexpected}")
    out = []
    for n, leaf in zip(names, leaves, strict=True):
        if n not in saved:
            continue
        want_shape, want_dtype = _spec(leaf)
        got = saved[n]
        if tuple(got.shape) != want_shape:
            problems.append(f"{n} has shape {tuple(got.shape)}, expected {want_shape}")
        elif got.dtype != want_dtype:
            problems.append(f"{n} has dtype {got.dtype}, expected {want_dtype}")
        elif _is_key(leaf):
            got = jax.random.wrap_key_data(got, impl=jax.random.key_impl(leaf))
        out.append(got)
    if problems:
        raise CheckpointMismatchError(
            f"checkpoint {path} does not fit this run: "
            + "; ".join(problems)
            + ". Use the same settings to resume, or start afresh (--no-resume / another --out)."
        )
    state = jax.tree_util.tree_unflatten(treedef, out)
    norm = None
    if info.get("norm_scale") is not None:
        norm = Normalisation(mean=arrays["__norm_mean__"], scale=float(info["norm_scale"]))
    return Checkpoint(
        state=state,
        step=int(info["step"]),
        config=info["config"],
        data_state=info.get("data_state", {}),
        normalisation=norm,
        extra=info.get("extra", {}),
        path=path,
    )
