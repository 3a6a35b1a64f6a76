"""A streaming FASTA reader (plain or gzip-compressed) for users' own proteins.

Sequence lines are cleaned as sequence databases write them: whitespace (line wrapping,
spaces) is dropped, lower-case letters are upper-cased, and one terminal ``*`` (stop codon) is
removed. Every other character outside ``A``–``Z`` is an error that names the record, the
residue position and the line; with ``invalid="unk"`` it becomes ``X`` (the IUPAC code for an
unknown residue) with a warning instead.
"""

from __future__ import annotations

import gzip
import io
import os
import warnings
from collections.abc import Iterator
from typing import IO, NamedTuple

from jaxsae.protein.alphabet import LETTERS

__all__ = ["FastaRecord", "read_fasta", "write_fasta"]

_ALLOWED = frozenset(LETTERS)


class FastaRecord(NamedTuple):
    """One FASTA entry.

    Attributes:
      id: the first word of the header (after ``>``).
      description: the rest of the header line (may be empty).
      sequence: upper-case letters ``A``–``Z``.
    """

    id: str
    description: str
    sequence: str


def _open_text(source: str | os.PathLike | IO) -> tuple[IO[str], bool]:
    """A text stream over ``source`` (gzip detected by its magic bytes) and whether we own it."""
    if hasattr(source, "read"):
        if isinstance(source, io.TextIOBase):
            return source, False
        return io.TextIOWrapper(source, encoding="utf-8"), False  # type: ignore[arg-type]
    path = os.fspath(source)
    with open(path, "rb") as fh:
        magic = fh.read(2)
    if magic == b"\x1f\x8b":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8"), True
    return open(path, encoding="utf-8"), True


def _text_lines(fh: IO[str], source: object) -> Iterator[tuple[int, str]]:
    """Numbered lines of ``fh``; bytes that are not UTF-8 text raise a ``ValueError``."""
    lineno = 0
    try:
        for lineno, line in enumerate(fh, start=1):  # noqa: B007
            yield lineno, line
    except UnicodeDecodeError as err:
        name = os.fspath(source) if isinstance(source, str | os.PathLike) else "input"
        raise ValueError(
            f"FASTA {name}: expected a text file (UTF-8), found binary data near line "
            f"{lineno + 1} ({err.reason}: byte {err.object[err.start : err.start + 1]!r}); "
            "give a FASTA file (plain or .gz)"
        ) from err


def _clean(rec_id: str, chunks: list[tuple[int, str]], invalid: str) -> str:
    """Join a record's sequence lines, upper-case them and check every character."""
    seq = "".join("".join(line.split()) for _, line in chunks).upper()
    if seq.endswith("*"):
        seq = seq[:-1]
    if all(c in _ALLOWED for c in seq):
        return seq
    out = []
    pos = 0
    for lineno, line in chunks:
        for c in "".join(line.split()).upper():
            pos += 1
            if pos > len(seq):
                break
            if c in _ALLOWED:
                out.append(c)
            elif invalid == "unk":
                warnings.warn(
                    f"FASTA record {rec_id!r}: character {c!r} at residue {pos} (line {lineno}) "
                    "is not an amino-acid letter; read as X (unknown residue)",
                    stacklevel=3,
                )
                out.append("X")
            else:
                raise ValueError(
                    f"FASTA record {rec_id!r}: expected amino-acid letters A-Z, found {c!r} at "
                    f"residue {pos} (line {lineno}); fix the file or pass invalid='unk' to read "
                    "it as X"
                )
    return "".join(out)


def read_fasta(source: str | os.PathLike | IO, *, invalid: str = "error") -> Iterator[FastaRecord]:
    """Stream the records of a FASTA file, one at a time.

    Args:
      source: a path (plain or ``.gz``; gzip is recognised by content) or an open file.
      invalid: ``"error"`` (default) raises on a character outside ``A``–``Z``; ``"unk"`` reads
        it as ``X`` with a warning.

    Yields:
      ``FastaRecord(id, description, sequence)`` in file order.

    Raises:
      ValueError: sequence lines before the first header, an empty record, or (with
        ``invalid="error"``) an invalid character, naming the record, residue and line.
    """
    if invalid not in ("error", "unk"):
        raise ValueError(f"read_fasta: expected invalid='error' or 'unk', found {invalid!r}")
    fh, owned = _open_text(source)
    try:
        header: str | None = None
        chunks: list[tuple[int, str]] = []

        def finish() -> FastaRecord:
            assert header is not None
            rec_id, _, desc = header.partition(" ")
            seq = _clean(rec_id, chunks, invalid)
            if not seq:
                raise ValueError(f"FASTA record {rec_id!r}: expected a sequence, found none")
            return FastaRecord(rec_id, desc.strip(), seq)

        for lineno, line in _text_lines(fh, source):
            if line.startswith(">"):
                if header is not None:
                    yield finish()
                header = line[1:].strip()
                if not header:
                    raise ValueError(f"FASTA line {lineno}: expected a name after '>', found none")
                chunks = []
            elif line.strip() and not line.startswith(";"):
                if header is None:
                    raise ValueError(
                        f"FASTA line {lineno}: expected a header line starting with '>' before "
                        f"sequence data, found {line.strip()[:20]!r}"
                    )
                chunks.append((lineno, line))
        if header is not None:
            yield finish()
    finally:
        if owned:
            fh.close()


def write_fasta(path: str | os.PathLike, records: list[tuple[str, str]], width: int = 60) -> None:
    """Write ``(id, sequence)`` pairs as FASTA, wrapping sequences at ``width`` letters."""
    opener = gzip.open if os.fspath(path).endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8") as fh:
        for rec_id, seq in records:
            fh.write(f">{rec_id}\n")
            for i in range(0, len(seq), width):
                fh.write(seq[i : i + width] + "\n")
