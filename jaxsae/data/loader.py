"""Batches of activations for training: deterministic shuffling, resumable, memory-bounded.

Data is an ``ActivationStore`` (or its directory), a ``.npy`` file (memory-mapped), or an
in-memory ``(rows, d)`` array. The loader turns it into an endless stream of rows, epoch after
epoch, and batch ``s`` is rows ``[s·B, (s+1)·B)`` of that stream, a pure function of
``(data, seed, s)``: a run resumed at step ``s`` sees exactly the batches an uninterrupted run
would have seen (``position`` is the number of batches consumed).

Shuffling is two-level, so that a store larger than memory streams through a bounded buffer:
each epoch permutes contiguous *blocks* of ``block_rows`` rows, groups consecutive permuted
blocks into *windows* of at most ``buffer_rows`` rows, and permutes the rows inside each window.
When the data fits in one window (the default for anything under ~256 MiB) this is a uniform
random permutation per epoch. Reads are contiguous blocks, so a memory-mapped store on disk is
read sequentially within each block.

Normalisation: ``compute_normalisation`` returns the mean and the scale ``s`` such that
``E‖s·(x − μ)‖² = d`` (or ``E‖s·x‖² = d`` without centring), the convention the training
recipe's ``l1_coeff`` is tuned for. Protein language models have a few outlier dimensions with
large means; centring keeps them from dominating the scale.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from jaxsae.data.store import ActivationStore, open_store

__all__ = ["Normalisation", "compute_normalisation", "as_source", "Loader"]

DEFAULT_BUFFER_BYTES = 256 * 2**20


class Normalisation(NamedTuple):
    """An affine input normalisation ``x ↦ (x − mean) · scale``.

    Attributes:
      mean: ``(d,)`` float64 offset (zeros when not centring).
      scale: positive float, so that ``E‖(x − mean)·scale‖² = d``.
    """

    mean: np.ndarray
    scale: float

    def apply(self, x: np.ndarray) -> np.ndarray:
        """``(x − mean) · scale`` as float32, for ``x (..., d)``."""
        return ((x - self.mean.astype(np.float32)) * np.float32(self.scale)).astype(np.float32)

    @staticmethod
    def identity(d: int) -> Normalisation:
        """The normalisation that changes nothing."""
        return Normalisation(np.zeros((d,), np.float64), 1.0)


class _ArraySource:
    """Rows of a ``(rows, d)`` array or memmap, read as float32."""

    def __init__(self, arr: np.ndarray, name: str):
        self.arr, self.name = arr, name
        self.num_rows, self.d = arr.shape

    def read(self, start: int, stop: int) -> np.ndarray:
        return np.asarray(self.arr[start:stop], dtype=np.float32)

    def take(self, rows: np.ndarray) -> np.ndarray:
        order = np.argsort(rows, kind="stable")  # sorted reads: sequential on a memmap
        out = np.empty((len(rows), self.d), np.float32)
        out[order] = self.arr[rows[order]]
        return out


class _StoreSource:
    """Rows of an ``ActivationStore``."""

    def __init__(self, store: ActivationStore):
        self.store, self.name = store, str(store.path)
        self.num_rows, self.d = store.num_rows, store.d

    def read(self, start: int, stop: int) -> np.ndarray:
        return self.store.rows(start, stop)

    def take(self, rows: np.ndarray) -> np.ndarray:
        return self.store.take(rows)


def as_source(data: Any) -> _ArraySource | _StoreSource:
    """Wrap a store, a store directory, a ``.npy`` path or an array as a row source.

    Raises:
      ValueError: a path that is neither a store nor a ``.npy`` file, data not of rank 2, a
        non-floating dtype, or no rows.
    """
    if isinstance(data, _ArraySource | _StoreSource):
        return data
    if isinstance(data, str | os.PathLike):
        path = Path(data)
        if path.is_dir():
            data = open_store(path)
        elif path.suffix == ".npy" and path.is_file():
            from jaxsae.errors import load_npy

            return _check_source(load_npy(path, "data", mmap=True), str(path))
        else:
            raise ValueError(
                f"data {path}: expected an activation store directory or a .npy file, found neither"
            )
    if isinstance(data, ActivationStore):
        if data.num_rows == 0:
            raise ValueError(f"data {data.path}: expected a non-empty store, found 0 rows")
        return _StoreSource(data)
    arr = np.asarray(data) if not isinstance(data, np.ndarray) else data
    return _check_source(arr, "array")


def _check_source(arr: np.ndarray, name: str) -> _ArraySource:
    if arr.ndim != 2:
        raise ValueError(
            f"data {name}: expected activations of shape (rows, d), found shape {arr.shape}"
        )
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"data {name}: expected floating activations, found {arr.dtype}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"data {name}: expected a non-empty array, found shape {arr.shape}")
    return _ArraySource(arr, name)


def compute_normalisation(
    data: Any,
    *,
    center: bool = True,
    num_samples: int = 100_000,
    seed: int = 0,
) -> Normalisation:
    """The mean and scale that give inputs ``E‖x‖² = d`` after normalisation.

    ``scale = sqrt(d / E‖x − μ‖²)`` with ``μ`` the mean (``center=True``) or 0. A store uses its
    exact statistics (computed when it was finalised); other data uses up to ``num_samples``
    rows drawn without replacement (all rows when there are fewer), in float64.

    Args:
      data: anything ``as_source`` accepts.
      center: subtract the per-dimension mean first.
      num_samples: rows to estimate from when the data is not a store.
      seed: seed of the sample.

    Returns:
      ``Normalisation(mean (d,) float64, scale)``.

    Raises:
      ValueError: constant data (zero spread), or non-finite values in the sample.
    """
    src = as_source(data)
    d = src.d
    if isinstance(src, _StoreSource) and "mean_sq_norm" in src.store.stats:
        stats = src.store.stats
        mean = np.asarray(src.store.mean, np.float64)
        if center:
            spread = stats.get("mean_sq_norm_centred", stats["mean_sq_norm"] - float(mean @ mean))
        else:
            spread = stats["mean_sq_norm"]
    else:
        n = src.num_rows
        if n <= num_samples:
            rows = None
        else:
            rows = np.sort(np.random.default_rng(seed).choice(n, num_samples, replace=False))
        m = n if rows is None else len(rows)

        def chunks():  # float64 chunks of the sample: memory stays bounded for wide data
            step = 8192
            for lo in range(0, m, step):
                if rows is None:
                    x = src.read(lo, min(lo + step, m))
                elif isinstance(src, _StoreSource):
                    x = src.store.take(rows[lo : lo + step])
                else:
                    x = src.arr[rows[lo : lo + step]]
                x = np.asarray(x, dtype=np.float64)
                if not np.isfinite(x).all():
                    raise ValueError(
                        f"data {src.name}: non-finite values in the normalisation sample"
                    )
                yield x

        mean = sum(x.sum(axis=0) for x in chunks()) / m
        shift = mean if center else np.zeros_like(mean)
        spread = sum(float(np.sum((x - shift[None, :]) ** 2)) for x in chunks()) / m
    if not center:
        mean = np.zeros((d,), np.float64)
    if not spread > 0:
        raise ValueError(
            f"data {src.name}: expected inputs that vary, found E‖x − μ‖² = {spread}; "
            "cannot normalise"
        )
    return Normalisation(mean=mean, scale=float(np.sqrt(d / spread)))


class _Epoch(NamedTuple):
    blocks: np.ndarray  # permuted block ids
    window_starts: np.ndarray  # (num_windows + 1,) row offset of each window in the epoch
    blocks_per_window: int


class Loader:
    """Deterministic, resumable batches of ``(batch_size, d)`` float32 rows.

    Args:
      data: an ``ActivationStore``, a store directory, a ``.npy`` path, or a ``(rows, d)`` array.
      batch_size: rows per batch.
      seed: shuffling seed.
      shuffle: shuffle (two-level, see the module docstring); ``False`` streams rows in order.
      d_in: if given, the width the data must have (a clear error otherwise).
      normalisation: applied to every batch (``None``: raw rows).
      block_rows: rows per contiguous block read from disk.
      buffer_rows: rows per shuffle window (default: ~256 MiB of float32 rows, at least one
        block).
      check_finite: raise on NaN/inf in a batch, naming the row.

    Attributes:
      position: batches consumed so far; ``next(loader)`` returns batch ``position``.
      num_rows, d: size of the data.
    """

    def __init__(
        self,
        data: Any,
        batch_size: int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        d_in: int | None = None,
        normalisation: Normalisation | None = None,
        block_rows: int = 4096,
        buffer_rows: int | None = None,
        check_finite: bool = True,
    ):
        self.source = as_source(data)
        self.num_rows, self.d = self.source.num_rows, self.source.d
        if d_in is not None and d_in != self.d:
            raise ValueError(
                f"data {self.source.name}: expected rows of width d_in={d_in}, found {self.d}"
            )
        if not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f"Loader: expected batch_size an int > 0, found {batch_size!r}")
        if block_rows <= 0:
            raise ValueError(f"Loader: expected block_rows > 0, found {block_rows}")
        if buffer_rows is None:
            buffer_rows = max(block_rows, DEFAULT_BUFFER_BYTES // (4 * self.d))
        if buffer_rows < block_rows:
            raise ValueError(
                f"Loader: expected buffer_rows >= block_rows={block_rows}, found {buffer_rows}"
            )
        if normalisation is not None and np.shape(normalisation.mean) != (self.d,):
            raise ValueError(
                f"Loader: normalisation mean has shape {np.shape(normalisation.mean)}, "
                f"expected ({self.d},)"
            )
        self.batch_size, self.seed, self.shuffle = batch_size, int(seed), bool(shuffle)
        self.block_rows, self.buffer_rows = int(block_rows), int(buffer_rows)
        self.normalisation = normalisation
        self.check_finite = check_finite
        self.position = 0
        self._epochs: OrderedDict[int, _Epoch] = OrderedDict()
        self._windows: OrderedDict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._orders: OrderedDict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = OrderedDict()

    # -- the order of rows ------------------------------------------------------------------

    def _epoch(self, e: int) -> _Epoch:
        if e not in self._epochs:
            n, br = self.num_rows, self.block_rows
            nb = -(-n // br)
            if self.shuffle:
                blocks = np.random.default_rng([self.seed, e]).permutation(nb)
            else:
                blocks = np.arange(nb)
            sizes = np.minimum(br, n - blocks * br)
            bpw = self.buffer_rows // br
            cum = np.concatenate([[0], np.cumsum(sizes)])
            starts = cum[np.r_[np.arange(0, nb, bpw), nb]]
            self._epochs[e] = _Epoch(blocks, starts, bpw)
            while len(self._epochs) > 2:
                self._epochs.popitem(last=False)
        return self._epochs[e]

    def _window_blocks(self, e: int, w: int) -> np.ndarray:
        ep = self._epoch(e)
        return ep.blocks[w * ep.blocks_per_window : (w + 1) * ep.blocks_per_window]

    def _window_order(self, e: int, w: int) -> tuple[np.ndarray, np.ndarray]:
        """``(row ids in block order (m,), permutation (m,))`` of window ``w`` of epoch ``e``."""
        key = (e, w)
        if key not in self._orders:
            br = self.block_rows
            ids = np.concatenate(
                [
                    np.arange(b * br, min((b + 1) * br, self.num_rows))
                    for b in self._window_blocks(e, w)
                ]
            )
            if self.shuffle:
                perm = np.random.default_rng([self.seed, e, w]).permutation(len(ids))
            else:
                perm = np.arange(len(ids))
            self._orders[key] = (ids, perm)
            while len(self._orders) > 2:
                self._orders.popitem(last=False)
        return self._orders[key]

    def _window_ids(self, e: int, w: int) -> np.ndarray:
        """Row ids ``(m,)`` of window ``w`` of epoch ``e``, in stream order (no data read)."""
        ids, perm = self._window_order(e, w)
        return ids[perm]

    def _window(self, e: int, w: int) -> tuple[np.ndarray, np.ndarray]:
        """``(row ids (m,), rows (m, d) float32)`` of window ``w`` of epoch ``e``, in order."""
        key = (e, w)
        if key not in self._windows:
            br = self.block_rows
            ids, perm = self._window_order(e, w)
            acts = np.concatenate(
                [
                    self.source.read(int(b) * br, min((int(b) + 1) * br, self.num_rows))
                    for b in self._window_blocks(e, w)
                ]
            )
            self._windows[key] = (ids[perm], acts[perm])
            while len(self._windows) > 2:
                self._windows.popitem(last=False)
        return self._windows[key]

    def _segments(self, step: int):
        """Yield ``(epoch, window, lo, hi)`` slices that make up batch ``step``."""
        pos = step * self.batch_size
        need = self.batch_size
        while need:
            e, off = divmod(pos, self.num_rows)
            ep = self._epoch(e)
            w = int(np.searchsorted(ep.window_starts, off, side="right")) - 1
            lo = off - int(ep.window_starts[w])
            take = min(need, int(ep.window_starts[w + 1]) - off)
            yield e, w, lo, lo + take
            pos += take
            need -= take

    def rows_at(self, step: int, lo: int = 0, hi: int | None = None) -> np.ndarray:
        """Global row numbers of rows ``[lo, hi)`` of batch ``step`` (what ``batch_at`` returns).

        A pure function of ``(data size, seed, step)``: no data is read.
        """
        ids = np.concatenate([self._window_ids(e, w)[a:b] for e, w, a, b in self._segments(step)])
        return ids[lo : self.batch_size if hi is None else hi]

    def batch_at(self, step: int, lo: int = 0, hi: int | None = None) -> np.ndarray:
        """Rows ``[lo, hi)`` of batch ``step`` as float32, normalised if a normalisation is set.

        The whole batch by default. A part (one process's share of the global batch) reads only
        its own rows from the data; the parts of all processes, in order, are the whole batch.

        Raises:
          ValueError: a non-finite value in the batch (with ``check_finite``), naming the row.
        """
        if step < 0:
            raise ValueError(f"Loader: expected step >= 0, found {step}")
        hi = self.batch_size if hi is None else hi
        if not 0 <= lo < hi <= self.batch_size:
            raise ValueError(
                f"Loader: expected 0 <= lo < hi <= batch_size={self.batch_size}, found {lo}, {hi}"
            )
        if (lo, hi) == (0, self.batch_size):
            parts = [(self._window(e, w), a, b) for e, w, a, b in self._segments(step)]
            ids = None
            batch = np.concatenate([win[1][a:b] for win, a, b in parts])
        else:
            ids = self.rows_at(step, lo, hi)
            batch = self.source.take(ids)
        if self.check_finite:
            bad = ~np.isfinite(batch)
            if bad.any():
                if ids is None:
                    ids = np.concatenate([win[0][a:b] for win, a, b in parts])
                i, j = (int(v) for v in np.argwhere(bad)[0])
                raise ValueError(
                    f"data {self.source.name}: non-finite value ({batch[i, j]}) in row "
                    f"{int(ids[i])}, dimension {j} (batch {step}); clean the data first"
                )
        if self.normalisation is not None:
            batch = self.normalisation.apply(batch)
        return batch

    # -- iteration and resumption -----------------------------------------------------------

    def __iter__(self) -> Loader:
        return self

    def __next__(self) -> np.ndarray:
        batch = self.batch_at(self.position)
        self.position += 1
        return batch

    def seek(self, position: int) -> None:
        """Make batch ``position`` the next one."""
        if position < 0:
            raise ValueError(f"Loader.seek: expected position >= 0, found {position}")
        self.position = int(position)

    @property
    def epoch(self) -> float:
        """Passes over the data made so far (fractional)."""
        return self.position * self.batch_size / self.num_rows

    def state_dict(self) -> dict[str, int | bool]:
        """What identifies the stream and where it is: save it with a checkpoint."""
        return {
            "position": self.position,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "batch_size": self.batch_size,
            "num_rows": self.num_rows,
            "d": self.d,
            "block_rows": self.block_rows,
            "buffer_rows": self.buffer_rows,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at ``state["position"]``, after checking the stream is the same one.

        Raises:
          ValueError: naming each setting (data size, seed, batch size, ...) that differs, since
            the resumed run would otherwise see different batches.
        """
        mine = self.state_dict()
        diff = [
            f"{k}: checkpoint {state[k]!r}, now {mine[k]!r}"
            for k in mine
            if k != "position" and k in state and state[k] != mine[k]
        ]
        if diff:
            raise ValueError(
                "Loader: the data stream differs from the checkpoint's, so resuming would not "
                "see the same batches: " + "; ".join(diff)
            )
        self.seek(int(state["position"]))
