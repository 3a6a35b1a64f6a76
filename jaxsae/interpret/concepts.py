"""Biological concepts to score features against, each with a kind: *point* or *range*.

A concept is a per-residue indicator plus, for a *range* concept, the *instances* that make it
up (InterPLM's rule, Simon & Zou 2024, and its code ``is_aa_level_concept`` / ``tp_per_domain``):

* **point** concepts are residues: residue identity, an active site, a modified residue, a
  glycosylation site, a metal-binding residue, the two cysteines of a disulfide bond. Recall is
  counted per residue.
* **range** concepts are made of instances that span residues: a DSSP helix or strand (one
  instance per contiguous run of the state within one protein), a SCOPe domain (one instance per
  domain), a UniProt domain, region, motif, zinc finger, transmembrane segment, binding region
  (one instance per annotated feature). Recall is counted per instance: an instance is *found*
  when the feature fires on at least one of its residues.

Precision is counted per residue for both kinds (see ``jaxsae.interpret.association``).

Concept sources, each a ``ConceptTable`` with its own set of annotated proteins (a protein
without an annotation of a source is left out of that source's counts, never counted as a
negative):

* ``sequence``: residue identity (the 20 amino acids), from the sequence alone; a sanity
  concept every model covers, excluded from InterPLM's headline counts;
* ``DSSP``: the 8 DSSP states ``H G I E B T S L`` (``L``: coil, DSSP's ``-``) and their
  3-state grouping (helix ``H = {H, G, I}``, strand ``E = {E, B}``, coil ``C = {T, S, L}``);
* ``SCOPe``: class, fold, superfamily and family from the domain's ``sccs`` (``b.1.1.2``);
  SCOPe's ``.0`` families ("automated matches") are not real families and are skipped;
* ``UniProt``: the feature table of UniProtKB entries (``jaxsae.protein.uniprot``), one concept
  per feature type (``"DOMAIN any"``) and, for the types InterPLM splits by description, one per
  frequent description (``"ZN_FING C2H2-type"``, ``"BINDING ATP"``).
"""

from __future__ import annotations

import functools
import importlib.util
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "DSSP8",
    "DSSP3",
    "AMINO_ACIDS",
    "SPLIT_NAMES",
    "UNIPROT_TYPES",
    "UNIPROT_POINT_TYPES",
    "CONCEPT_SOURCES",
    "ConceptTable",
    "ResidueConcepts",
    "DomainConcepts",
    "sequence_concepts",
    "dssp_concepts",
    "residue_concepts",
    "domain_concepts",
    "uniprot_concepts",
    "build_concepts",
    "concept_sources",
    "split_codes",
    "split_name",
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
#: The one spelling of the splits (the stores' and ``jaxsae extract --split``'s).
SPLIT_NAMES = ("train", "valid", "test")
_SPLIT_ALIASES = {"train": 0, "training": 0, "valid": 1, "validation": 1, "val": 1, "test": 2}

#: UniProtKB feature types scored as concepts, with their descriptions.
UNIPROT_TYPES = {
    "ACT_SITE": "active site",
    "BINDING": "binding site",
    "DISULFID": "disulfide bond (its cysteines)",
    "MOD_RES": "modified residue",
    "CARBOHYD": "glycosylation site",
    "LIPID": "lipidation site",
    "METAL": "metal-binding residue",
    "SIGNAL": "signal peptide",
    "TRANSIT": "transit peptide",
    "PROPEP": "propeptide",
    "TRANSMEM": "transmembrane segment",
    "INTRAMEM": "intramembrane segment",
    "TOPO_DOM": "topological domain",
    "ZN_FING": "zinc finger",
    "DOMAIN": "domain",
    "REGION": "region",
    "MOTIF": "short sequence motif",
    "REPEAT": "repeat",
    "COILED": "coiled coil",
    "COMPBIAS": "compositionally biased region",
    "HELIX": "helix (structure)",
    "STRAND": "β-strand (structure)",
    "TURN": "turn (structure)",
}
#: Point types: recall per residue. InterPLM's ``per_aa_concepts`` (active site, glycosylation,
#: modified residue, disulfide bond, amino acid) plus METAL, always a single residue (UniProt has
#: since merged it into BINDING; InterPLM's concept list has no METAL). Every other type is a range:
#: BINDING and LIPID included, as in InterPLM's code (for a one-residue site the two recalls
#: are equal).
UNIPROT_POINT_TYPES = frozenset({"ACT_SITE", "MOD_RES", "CARBOHYD", "DISULFID", "METAL"})
#: Types also split by description (InterPLM's ``categorical_concepts``; BINDING by ligand).
UNIPROT_BY_DESCRIPTION = frozenset(
    {
        "ACT_SITE",
        "BINDING",
        "CARBOHYD",
        "MOD_RES",
        "TRANSIT",
        "COMPBIAS",
        "DOMAIN",
        "REGION",
        "ZN_FING",
        "MOTIF",
        "SIGNAL",
    }
)
#: Catch-all concepts InterPLM leaves out of its evaluation (``subconcepts_to_exclude_from_evals``).
UNIPROT_EXCLUDED = frozenset(
    {"REGION any", "MOD_RES any", "DOMAIN any", "COMPBIAS any", "MOTIF any"}
)

