"""Biological concepts to score features against: per residue and per domain.

Per-residue concepts (one indicator per residue):

* the 8 DSSP states ``H G I E B T S L`` (``L``: coil/irregular, DSSP's ``-``);
* their 3-state grouping: helix ``H = {H, G, I}``, strand ``E = {E, B}``, coil ``C = {T, S, L}``;
* residue identity (the 20 amino acids), a sanity concept that every model should cover.

Per-domain concepts (one indicator per protein; the default data are single SCOPe domains):
SCOPe class, fold, superfamily and family from the domain's ``sccs`` string (``b.1.1.2``).
SCOPe's ``.0`` families ("automated matches") are not real families and are skipped.
"""

from __future__ import annotations

import functools
import importlib.util
import re
from collections import Counter
from pathlib import Path
from typing import NamedTuple

import numpy as np

__all__ = [
    "DSSP8",
    "DSSP3",
    "AMINO_ACIDS",
    "SPLIT_NAMES",
    "ResidueConcepts",
    "DomainConcepts",
    "residue_concepts",
    "domain_concepts",
    "split_codes",
    "scop_descriptions",
]

DSSP8 = "HGIEBTSL"
DSSP8_NAMES = {
    "H": "α-helix",
    "G": "3₁₀-helix",
    "I": "π-helix",
    "E": "β-strand",
    "B": "β-bridge",
    "T": "turn",
    "S": "bend",
    "L": "coil",
}
DSSP3 = {"H": "HGI", "E": "EB", "C": "TSL"}
DSSP3_NAMES = {"H": "helix (H, G, I)", "E": "strand (E, B)", "C": "coil (T, S, L)"}
_DSSP_ALIASES = {"-": "L", " ": "L", "C": "L", "P": "L"}  # coil spellings; P: PPII (DSSP 4)
AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"
SCOP_LEVELS = ("class", "fold", "superfamily", "family")
SCOP_CLASSES = {
    "a": "all-α",
    "b": "all-β",
    "c": "α/β",
    "d": "α+β",
    "e": "multi-domain",
    "f": "membrane and cell surface",
    "g": "small proteins",
}
SPLIT_NAMES = ("train", "validation", "test")
_SPLIT_ALIASES = {"train": 0, "training": 0, "validation": 1, "valid": 1, "val": 1, "test": 2}


