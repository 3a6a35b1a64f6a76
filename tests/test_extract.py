"""Activation extraction: equal to the forward pass, packed/bucketed, resumable, CLI."""

import json

import jax
import numpy as np
import pytest

from jaxsae.data.store import open_store
from jaxsae.protein import extract as ex
from jaxsae.protein.alphabet import STANDARD_AMINO_ACIDS, batch_tokenize
from jaxsae.protein.esm2 import ESM2Config, esm2_hidden_states, init_esm2_params

TINY = ESM2Config(num_layers=2, d_model=16, num_heads=2, d_ff=32, name="tiny")
BUCKETS = (16, 32, 64)
# few shapes to compile: rows of 64 tokens one per batch, rows of 32 two (or one) per batch
KW = dict(buckets=(32, 64), max_tokens_per_batch=64, rows_per_shard=120, progress=False)


@pytest.fixture(scope="module")
def model():
    return TINY, init_esm2_params(jax.random.key(0), TINY)


@pytest.fixture(scope="module")
def proteins():
    rng = np.random.default_rng(0)
    out = []
    for i, n in enumerate(rng.integers(3, 60, size=14)):
        seq = "".join(rng.choice(list(STANDARD_AMINO_ACIDS), size=n))
        out.append({"id": f"p{i}", "sequence": seq, "dssp": "H" * n, "scop": "a.1.1.1"})
    return out


def test_pack_rows_and_shards_are_deterministic():
    lengths = [50, 10, 5, 28, 3, 60]
    rows = ex.pack_rows(range(6), lengths, BUCKETS)
    assert sorted(i for _, m in rows for i in m) == list(range(6))
    for b, members in rows:
        assert sum(lengths[i] + 2 for i in members) <= b
    assert rows == [(64, [5]), (64, [0, 1]), (32, [3]), (16, [2, 4])]  # short ones fill gaps
    assert ex.plan_shards(lengths, 60) == [[0, 1], [2, 3, 4], [5]]


def test_stores_equal_the_forward_pass(model, proteins, tmp_path):
    stores = ex.extract_activations(proteins, model, [0, 1, -1], tmp_path, **KW)
    assert sorted(stores) == [0, 1, 2]
    seqs = [p["sequence"] for p in proteins]
    tokens, mask = batch_tokenize(seqs)
    ref = np.asarray(esm2_hidden_states(model[1], tokens, mask, config=TINY))
    for layer, store in stores.items():
        assert store.d == 16 and store.num_rows == sum(len(s) for s in seqs)
        assert store.meta["layer"] == layer and store.meta["model"] == "tiny"
        acts, index = store.rows(0, store.num_rows), store.index_rows(0, store.num_rows)
        for p, seq in enumerate(seqs):  # <cls>/<eos>/padding excluded, positions from 0
            rows = np.flatnonzero(index[:, 0] == p)
            np.testing.assert_array_equal(index[rows, 1], np.arange(len(seq)))
            np.testing.assert_allclose(acts[rows], ref[layer, p, 1 : 1 + len(seq)], atol=2e-5)
    prot = stores[2].proteins
    assert [q["id"] for q in prot] == [p["id"] for p in proteins]
    assert prot[3]["sequence"] == seqs[3] and prot[3]["dssp"] == "H" * len(seqs[3])
    assert prot[3]["length"] == len(seqs[3]) and prot[3]["scop"] == "a.1.1.1"


def test_interrupted_run_resumes_to_the_same_result(model, proteins, tmp_path, monkeypatch):
    full = ex.extract_activations(proteins, model, [1], tmp_path / "full", **KW)[1]
    from jaxsae.data import store as store_mod

    real, calls = store_mod.write_shard, []

    def crashing(*args, **kw):
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C during the third shard
        calls.append(args[1])
        real(*args, **kw)

    monkeypatch.setattr(store_mod, "write_shard", crashing)
    with pytest.raises(KeyboardInterrupt):
        ex.extract_activations(proteins, model, [1], tmp_path / "part", **KW)
    assert not (tmp_path / "part" / "layer_1" / "meta.json").exists()
    monkeypatch.setattr(
        store_mod, "write_shard", lambda *a, **k: (calls.append(a[1]), real(*a, **k))
    )
    calls.clear()
    resumed = ex.extract_activations(proteins, model, [1], tmp_path / "part", **KW)[1]
    assert 0 not in calls and 1 not in calls  # finished shards were kept and skipped
    assert resumed.num_rows == full.num_rows and resumed.num_shards == full.num_shards
    np.testing.assert_array_equal(resumed.rows(0, full.num_rows), full.rows(0, full.num_rows))
    np.testing.assert_array_equal(
        resumed.index_rows(0, full.num_rows), full.index_rows(0, full.num_rows)
    )
    with pytest.raises(ValueError, match="other settings"):
        ex.extract_activations(proteins[:-1], model, [1], tmp_path / "part", **KW)


