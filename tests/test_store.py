import json
import os

import numpy as np
import pytest

from jaxsae.data import store as st


def _make(tmp_path, *, dtype=np.float32, sizes=(5, 7, 3), d=6, seed=0):
    """A store of proteins of the given lengths, written 2 proteins per shard."""
    rng = np.random.default_rng(seed)
    proteins, acts, index = [], [], []
    for p, n in enumerate(sizes):
        proteins.append({"id": f"P{p}", "length": n, "sequence": "A" * n})
        acts.append((rng.standard_normal((n, d)) + 3.0).astype(dtype))
        index.append(np.stack([np.full(n, p), np.arange(n)], axis=1))
    for s in range(0, len(sizes), 2):
        st.write_shard(
            tmp_path, s // 2, np.concatenate(acts[s : s + 2]), np.concatenate(index[s : s + 2])
        )
    store = st.finalize_store(tmp_path, proteins, {"model": "toy", "layer": 3})
    return store, np.concatenate(acts), np.concatenate(index)


def test_round_trip(tmp_path):
    store, X, idx = _make(tmp_path)
    again = st.open_store(tmp_path)
    for s in (store, again):
        assert (s.d, s.num_rows, s.num_proteins, s.num_shards) == (6, 15, 3, 2)
        assert s.dtype == "float32" and s.meta == {"model": "toy", "layer": 3}
        np.testing.assert_array_equal(s.rows(0, 15), X)
        np.testing.assert_array_equal(s.rows(10, 13), X[10:13])  # crosses the shard boundary
        np.testing.assert_array_equal(s.index_rows(0, 15), idx)
        assert s.rows(4, 4).shape == (0, 6)
    np.testing.assert_allclose(again.mean, X.astype(np.float64).mean(0), rtol=1e-12)
    sq = (X.astype(np.float64) ** 2).sum(1)
    np.testing.assert_allclose(again.stats["mean_sq_norm"], sq.mean(), rtol=1e-12)
    np.testing.assert_allclose(again.stats["mean_norm"], np.sqrt(sq).mean(), rtol=1e-12)
    centred = ((X - X.astype(np.float64).mean(0)[None, :]) ** 2).sum(1).mean()
    np.testing.assert_allclose(again.stats["mean_sq_norm_centred"], centred, rtol=1e-9)
    assert again.proteins[1] == {"id": "P1", "length": 7, "sequence": "A" * 7}
    chunks = list(again.iter_chunks(4))
    assert [len(a) for a, _ in chunks] == [4, 4, 4, 3]
    np.testing.assert_array_equal(np.concatenate([a for a, _ in chunks]), X)
    np.testing.assert_array_equal(np.concatenate([i for _, i in chunks]), idx)
    np.testing.assert_array_equal(again.positions_of(1), np.arange(5, 12))
    np.testing.assert_array_equal(again.take([14, 0, 7]), X[[14, 0, 7]])
    assert isinstance(again.shard(1), np.memmap) and again.index(1).dtype == np.int32


def test_float16_store_reads_float32(tmp_path):
    store, X, _ = _make(tmp_path, dtype=np.float16)
    assert store.dtype == "float16"
    out = store.rows(0, store.num_rows)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, X.astype(np.float32))


def test_positions_of_unordered_rows(tmp_path):
    acts = np.arange(12, dtype=np.float32).reshape(6, 2)
    index = np.array([[1, 2], [0, 0], [1, 0], [0, 1], [1, 1], [2, 0]])
    st.write_shard(tmp_path, 0, acts, index)
    store = st.finalize_store(tmp_path, [{"id": str(i), "length": 3} for i in range(3)])
    np.testing.assert_array_equal(store.positions_of(1), [2, 4, 0])
    np.testing.assert_array_equal(store.positions_of(0), [1, 3])


def test_interrupted_shard_write_leaves_no_partial_shard(tmp_path, monkeypatch):
    acts = np.ones((4, 3), np.float32)
    index = np.zeros((4, 2), np.int32)
    st.write_shard(tmp_path, 0, acts, index)
    real_save = np.save

    def dying_save(f, arr, **kw):
        real_save(f, arr[: len(arr) // 2], **kw)  # half the bytes reach the disk, then death
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        st.write_shard(tmp_path, 1, acts * 2, index)
    monkeypatch.undo()
    assert not st.shard_exists(tmp_path, 1)
    assert st.shard_exists(tmp_path, 0)
    assert sorted(os.listdir(tmp_path)) == [
        "index_00000.npy",
        "shard_00000.npy",
        "shard_00000.sha256",
    ]
    # overwriting a complete shard is all-or-nothing too
    monkeypatch.setattr(np, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        st.write_shard(tmp_path, 0, acts * 5, index)
    monkeypatch.undo()
    np.testing.assert_array_equal(np.load(tmp_path / "shard_00000.npy"), acts)


def test_incomplete_store_errors(tmp_path):
    st.write_shard(tmp_path, 0, np.ones((4, 3), np.float32), np.zeros((4, 2), np.int32))
    with pytest.raises(ValueError, match="incomplete: no meta.json"):
        st.open_store(tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        st.open_store(tmp_path / "nope")
    st.write_shard(tmp_path, 2, np.ones((4, 3), np.float32), np.zeros((4, 2), np.int32))
    with pytest.raises(ValueError, match=r"missing \[1\]"):
        st.finalize_store(tmp_path, [{"id": "a", "length": 4}])


def test_store_with_missing_or_corrupt_files(tmp_path):
    _make(tmp_path)
    os.remove(tmp_path / "shard_00001.npy")
    with pytest.raises(ValueError, match="shard_00001.npy is missing"):
        st.open_store(tmp_path)
    (tmp_path / "meta.json").write_text("{not json")
    with pytest.raises(ValueError, match="meta.json is corrupt"):
        st.open_store(tmp_path)
    (tmp_path / "meta.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match="expected format 'jaxsae-activations'"):
        st.open_store(tmp_path)


def test_truncated_shard_is_reported(tmp_path):
    _make(tmp_path)
    path = tmp_path / "shard_00000.npy"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="unreadable"):
        st.open_store(tmp_path)


@pytest.mark.parametrize(
    "acts, index, match",
    [
        (np.ones((3,), np.float32), np.zeros((3, 2), int), "shape \\(rows, d\\)"),
        (np.ones((3, 2), np.int32), np.zeros((3, 2), int), "floating"),
        (np.ones((3, 2), np.float32), np.zeros((4, 2), int), "index of shape \\(3, 2\\)"),
        (np.array([[1.0, np.nan]], np.float32), np.zeros((1, 2), int), "non-finite"),
    ],
)
def test_write_shard_rejects_bad_input(tmp_path, acts, index, match):
    with pytest.raises(ValueError, match=match):
        st.write_shard(tmp_path, 0, acts, index)


def test_finalize_rejects_inconsistent_shards(tmp_path):
    st.write_shard(tmp_path, 0, np.ones((2, 3), np.float32), np.zeros((2, 2), int))
    st.write_shard(tmp_path, 1, np.ones((2, 4), np.float32), np.zeros((2, 2), int))
    with pytest.raises(ValueError, match="expected width 3"):
        st.finalize_store(tmp_path, [{"id": "a", "length": 2}])
    st.write_shard(tmp_path, 1, np.ones((2, 3), np.float32), np.full((2, 2), 5))
    with pytest.raises(ValueError, match="refers to protein 5"):
        st.finalize_store(tmp_path, [{"id": "a", "length": 2}])
    with pytest.raises(ValueError, match="'id' and 'length'"):
        st.finalize_store(tmp_path, [{"name": "a"}])
