"""Streaming top-k, density, neighbours and the PCA / neuron baselines against NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsae.data.store import finalize_store, open_store, write_shard
from jaxsae.interpret.baselines import (
    fit_pca,
    neuron_featurizer,
    pca_featurizer,
    sample_rows,
)
from jaxsae.interpret.stats import (
    activation_density,
    dead_features,
    decoder_cosine,
    decoder_neighbours,
)
from jaxsae.interpret.topk import merge_topk, sae_featurizer, scan_features
from jaxsae.kernels.sae import encode, init_params


def _data(n=300, d=6, num_proteins=7, seed=0):
    rng = np.random.default_rng(seed)
    acts = rng.standard_normal((n, d)).astype(np.float32)
    prot = np.sort(rng.integers(0, num_proteins, size=n))
    pos = np.zeros(n, np.int64)
    for p in range(num_proteins):
        sel = prot == p
        pos[sel] = np.arange(sel.sum())
    index = np.stack([prot, pos], axis=1).astype(np.int32)
    return acts, index


def _sae(d=6, d_sae=10, seed=1):
    params = init_params(jax.random.key(seed), d, d_sae, dec_norm=1.0)
    b_enc = jnp.linspace(-1.5, 0.2, d_sae, dtype=jnp.float32)
    b_enc = b_enc.at[3].set(-100.0)  # a dead feature
    return params._replace(b_enc=b_enc)


def test_merge_topk_matches_sort():
    rng = np.random.default_rng(0)
    vals = np.full((4, 3), -np.inf, np.float32)
    ids = np.full((4, 3, 1), -1, np.int32)
    full = []
    for c in range(5):
        chunk = rng.standard_normal((6, 4)).astype(np.float32)
        cid = (np.arange(6) + 6 * c)[:, None].astype(np.int32)
        vals, ids = merge_topk(jnp.asarray(vals), jnp.asarray(ids), chunk, cid)
        full.append(chunk)
    full = np.concatenate(full)  # (30, 4)
    order = np.argsort(-full, axis=0, kind="stable")[:3].T
    np.testing.assert_array_equal(np.asarray(ids)[:, :, 0], order)
    np.testing.assert_allclose(np.asarray(vals), np.take_along_axis(full.T, order, axis=1))


@pytest.mark.parametrize("chunk_size", [64, 1000])
def test_scan_features_equals_full_computation(chunk_size):
    acts, index = _data()
    params = _sae()
    stats = scan_features((acts, index), sae_featurizer(params), k=5, chunk_size=chunk_size)
    codes = np.asarray(encode(params, jnp.asarray(acts))[0])
    assert stats.num_rows == acts.shape[0]
    np.testing.assert_allclose(stats.density, (codes > 0).mean(0))
    np.testing.assert_allclose(stats.density, activation_density(codes), rtol=1e-6)
    np.testing.assert_allclose(stats.max_act, codes.max(0), rtol=1e-6)
    np.testing.assert_allclose(stats.sum_act, codes.sum(0), rtol=1e-4)
    order = np.argsort(-codes, axis=0, kind="stable")[:5].T  # (F, 5) rows by activation
    np.testing.assert_allclose(
        stats.top_values, np.take_along_axis(codes.T, order, axis=1), rtol=1e-6
    )
    # rows with equal activation (zeros) may come in any order: compare where values differ
    live = stats.top_values > 0
    np.testing.assert_array_equal(stats.top_protein[live], index[order][live][:, 0])
    np.testing.assert_array_equal(stats.top_position[live], index[order][live][:, 1])
    assert 3 in dead_features(stats.density)
    np.testing.assert_array_equal(dead_features(stats.density), np.flatnonzero(codes.max(0) <= 0))


def test_scan_features_fewer_rows_than_k():
    acts, index = _data(n=3)
    stats = scan_features((acts, index), neuron_featurizer(None, d=6), k=5, chunk_size=8)
    assert np.isnan(stats.top_values[:, 3:]).all()
    assert (stats.top_protein[:, 3:] == -1).all()


def test_scan_features_on_a_store(tmp_path):
    acts, index = _data(n=250)
    write_shard(tmp_path, 0, acts[:100], index[:100])
    write_shard(tmp_path, 1, acts[100:], index[100:])
    proteins = [{"id": f"p{i}", "length": int((index[:, 0] == i).sum())} for i in range(7)]
    store = finalize_store(tmp_path, proteins)
    feat = neuron_featurizer(store.mean)
    a = scan_features(open_store(tmp_path), feat, k=4, chunk_size=64)
    b = scan_features((acts, index), feat, k=4, chunk_size=250)
    np.testing.assert_allclose(a.top_values, b.top_values, rtol=1e-6)
    np.testing.assert_array_equal(a.top_protein, b.top_protein)
    np.testing.assert_allclose(a.density, b.density)


def test_neighbours_match_numpy():
    rng = np.random.default_rng(3)
    W = rng.standard_normal((37, 5)).astype(np.float32)
    nb = decoder_neighbours(W, n=4, block_size=16)
    U = W / np.linalg.norm(W, axis=1, keepdims=True)
    C = U @ U.T
    np.fill_diagonal(C, -np.inf)
    want = np.argsort(-C, axis=1)[:, :4]
    np.testing.assert_array_equal(nb.indices, want)
    np.testing.assert_allclose(nb.cosines, np.take_along_axis(C, want, axis=1), rtol=1e-5)
    np.testing.assert_allclose(decoder_cosine(W, 2), U @ U[2], rtol=1e-5)
    with pytest.raises(ValueError, match="1 <= n < F"):
        decoder_neighbours(W, n=37)


def test_pca_matches_numpy_svd():
    rng = np.random.default_rng(4)
    X = (rng.standard_normal((200, 6)) @ rng.standard_normal((6, 6))).astype(np.float64)
    pca = fit_pca(X, 4)
    Xc = X - X.mean(0)
    _, s, vt = np.linalg.svd(Xc, full_matrices=False)
    for j in range(4):  # equal up to sign
        dot = float(pca.components[j] @ vt[j])
        assert abs(abs(dot) - 1) < 1e-8
    np.testing.assert_allclose(pca.explained_variance, s[:4] ** 2 / 199, rtol=1e-8)
    np.testing.assert_allclose(pca.explained_variance_ratio, s[:4] ** 2 / (s**2).sum(), rtol=1e-8)
    # the sign convention: the largest-magnitude loading is positive
    big = pca.components[np.arange(4), np.abs(pca.components).argmax(1)]
    assert (big > 0).all()
    with pytest.raises(ValueError, match="n_components"):
        fit_pca(X, 7)


def test_pca_and_neuron_featurizers_use_both_signs():
    rng = np.random.default_rng(5)
    X = rng.standard_normal((50, 3)).astype(np.float32)
    pca = fit_pca(X)
    f = np.asarray(pca_featurizer(pca).apply(pca_featurizer(pca).params, jnp.asarray(X)))
    z = (X - pca.mean) @ pca.components.T
    np.testing.assert_allclose(f[:, :3] - f[:, 3:], z, atol=1e-5)
    assert (f >= 0).all()
    nf = neuron_featurizer(X.mean(0))
    g = np.asarray(nf.apply(nf.params, jnp.asarray(X)))
    np.testing.assert_allclose(g[:, :3] - g[:, 3:], X - X.mean(0), atol=1e-6)
    assert nf.labels[:1] == ("n0+",) and nf.num_features == 6


def test_interplm_neuron_baseline_is_raw_and_positive_only():
    X = np.array([[1.0, -2.0], [-3.0, 4.0]], np.float32)
    nf = neuron_featurizer(None, 2, signs="positive")  # InterPLM's identity dictionary
    g = np.asarray(nf.apply(nf.params, jnp.asarray(X)))
    np.testing.assert_array_equal(g, np.maximum(X, 0))
    assert nf.labels == ("n0", "n1") and nf.num_features == 2
    with pytest.raises(ValueError, match="signs"):
        neuron_featurizer(None, 2, signs="negative")


def test_the_analysis_uses_interplm_neurons_unless_the_centred_variant_is_named():
    from types import SimpleNamespace

    from jaxsae.interpret.analysis import AnalysisConfig, build_featurizers

    rng = np.random.default_rng(0)
    X = (rng.standard_normal((40, 3)) + 5.0).astype(np.float32)  # an offset: centring matters
    rows = (X, np.zeros((40, 2), np.int32))
    store = SimpleNamespace(d=3, mean=X.mean(0))
    params = init_params(jax.random.key(0), 3, 8)
    assert AnalysisConfig().neurons == "interplm"
    for cfg in (AnalysisConfig(), AnalysisConfig(neurons="centred")):
        nf = build_featurizers(store, params, [], cfg, pca_source=rows)[0]["neurons"]
        g = np.asarray(nf.apply(nf.params, jnp.asarray(X)))
        if cfg.neurons == "interplm":  # raw, positive side only: d features
            assert nf.num_features == 3
            np.testing.assert_array_equal(g, np.maximum(X, 0))
        else:  # mean-centred, both signs: 2d features
            assert nf.num_features == 6
            np.testing.assert_allclose(g[:, :3] - g[:, 3:], X - X.mean(0), atol=1e-4)


def test_sample_rows_of_one_split():
    acts, index = _data(n=120)
    proteins = [
        {"split": s} for s in ["train", "test", "train", "validation", "train", "x", "test"]
    ]
    rows = sample_rows((acts, index), proteins, split="train", max_rows=10, seed=0)
    assert rows.shape == (10, 6)
    train_rows = acts[np.isin(index[:, 0], [0, 2, 4])]
    assert all((train_rows == r).all(1).any() for r in rows)


def test_sae_featurizer_applies_the_input_normalisation():
    acts, _ = _data(n=20)
    params = _sae()
    mean = acts.mean(0)
    feat = sae_featurizer(params, mean=mean, scale=2.0)
    got = np.asarray(feat.apply(feat.params, jnp.asarray(acts)))
    want = np.asarray(encode(params, jnp.asarray((acts - mean[None, :]) * 2.0))[0])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_fista_codes_do_not_lose_to_the_encoder_on_its_own_objective():
    from jaxsae.interpret.baselines import fista_featurizer
    from jaxsae.kernels.sae import sae_objective

    acts, _ = _data(n=24)
    params = _sae()._replace(b_enc=jnp.zeros((10,), jnp.float32))
    x = jnp.asarray(acts)
    feat = fista_featurizer(params, 0.5, max_steps=500)
    codes = feat.apply(feat.params, x)
    assert float(jnp.min(codes)) >= 0.0
    j_fista = np.asarray(sae_objective(params, x, codes, 0.5))
    j_enc = np.asarray(sae_objective(params, x, encode(params, x)[0], 0.5))
    assert (j_fista <= j_enc + 1e-4 * np.abs(j_enc)).all()
    assert j_fista.mean() < j_enc.mean()