def test_too_long_proteins_crop_or_fail(model, tmp_path):
    seqs = ["M" * 40, "ACDEF"]  # the largest bucket, 32 tokens, holds 30 residues
    kw = dict(KW, buckets=(32,))
    with pytest.raises(ValueError, match="at most 30 residues"):
        ex.extract_activations(seqs, model, [1], tmp_path / "e", too_long="error", **kw)
    with pytest.warns(UserWarning, match="cropped to their first 30"):
        st = ex.extract_activations(seqs, model, [1], tmp_path / "c", dtype="float16", **kw)[1]
    assert st.num_rows == 35 and st.shard(0).dtype == np.float16
    assert st.proteins[0]["cropped_from"] == 40 and st.proteins[0]["length"] == 30


def test_bad_arguments(model, tmp_path):
    with pytest.raises(ValueError, match="at least one protein"):
        ex.extract_activations([], model, [1], tmp_path, **KW)
    with pytest.raises(ValueError, match=r"protein 1 \(x\).*'#' at position 2"):
        ex.extract_activations(["MK", {"id": "x", "sequence": "M#"}], model, [1], tmp_path, **KW)
    with pytest.raises(ValueError, match="expected integers in 0..2"):
        ex.extract_activations(["MK"], model, [5], tmp_path, **KW)


def test_cli_extract_from_fasta(model, tmp_path, capsys):
    from jaxsae import cli
    from jaxsae.protein.fasta import write_fasta
    from jaxsae.protein.weights import save_esm2_hf

    save_esm2_hf(model[1], TINY, tmp_path / "m")
    write_fasta(tmp_path / "p.fa", [("a", "MKTAYIAKQR"), ("b", "GSHM")])
    argv = ["extract", "--fasta", str(tmp_path / "p.fa"), "--model", str(tmp_path / "m"),
            "--out", str(tmp_path / "o"), "--layers", "1", "--no-progress"]  # fmt: skip
    assert cli.main(argv) == 0
    assert "layer 1: 14 residues" in capsys.readouterr().out
    st = open_store(tmp_path / "o" / "layer_1")
    assert [p["id"] for p in st.proteins] == ["a", "b"]
    assert json.loads((tmp_path / "o" / "extract.json").read_text())["layers"] == [1]


def test_extract_config_is_validated_and_given_whole_or_by_keyword(model, proteins, tmp_path):
    with pytest.raises(ValueError, match="dtype: expected 'float32' or 'float16'"):
        ex.ExtractConfig(dtype="int8")
    with pytest.raises(ValueError, match="too_long: expected 'crop' or 'error'"):
        ex.ExtractConfig(too_long="skip")
    with pytest.raises(ValueError, match="buckets: expected increasing lengths"):
        ex.ExtractConfig(buckets=(64, 32))
    with pytest.raises(ValueError, match="up to max_tokens=1024"):
        ex.extract_activations(["MK"], model, [1], tmp_path / "b", buckets=(2048,), progress=False)
    # a full batch holds max_tokens // length rows; a last, partial one a power of 2 of them
    opts = ex.ExtractConfig(max_tokens_per_batch=256, buckets=[32, 64])
    assert opts.buckets == (32, 64)
    assert [opts.batch_rows(64, n) for n in (1, 3, 4, 9)] == [1, 4, 4, 4]
    assert opts.batch_rows(512, 1) == 1
    whole = ex.extract_activations(proteins[:4], model, [1], tmp_path / "w", ex.ExtractConfig(**KW))
    named = ex.extract_activations(proteins[:4], model, [1], tmp_path / "n", **KW)
    changed = ex.extract_activations(
        proteins[:4], model, [1], tmp_path / "c", ex.ExtractConfig(**KW), dtype="float16"
    )
    n = named[1].num_rows
    assert whole[1].num_rows == n
    np.testing.assert_array_equal(whole[1].rows(0, n), named[1].rows(0, n))
    assert (tmp_path / "w" / "extract.json").read_text() == (
        tmp_path / "n" / "extract.json"
    ).read_text()
    assert changed[1].dtype == "float16"