class ResidueConcepts(NamedTuple):
    """Per-residue concept indicators of every protein of a store.

    Attributes:
      names: ``(K,)`` concept names (``"DSSP8 H"``, ``"DSSP3 E"``, ``"residue C"``).
      descriptions: ``(K,)`` human-readable descriptions.
      offsets: ``(P + 1,)`` int64: protein ``p``'s residues are rows ``offsets[p]:offsets[p+1]``.
      table: ``(offsets[-1], K)`` uint8 indicators.
      annotated: ``(P,)`` bool: the protein has a secondary structure of its sequence's length.
    """

    names: tuple[str, ...]
    descriptions: tuple[str, ...]
    offsets: np.ndarray
    table: np.ndarray
    annotated: np.ndarray

    def lookup(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Indicators of rows ``index (n, 2)`` (protein, position): ``((n, K) uint8, (n,) bool)``.

        Rows of unannotated proteins, or past the annotation, get zeros and ``False``.
        """
        index = np.asarray(index)
        prot, pos = index[:, 0], index[:, 1]
        ok = (prot >= 0) & (prot < len(self.annotated))
        prot_c = np.where(ok, prot, 0)
        length = self.offsets[prot_c + 1] - self.offsets[prot_c]
        ok &= self.annotated[prot_c] & (pos >= 0) & (pos < length)
        rows = np.where(ok, self.offsets[prot_c] + pos, 0)
        out = self.table[rows] if len(self.table) else np.zeros((len(index), len(self.names)))
        return np.where(ok[:, None], out, 0).astype(np.uint8), ok


class DomainConcepts(NamedTuple):
    """Per-domain (per-protein) concept indicators.

    Attributes:
      names: ``(K,)`` concept names (``"superfamily b.1.1"``).
      descriptions: ``(K,)`` descriptions (SCOPe names when available).
      matrix: ``(P, K)`` uint8 indicators.
      annotated: ``(P,)`` bool: the protein has a SCOPe classification.
    """

    names: tuple[str, ...]
    descriptions: tuple[str, ...]
    matrix: np.ndarray
    annotated: np.ndarray


def _dssp_string(protein: dict) -> str | None:
    ss = protein.get("dssp")
    seq = protein.get("sequence")
    if not ss or not seq or len(ss) != len(seq):
        return None
    return "".join(_DSSP_ALIASES.get(c, c) for c in ss.upper())


def residue_concepts(proteins: list[dict]) -> ResidueConcepts:
    """Per-residue concepts (DSSP 8 states, 3 states, residue identity) of ``proteins``.

    Args:
      proteins: records with ``"sequence"`` and ``"dssp"`` strings of equal length (others are
        marked unannotated and left out of the counts).

    Returns:
      ``ResidueConcepts`` with ``K = 8 + 3 + 20`` concepts.
    """
    names = (
        [f"DSSP8 {c}" for c in DSSP8]
        + [f"DSSP3 {c}" for c in DSSP3]
        + [f"residue {a}" for a in AMINO_ACIDS]
    )
    desc = (
        [f"DSSP {c}: {DSSP8_NAMES[c]}" for c in DSSP8]
        + [f"3-state {DSSP3_NAMES[c]}" for c in DSSP3]
        + [f"amino acid {a}" for a in AMINO_ACIDS]
    )
    # lookup tables: character code -> concept column (-1: none)
    ss8 = np.full(256, -1, np.int64)
    ss3 = np.full(256, -1, np.int64)
    aa = np.full(256, -1, np.int64)
    for j, c in enumerate(DSSP8):
        ss8[ord(c)] = j
    for j, (_, members) in enumerate(DSSP3.items()):
        for c in members:
            ss3[ord(c)] = len(DSSP8) + j
    for j, a in enumerate(AMINO_ACIDS):
        aa[ord(a)] = len(DSSP8) + len(DSSP3) + j
    lengths = np.array([len(p.get("sequence") or "") for p in proteins], np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    table = np.zeros((int(offsets[-1]), len(names)), np.uint8)
    annotated = np.zeros((len(proteins),), bool)
    for p, rec in enumerate(proteins):
        ss = _dssp_string(rec)
        if ss is None:
            continue
        annotated[p] = True
        rows = np.arange(offsets[p], offsets[p + 1])
        s = np.frombuffer(ss.encode("ascii", "replace"), np.uint8)
        q = np.frombuffer(rec["sequence"].upper().encode("ascii", "replace"), np.uint8)
        for cols in (ss8[s], ss3[s], aa[q]):
            ok = cols >= 0
            table[rows[ok], cols[ok]] = 1
    return ResidueConcepts(tuple(names), tuple(desc), offsets, table, annotated)


def _scop_levels(sccs: str) -> list[str] | None:
    parts = str(sccs).strip().split(".")
    if len(parts) != 4 or not parts[0].isalpha():
        return None
    return [".".join(parts[: i + 1]) for i in range(4)]


def domain_concepts(
    proteins: list[dict], *, min_count: int = 5, descriptions: bool = True
) -> DomainConcepts:
    """Per-domain SCOPe concepts (class, fold, superfamily, family) with enough examples.

    Args:
      proteins: records with a ``"scop"`` sccs string (``"b.1.1.2"``); others are unannotated.
      min_count: keep concepts with at least this many domains among ``proteins``.
      descriptions: look up SCOPe names in the SCOPe file that sidechainnet installs (if any).

    Returns:
      ``DomainConcepts``.
    """
    per_protein: list[list[str]] = []
    counts: Counter[str] = Counter()
    for rec in proteins:
        levels = _scop_levels(rec.get("scop") or rec.get("sccs") or "")
        names = []
        if levels is not None:
            for level, code in zip(SCOP_LEVELS, levels, strict=True):
                if level == "family" and code.endswith(".0"):
                    continue
                names.append(f"{level} {code}")
        per_protein.append(names)
        counts.update(names)
    order = {lvl: i for i, lvl in enumerate(SCOP_LEVELS)}
    kept = sorted(
        (n for n, c in counts.items() if c >= min_count),
        key=lambda n: (order[n.split()[0]], n),
    )
    col = {n: j for j, n in enumerate(kept)}
    matrix = np.zeros((len(proteins), len(kept)), np.uint8)
    annotated = np.zeros((len(proteins),), bool)
    for p, names in enumerate(per_protein):
        annotated[p] = bool(names)
        for n in names:
            if n in col:
                matrix[p, col[n]] = 1
    names_db = scop_descriptions() if descriptions and kept else {}
    desc = []
    for n in kept:
        level, code = n.split()
        text = names_db.get(code) or (SCOP_CLASSES.get(code, "") if level == "class" else "")
        desc.append(f"SCOPe {level} {code}" + (f": {text}" if text else ""))
    return DomainConcepts(tuple(kept), tuple(desc), matrix, annotated)


def split_codes(proteins: list[dict]) -> np.ndarray:
    """``(P,)`` int8 split of each protein: 0 train, 1 validation, 2 test, -1 none."""
    out = np.full((len(proteins),), -1, np.int8)
    for p, rec in enumerate(proteins):
        out[p] = _SPLIT_ALIASES.get(str(rec.get("split", "")).lower(), -1)
    return out


@functools.cache
def scop_descriptions() -> dict[str, str]:
    """SCOPe sccs → name (``"b.1.1" → "Immunoglobulin"``) from sidechainnet's SCOPe file.

    Returns ``{}`` when the file is not installed.
    """
    spec = importlib.util.find_spec("sidechainnet")
    if spec is None or not spec.submodule_search_locations:
        return {}
    path = Path(list(spec.submodule_search_locations)[0]) / "resources" / "astral_data.txt"
    if not path.is_file():
        return {}
    pattern = re.compile(rb"^\d+\t(?:cl|cf|sf|fa)\t(\S+)\t[^\t]*\t([^\n]*)$", re.M)
    out: dict[str, str] = {}
    for code, name in pattern.findall(path.read_bytes()):
        out.setdefault(code.decode("ascii", "replace"), name.decode("utf-8", "replace").strip())
    return out
