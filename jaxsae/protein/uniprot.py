"""UniProtKB entries with their feature tables, as proteins whose features become concepts.

Three formats, each plain or gzipped:

* Swiss-Prot / UniProtKB flat files (``.dat``, ``.txt``, ``.swiss``), read with Biopython's
  ``Bio.SwissProt`` entry by entry (a malformed entry is skipped and counted);
* UniProt XML (``.xml``), read with Biopython's ``uniprot-xml`` parser;
* UniProtKB TSV exports (``.tsv``, ``.tab``) with ``Entry``, ``Sequence`` and feature columns
  (``Active site``, ``Binding site``, ``Domain [FT]``, ``Zinc finger`` …), read with the
  ``csv`` module (no Biopython needed).

Biopython is an optional dependency (``pip install 'jaxsae[uniprot]'``), imported only when a
flat or XML file is read.

Each entry becomes a protein record ``{"id", "sequence", "description", "features"}`` where
``features`` lists ``[type, start, end, description]``: the UniProt feature key
(``"ZN_FING"``), 0-based ``start``, exclusive ``end`` and the description InterPLM groups by
(the ``/note``, or the ``/ligand`` of a binding site). Only the feature types of
``jaxsae.interpret.concepts.UNIPROT_TYPES`` are kept. ``jaxsae extract --uniprot FILE``
stores them with the activations; ``jaxsae interpret`` turns them into concepts.

Positions: UniProt writes ``<n`` / ``>n`` for a feature that extends beyond the known sequence
(*fuzzy*: the given position is used), ``?n`` for an uncertain position (*uncertain*: used),
and ``?`` alone for an unknown one (*unknown*: the feature is dropped). Each case is counted
in ``UniProtStats``; features on another isoform (``P12345-2:10..20``) or outside the sequence
are dropped and counted too.
"""

from __future__ import annotations

import csv
import gzip
import io
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

__all__ = ["UniProtStats", "read_uniprot", "parse_feature_text", "XML_TYPES", "TSV_COLUMNS"]

#: UniProt XML feature types → flat-file feature keys.
XML_TYPES = {
    "active site": "ACT_SITE",
    "binding site": "BINDING",
    "disulfide bond": "DISULFID",
    "modified residue": "MOD_RES",
    "glycosylation site": "CARBOHYD",
    "lipid moiety-binding region": "LIPID",
    "metal ion-binding site": "METAL",
    "signal peptide": "SIGNAL",
    "transit peptide": "TRANSIT",
    "propeptide": "PROPEP",
    "transmembrane region": "TRANSMEM",
    "intramembrane region": "INTRAMEM",
    "topological domain": "TOPO_DOM",
    "zinc finger region": "ZN_FING",
    "domain": "DOMAIN",
    "region of interest": "REGION",
    "short sequence motif": "MOTIF",
    "repeat": "REPEAT",
    "coiled-coil region": "COILED",
    "compositionally biased region": "COMPBIAS",
    "helix": "HELIX",
    "strand": "STRAND",
    "turn": "TURN",
}
#: UniProtKB TSV feature columns (the website's names) → feature keys.
TSV_COLUMNS = {
    "Active site": "ACT_SITE",
    "Binding site": "BINDING",
    "Disulfide bond": "DISULFID",
    "Modified residue": "MOD_RES",
    "Glycosylation": "CARBOHYD",
    "Lipidation": "LIPID",
    "Metal binding": "METAL",
    "Signal peptide": "SIGNAL",
    "Transit peptide": "TRANSIT",
    "Propeptide": "PROPEP",
    "Transmembrane": "TRANSMEM",
    "Intramembrane": "INTRAMEM",
    "Topological domain": "TOPO_DOM",
    "Zinc finger": "ZN_FING",
    "Domain [FT]": "DOMAIN",
    "Region": "REGION",
    "Motif": "MOTIF",
    "Repeat": "REPEAT",
    "Coiled coil": "COILED",
    "Compositional bias": "COMPBIAS",
    "Helix": "HELIX",
    "Beta strand": "STRAND",
    "Turn": "TURN",
}
KEYS = tuple(XML_TYPES.values())
_FLAT_SUFFIXES = (".dat", ".txt", ".swiss", ".sp")
_XML_SUFFIXES = (".xml",)
_TSV_SUFFIXES = (".tsv", ".tab")


