"""SAELens export/import: round trip, the on-disk layout, conventions, and clear errors."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from jaxsae.kernels.sae import SAEParams, forward, init_params
from jaxsae.kernels.topk import topk_forward
from jaxsae.models.saelens import load_saelens, save_saelens

D, F = 4, 10


@pytest.fixture
def params():
    p = init_params(jax.random.PRNGKey(0), D, F)
    return p._replace(
        b_enc=jnp.linspace(-0.1, 0.1, F, dtype=jnp.float32),
        b_dec=jnp.asarray([0.1, -0.2, 0.3, 0.0], jnp.float32),
    )


def test_round_trip_and_layout(tmp_path, params):
    cfg = {
        "model_name": "esm2_t6_8M_UR50D",
        "hook_name": "layers.4",
        "hook_layer": 4,
        "context_size": 1024,
        "scale": np.float32(0.5),
        "mean": jnp.zeros(2),
        "dataset_path": "uniref50-sample",
        "l1_coeff": 5.0,
    }
    out = save_saelens(tmp_path / "sae", params, cfg)
    tensors = load_file(str(out / "sae_weights.safetensors"))
    assert sorted(tensors) == ["W_dec", "W_enc", "b_dec", "b_enc"]
    assert tensors["W_enc"].shape == (D, F) and tensors["W_dec"].shape == (F, D)
    stored = json.loads((out / "cfg.json").read_text())
    assert stored["d_in"] == D and stored["d_sae"] == F and stored["dtype"] == "float32"
    assert stored["architecture"] == "standard" and stored["apply_b_dec_to_input"] is False
    assert stored["normalize_activations"] == "none" and stored["device"] == "cpu"
    assert stored["metadata"]["hook_name"] == "layers.4"
    assert stored["metadata"]["scale"] == 0.5 and stored["metadata"]["mean"] == [0.0, 0.0]
    assert stored["metadata"]["hook_layer"] == 4 and stored["metadata"]["l1_coeff"] == 5.0
    loaded, cfg2 = load_saelens(out)
    for name in SAEParams._fields[:4]:
        np.testing.assert_array_equal(getattr(loaded, name), getattr(params, name))
    assert cfg2["metadata"]["model_name"] == "esm2_t6_8M_UR50D"
    assert not list(tmp_path.glob(".sae.*"))  # no temporary directory left behind
    # overwrite in place
    save_saelens(tmp_path / "sae", params._replace(b_dec=params.b_dec + 1), cfg)
    np.testing.assert_array_equal(load_saelens(out)[0].b_dec, params.b_dec + 1)
    assert not list(tmp_path.glob(".sae.*"))


def test_topk_round_trip(tmp_path, params):
    save_saelens(tmp_path / "tk", params, {"architecture": "topk", "k": 3})
    stored = json.loads((tmp_path / "tk" / "cfg.json").read_text())
    assert stored["architecture"] == "topk" and stored["k"] == 3
    assert stored["apply_b_dec_to_input"] is True
    loaded, cfg = load_saelens(tmp_path / "tk")
    assert cfg["k"] == 3
    for name in SAEParams._fields[:4]:
        np.testing.assert_array_equal(getattr(loaded, name), getattr(params, name))


def test_other_b_dec_convention_is_folded(tmp_path, params):
    # A standard SAELens file with apply_b_dec_to_input=true encodes (x − b_dec): loading it must
    # give the same codes through jaxsae's encoder on x.
    d = tmp_path / "ext"
    d.mkdir()
    save_file(
        {n: np.asarray(getattr(params, n)) for n in SAEParams._fields[:4]},
        str(d / "sae_weights.safetensors"),
    )
    legacy = {
        "d_in": D,
        "d_sae": F,
        "dtype": "float32",
        "architecture": "standard",
        "apply_b_dec_to_input": True,
        "hook_name": "blocks.0.hook_resid_pre",
    }
    (d / "cfg.json").write_text(json.dumps(legacy))
    loaded, cfg = load_saelens(d)
    assert cfg["metadata"]["hook_name"] == "blocks.0.hook_resid_pre"  # legacy top-level key
    x = jax.random.normal(jax.random.PRNGKey(1), (3, D), jnp.float32)
    pre = (x - params.b_dec[None, :]) @ params.W_enc + params.b_enc[None, :]
    np.testing.assert_allclose(forward(loaded, x).codes, jnp.maximum(pre, 0), rtol=1e-5, atol=1e-6)
    # a topk file without the b_dec subtraction
    legacy.update(architecture="topk", k=2, apply_b_dec_to_input=False)
    (d / "cfg.json").write_text(json.dumps(legacy))
    loaded, _ = load_saelens(d)
    pre = x @ params.W_enc + params.b_enc[None, :]
    top = jnp.sort(pre, axis=1)[:, -2:]
    np.testing.assert_allclose(
        jnp.sort(topk_forward(loaded, x, 2).codes, axis=1)[:, -2:],
        jnp.maximum(top, 0),
        rtol=1e-5,
        atol=1e-6,
    )


def test_wrong_file_gives_clear_error(tmp_path, params):
    d = tmp_path / "bad"
    d.mkdir()
    tensors = {n: np.asarray(getattr(params, n)) for n in SAEParams._fields[:4]}
    tensors["W_dec"] = tensors["W_dec"][:, :3]
    del tensors["b_enc"]
    tensors["threshold"] = np.zeros(F, np.float32)
    save_file(tensors, str(d / "sae_weights.safetensors"))
    (d / "cfg.json").write_text(json.dumps({"d_in": D, "d_sae": F, "architecture": "standard"}))
    with pytest.raises(ValueError) as err:
        load_saelens(d)
    msg = str(err.value)
    assert "missing tensors ['b_enc']" in msg and "threshold" in msg
    assert "W_dec (10, 3)" in msg and "W_dec (10, 4)" in msg
    (d / "cfg.json").write_text(json.dumps({"d_in": D, "d_sae": F, "architecture": "gated"}))
    with pytest.raises(ValueError, match="architecture"):
        load_saelens(d)
    with pytest.raises(FileNotFoundError, match="sae_weights.safetensors"):
        load_saelens(tmp_path / "nowhere")


def test_save_validation(tmp_path, params):
    with pytest.raises(ValueError, match="k"):
        save_saelens(tmp_path / "a", params, {"architecture": "topk"})
    with pytest.raises(ValueError, match="d_in"):
        save_saelens(tmp_path / "a", params, {"d_in": D + 1})
    with pytest.raises(ValueError, match="apply_b_dec_to_input"):
        save_saelens(tmp_path / "a", params, {"apply_b_dec_to_input": True})
    with pytest.raises(ValueError, match="wrong shapes"):
        save_saelens(tmp_path / "a", params._replace(b_enc=jnp.zeros(F + 1)))
    with pytest.raises(TypeError):
        save_saelens(tmp_path / "a", params, {"model_name": object()})
    assert not (tmp_path / "a").exists()
