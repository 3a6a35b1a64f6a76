"""Activation stores: per-residue activations of a protein language model on disk.

A store is a directory::

    meta.json          {"format": "jaxsae-activations", "version": 1, "d": int,
                        "dtype": "float32" | "float16", "num_rows": int, "num_proteins": int,
                        "shards": [{"name": "00000", "rows": n}, ...],
                        "stats": {"mean_sq_norm": float, "mean_norm": float,
                                  "mean_sq_norm_centred": float},
                        "meta": {free-form user metadata: model name, layer, ...}}
    mean.npy           (d,) float64 per-dimension mean
    proteins.jsonl     one JSON object per protein, in order: {"id": str, "length": int, ...}
    shard_00000.npy    (rows, d) activations
    index_00000.npy    (rows, 2) int32: (protein index, residue position) of each row
    shard_00000.sha256 SHA-256 of both files (``sha256sum -c`` format), written last

Writers call ``write_shard`` once per shard (each write is atomic: a temporary file, ``fsync``,
then ``os.replace``), skip the shards ``shard_exists`` reports on a resumed run (it checks each
file's header and size and, where the checksum file exists, the checksums; ``shard_problem`` says
what is wrong with a damaged shard, so that a re-run writes it again), and finish with
``finalize_store``, which streams over the shards for the statistics and writes ``meta.json``
last: a directory without ``meta.json`` is an incomplete store and ``open_store`` says so.

Rows are addressed globally: row ``r`` of the store is row ``r - offset[i]`` of shard ``i``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "FORMAT",
    "VERSION",
    "ActivationStore",
    "write_shard",
    "shard_exists",
    "shard_problem",
    "finalize_store",
    "open_store",
    "atomic_write",
    "atomic_save_text",
]

FORMAT = "jaxsae-activations"
VERSION = 1
_DTYPES = ("float32", "float16")
_SHARD_RE = re.compile(r"^shard_(\d{5})\.npy$")


def _shard_name(shard_id: int) -> str:
    return f"{int(shard_id):05d}"


def atomic_write(path: str | os.PathLike, write: Any) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, fsync it, then rename it.

    ``path`` either keeps its old content or gets the whole new one, whatever interrupts the
    write (an exception, Ctrl-C, a crash after the rename returns).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_save_npy(path: str | os.PathLike, arr: np.ndarray) -> str:
    """Save ``arr`` to ``path`` atomically; return the SHA-256 (hex) of the bytes written."""
    digest = hashlib.sha256()

    class _Hashing:  # np.save writes through it: the file is hashed as it is written
        def __init__(self, f: Any):
            self.f = f

        def write(self, b: Any) -> int:
            digest.update(b)
            return self.f.write(b)

    atomic_write(path, lambda f: np.save(_Hashing(f), arr, allow_pickle=False))
    return digest.hexdigest()


def atomic_save_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def write_shard(
    store_dir: str | os.PathLike, shard_id: int, acts: np.ndarray, index: np.ndarray
) -> None:
    """Write one shard of activations and its row index, atomically.

    The index is written first and the activations last, each to a temporary file that is
    renamed into place, so an interrupted write never leaves a shard that ``shard_exists``
    reports as complete.

    Args:
      store_dir: the store directory (created if missing).
      shard_id: shard number ``>= 0``; shards must end up numbered ``0 .. n-1``.
      acts: ``(rows, d)`` float32 or float16 activations (other float dtypes become float32).
      index: ``(rows, 2)`` integers: (protein index, residue position) of each row.

    Raises:
      ValueError: wrong ranks, mismatched row counts, a non-float dtype, non-finite values, or a
        negative index.
    """
    if int(shard_id) < 0:
        raise ValueError(f"write_shard: expected shard_id >= 0, found {shard_id}")
    acts = np.asarray(acts)
    index = np.asarray(index)
    if acts.ndim != 2 or acts.shape[0] == 0 or acts.shape[1] == 0:
        raise ValueError(
            f"write_shard: expected acts of shape (rows, d) with rows, d > 0, "
            f"found shape {acts.shape}"
        )
    if not np.issubdtype(acts.dtype, np.floating):
        raise ValueError(f"write_shard: expected floating activations, found dtype {acts.dtype}")
    if index.shape != (acts.shape[0], 2) or not np.issubdtype(index.dtype, np.integer):
        raise ValueError(
            f"write_shard: expected an integer index of shape ({acts.shape[0]}, 2) "
            f"(protein index, residue position), found {index.dtype} {index.shape}"
        )
    if acts.dtype.name not in _DTYPES:
        acts = acts.astype(np.float32)
    finite = np.isfinite(acts)
    if not finite.all():
        row = int(np.argwhere(~finite)[0][0])
        raise ValueError(
            f"write_shard: expected finite activations, found {int((~finite).sum())} non-finite "
            f"values in shard {shard_id}, the first in row {row} (protein {int(index[row, 0])}, "
            f"position {int(index[row, 1])})"
        )
    if index.min() < 0 or index.max() > np.iinfo(np.int32).max:
        raise ValueError("write_shard: expected index values in [0, 2**31), found out-of-range")
    root = Path(store_dir)
    root.mkdir(parents=True, exist_ok=True)
    name = _shard_name(shard_id)
    sums = {}
    sums[f"index_{name}.npy"] = atomic_save_npy(
        root / f"index_{name}.npy", np.ascontiguousarray(index, dtype=np.int32)
    )
    sums[f"shard_{name}.npy"] = atomic_save_npy(
        root / f"shard_{name}.npy", np.ascontiguousarray(acts)
    )
    atomic_save_text(root / f"shard_{name}.sha256", "".join(f"{h}  {f}\n" for f, h in sums.items()))


def shard_problem(store_dir: str | os.PathLike, shard_id: int) -> str | None:
    """What is wrong with shard ``shard_id``: ``None`` when it is complete and intact.

    Checks that both files exist, that their headers read and their sizes match them, that the
    index has one ``(protein, position)`` pair per row, and, where ``shard_NNNNN.sha256`` exists
    (every shard ``write_shard`` finished), that both files have the checksums written with them.

    Returns:
      ``None``, ``"missing"`` (not written, or written in part: nothing to report), or a message
      naming the damaged file.
    """
    root = Path(store_dir)
    name = _shard_name(shard_id)
    files = [root / f"index_{name}.npy", root / f"shard_{name}.npy"]
    if not all(f.is_file() for f in files):
        return "missing"
    try:
        index, acts = (_load_npy(f, "file") for f in files)
    except ValueError as err:
        return str(err)
    if acts.ndim != 2 or index.shape != (acts.shape[0], 2):
        return (
            f"activation store {root}: shard {name} has activations {acts.shape} and index "
            f"{index.shape}, expected (rows, d) and (rows, 2)"
        )
    sums = root / f"shard_{name}.sha256"
    if sums.is_file():
        for line in sums.read_text(errors="replace").splitlines():
            want, _, fname = line.partition("  ")
            try:
                with open(root / fname, "rb") as f:
                    found = hashlib.file_digest(f, "sha256").hexdigest()
            except OSError:
                found = None
            if found != want:
                return (
                    f"activation store {root}: {fname} is damaged (its SHA-256 differs from the "
                    f"one written with it in {sums.name})"
                )
    return None


def shard_exists(store_dir: str | os.PathLike, shard_id: int) -> bool:
    """True when shard ``shard_id`` was written completely and is intact (``shard_problem``)."""
    return shard_problem(store_dir, shard_id) is None


def _load_npy(path: Path, what: str) -> np.ndarray:
    """Memory-map a ``.npy`` file, turning a missing or truncated file into a clear error."""
    if not path.is_file():
        raise ValueError(f"activation store {path.parent}: {what} {path.name} is missing")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise ValueError(
            f"activation store {path.parent}: {what} {path.name} is unreadable, damaged or "
            f"truncated ({err}); re-run `jaxsae extract` with the same arguments to write it again"
        ) from err


def finalize_store(
    store_dir: str | os.PathLike, proteins: list[dict], meta: dict | None = None
) -> ActivationStore:
    """Check the shards, compute statistics, write ``mean.npy``, ``proteins.jsonl``, ``meta.json``.

    Streams over the shards once (memory: one shard), accumulating in float64.

    Args:
      store_dir: a directory filled by ``write_shard`` with shards ``0 .. n-1``.
      proteins: one dict per protein, in protein-index order, each with at least ``"id"`` (str)
        and ``"length"`` (int); other JSON-serialisable fields (``"sequence"``, ``"split"``, ...)
        are kept.
      meta: free-form JSON-serialisable metadata (model name, layer, ...), stored under
        ``"meta"``.

    Returns:
      The finished store, opened.

    Raises:
      ValueError: no shards, a gap in shard numbers, shards of different widths or dtypes, an
        index that names a protein outside ``proteins``, or a malformed protein record.
    """
    root = Path(store_dir)
    ids = _shard_ids(root)
    _check_protein_records(proteins)
    meta = dict(meta or {})
    shards, moments = [], None
    for i in ids:
        name = _shard_name(i)
        acts = _checked_shard(root, name, len(proteins), moments)
        moments = moments or _Moments(acts.shape[1], acts.dtype.name)
        moments.add(acts)
        shards.append({"name": name, "rows": int(acts.shape[0])})
    assert moments is not None
    mean, stats = moments.finish()
    info = {
        "format": FORMAT,
        "version": VERSION,
        "d": int(moments.d),
        "dtype": moments.dtype,
        "num_rows": int(moments.total),
        "num_proteins": len(proteins),
        "shards": shards,
        "stats": stats,
        "meta": meta,
    }
    atomic_save_npy(root / "mean.npy", mean)
    lines = "".join(json.dumps(p, separators=(",", ":")) + "\n" for p in proteins)
    atomic_save_text(root / "proteins.jsonl", lines)
    atomic_save_text(root / "meta.json", json.dumps(info, indent=1))
    return open_store(root)


def _shard_ids(root: Path) -> list[int]:
    """The shard numbers in ``root``: ``0 .. n-1``, without gaps, at least one."""
    if not root.is_dir():
        raise ValueError(f"finalize_store: directory {root} does not exist")
    ids = sorted(int(m.group(1)) for p in root.iterdir() if (m := _SHARD_RE.match(p.name)))
    if not ids:
        raise ValueError(f"finalize_store: no shards (shard_00000.npy, ...) found in {root}")
    if ids != list(range(len(ids))):
        missing = sorted(set(range(ids[-1] + 1)) - set(ids))
        raise ValueError(
            f"finalize_store: expected shards numbered 0..{ids[-1]} without gaps, "
            f"missing {missing[:10]}"
        )
    return ids


def _check_protein_records(proteins: list[dict]) -> None:
    """Every protein record is a dict with ``"id"`` and ``"length"``."""
    for i, p in enumerate(proteins):
        if not isinstance(p, dict) or "id" not in p or "length" not in p:
            raise ValueError(
                f"finalize_store: protein {i}: expected a dict with 'id' and 'length', found {p!r}"
            )


def _checked_shard(root: Path, name: str, num_proteins: int, first: _Moments | None) -> np.ndarray:
    """Shard ``name``'s activations (memory-mapped), once it and its index are consistent with
    each other, with the ``first`` shard's width and dtype, and with ``num_proteins``."""
    acts = _load_npy(root / f"shard_{name}.npy", "shard")
    index = _load_npy(root / f"index_{name}.npy", "index")
    if acts.ndim != 2 or index.shape != (acts.shape[0], 2):
        raise ValueError(
            f"finalize_store: shard {name}: expected acts (rows, d) and index (rows, 2), "
            f"found {acts.shape} and {index.shape}"
        )
    if first is not None and (acts.shape[1] != first.d or acts.dtype.name != first.dtype):
        raise ValueError(
            f"finalize_store: shard {name}: expected width {first.d} and dtype {first.dtype} "
            f"like shard 00000, found {acts.shape[1]} and {acts.dtype.name}"
        )
    if len(index) and index[:, 0].max() >= num_proteins:
        raise ValueError(
            f"finalize_store: shard {name} refers to protein {int(index[:, 0].max())}, "
            f"but only {num_proteins} proteins were given"
        )
    return acts


