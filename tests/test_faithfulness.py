"""Faithfulness: SAEBench core metrics and splicing scores (identity → 1, ablation → 0)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsae.interpret.faithfulness import (
    SpliceOptions,
    bert_mask,
    core_metrics,
    evaluate,
    kept_fraction,
    recovered_score,
    splice_scores,
    summary_lines,
    top_long_range_contacts,
)
from jaxsae.protein.alphabet import MASK_ID, tokenize
from jaxsae.protein.esm2 import (
    ContactHeadParams,
    ESM2Config,
    ESM2Heads,
    LMHeadParams,
    init_esm2_params,
)

CONFIG = ESM2Config(num_layers=3, d_model=32, num_heads=4, d_ff=64, name="tiny")
LAYER = 1


def _seqs():
    rng = np.random.default_rng(0)
    aa = np.array(list("ACDEFGHIKLMNPQRSTVWY"))
    return ["".join(rng.choice(aa, n)) for n in (30, 64, 90, 41, 120)]


@pytest.fixture(scope="module")
def tiny():
    # larger weights than init's 0.02 so that attention (hence contacts) is far from uniform
    params = jax.tree.map(lambda a: a * 10.0, init_esm2_params(jax.random.key(0), CONFIG))
    params = params._replace(inv_freq=init_esm2_params(jax.random.key(0), CONFIG).inv_freq)
    params = params._replace(
        layers=params.layers._replace(
            attn_ln_scale=jnp.ones_like(params.layers.attn_ln_scale),
            mlp_ln_scale=jnp.ones_like(params.layers.mlp_ln_scale),
        ),
        final_ln_scale=jnp.ones_like(params.final_ln_scale),
    )
    k = jax.random.split(jax.random.key(1), 4)
    d, V = CONFIG.d_model, CONFIG.vocab_size
    lm = LMHeadParams(
        W_dense=jax.random.normal(k[0], (d, d)) / np.sqrt(d),
        b_dense=jnp.zeros(d),
        ln_scale=jnp.ones(d),
        ln_bias=jnp.zeros(d),
        W_decoder=params.embed.T,
        bias=0.1 * jax.random.normal(k[1], (V,)),
    )
    contact = ContactHeadParams(
        weight=jax.random.normal(k[2], (CONFIG.num_layers, CONFIG.num_heads)), bias=jnp.zeros(())
    )
    return (CONFIG, params), ESM2Heads(lm=lm, contact=contact)


@pytest.fixture(scope="module")
def mean_act(tiny):
    from jaxsae.protein.esm2 import esm2_hidden_states

    model, _ = tiny
    h = [np.asarray(esm2_hidden_states(model[1], tokenize(s)[None], config=CONFIG,
                                       layers=[LAYER]))[0, 0, 1:-1] for s in _seqs()]  # fmt: skip
    return np.concatenate(h).mean(0)


@pytest.fixture(scope="module")
def scores(tiny, mean_act):
    model, heads = tiny
    opts = SpliceOptions(max_tokens_per_batch=256)
    m = jnp.asarray(mean_act, jnp.float32)
    fns = {
        "identity": lambda x: x,
        "zero": lambda x: jnp.zeros_like(x),
        "mean": lambda x: jnp.broadcast_to(m, x.shape),
    }
    return {
        k: splice_scores(model, f, _seqs(), LAYER, heads=heads, mean=mean_act, options=opts)
        for k, f in fns.items()
    }


def test_identity_scores_one(scores):
    s = scores["identity"]
    for key in ("lm_unmasked", "lm_masked"):
        m = s[key]
        assert m["ce_loss_score"] == pytest.approx(1.0, abs=1e-6)
        assert m["kl_div_score"] == pytest.approx(1.0, abs=1e-6)
        assert m["ce_loss_score_mean"] == pytest.approx(1.0, abs=1e-6)
        assert m["kl_sae"] == pytest.approx(0.0, abs=1e-6)
        assert m["kl_zero"] > 0 and m["ce_zero"] != m["ce_clean"]
    assert s["lm_unmasked"]["num_tokens"] == sum(map(len, _seqs()))
    assert 0 < s["lm_masked"]["num_tokens"] < s["lm_unmasked"]["num_tokens"]
    c = s["contacts"]
    assert c["kept_sae"] == 1.0 and c["contact_score"] == 1.0
    assert c["kept_mean"] < 1 and c["kept_zero"] < 1
    assert c["num_proteins"] == 5


def test_zero_reconstruction_scores_zero(scores):
    s = scores["zero"]
    for key in ("lm_unmasked", "lm_masked"):
        assert s[key]["ce_loss_score"] == pytest.approx(0.0, abs=1e-6)
        assert s[key]["kl_div_score"] == pytest.approx(0.0, abs=1e-6)
    assert s["contacts"]["contact_score_zero"] == 0.0


def test_mean_reconstruction_scores_zero_against_mean(scores):
    s = scores["mean"]
    for key in ("lm_unmasked", "lm_masked"):
        assert s[key]["ce_loss_score_mean"] == pytest.approx(0.0, abs=1e-6)
        assert s[key]["kl_div_score_mean"] == pytest.approx(0.0, abs=1e-6)
    assert s["contacts"]["contact_score"] == 0.0
    # the baselines do not depend on the SAE
    for key in ("ce_clean", "ce_zero", "ce_mean", "kl_zero", "kl_mean"):
        assert s["lm_unmasked"][key] == pytest.approx(scores["identity"]["lm_unmasked"][key])


def test_scores_do_not_depend_on_batching(tiny, mean_act, scores):
    model, heads = tiny
    # rows of 256 tokens holding several proteins, against rows of 128 (other packing)
    opts = SpliceOptions(max_tokens_per_batch=128, buckets=(128, 256))
    s = splice_scores(model, lambda x: 0.5 * x, _seqs(), LAYER, heads=heads, mean=mean_act,
                      options=SpliceOptions(max_tokens_per_batch=256))  # fmt: skip
    t = splice_scores(model, lambda x: 0.5 * x, _seqs(), LAYER, heads=heads, mean=mean_act,
                      options=opts)  # fmt: skip
    for key in ("lm_unmasked", "lm_masked", "contacts"):
        for k, v in s[key].items():
            assert t[key][k] == (v if isinstance(v, str) else pytest.approx(v, rel=1e-4)), k


def test_contact_head_alone_and_no_head(tiny, mean_act):
    model, heads = tiny
    s = splice_scores(model, lambda x: x, _seqs()[:2], LAYER, mean=mean_act,
                      heads=ESM2Heads(contact=heads.contact),
                      options=SpliceOptions(max_tokens_per_batch=256))  # fmt: skip
    assert s["lm_unmasked"] is None and s["lm_masked"] is None
    assert s["contacts"]["contact_score"] == 1.0
    with pytest.raises(ValueError, match="masked-LM head or a contact head"):
        splice_scores(model, lambda x: x, _seqs(), LAYER, heads=ESM2Heads())


def reference_core(X, codes, X_hat):
    """SAEBench core formulas on one batch, NumPy float64."""
    r2 = ((X - X_hat) ** 2).sum(-1)
    nx, nh = np.linalg.norm(X, axis=-1), np.linalg.norm(X_hat, axis=-1)
    dens = (codes > 0).mean(0)
    return {
        "explained_variance": np.mean(1 - r2 / ((X - X.mean(0)) ** 2).sum(-1)),
        "mse": r2.mean(),
        "cossim": np.mean((X * X_hat).sum(-1) / (nx * nh)),
        "l2_ratio": np.mean(nh / nx),
        "relative_reconstruction_bias": (nh**2).mean() / (X * X_hat).sum(-1).mean(),
        "l0": (codes != 0).sum(-1).mean(),
        "dead_fraction": np.mean(dens == 0),
        "dense_fraction": np.mean(dens > 0.1),
    }


def test_core_metrics_match_saebench_formulas():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(500, 16)) + 1.0
    W_enc, W_dec = rng.normal(size=(16, 64)), rng.normal(size=(64, 16)) / 8
    b_enc = np.concatenate([-np.full(4, 1e3), np.full(4, 10.0), -np.ones(56) * 3])
    encode = lambda x: jnp.maximum(x @ W_enc + b_enc[None, :], 0)  # noqa: E731
    decode = lambda f: f @ W_dec + 0.1  # noqa: E731
    got = core_metrics(encode, decode, X, chunk_rows=128)
    codes = np.maximum(X @ W_enc + b_enc, 0)
    want = reference_core(X, codes, codes @ W_dec + 0.1)
    for k, v in want.items():
        assert got[k] == pytest.approx(v, rel=1e-4, abs=1e-6), k
    assert got["dead_fraction"] >= 4 / 64 and got["dense_fraction"] >= 4 / 64
    same = core_metrics(lambda x: x, lambda f: f, X)
    assert same["explained_variance"] == pytest.approx(1.0)
    assert same["cossim"] == pytest.approx(1.0) and same["mse"] == pytest.approx(0.0, abs=1e-8)
    assert same["relative_reconstruction_bias"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="expected X of shape"):
        core_metrics(encode, decode, X[0])


def test_score_and_contact_kernels():
    assert recovered_score(2.0, 2.0, 3.0) == 1.0 and recovered_score(2.0, 3.0, 3.0) == 0.0
    assert np.isnan(recovered_score(1.0, 1.0, 1.0))
    L = 60
    p = np.zeros((L, L))
    p[0, 50], p[3, 40], p[10, 20] = 0.9, 0.8, 0.99  # (10, 20) is short-range
    top = top_long_range_contacts(p, min_separation=24, top_fraction=2 / L)
    assert list(top) == [0 * L + 50, 3 * L + 40]
    assert len(top_long_range_contacts(np.zeros((20, 20)))) == 0  # no pair 24 apart
    assert kept_fraction(top, np.array([50])) == 0.5
    rng = np.random.default_rng(0)
    tok = tokenize("ACDEFGHIKLMNPQRSTVWY" * 50, add_special=False)
    out, sel = bert_mask(tok, rng, 0.15)
    assert sel.sum() == 150 and np.all(out[~sel] == tok[~sel])
    assert 0.7 < np.mean(out[sel] == MASK_ID) < 0.9


def test_evaluate_and_summary(tiny, mean_act):
    model, heads = tiny
    X = np.random.default_rng(0).normal(size=(100, CONFIG.d_model))
    res = evaluate(model, heads, lambda x: x, lambda f: f, X, _seqs()[:2], LAYER,
                   mean=mean_act,
                   options=SpliceOptions(mask_fraction=0.0, max_tokens_per_batch=256))  # fmt: skip
    import json

    json.dumps(res)
    lines = summary_lines(res)
    assert any("CE-loss score 1.000" in line for line in lines)
    assert any("contact score 1.000" in line for line in lines)
    assert res["splice"]["lm_masked"] is None


def test_default_mean_is_the_residue_mean_of_the_sequences(tiny, scores):
    model, heads = tiny
    opts = SpliceOptions(max_tokens_per_batch=256, mask_fraction=0.0)
    s = splice_scores(
        model, lambda x: x, _seqs(), LAYER, heads=ESM2Heads(lm=heads.lm), options=opts
    )
    want = scores["identity"]["lm_unmasked"]
    assert s["lm_unmasked"]["ce_mean"] == pytest.approx(want["ce_mean"], rel=1e-4)
    assert s["contacts"] is None and s["lm_masked"] is None