class UniProtStats(NamedTuple):
    """What reading a UniProt file found.

    Attributes:
      entries: entries read (proteins returned).
      skipped: entries skipped as malformed.
      reasons: the first few skipped entries' reasons (``"entry 3 (line 40): ..."``).
      features: features kept, per type.
      fuzzy: positions ``<n`` / ``>n`` used as given.
      uncertain: positions ``?n`` used as given.
      unknown: features dropped for an unknown position ``?``.
      other_isoform: features dropped for lying on another isoform.
      out_of_range: features dropped for lying outside the sequence.
      ignored_types: features of types that are not concepts (``CHAIN``, ``VARIANT`` …).
    """

    entries: int
    skipped: int
    reasons: tuple[str, ...]
    features: dict[str, int]
    fuzzy: int
    uncertain: int
    unknown: int
    other_isoform: int
    out_of_range: int
    ignored_types: int

    def summary(self) -> str:
        """One line for the console."""
        n = sum(self.features.values())
        text = (
            f"{self.entries} UniProt entries read, {self.skipped} skipped as malformed; {n} "
            f"features kept ({self.fuzzy} fuzzy <n/>n and {self.uncertain} uncertain ?n "
            f"positions used as given), dropped: {self.unknown} with an unknown position ?, "
            f"{self.other_isoform} on another isoform, {self.out_of_range} outside the sequence; "
            f"{self.ignored_types} features of other types ignored"
        )
        if self.reasons:
            text += "; first skipped: " + " | ".join(self.reasons[:3])
        return text


class _Tally:
    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.types: Counter[str] = Counter()
        self.reasons: list[str] = []
        self.entries = 0
        self.skipped = 0

    def stats(self) -> UniProtStats:
        c = self.counts
        return UniProtStats(
            self.entries,
            self.skipped,
            tuple(self.reasons[:10]),
            dict(self.types),
            c["fuzzy"],
            c["uncertain"],
            c["unknown"],
            c["other_isoform"],
            c["out_of_range"],
            c["ignored_types"],
        )

    def keep(self, ftype: str, start: int, end: int, length: int, text: str, out: list) -> None:
        if start < 0 or end > length or end <= start:
            self.counts["out_of_range"] += 1
            return
        self.types[ftype] += 1
        out.append([ftype, int(start), int(end), text])


def _open_text(path: Path) -> io.TextIOBase:
    with open(path, "rb") as f:
        magic = f.read(2)
    if magic == b"\x1f\x8b":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", errors="replace")
    return open(path, encoding="utf-8", errors="replace")


def _open_binary(path: Path) -> io.BufferedIOBase:
    with open(path, "rb") as f:
        magic = f.read(2)
    return gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")


def _detect(path: Path) -> str:
    name = path.name.lower().removesuffix(".gz")
    if name.endswith(_XML_SUFFIXES):
        return "xml"
    if name.endswith(_TSV_SUFFIXES):
        return "tsv"
    if name.endswith(_FLAT_SUFFIXES):
        return "flat"
    with _open_text(path) as f:
        head = f.read(512).lstrip()
    if head.startswith(("<?xml", "<uniprot")):
        return "xml"
    if head.startswith("ID   "):
        return "flat"
    if head.split("\t", 1)[0] == "Entry":
        return "tsv"
    raise ValueError(
        f"{path}: expected a UniProt flat file (.dat/.txt, starts with 'ID   '), UniProt XML "
        f"(.xml) or a UniProtKB TSV export (.tsv, header starting with 'Entry'), found "
        f"{head[:40]!r}"
    )


def _biopython() -> Any:
    try:
        import Bio  # noqa: F401
    except ImportError as err:
        raise ImportError(
            "reading UniProt flat files and XML needs Biopython: pip install 'jaxsae[uniprot]' "
            "(or pip install biopython); UniProtKB TSV exports need nothing"
        ) from err
    from Bio import SeqFeature

    return SeqFeature


