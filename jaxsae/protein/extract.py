"""Per-residue activations of ESM-2, written to one activation store per layer.

``extract_activations`` runs the model over proteins and writes ``out_dir/layer_{l}/`` (the
``jaxsae.data.store`` format): rows are residues (``<cls>``, ``<eos>`` and padding excluded),
the index holds ``(protein index, residue position)`` with positions from 0.

How the work is laid out:

* **Shards.** Proteins, in input order, are grouped into shards of about ``rows_per_shard``
  residues (a shard closes at the first protein that takes it past the limit). The grouping
  depends only on the proteins and ``rows_per_shard``, so it is the same on every run.
* **Batches, bucketed by length and packed.** Inside a shard, proteins (``n + 2`` tokens with
  ``<cls>``/``<eos>``) are packed, longest first, into rows of a few *bucket* lengths (by
  default 128, 256, 512, 1024 tokens): a protein goes into the first row with room left, else
  opens a row of the smallest bucket that holds it (``pack_rows``). Sequences packed in a row
  do not see each other (block-diagonal attention, rotary positions restarting at each
  ``<cls>``), so the result is that of one protein per row, with little padding. Rows of one
  length form batches of ``max_tokens_per_batch // length`` rows; the last batch of a length is
  padded with empty rows up to a power of two, so the jitted forward compiles a few shapes,
  not one per protein.
* **Memory.** One shard of activations per layer is held at a time.
* **Several processes.** Run with ``jax.distributed`` initialised (``jaxsae extract
  --coordinator … --num-processes N --process-id I``), every process reads the same proteins
  and computes the shards ``s`` with ``s % N`` equal to its number, on its own devices; process
  0 writes ``extract.json`` first and finalises each store once every process has written its
  shards. The store is the same, row for row, as one process would write.
* **Resume.** A shard is written atomically for every layer; on a re-run, shards that exist for
  every layer are skipped. ``out_dir/extract.json`` records what was asked (model, layers,
  dtype, shard size, a fingerprint of the proteins); a re-run that asks for something else
  raises instead of mixing results.
* **Long proteins.** ESM-2 was trained on at most 1024 tokens (1022 residues). Longer
  sequences are cropped to their first ``max_tokens − 2`` residues with a warning
  (``too_long="crop"``, the default; the store keeps the cropped sequence and DSSP string and
  the original length as ``"cropped_from"``) or rejected (``too_long="error"``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_BUCKETS",
    "ExtractConfig",
    "extract_activations",
    "plan_shards",
    "pack_rows",
    "bucket_length",
    "group_batches",
    "batch_arrays",
]

#: Padded lengths (tokens, ``<cls>``/``<eos>`` included) of the batches.
DEFAULT_BUCKETS: tuple[int, ...] = (128, 256, 512, 1024)
_FIELDS = ("description", "dssp", "scop", "split", "features")


def _as_protein(i: int, p: Any) -> dict:
    """A protein dict ``{"id", "sequence", ...}`` from a string, a record or a dict."""
    if isinstance(p, str):
        return {"id": f"protein_{i}", "sequence": p}
    if isinstance(p, dict):
        d = dict(p)
    elif hasattr(p, "_asdict"):
        d = p._asdict()
    else:
        raise ValueError(
            f"protein {i}: expected a sequence string, a record with id and sequence, or a dict, "
            f"found {type(p).__name__}"
        )
    if "sequence" not in d:
        raise ValueError(f"protein {i}: expected a 'sequence' field, found {sorted(d)}")
    d.setdefault("id", f"protein_{i}")
    return {k: d[k] for k in ("id", "sequence", *_FIELDS) if d.get(k) not in (None, "")}


def bucket_length(n_tokens: int, buckets: Sequence[int]) -> int:
    """The smallest bucket that holds ``n_tokens``."""
    for b in buckets:
        if b >= n_tokens:
            return b
    raise ValueError(f"no bucket holds {n_tokens} tokens (largest {buckets[-1]})")


def plan_shards(lengths: Sequence[int], rows_per_shard: int) -> list[list[int]]:
    """Group protein indices, in order, into shards of about ``rows_per_shard`` residues.

    A shard closes once it holds ``rows_per_shard`` residues or more; every shard has at least
    one protein.
    """
    shards: list[list[int]] = [[]]
    rows = 0
    for i, n in enumerate(lengths):
        if shards[-1] and rows + n > rows_per_shard:
            shards.append([])
            rows = 0
        shards[-1].append(i)
        rows += n
    return shards if shards[0] else []


def pack_rows(
    idx: Sequence[int], lengths: Sequence[int], buckets: Sequence[int]
) -> list[tuple[int, list[int]]]:
    """Pack proteins into rows of bucket lengths (first-fit decreasing).

    Proteins are taken longest first (a protein of ``n`` residues takes ``n + 2`` tokens); each
    goes into the first open row with room for it, else opens a row of the smallest bucket that
    holds it. Short proteins so fill the tails of rows opened by long ones.

    Returns:
      ``(row_length, protein indices)`` rows, in the order they were opened.
    """
    rows: list[tuple[int, list[int]]] = []
    free: list[int] = []
    for i in sorted(idx, key=lambda i: (-lengths[i], i)):
        need = lengths[i] + 2
        for r, room in enumerate(free):
            if room >= need:
                rows[r][1].append(i)
                free[r] -= need
                break
        else:
            b = bucket_length(need, buckets)
            rows.append((b, [i]))
            free.append(b - need)
    return rows


def group_batches(
    rows: list[tuple[int, list[int]]], max_tokens: int
) -> list[tuple[int, list[list[int]]]]:
    """Group rows of equal length into batches of ``max(1, max_tokens // length)`` rows."""
    by_len: dict[int, list[list[int]]] = {}
    for b, members in rows:
        by_len.setdefault(b, []).append(members)
    out = []
    for b in sorted(by_len, reverse=True):
        per = max(1, max_tokens // b)
        rs = by_len[b]
        out += [(b, rs[s : s + per]) for s in range(0, len(rs), per)]
    return out


def batch_arrays(
    recs: list[dict], batch_rows: list[list[int]], n_rows: int, length: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[tuple[int, int, int]]]:
    """Tokens, segment ids and rotary positions ``(n_rows, length)`` of a batch of packed rows.

    Returns also ``(protein, row, column of its first residue)`` for every protein placed.
    Rows past ``len(batch_rows)`` are fillers: a lone ``<pad>`` marked valid.
    """
    from jaxsae.protein.alphabet import PAD_ID, tokenize

    tokens = np.full((n_rows, length), PAD_ID, dtype=np.int32)
    segments = np.zeros((n_rows, length), dtype=np.int32)
    positions = np.zeros((n_rows, length), dtype=np.int32)
    placed = []
    for j, members in enumerate(batch_rows):
        col = 0
        for k, p in enumerate(members):
            t = tokenize(recs[p]["sequence"])
            tokens[j, col : col + len(t)] = t
            segments[j, col : col + len(t)] = k + 1
            positions[j, col : col + len(t)] = np.arange(len(t))
            placed.append((p, j, col + 1))
            col += len(t)
    segments[len(batch_rows) :, 0] = 1
    return tokens, segments, positions, placed


def _collect(
    hidden: Any, placed: list, lengths: Sequence[int], row_of: dict[int, int], acts: np.ndarray
) -> int:
    """Copy each placed protein's residues from ``hidden`` into the shard buffer ``acts``;
    return the number of residues copied."""
    h = np.asarray(hidden)
    for p, j, c in placed:
        n, r0 = lengths[p], row_of[p]
        acts[:, r0 : r0 + n] = h[:, j, c : c + n]
    return sum(lengths[p] for p, _, _ in placed)


def _shard_done(store_dir: Path, shard_id: int) -> bool:
    """Whether a shard was written and is intact; a damaged one is named in a warning."""
    from jaxsae.data.store import shard_problem

    problem = shard_problem(store_dir, shard_id)
    if problem not in (None, "missing"):
        warnings.warn(f"{problem}; extracting that shard again", stacklevel=3)
    return problem is None


def _fingerprint(proteins: list[dict]) -> str:
    h = hashlib.sha256()
    for p in proteins:
        h.update(p["id"].encode() + b"\0" + p["sequence"].encode() + b"\n")
    return h.hexdigest()


@dataclass(frozen=True)
class ExtractConfig:
    """Options of ``extract_activations`` (validated on construction).

    Attributes:
      dtype: ``"float32"`` or ``"float16"`` for the stored activations (computation is float32).
      max_tokens_per_batch: padded tokens per forward call (``batch × bucket``).
      rows_per_shard: residues per shard (about; memory ``rows × d × 4`` bytes per layer).
      buckets: increasing padded lengths; the last one must be ``≤ config.max_tokens`` of the
        model (checked by ``extract_activations``, which knows the model).
      too_long: ``"crop"`` (warn, keep the first ``max_tokens − 2`` residues) or ``"error"``.
      progress: show a tqdm bar (residues).
    """

    dtype: str = "float32"
    max_tokens_per_batch: int = 4096
    rows_per_shard: int = 65536
    buckets: tuple[int, ...] = DEFAULT_BUCKETS
    too_long: str = "crop"
    progress: bool = True

    def __post_init__(self) -> None:
        if self.dtype not in ("float32", "float16"):
            raise ValueError(f"dtype: expected 'float32' or 'float16', found {self.dtype!r}")
        if self.too_long not in ("crop", "error"):
            raise ValueError(f"too_long: expected 'crop' or 'error', found {self.too_long!r}")
        if self.max_tokens_per_batch < 1 or self.rows_per_shard < 1:
            raise ValueError(
                "expected max_tokens_per_batch >= 1 and rows_per_shard >= 1, found "
                f"{self.max_tokens_per_batch} and {self.rows_per_shard}"
            )
        buckets = tuple(int(b) for b in self.buckets)
        if not buckets or list(buckets) != sorted(set(buckets)):
            raise ValueError(f"buckets: expected increasing lengths, found {buckets}")
        object.__setattr__(self, "buckets", buckets)

    def batch_rows(self, length: int, n_rows: int) -> int:
        """Rows of a batch of ``length``-token rows holding ``n_rows`` packed rows: a full batch
        has ``max_tokens_per_batch // length`` rows, a last one is padded to a power of 2."""
        per = max(1, self.max_tokens_per_batch // length)
        return min(per, 1 << (n_rows - 1).bit_length())


def extract_activations(
    proteins: Iterable[Any],
    model: tuple[Any, Any],
    layers: int | Sequence[int],
    out_dir: str | os.PathLike,
    options: ExtractConfig | None = None,
    **changes: Any,
) -> dict[int, Any]:
    """Run ESM-2 over proteins and write an activation store per layer (resumable).

    Args:
      proteins: sequence strings, ``FastaRecord``/``ProteinRecord`` tuples or dicts with
        ``"sequence"`` (and ``"id"``; ``"dssp"``, ``"scop"``, ``"split"``, ``"description"`` and
        UniProt ``"features"`` are kept in the store's ``proteins.jsonl``).
      model: ``(config, params)`` as returned by ``load_esm2`` / ``load_default_model``.
      layers: hidden-state index or indices, ``0`` (embeddings) … ``L`` (last block, with the
        final LayerNorm), negative from the end.
      out_dir: the stores go to ``out_dir/layer_{l}/``.
      options: an ``ExtractConfig`` (default: its defaults).
      **changes: fields of ``ExtractConfig`` given by name (``dtype=``, ``max_tokens_per_batch=``,
        ``rows_per_shard=``, ``buckets=``, ``too_long=``, ``progress=``); they replace those of
        ``options``.

    Returns:
      ``{layer: ActivationStore}``.

    Raises:
      ValueError: no proteins, invalid sequences (naming the protein and position), a bad
        layer, a too-long protein with ``too_long="error"``, or an ``out_dir`` holding an
        extraction with other settings.
    """
    from jaxsae.data.store import open_store
    from jaxsae.training.distributed import barrier

    opts = dataclasses.replace(options or ExtractConfig(), **changes)
    config, params = model
    layers = _check_model(config, params, layers, opts)
    recs = _prepare_proteins(proteins, opts.buckets[-1] - 2, opts.too_long)
    out = Path(out_dir)
    _record_plan(out, _plan(config, layers, recs, opts))
    dirs = {layer: out / f"layer_{layer}" for layer in layers}
    _write_shards(recs, model, layers, dirs, opts)
    barrier("jaxsae-extract-shards")  # every process's shards are written
    _finalise_stores(recs, config, layers, dirs, opts)
    barrier("jaxsae-extract-finalised")
    return {layer: open_store(dirs[layer]) for layer in layers}


def _check_model(
    config: Any, params: Any, layers: int | Sequence[int], opts: ExtractConfig
) -> tuple[int, ...]:
    """The resolved, sorted, distinct ``layers``, once the buckets and weights fit ``config``."""
    from jaxsae.protein.esm2 import check_params, resolve_layers

    if opts.buckets[-1] > config.max_tokens:
        raise ValueError(
            f"buckets: expected increasing lengths up to max_tokens={config.max_tokens}, "
            f"found {opts.buckets}"
        )
    layers = resolve_layers(config, [layers] if isinstance(layers, int) else list(layers))
    check_params(params, config)
    return tuple(sorted(set(layers)))


def _prepare_proteins(proteins: Iterable[Any], limit: int, too_long: str) -> list[dict]:
    """Protein dicts with checked sequences and their ``"length"``, those longer than ``limit``
    residues cropped (``"cropped_from"``, with a warning) or rejected (``too_long="error"``)."""
    from jaxsae.protein.alphabet import check_sequence

    recs = [_as_protein(i, p) for i, p in enumerate(proteins)]
    if not recs:
        raise ValueError("extract_activations: expected at least one protein, found none")
    cropped = []
    for i, r in enumerate(recs):
        check_sequence(r["sequence"], name=f"protein {i} ({r['id']})")
        if len(r["sequence"]) > limit:
            if too_long == "error":
                raise ValueError(
                    f"protein {i} ({r['id']}): expected at most {limit} residues (the model's "
                    f"{limit + 2} tokens less <cls>/<eos>), found {len(r['sequence'])}; pass "
                    "too_long='crop' to keep its first residues"
                )
            cropped.append(r["id"])
            r["cropped_from"] = len(r["sequence"])
            r["sequence"] = r["sequence"][:limit]
            if "dssp" in r:
                r["dssp"] = r["dssp"][:limit]
        r["length"] = len(r["sequence"])
    if cropped:
        warnings.warn(
            f"{len(cropped)} protein(s) longer than {limit} residues cropped to their first "
            f"{limit}: {', '.join(cropped[:5])}{' …' if len(cropped) > 5 else ''}",
            stacklevel=3,
        )
    return recs


def _plan(config: Any, layers: tuple[int, ...], recs: list[dict], opts: ExtractConfig) -> dict:
    """What ``extract.json`` records: what was asked, and a fingerprint of the proteins."""
    return {
        "model": config.name,
        "num_layers": config.num_layers,
        "d_model": config.d_model,
        "layers": list(layers),
        "dtype": opts.dtype,
        "rows_per_shard": opts.rows_per_shard,
        "num_proteins": len(recs),
        "proteins_sha256": _fingerprint(recs),
    }


def _record_plan(out: Path, plan: dict) -> None:
    """Write ``out/extract.json`` (process 0, atomically), or check that the one there asked the
    same; every process waits for it."""
    from jaxsae.data.store import atomic_save_text
    from jaxsae.training.distributed import barrier, is_main

    plan_path = out / "extract.json"
    if plan_path.is_file():
        old = json.loads(plan_path.read_text())
        diff = {k: (old.get(k), v) for k, v in plan.items() if old.get(k) != v}
        if diff:
            raise ValueError(
                f"{out} holds an extraction with other settings ({diff}: (found, asked)); "
                "use another directory or delete it"
            )
    elif is_main():
        out.mkdir(parents=True, exist_ok=True)
        atomic_save_text(plan_path, json.dumps(plan, indent=1))
    barrier("jaxsae-extract-plan")


def _write_shards(
    recs: list[dict],
    model: tuple[Any, Any],
    layers: tuple[int, ...],
    dirs: dict[int, Path],
    opts: ExtractConfig,
) -> None:
    """Compute and write this process's shards that are not on disk yet, for every layer."""
    import jax
    from tqdm.auto import tqdm

    from jaxsae.data.store import write_shard
    from jaxsae.training.distributed import is_main

    config, params = model
    lengths = [r["length"] for r in recs]
    shards = plan_shards(lengths, opts.rows_per_shard)
    mine = range(jax.process_index(), len(shards), jax.process_count())
    todo = [s for s in mine if not all(_shard_done(dirs[k], s) for k in layers)]
    placed = (config, jax.device_put(params))
    bar = tqdm(
        total=sum(lengths[i] for s in todo for i in shards[s]),
        unit="res",
        unit_scale=True,
        desc=f"extract layers {','.join(map(str, layers))}",
        disable=not (opts.progress and is_main()),
    )
    with bar:
        for s in todo:
            acts, index = _shard_activations(recs, lengths, shards[s], placed, layers, opts, bar)
            for k, layer in enumerate(layers):
                write_shard(dirs[layer], s, acts[k], index)


def _shard_activations(
    recs: list[dict],
    lengths: list[int],
    idx: list[int],
    model: tuple[Any, Any],
    layers: tuple[int, ...],
    opts: ExtractConfig,
    bar: Any,
) -> tuple[np.ndarray, np.ndarray]:
    """One shard's activations ``(len(layers), rows, d)`` and index ``(rows, 2)`` of
    ``(protein, position)``: its proteins packed into batches and run through the model."""
    from jaxsae.protein.esm2 import esm2_hidden_states

    config, params = model
    offsets = np.cumsum([0] + [lengths[i] for i in idx])
    row_of = {p: int(o) for p, o in zip(idx, offsets[:-1], strict=True)}
    acts = np.empty((len(layers), int(offsets[-1]), config.d_model), dtype=np.dtype(opts.dtype))
    pending = None  # one batch in flight: dispatch the next before copying this one
    rows = pack_rows(idx, lengths, opts.buckets)
    for b, members in group_batches(rows, opts.max_tokens_per_batch):
        n_rows = opts.batch_rows(b, len(members))
        tokens, segments, positions, placed = batch_arrays(recs, members, n_rows, b)
        hidden = esm2_hidden_states(
            params, tokens, config=config, layers=layers, segments=segments, positions=positions
        )
        if pending is not None:
            bar.update(_collect(*pending, lengths, row_of, acts))
        pending = (hidden, placed)
    if pending is not None:
        bar.update(_collect(*pending, lengths, row_of, acts))
    index = np.empty((int(offsets[-1]), 2), dtype=np.int32)
    for p in idx:
        r0, n = row_of[p], lengths[p]
        index[r0 : r0 + n, 0] = p
        index[r0 : r0 + n, 1] = np.arange(n)
    return acts, index


def _finalise_stores(
    recs: list[dict],
    config: Any,
    layers: tuple[int, ...],
    dirs: dict[int, Path],
    opts: ExtractConfig,
) -> None:
    """Process 0 finalises each layer's store (``meta.json``, ``proteins.jsonl``, index)."""
    from jaxsae.data.store import finalize_store
    from jaxsae.training.distributed import is_main

    if not is_main():
        return
    for layer in layers:
        meta = {
            "model": config.name,
            "layer": layer,
            "num_layers": config.num_layers,
            "d_model": config.d_model,
            "dtype": opts.dtype,
            "num_residues": int(sum(r["length"] for r in recs)),
            "num_proteins": len(recs),
            "num_cropped": sum("cropped_from" in r for r in recs),
            "positions": "residues only (<cls>, <eos>, padding excluded), from 0",
        }
        finalize_store(dirs[layer], recs, meta)