#: Concept sources and how a store gets each one (for the report's "absent sources" note).
CONCEPT_SOURCES = {
    "sequence": "proteins with a 'sequence' (every store written by jaxsae extract)",
    "DSSP": "a per-residue 'dssp' string (the embedded SCOPe/DSSP set: jaxsae extract without "
    "--fasta)",
    "SCOPe": "a SCOPe 'scop' code (the embedded SCOPe/DSSP set: jaxsae extract without --fasta)",
    "UniProt": "UniProtKB features (jaxsae extract --uniprot FILE, with a Swiss-Prot .dat/.txt, "
    "UniProt XML or UniProtKB TSV file with feature columns)",
}


class ConceptTable(NamedTuple):
    """Per-residue concept indicators of every protein of a store, with kinds and instances.

    Attributes:
      names: ``(K,)`` concept names; the category is the first word (``"DSSP8 H"``).
      descriptions: ``(K,)`` human-readable descriptions.
      kinds: ``(K,)`` ``"point"`` or ``"range"``.
      offsets: ``(P + 1,)`` int64: protein ``p``'s residues are rows ``offsets[p]:offsets[p+1]``.
      table: ``(offsets[-1], K)`` uint8 indicators.
      annotated: ``(P,)`` bool: the protein carries this source's annotation.
      instances: ``(M, 4)`` int64 rows ``(protein, start, end, concept)`` of the range concepts'
        instances (residue positions ``start <= i < end``), sorted by protein.
      inst_offsets: ``(P + 1,)`` int64: protein ``p``'s instances are rows
        ``inst_offsets[p]:inst_offsets[p+1]``.
      source: the concept source (``"DSSP"``, ``"SCOPe"``, ``"UniProt"``, ``"sequence"``).
    """

    names: tuple[str, ...]
    descriptions: tuple[str, ...]
    kinds: tuple[str, ...]
    offsets: np.ndarray
    table: np.ndarray
    annotated: np.ndarray
    instances: np.ndarray
    inst_offsets: np.ndarray
    source: str = ""

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
        if len(self.table):
            out = self.table[rows]
        else:
            out = np.zeros((len(index), len(self.names)), np.uint8)
        return np.where(ok[:, None], out, 0).astype(np.uint8), ok

    def instance_ids(self) -> np.ndarray:
        """``(offsets[-1], K)`` int64: each residue's instance number (1, 2, …; 0 = none).

        InterPLM's label matrix: range concepts number their instances, point concepts number
        their residues. A residue in two instances of one concept keeps the later one (for
        tests and small data; the streaming count uses ``instances`` directly).
        """
        ids = np.zeros(self.table.shape, np.int64)
        for j, (p, s, e, k) in enumerate(self.instances):
            ids[self.offsets[p] + s : self.offsets[p] + e, k] = j + 1
        point = np.array([k == "point" for k in self.kinds], bool)
        if point.any():
            rows, cols = np.nonzero(self.table[:, point])
            ids[rows, np.flatnonzero(point)[cols]] = len(self.instances) + 1 + rows
        return ids


ResidueConcepts = ConceptTable  # the name of earlier releases
DomainConcepts = ConceptTable


