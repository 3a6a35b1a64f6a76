"""The FASTA reader: plain and gzip, cleaning rules, clear errors."""

import gzip
import io

import pytest

from jaxsae.protein.fasta import FastaRecord, read_fasta, write_fasta

TEXT = """>sp|P1|ONE first protein
MKTAY IAKQR
qisfv*

; a comment line
>two
ACDEF
GHIK
"""


def test_plain_file_cleaning(tmp_path):
    (tmp_path / "a.fa").write_text(TEXT)
    recs = list(read_fasta(tmp_path / "a.fa"))
    assert recs == [
        FastaRecord("sp|P1|ONE", "first protein", "MKTAYIAKQRQISFV"),
        FastaRecord("two", "", "ACDEFGHIK"),
    ]


def test_gzip_detected_by_content_and_file_objects(tmp_path):
    with gzip.open(tmp_path / "a.fa.gz", "wt") as fh:
        fh.write(TEXT)
    (tmp_path / "a.gz.noext").write_bytes((tmp_path / "a.fa.gz").read_bytes())
    plain = list(read_fasta(io.StringIO(TEXT)))
    assert list(read_fasta(tmp_path / "a.fa.gz")) == plain
    assert list(read_fasta(tmp_path / "a.gz.noext")) == plain
    assert list(read_fasta(io.BytesIO(TEXT.encode()))) == plain


def test_streaming_yields_before_reading_everything():
    def lines():
        yield ">a\n"
        yield "MK\n"
        yield ">b\n"
        raise RuntimeError("the reader read too far")

    class Stream(io.TextIOBase):
        def __init__(self):
            self.it = lines()

        def __iter__(self):
            return self.it

    it = read_fasta(Stream())
    assert next(it).sequence == "MK"


def test_invalid_character_names_record_and_position(tmp_path):
    (tmp_path / "bad.fa").write_text(">ok\nMK\n>bad one\nMKV\nAC#D\n")
    with pytest.raises(ValueError, match=r"record 'bad': .* '#' at residue 6 \(line 5\)"):
        list(read_fasta(tmp_path / "bad.fa"))
    with pytest.warns(UserWarning, match="'#' at residue 6"):
        recs = list(read_fasta(tmp_path / "bad.fa", invalid="unk"))
    assert recs[1].sequence == "MKVACXD"


def test_structure_errors(tmp_path):
    (tmp_path / "x.fa").write_text("MKV\n>a\nMK\n")
    with pytest.raises(ValueError, match="line 1: expected a header"):
        list(read_fasta(tmp_path / "x.fa"))
    (tmp_path / "y.fa").write_text(">a\n>b\nMK\n")
    with pytest.raises(ValueError, match="record 'a': expected a sequence"):
        list(read_fasta(tmp_path / "y.fa"))
    with pytest.raises(ValueError, match="invalid='error' or 'unk'"):
        list(read_fasta(tmp_path / "y.fa", invalid="skip"))


def test_write_then_read_roundtrip(tmp_path):
    recs = [("a", "M" * 130), ("b", "ACD")]
    write_fasta(tmp_path / "o.fa.gz", recs, width=60)
    assert [(r.id, r.sequence) for r in read_fasta(tmp_path / "o.fa.gz")] == recs