def _bio_span(location: Any, tally: _Tally) -> tuple[int, int] | None:
    """``(start, end)`` of a Biopython location (0-based, end exclusive), or ``None``."""
    SF = _biopython()
    if location is None or getattr(location, "ref", None):
        tally.counts["other_isoform" if location is not None else "unknown"] += 1
        return None
    ends = (location.start, location.end)
    if any(isinstance(p, SF.UnknownPosition) for p in ends):
        tally.counts["unknown"] += 1
        return None
    if any(isinstance(p, SF.BeforePosition | SF.AfterPosition) for p in ends):
        tally.counts["fuzzy"] += 1
    elif any(isinstance(p, SF.UncertainPosition) for p in ends):
        tally.counts["uncertain"] += 1
    return int(ends[0]), int(ends[1])


def _flat_records(f: io.TextIOBase) -> Iterator[tuple[int, str]]:
    """``(first line number, text)`` of each ``//``-terminated entry."""
    lines: list[str] = []
    start = 1
    for n, line in enumerate(f, 1):
        if not lines:
            start = n
        lines.append(line)
        if line.startswith("//"):
            yield start, "".join(lines)
            lines = []
    if any(line.strip() for line in lines):
        yield start, "".join(lines)  # an unterminated last entry: reported as malformed


def _read_flat(path: Path, tally: _Tally) -> list[dict]:
    _biopython()
    from Bio import SwissProt

    out = []
    with _open_text(path) as f:
        for i, (line, text) in enumerate(_flat_records(f), 1):
            try:
                rec = SwissProt.read(io.StringIO(text))
                if not rec.sequence:
                    raise ValueError("no sequence")
            except Exception as err:  # Biopython raises ValueError, AssertionError, ...
                tally.skipped += 1
                tally.reasons.append(f"entry {i} (line {line}): {type(err).__name__}: {err}")
                continue
            seq = rec.sequence
            feats: list[list] = []
            for feat in rec.features:
                if feat.type not in KEYS:
                    tally.counts["ignored_types"] += 1
                    continue
                span = _bio_span(feat.location, tally)
                if span is None:
                    continue
                q = feat.qualifiers
                text_q = q.get("ligand") if feat.type == "BINDING" else q.get("note")
                tally.keep(feat.type, *span, len(seq), str(text_q or q.get("note") or ""), feats)
            acc = rec.accessions[0] if rec.accessions else rec.entry_name
            out.append(
                {"id": acc, "sequence": seq, "description": rec.entry_name, "features": feats}
            )
            tally.entries += 1
    return out


def _read_xml(path: Path, tally: _Tally) -> list[dict]:
    _biopython()
    from Bio import SeqIO

    out = []
    with _open_binary(path) as f:
        try:
            for i, rec in enumerate(SeqIO.parse(f, "uniprot-xml"), 1):
                try:
                    seq = str(rec.seq)
                except Exception:  # an entry without <sequence>: Biopython's undefined sequence
                    seq = ""
                if not seq:
                    tally.skipped += 1
                    tally.reasons.append(f"entry {i} ({rec.id}): no sequence")
                    continue
                feats: list[list] = []
                for feat in rec.features:
                    key = XML_TYPES.get(feat.type)
                    if key is None:
                        tally.counts["ignored_types"] += 1
                        continue
                    span = _bio_span(feat.location, tally)
                    if span is None:
                        continue
                    q = feat.qualifiers
                    text = q.get("description") or ""
                    if key == "BINDING" and q.get("ligands"):
                        text = q["ligands"][0].get("name") or text
                    tally.keep(key, *span, len(seq), str(text), feats)
                out.append(
                    {"id": rec.id, "sequence": seq, "description": rec.name, "features": feats}
                )
                tally.entries += 1
        except Exception as err:  # malformed XML stops the parser: say where
            raise ValueError(
                f"{path}: malformed UniProt XML after {tally.entries} entries "
                f"({type(err).__name__}: {err})"
            ) from err
    return out


_FEATURE = re.compile(r"(?:^|;\s*)(" + "|".join(KEYS) + r")\s+([^;\s]+)")
_QUALIFIER = re.compile(r'/(\w+)="([^"]*)"')
_POS = re.compile(r"^([<>?]?)(\d*)$")


def _tsv_position(text: str) -> tuple[int, str] | None:
    """``(position, mark)`` of ``"12"``, ``"<1"``, ``">60"``, ``"?41"``; ``None`` for ``"?"``."""
    m = _POS.match(text)
    if m is None or not m.group(2):
        return None
    return int(m.group(2)), m.group(1)