def _lengths(proteins: Sequence[Mapping[str, Any]]) -> np.ndarray:
    out = []
    for p in proteins:
        seq = p.get("sequence")
        out.append(len(seq) if seq else int(p.get("length") or 0))
    return np.asarray(out, np.int64)


def _table(
    proteins: Sequence[Mapping[str, Any]],
    names: Sequence[str],
    descriptions: Sequence[str],
    kinds: Sequence[str],
    annotated: np.ndarray,
    entries: Iterable[tuple[int, int, int, int]],
    source: str,
    table: np.ndarray | None = None,
) -> ConceptTable:
    """A ``ConceptTable`` from ``(protein, concept, start, end)`` entries (clipped to length).

    Every entry of a range concept is one instance; an entry of a point concept marks residues.
    """
    lengths = _lengths(proteins)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    if table is None:
        table = np.zeros((int(offsets[-1]), len(names)), np.uint8)
    inst = []
    for p, k, s, e in entries:
        s, e = max(0, int(s)), min(int(e), int(lengths[p]))
        if e <= s or not annotated[p]:
            continue
        table[offsets[p] + s : offsets[p] + e, k] = 1
        if kinds[k] == "range":
            inst.append((p, s, e, k))
    inst_arr = np.asarray(sorted(inst), np.int64).reshape(-1, 4)
    counts = np.bincount(inst_arr[:, 0], minlength=len(proteins)) if len(inst_arr) else None
    if counts is None:
        counts = np.zeros((len(proteins),), np.int64)
    inst_offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return ConceptTable(
        tuple(names),
        tuple(descriptions),
        tuple(kinds),
        offsets,
        table,
        annotated,
        inst_arr,
        inst_offsets,
        source,
    )


