import numpy as np
import pytest

from jaxsae.data import store as st
from jaxsae.data.loader import Loader, Normalisation, compute_normalisation


def _data(n=103, d=5, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, d)) * np.arange(1, d + 1)[None, :] + 4.0).astype(np.float32)


def _epoch_rows(loader, n_batches):
    return np.concatenate([loader.rows_at(s) for s in range(n_batches)])


@pytest.mark.parametrize("buffer_rows", [None, 16, 40])
def test_every_row_once_per_epoch(buffer_rows):
    X = _data()
    loader = Loader(X, 10, seed=3, block_rows=8, buffer_rows=buffer_rows)
    rows = _epoch_rows(loader, 31)  # 310 rows: three epochs of 103, and one more row
    for e in range(3):
        assert sorted(rows[e * 103 : (e + 1) * 103]) == list(range(103))
    assert not np.array_equal(rows[:103], np.arange(103))  # shuffled
    assert not np.array_equal(rows[:103], rows[103:206])  # a new order each epoch
    batches = [loader.batch_at(s) for s in range(31)]
    np.testing.assert_array_equal(np.concatenate(batches), X[rows])


@pytest.mark.parametrize("source", ["array", "store"])
def test_process_shares_read_only_their_rows(tmp_path, source):
    """Parts [lo, hi) of a batch (one process's rows) cover it, in order, reading nothing else."""
    X = _data()
    if source == "store":
        st.write_shard(tmp_path, 0, X[:60], np.zeros((60, 2), np.int32))
        st.write_shard(tmp_path, 1, X[60:], np.zeros((43, 2), np.int32))
        data = st.finalize_store(tmp_path, [{"id": "p", "length": 103}], {})
    else:
        data = X
    loader = Loader(data, 12, seed=5, block_rows=8, buffer_rows=24)
    read = []
    take = loader.source.take
    loader.source.take = lambda rows: read.append(np.asarray(rows)) or take(rows)
    for step in range(20):  # two epochs: batches straddle windows and epochs
        parts = [loader.batch_at(step, lo, hi) for lo, hi in ((0, 3), (3, 6), (6, 12))]
        rows = loader.rows_at(step)
        np.testing.assert_array_equal(np.concatenate(parts), X[rows])
        np.testing.assert_array_equal(np.concatenate(read[-3:]), rows)  # only those rows read
    with pytest.raises(ValueError, match="expected 0 <= lo < hi <= batch_size=12, found 6, 13"):
        loader.batch_at(0, 6, 13)


def test_bounded_buffer_keeps_blocks_together():
    loader = Loader(_data(), 10, seed=1, block_rows=8, buffer_rows=16)
    rows = _epoch_rows(loader, 11)[:103]
    # a window holds two blocks of 8, so the first 16 rows come from two blocks
    assert len(np.unique(rows[:16] // 8)) == 2


def test_no_shuffle_streams_in_order():
    loader = Loader(_data(), 10, shuffle=False)
    np.testing.assert_array_equal(_epoch_rows(loader, 11), np.arange(110) % 103)


def test_determinism_and_resume_position():
    X = _data()
    a = Loader(X, 7, seed=11, block_rows=4, buffer_rows=12)
    first = [next(a) for _ in range(40)]
    b = Loader(X, 7, seed=11, block_rows=4, buffer_rows=12)
    b.load_state_dict({**a.state_dict(), "position": 25})
    for s in range(25, 40):
        np.testing.assert_array_equal(next(b), first[s])
    assert b.position == 40
    c = Loader(X, 7, seed=12, block_rows=4, buffer_rows=12)
    assert not np.array_equal(next(c), first[0])


def test_resume_with_other_stream_is_an_error():
    a = Loader(_data(), 7, seed=1)
    b = Loader(_data(n=50), 7, seed=2)
    with pytest.raises(
        ValueError, match=r"seed: checkpoint 1, now 2; num_rows: checkpoint 103, now 50"
    ):
        b.load_state_dict(a.state_dict())


def test_sources_agree(tmp_path):
    X = _data()
    np.save(tmp_path / "x.npy", X)
    st.write_shard(
        tmp_path / "s", 0, X[:60], np.stack([np.zeros(60), np.arange(60)], 1).astype(int)
    )
    st.write_shard(tmp_path / "s", 1, X[60:], np.stack([np.ones(43), np.arange(43)], 1).astype(int))
    store = st.finalize_store(
        tmp_path / "s", [{"id": "a", "length": 60}, {"id": "b", "length": 43}]
    )
    ref = Loader(X, 16, seed=5, block_rows=8, buffer_rows=32)
    for data in (tmp_path / "x.npy", str(tmp_path / "s"), store):
        other = Loader(data, 16, seed=5, block_rows=8, buffer_rows=32)
        for s in range(9):
            np.testing.assert_array_equal(other.batch_at(s), ref.batch_at(s))


def test_normalisation_from_sample_and_store(tmp_path):
    X = _data(n=400)
    norm = compute_normalisation(X)
    Z = norm.apply(X).astype(np.float64)
    np.testing.assert_allclose(np.mean(np.sum(Z**2, axis=1)), X.shape[1], rtol=1e-5)
    np.testing.assert_allclose(Z.mean(axis=0), 0.0, atol=1e-5)
    raw = compute_normalisation(X, center=False)
    assert np.all(raw.mean == 0)
    Zr = raw.apply(X).astype(np.float64)
    np.testing.assert_allclose(np.mean(np.sum(Zr**2, axis=1)), X.shape[1], rtol=1e-5)
    st.write_shard(tmp_path, 0, X, np.zeros((400, 2), int))
    store = st.finalize_store(tmp_path, [{"id": "a", "length": 400}])
    from_store = compute_normalisation(store)
    np.testing.assert_allclose(from_store.mean, norm.mean, rtol=1e-10)
    np.testing.assert_allclose(from_store.scale, norm.scale, rtol=1e-9)
    sub = compute_normalisation(X, num_samples=200, seed=0)  # an estimate from half the rows
    np.testing.assert_allclose(sub.scale, norm.scale, rtol=0.1)
    loader = Loader(X, 50, normalisation=norm, shuffle=False)
    np.testing.assert_allclose(next(loader), Z[:50], rtol=1e-6)
    np.testing.assert_array_equal(Normalisation.identity(5).apply(X), X)


def test_bad_data_errors(tmp_path):
    X = _data()
    with pytest.raises(ValueError, match="width d_in=8, found 5"):
        Loader(X, 4, d_in=8)
    with pytest.raises(ValueError, match="non-empty"):
        Loader(np.zeros((0, 5), np.float32), 4)
    with pytest.raises(ValueError, match="shape \\(rows, d\\)"):
        Loader(np.zeros(5, np.float32), 4)
    with pytest.raises(ValueError, match="neither"):
        Loader(tmp_path / "missing.npy", 4)
    with pytest.raises(ValueError, match="vary"):
        compute_normalisation(np.ones((10, 3), np.float32))
    X[17, 2] = np.nan
    loader = Loader(X, 103, seed=0)
    with pytest.raises(ValueError, match="row 17, dimension 2"):
        next(loader)