class _Moments:
    """Running float64 sums over the rows of a store: per dimension, of squared norms, of norms.

    Attributes:
      d: row width; dtype: the shards' dtype name; total: rows added so far.
    """

    _CHUNK = 65536

    def __init__(self, d: int, dtype: str):
        self.d, self.dtype = d, dtype
        self.total = self.sq = self.nrm = 0.0
        self.acc = np.zeros((d,), np.float64)

    def add(self, acts: np.ndarray) -> None:
        """Add the rows of ``acts`` ``(rows, d)``, streamed in chunks."""
        for start in range(0, acts.shape[0], self._CHUNK):
            x = np.asarray(acts[start : start + self._CHUNK], dtype=np.float64)
            self.acc += x.sum(axis=0)
            s = np.einsum("ij,ij->i", x, x)
            self.sq += float(s.sum())
            self.nrm += float(np.sqrt(s).sum())
        self.total += acts.shape[0]

    def finish(self) -> tuple[np.ndarray, dict[str, float]]:
        """The mean ``(d,)`` and ``meta.json``'s ``"stats"``."""
        mean = self.acc / self.total
        mean_sq = self.sq / self.total
        return mean, {
            "mean_sq_norm": mean_sq,
            "mean_norm": self.nrm / self.total,
            "mean_sq_norm_centred": max(mean_sq - float(mean @ mean), 0.0),
        }