def _runs(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Contiguous runs of equal values: ``(value, start, end)`` arrays."""
    if len(codes) == 0:
        return codes, codes, codes
    cut = np.flatnonzero(codes[1:] != codes[:-1]) + 1
    starts = np.concatenate([[0], cut])
    ends = np.concatenate([cut, [len(codes)]])
    return codes[starts], starts, ends


def _dssp_string(protein: Mapping[str, Any]) -> str | None:
    ss = protein.get("dssp")
    seq = protein.get("sequence")
    if not ss or not seq or len(ss) != len(seq):
        return None
    return "".join(_DSSP_ALIASES.get(c, c) for c in ss.upper())


def sequence_concepts(proteins: Sequence[Mapping[str, Any]]) -> ConceptTable:
    """Residue identity (20 point concepts ``"residue A"`` …) of every protein with a sequence."""
    names = [f"residue {a}" for a in AMINO_ACIDS]
    desc = [f"amino acid {a}" for a in AMINO_ACIDS]
    lut = np.full(256, -1, np.int64)
    for j, a in enumerate(AMINO_ACIDS):
        lut[ord(a)] = j
    lengths = _lengths(proteins)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    table = np.zeros((int(offsets[-1]), len(names)), np.uint8)
    annotated = np.zeros((len(proteins),), bool)
    for p, rec in enumerate(proteins):
        seq = rec.get("sequence")
        if not seq or len(seq) != lengths[p]:
            continue
        annotated[p] = True
        cols = lut[np.frombuffer(seq.upper().encode("ascii", "replace"), np.uint8)]
        rows = np.arange(offsets[p], offsets[p + 1])
        ok = cols >= 0
        table[rows[ok], cols[ok]] = 1
    return _table(proteins, names, desc, ["point"] * 20, annotated, (), "sequence", table)


def dssp_concepts(proteins: Sequence[Mapping[str, Any]]) -> ConceptTable:
    """DSSP 8-state and 3-state concepts (ranges: one instance per run of a state)."""
    names = [f"DSSP8 {c}" for c in DSSP8] + [f"DSSP3 {c}" for c in DSSP3]
    desc = [f"DSSP {c}: {DSSP8_NAMES[c]}" for c in DSSP8] + [
        f"3-state {DSSP3_NAMES[c]}" for c in DSSP3
    ]
    ss8 = np.full(256, -1, np.int64)
    ss3 = np.full(256, -1, np.int64)
    for j, c in enumerate(DSSP8):
        ss8[ord(c)] = j
    for j, members in enumerate(DSSP3.values()):
        for c in members:
            ss3[ord(c)] = len(DSSP8) + j
    annotated = np.zeros((len(proteins),), bool)
    entries = []
    for p, rec in enumerate(proteins):
        ss = _dssp_string(rec)
        if ss is None:
            continue
        annotated[p] = True
        s = np.frombuffer(ss.encode("ascii", "replace"), np.uint8)
        for lut in (ss8, ss3):
            vals, starts, ends = _runs(lut[s])
            entries += [
                (p, int(v), int(a), int(b))
                for v, a, b in zip(vals, starts, ends, strict=True)
                if v >= 0
            ]
    return _table(proteins, names, desc, ["range"] * len(names), annotated, entries, "DSSP")


def residue_concepts(proteins: Sequence[Mapping[str, Any]]) -> ConceptTable:
    """DSSP states and residue identity of the proteins with DSSP (the earlier releases' set).

    ``build_concepts`` keeps the two sources apart instead (residue identity for every protein
    with a sequence).
    """
    d = dssp_concepts(proteins)
    s = sequence_concepts(proteins)
    table = np.concatenate([d.table, s.table], axis=1)
    return d._replace(
        names=d.names + s.names,
        descriptions=d.descriptions + s.descriptions,
        kinds=d.kinds + s.kinds,
        table=table,
        source="DSSP",
    )


def _scop_levels(sccs: str) -> list[str] | None:
    parts = str(sccs).strip().split(".")
    if len(parts) != 4 or not parts[0].isalpha():
        return None
    return [".".join(parts[: i + 1]) for i in range(4)]


def domain_concepts(
    proteins: Sequence[Mapping[str, Any]], *, min_count: int = 5, descriptions: bool = True
) -> ConceptTable:
    """SCOPe concepts (class, fold, superfamily, family): ranges, one instance per domain.

    Args:
      proteins: records with a ``"scop"`` sccs string (``"b.1.1.2"``); others are unannotated.
      min_count: keep concepts with at least this many domains among ``proteins``.
      descriptions: look up SCOPe names in the SCOPe file that sidechainnet installs (if any).

    Returns:
      ``ConceptTable`` (source ``"SCOPe"``).
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
    annotated = np.array([bool(n) for n in per_protein], bool)
    lengths = _lengths(proteins)
    entries = [
        (p, col[n], 0, int(lengths[p]))
        for p, names in enumerate(per_protein)
        for n in names
        if n in col
    ]
    names_db = scop_descriptions() if descriptions and kept else {}
    desc = []
    for n in kept:
        level, code = n.split()
        text = names_db.get(code) or (SCOP_CLASSES.get(code, "") if level == "class" else "")
        desc.append(f"SCOPe {level} {code}" + (f": {text}" if text else ""))
    return _table(proteins, kept, desc, ["range"] * len(kept), annotated, entries, "SCOPe")


_NUMBERED = re.compile(r"\s+\d+$")


def _description_key(ftype: str, description: str) -> str:
    """The description a feature is grouped by: up to the first ``;``, repeat number dropped.

    ``"C2H2-type 3"`` → ``"C2H2-type"``, ``"Phosphoserine; by PKA"`` → ``"Phosphoserine"``.
    """
    text = (description or "").split(";")[0].strip()
    return _NUMBERED.sub("", text)


def uniprot_concepts(
    proteins: Sequence[Mapping[str, Any]], *, min_description_count: int = 100
) -> ConceptTable:
    """UniProtKB feature concepts of the proteins that carry a ``"features"`` table.

    Each protein record's ``"features"`` is a list of ``[type, start, end, description]`` with
    0-based positions, ``end`` exclusive (``jaxsae.protein.uniprot`` writes them). Concepts:
    ``"TYPE any"`` for every type of ``UNIPROT_TYPES`` present (except InterPLM's excluded
    catch-alls ``UNIPROT_EXCLUDED``), and ``"TYPE description"`` for the types of
    ``UNIPROT_BY_DESCRIPTION`` whose description occurs at least ``min_description_count``
    times (InterPLM's ``min_required_instances``, 100). A DISULFID feature ``start..end`` marks
    its two cysteines (``start`` and ``end - 1``).

    Returns:
      ``ConceptTable`` (source ``"UniProt"``).
    """
    annotated = np.array([isinstance(p.get("features"), list) for p in proteins], bool)
    feats: list[tuple[int, str, int, int, str]] = []
    desc_counts: Counter[tuple[str, str]] = Counter()
    for p, rec in enumerate(proteins):
        if not annotated[p]:
            continue
        for f in rec["features"]:
            ftype, s, e = str(f[0]), int(f[1]), int(f[2])
            text = str(f[3]) if len(f) > 3 and f[3] else ""
            if ftype not in UNIPROT_TYPES:
                continue
            key = _description_key(ftype, text) if ftype in UNIPROT_BY_DESCRIPTION else ""
            feats.append((p, ftype, s, e, key))
            if key:
                desc_counts[(ftype, key)] += 1
    present = [t for t in UNIPROT_TYPES if any(f[1] == t for f in feats)]
    names, descs, kinds = [], [], []
    col: dict[str, int] = {}
    for t in present:
        kind = "point" if t in UNIPROT_POINT_TYPES else "range"
        subs = sorted(
            k for (ft, k), c in desc_counts.items() if ft == t and c >= min_description_count
        )
        for sub in ["any", *subs]:
            name = f"{t} {sub}"
            if name in UNIPROT_EXCLUDED:
                continue
            col[name] = len(names)
            names.append(name)
            descs.append(f"UniProt {UNIPROT_TYPES[t]}" + ("" if sub == "any" else f": {sub}"))
            kinds.append(kind)
    entries = []
    for p, t, s, e, key in feats:
        spans = [(s, s + 1), (e - 1, e)] if t == "DISULFID" else [(s, e)]
        for name in (f"{t} any", f"{t} {key}" if key else None):
            if name in col:
                entries += [(p, col[name], a, b) for a, b in spans]
    return _table(proteins, names, descs, kinds, annotated, entries, "UniProt")


def concept_sources(proteins: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """``{source: number of proteins carrying it}`` for every source of ``CONCEPT_SOURCES``."""
    return {
        "sequence": sum(bool(p.get("sequence")) for p in proteins),
        "DSSP": sum(_dssp_string(p) is not None for p in proteins),
        "SCOPe": sum(
            _scop_levels(p.get("scop") or p.get("sccs") or "") is not None for p in proteins
        ),
        "UniProt": sum(isinstance(p.get("features"), list) for p in proteins),
    }


def build_concepts(
    proteins: Sequence[Mapping[str, Any]],
    *,
    min_domains: int = 5,
    min_description_count: int = 100,
    descriptions: bool = True,
) -> dict[str, ConceptTable]:
    """Every concept source the proteins support: ``{source: ConceptTable}``.

    Args:
      proteins: protein records (``"sequence"``, and ``"dssp"``, ``"scop"``, ``"features"``
        where known).
      min_domains: SCOPe concepts need this many domains among ``proteins``.
      min_description_count: UniProt descriptions need this many features.
      descriptions: look up SCOPe names.

    Returns:
      The sources with at least one annotated protein, in the order of ``CONCEPT_SOURCES``.
    """
    have = concept_sources(proteins)
    out: dict[str, ConceptTable] = {}
    if have["sequence"]:
        out["sequence"] = sequence_concepts(proteins)
    if have["DSSP"]:
        out["DSSP"] = dssp_concepts(proteins)
    if have["SCOPe"]:
        out["SCOPe"] = domain_concepts(proteins, min_count=min_domains, descriptions=descriptions)
    if have["UniProt"]:
        out["UniProt"] = uniprot_concepts(proteins, min_description_count=min_description_count)
    return out


def split_codes(proteins: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """``(P,)`` int8 split of each protein: 0 train, 1 valid, 2 test, -1 none.

    Both spellings of the validation split are read (``"valid"``, the stores', and
    ``"validation"``, written by earlier releases).
    """
    out = np.full((len(proteins),), -1, np.int8)
    for p, rec in enumerate(proteins):
        out[p] = _SPLIT_ALIASES.get(str(rec.get("split", "")).lower(), -1)
    return out


def split_name(name: str) -> str:
    """The one spelling (``SPLIT_NAMES``) of a split name: ``"validation"`` → ``"valid"``."""
    code = _SPLIT_ALIASES.get(str(name).lower())
    if code is None:
        raise ValueError(f"split: expected one of {SPLIT_NAMES}, found {name!r}")
    return SPLIT_NAMES[code]


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