def parse_feature_text(text: str, length: int, tally: _Tally | None = None) -> list[list]:
    """Features of one TSV cell: ``'DOMAIN 25..60; /note="C2H2-type 1"; DOMAIN …'``.

    Returns ``[[type, start, end, description], …]`` (0-based, end exclusive).
    """
    tally = tally if tally is not None else _Tally()
    out: list[list] = []
    matches = list(_FEATURE.finditer(text or ""))
    for j, m in enumerate(matches):
        ftype, loc = m.group(1), m.group(2)
        tail = text[m.end() : matches[j + 1].start() if j + 1 < len(matches) else len(text)]
        quals = dict(_QUALIFIER.findall(tail))
        if ":" in loc:
            tally.counts["other_isoform"] += 1
            continue
        a, _, b = loc.partition("..")
        start, end = _tsv_position(a), _tsv_position(b or a)
        if start is None or end is None:
            tally.counts["unknown"] += 1
            continue
        marks = start[1] + end[1]
        if "<" in marks or ">" in marks:
            tally.counts["fuzzy"] += 1
        elif "?" in marks:
            tally.counts["uncertain"] += 1
        desc = quals.get("ligand") if ftype == "BINDING" else quals.get("note")
        tally.keep(ftype, start[0] - 1, end[0], length, desc or quals.get("note") or "", out)
    return out


def _read_tsv(path: Path, tally: _Tally) -> list[dict]:
    out = []
    with _open_text(path) as f:
        reader = csv.DictReader(f, delimiter="\t")
        cols = reader.fieldnames or []
        if "Sequence" not in cols:
            raise ValueError(
                f"{path}: expected a UniProtKB TSV export with a 'Sequence' column (and "
                f"'Entry' and feature columns such as 'Domain [FT]'), found columns {cols}"
            )
        feature_cols = [c for c in cols if c in TSV_COLUMNS]
        if not feature_cols:
            raise ValueError(
                f"{path}: expected feature columns ({', '.join(list(TSV_COLUMNS)[:6])}, …), "
                f"found {cols}"
            )
        for i, row in enumerate(reader, 1):
            seq = (row.get("Sequence") or "").strip()
            if not seq or not seq.isalpha():
                tally.skipped += 1
                tally.reasons.append(f"row {i} ({row.get('Entry')}): no valid sequence")
                continue
            feats: list[list] = []
            for c in feature_cols:
                feats += parse_feature_text(row.get(c) or "", len(seq), tally)
            pid = row.get("Entry") or f"protein_{i}"
            out.append(
                {
                    "id": pid,
                    "sequence": seq,
                    "description": row.get("Entry Name") or row.get("Protein names") or "",
                    "features": feats,
                }
            )
            tally.entries += 1
    return out


def read_uniprot(path: str | Path, *, fmt: str | None = None) -> tuple[list[dict], UniProtStats]:
    """Read UniProtKB entries with their features from a flat, XML or TSV file.

    Args:
      path: the file (plain or gzipped).
      fmt: ``"flat"``, ``"xml"`` or ``"tsv"``; default: from the name (``.dat``, ``.txt``,
        ``.xml``, ``.tsv`` with an optional ``.gz``), else from the first bytes.

    Returns:
      ``(proteins, stats)``: one record per entry read (``{"id", "sequence", "description",
      "features"}``) and what was found (malformed entries are skipped and counted).

    Raises:
      FileNotFoundError: no such file.
      ValueError: an unknown format, a TSV without ``Sequence`` or feature columns, malformed
        XML, or no entry read at all.
      ImportError: a flat or XML file without Biopython installed.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such UniProt file")
    fmt = fmt or _detect(path)
    readers = {"flat": _read_flat, "xml": _read_xml, "tsv": _read_tsv}
    if fmt not in readers:
        raise ValueError(f"fmt: expected one of {sorted(readers)}, found {fmt!r}")
    tally = _Tally()
    proteins = readers[fmt](path, tally)
    stats = tally.stats()
    if not proteins:
        raise ValueError(
            f"{path}: expected at least one UniProt entry with a sequence, found none "
            f"({stats.skipped} skipped as malformed"
            + (f"; first: {stats.reasons[0]}" if stats.reasons else "")
            + ")"
        )
    return proteins, stats