class ActivationStore:
    """A finished activation store, opened read-only (shards are memory-mapped on demand).

    Attributes:
      path: the store directory.
      d: activation width.
      dtype: on-disk dtype name, ``"float32"`` or ``"float16"``.
      num_rows: total number of rows (residues).
      num_proteins: number of proteins.
      shard_rows: ``(num_shards,)`` rows per shard.
      offsets: ``(num_shards + 1,)`` global row at which each shard starts (and the total).
      stats: ``{"mean_sq_norm", "mean_norm", "mean_sq_norm_centred"}`` over all rows.
      meta: the free-form user metadata given to ``finalize_store`` (model, layer, ...).
      info: the whole parsed ``meta.json``.
      mean: ``(d,)`` float64 per-dimension mean.
      proteins: one dict per protein (``"id"``, ``"length"``, ...).
    """

    def __init__(self, path: Path, info: dict, mean: np.ndarray, proteins: list[dict]):
        self.path = path
        self.info = info
        self.d: int = int(info["d"])
        self.dtype: str = info["dtype"]
        self.num_rows: int = int(info["num_rows"])
        self.num_proteins: int = int(info["num_proteins"])
        self.shard_rows = np.array([s["rows"] for s in info["shards"]], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.shard_rows)]).astype(np.int64)
        self.stats: dict = dict(info.get("stats", {}))
        self.meta: dict = dict(info.get("meta", {}))
        self.mean = mean
        self.proteins = proteins
        self._names = [s["name"] for s in info["shards"]]
        self._shards: dict[int, np.ndarray] = {}
        self._index: dict[int, np.ndarray] = {}
        self._protein_rows: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def num_shards(self) -> int:
        return len(self._names)

    def __len__(self) -> int:
        return self.num_rows

    def __repr__(self) -> str:
        return (
            f"ActivationStore({str(self.path)!r}, rows={self.num_rows}, d={self.d}, "
            f"dtype={self.dtype}, proteins={self.num_proteins}, shards={self.num_shards})"
        )

    def _check_shard(self, i: int) -> int:
        if not 0 <= i < self.num_shards:
            raise IndexError(f"shard {i} out of range [0, {self.num_shards})")
        return i

    def shard(self, i: int) -> np.ndarray:
        """Shard ``i``'s activations as a read-only memmap ``(rows, d)`` in the store's dtype."""
        i = self._check_shard(i)
        if i not in self._shards:
            arr = _load_npy(self.path / f"shard_{self._names[i]}.npy", "shard")
            want = (int(self.shard_rows[i]), self.d)
            if arr.shape != want or arr.dtype.name != self.dtype:
                raise ValueError(
                    f"activation store {self.path}: shard {self._names[i]} has "
                    f"{arr.dtype} {arr.shape}, meta.json says {self.dtype} {want}"
                )
            self._shards[i] = arr
        return self._shards[i]

    def index(self, i: int) -> np.ndarray:
        """Shard ``i``'s index, ``(rows, 2)`` int32: (protein index, residue position)."""
        i = self._check_shard(i)
        if i not in self._index:
            arr = _load_npy(self.path / f"index_{self._names[i]}.npy", "index")
            if arr.shape != (int(self.shard_rows[i]), 2):
                raise ValueError(
                    f"activation store {self.path}: index {self._names[i]} has shape "
                    f"{arr.shape}, expected ({int(self.shard_rows[i])}, 2)"
                )
            self._index[i] = arr
        return self._index[i]

    def _gather(self, start: int, stop: int, get: Any, width: int, dtype: type) -> np.ndarray:
        if not 0 <= start <= stop <= self.num_rows:
            raise IndexError(f"rows [{start}, {stop}) out of range [0, {self.num_rows}]")
        first = int(np.searchsorted(self.offsets, start, side="right")) - 1
        parts = []
        i = first
        while start < stop:
            lo = start - int(self.offsets[i])
            hi = min(stop, int(self.offsets[i + 1])) - int(self.offsets[i])
            parts.append(np.asarray(get(i)[lo:hi], dtype=dtype))
            start += hi - lo
            i += 1
        if not parts:
            return np.zeros((0, width), dtype)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Global rows ``[start, stop)`` (across shards), a float32 ``(stop - start, d)`` array."""
        return self._gather(start, stop, self.shard, self.d, np.float32)

    def index_rows(self, start: int, stop: int) -> np.ndarray:
        """Global rows ``[start, stop)`` of the index, ``(stop - start, 2)`` int32."""
        return self._gather(start, stop, self.index, 2, np.int32)

    def iter_chunks(self, chunk_rows: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Every row in order, in chunks of ``chunk_rows`` (the last may be shorter).

        Yields:
          ``(acts (n, d) float32, index (n, 2) int32)``.
        """
        if chunk_rows <= 0:
            raise ValueError(f"iter_chunks: expected chunk_rows > 0, found {chunk_rows}")
        for start in range(0, self.num_rows, chunk_rows):
            stop = min(start + chunk_rows, self.num_rows)
            yield self.rows(start, stop), self.index_rows(start, stop)

    def positions_of(self, protein_index: int) -> np.ndarray:
        """Global row numbers of one protein's residues, ordered by residue position.

        Args:
          protein_index: ``0 <= protein_index < num_proteins``.

        Returns:
          ``(n,)`` int64 row numbers (empty if the protein has no stored rows); pass them to
          ``rows`` one by one or index ``iter_chunks`` output with them.
        """
        if not 0 <= protein_index < self.num_proteins:
            raise IndexError(f"protein {protein_index} out of range [0, {self.num_proteins})")
        if self._protein_rows is None:
            idx = np.concatenate([np.asarray(self.index(i)) for i in range(self.num_shards)])
            order = np.lexsort((idx[:, 1], idx[:, 0]))  # by protein, then position
            self._protein_rows = (order, idx[order, 0])
        order, prot = self._protein_rows
        lo, hi = np.searchsorted(prot, [protein_index, protein_index + 1])
        return order[lo:hi].astype(np.int64)

    def take(self, rows: np.ndarray) -> np.ndarray:
        """Activations of arbitrary global rows, ``(len(rows), d)`` float32, in the order given."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= self.num_rows):
            raise IndexError(f"rows out of range [0, {self.num_rows})")
        out = np.empty((rows.size, self.d), np.float32)
        shard_of = np.searchsorted(self.offsets, rows, side="right") - 1
        for i in np.unique(shard_of):
            sel = shard_of == i
            out[sel] = self.shard(int(i))[rows[sel] - self.offsets[i]]
        return out


def open_store(store_dir: str | os.PathLike) -> ActivationStore:
    """Open a finished activation store.

    Args:
      store_dir: a directory written by ``write_shard`` + ``finalize_store``.

    Returns:
      An ``ActivationStore``.

    Raises:
      ValueError: the directory is missing, incomplete (no ``meta.json``: ``finalize_store`` was
        not run or was interrupted), of another format or version, or its files disagree with
        ``meta.json`` (missing shard, wrong shape, wrong number of proteins).
    """
    root = Path(store_dir)
    info = _read_meta(root)
    _check_meta(root, info)
    mean = np.asarray(_load_npy(root / "mean.npy", "mean"), dtype=np.float64)
    if mean.shape != (info["d"],):
        raise ValueError(
            f"activation store {root}: mean.npy has shape {mean.shape}, expected ({info['d']},)"
        )
    proteins = _read_proteins(root, info["num_proteins"])
    store = ActivationStore(root, info, mean, proteins)
    if store.num_shards:
        store.shard(0)  # check the header of the first shard now, not at the first batch
    return store


def _read_meta(root: Path) -> dict:
    """The parsed ``meta.json`` of a store directory, of this format and version."""
    if not root.is_dir():
        raise ValueError(
            f"activation store {root}: expected a directory written by `jaxsae extract` "
            f"(e.g. OUT/layer_4), found {'a file' if root.exists() else 'that it does not exist'}"
        )
    meta_path = root / "meta.json"
    if not meta_path.is_file():
        n = sum(1 for p in root.iterdir() if _SHARD_RE.match(p.name))
        raise ValueError(
            f"activation store {root} is incomplete: no meta.json ({n} shard files found); "
            "re-run `jaxsae extract` with the same arguments to finish it"
        )
    try:
        info = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"activation store {root}: meta.json is corrupt ({err})") from err
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        found = info.get("format") if isinstance(info, dict) else type(info).__name__
        raise ValueError(
            f"activation store {root}: expected format {FORMAT!r} in meta.json, found {found!r}"
        )
    if info.get("version") != VERSION:
        raise ValueError(
            f"activation store {root}: expected version {VERSION}, found {info.get('version')}"
        )
    return info


def _check_meta(root: Path, info: dict) -> None:
    """``meta.json`` has its keys, a known dtype, consistent row counts, and its shards exist."""
    missing = [k for k in ("d", "dtype", "num_rows", "num_proteins", "shards") if k not in info]
    if missing:
        raise ValueError(f"activation store {root}: meta.json lacks {missing}")
    if info["dtype"] not in _DTYPES:
        raise ValueError(
            f"activation store {root}: expected dtype in {_DTYPES}, found {info['dtype']!r}"
        )
    if sum(s["rows"] for s in info["shards"]) != info["num_rows"]:
        raise ValueError(f"activation store {root}: shard row counts do not sum to num_rows")
    for s in info["shards"]:
        for kind in ("shard", "index"):
            if not (root / f"{kind}_{s['name']}.npy").is_file():
                raise ValueError(
                    f"activation store {root} is incomplete: {kind}_{s['name']}.npy is missing; "
                    "re-run `jaxsae extract` with the same arguments to write it again"
                )


def _read_proteins(root: Path, num_proteins: int) -> list[dict]:
    """The records of ``proteins.jsonl``, ``num_proteins`` of them."""
    ppath = root / "proteins.jsonl"
    if not ppath.is_file():
        raise ValueError(f"activation store {root} is incomplete: proteins.jsonl is missing")
    try:
        proteins = [json.loads(line) for line in ppath.read_text().splitlines() if line.strip()]
    except json.JSONDecodeError as err:
        raise ValueError(f"activation store {root}: proteins.jsonl is corrupt ({err})") from err
    if len(proteins) != num_proteins:
        raise ValueError(
            f"activation store {root}: proteins.jsonl has {len(proteins)} records, "
            f"meta.json says {num_proteins}"
        )
    return proteins
