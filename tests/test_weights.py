"""Torch-free checkpoint loading: the restricted unpickler, tensor rebuilding, key checks."""

import io
import os
import pickle
import zipfile

import jax
import numpy as np
import pytest

from jaxsae.protein.esm2 import ESM2Config, init_esm2_params
from jaxsae.protein.weights import (
    UnsafeCheckpointError,
    load_esm2,
    load_state_dict,
    load_torch_file,
    save_esm2_hf,
)

TINY = ESM2Config(num_layers=2, d_model=16, num_heads=2, d_ff=32, name="tiny")


# ------------------------------------------------- a torch.save writer without torch (for tests)


class _Global:
    """Pickled as the global ``module.name`` (what torch's pickles refer to)."""

    def __init__(self, module, name):
        self.module, self.name = module, name

    def __call__(self, *args):  # pickle wants reduce functions callable; never called
        raise TypeError("a stand-in for a global")


class _Call:
    """Pickled as ``func(*args)``."""

    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)


class _Storage:
    def __init__(self, kind, key, numel):
        self.kind, self.key, self.numel = kind, key, numel


class _TorchLikePickler(pickle._Pickler):  # the pure-Python pickler lets us name globals
    def save_global(self, obj, name=None):
        if isinstance(obj, _Global):
            self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
            self.memoize(obj)
        else:
            super().save_global(obj, name)

    def save(self, obj, save_persistent_id=True):
        if isinstance(obj, _Global):
            return self.save_global(obj)
        return super().save(obj, save_persistent_id)

    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            return ("storage", _Global("torch", obj.kind), obj.key, "cpu", obj.numel)
        return None


_KINDS = {np.float32: "FloatStorage", np.float16: "HalfStorage", np.int64: "LongStorage"}


def write_torch_zip(path, tensors, *, extra=None, root="archive"):
    """``torch.save``-format zip of ``{name: (storage array, offset, shape, strides)}``."""
    blobs, state = {}, {}
    for i, (name, (storage, offset, shape, strides)) in enumerate(tensors.items()):
        kind = _KINDS.get(storage.dtype.type, "BFloat16Storage")
        blobs[str(i)] = storage.tobytes()
        numel = storage.size
        rebuild = _Global("torch._utils", "_rebuild_tensor_v2")
        state[name] = _Call(
            rebuild,
            (
                _Storage(kind, str(i), numel),
                offset,
                shape,
                strides,
                False,
                _Call(_Global("collections", "OrderedDict"), ()),
            ),
        )
    obj = state if extra is None else {"model": state, **extra}
    buf = io.BytesIO()
    _TorchLikePickler(buf, protocol=2).dump(obj)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{root}/data.pkl", buf.getvalue())
        zf.writestr(f"{root}/byteorder", "little")
        for key, raw in blobs.items():
            zf.writestr(f"{root}/data/{key}", raw)


# ------------------------------------------------------------------------------------- tests


def test_rebuilds_tensors_with_offset_strides_and_dtypes(tmp_path):
    base = np.arange(24, dtype=np.float32)
    half = np.linspace(-2, 2, 10).astype(np.float16)
    longs = np.arange(6, dtype=np.int64)
    bf16_src = np.array([1.5, -2.25, 3.0], np.float32)
    bf16 = (bf16_src.view(np.uint32) >> 16).astype(np.uint16)  # exact in bfloat16
    write_torch_zip(
        tmp_path / "t.bin",
        {
            "plain": (base, 0, (4, 6), (6, 1)),
            "transposed": (base, 0, (6, 4), (1, 6)),  # a non-contiguous view
            "offset": (base, 5, (3,), (2,)),
            "half": (half, 2, (2, 4), (4, 1)),
            "long": (longs, 0, (6,), (1,)),
            "bf16": (bf16, 0, (3,), (1,)),
        },
    )
    sd = load_state_dict(tmp_path / "t.bin")
    np.testing.assert_array_equal(sd["plain"], base.reshape(4, 6))
    np.testing.assert_array_equal(sd["transposed"], base.reshape(4, 6).T)
    np.testing.assert_array_equal(sd["offset"], base[5:11:2])
    assert sd["half"].dtype == np.float16
    np.testing.assert_array_equal(sd["half"], half[2:10].reshape(2, 4))
    assert sd["long"].dtype == np.int64
    np.testing.assert_array_equal(sd["bf16"], bf16_src)


class _Evil:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"echo pwned > {self.target}",))


class _EvilEval:
    def __reduce__(self):
        return (eval, ("__import__('os').getcwd()",))


@pytest.mark.parametrize("payload", ["system", "eval"])
def test_malicious_pickle_is_refused_before_running(tmp_path, payload):
    target = tmp_path / "pwned"
    evil = _Evil(target) if payload == "system" else _EvilEval()
    with zipfile.ZipFile(tmp_path / "evil.bin", "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps({"weight": evil}, protocol=2))
    with pytest.raises(UnsafeCheckpointError, match="not a tensor-rebuilding global"):
        load_torch_file(tmp_path / "evil.bin")
    assert not target.exists()
    # the same through the model loader, as a fair-esm .pt
    os.replace(tmp_path / "evil.bin", tmp_path / "evil.pt")
    with pytest.raises(UnsafeCheckpointError):
        load_esm2(tmp_path / "evil.pt")
    assert not target.exists()


def test_not_a_zip_is_a_clear_error(tmp_path):
    (tmp_path / "old.pt").write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(ValueError, match="expected a torch zip archive"):
        load_torch_file(tmp_path / "old.pt")


def _fair_esm_state(params, prefix="encoder.sentence_encoder."):
    """A fair-esm ESM2 state dict (``(out, in)`` weights) from our params."""
    P = jax.tree.map(np.asarray, params)
    d = TINY.d_model
    sd = {
        "embed_tokens.weight": P.embed,
        "emb_layer_norm_after.weight": P.final_ln_scale,
        "emb_layer_norm_after.bias": P.final_ln_bias,
        "layers.0.self_attn.rot_emb.inv_freq": P.inv_freq,
    }
    L = P.layers
    for i in range(TINY.num_layers):
        pre = f"layers.{i}."
        for j, n in enumerate("qkv"):
            sd[pre + f"self_attn.{n}_proj.weight"] = L.W_qkv[i][:, j * d : (j + 1) * d].T
            sd[pre + f"self_attn.{n}_proj.bias"] = L.b_qkv[i][j * d : (j + 1) * d]
        sd[pre + "self_attn.out_proj.weight"], sd[pre + "self_attn.out_proj.bias"] = (
            L.W_out[i].T, L.b_out[i])  # fmt: skip
        sd[pre + "self_attn_layer_norm.weight"] = L.attn_ln_scale[i]
        sd[pre + "self_attn_layer_norm.bias"] = L.attn_ln_bias[i]
        sd[pre + "final_layer_norm.weight"] = L.mlp_ln_scale[i]
        sd[pre + "final_layer_norm.bias"] = L.mlp_ln_bias[i]
        sd[pre + "fc1.weight"], sd[pre + "fc1.bias"] = L.W_fc1[i].T, L.b_fc1[i]
        sd[pre + "fc2.weight"], sd[pre + "fc2.bias"] = L.W_fc2[i].T, L.b_fc2[i]
    return {prefix + k: np.ascontiguousarray(v) for k, v in sd.items()}


def _to_torch_zip(path, sd, extra=None):
    tensors = {k: (v.ravel(), 0, v.shape, tuple(s // v.itemsize for s in v.strides))
               for k, v in sd.items()}  # fmt: skip
    write_torch_zip(path, tensors, extra=extra)


def _assert_same(p, q):
    for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(q), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("prefix", ["encoder.sentence_encoder.", "encoder.", ""])
def test_fair_esm_checkpoint(tmp_path, prefix):
    params = init_esm2_params(jax.random.key(0), TINY)
    args = _Call(
        _Global("copyreg", "_reconstructor"),
        (_Global("argparse", "Namespace"), _Global("builtins", "object"), None),
    )
    # args: an argparse.Namespace carrying the sizes (as in ESM-1b); ESM-2 keeps them in cfg
    ns_state = {"encoder_attention_heads": 2, "encoder_layers": 2, "token_dropout": True}

    class _NS(_Call):
        def __reduce__(self):
            return (self.func, self.args, ns_state)

    _to_torch_zip(tmp_path / "m.pt", _fair_esm_state(params, prefix),
                  extra={"args": _NS(args.func, args.args)})  # fmt: skip
    config, loaded = load_esm2(tmp_path / "m.pt")
    assert (config.num_layers, config.d_model, config.num_heads, config.d_ff) == (2, 16, 2, 32)
    _assert_same(params, loaded)


def test_hf_directory_roundtrip_and_esm_prefix(tmp_path):
    params = init_esm2_params(jax.random.key(1), TINY)
    save_esm2_hf(params, TINY, tmp_path / "hf")
    config, loaded = load_esm2(tmp_path / "hf")
    assert config == TINY
    _assert_same(params, loaded)
    # the same weights as a pytorch_model.bin with the "esm." prefix of task heads
    sd = load_state_dict(tmp_path / "hf" / "model.safetensors")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "config.json").write_text((tmp_path / "hf" / "config.json").read_text())
    _to_torch_zip(tmp_path / "bin" / "pytorch_model.bin", {"esm." + k: v for k, v in sd.items()})
    _assert_same(params, load_esm2(tmp_path / "bin")[1])


def test_missing_and_misshaped_keys_are_listed(tmp_path):
    params = init_esm2_params(jax.random.key(2), TINY)
    save_esm2_hf(params, TINY, tmp_path / "hf")
    from safetensors.numpy import load_file, save_file

    sd = load_file(str(tmp_path / "hf" / "model.safetensors"))
    del sd["encoder.layer.1.intermediate.dense.weight"]
    del sd["encoder.emb_layer_norm_after.bias"]
    save_file(sd, str(tmp_path / "hf" / "model.safetensors"))
    with pytest.raises(ValueError, match="missing keys") as err:
        load_esm2(tmp_path / "hf")
    assert "encoder.layer.1.intermediate.dense.weight" in str(err.value)
    assert "encoder.emb_layer_norm_after.bias" in str(err.value)

    sd = load_file(str(tmp_path / "hf" / "model.safetensors"))
    save_esm2_hf(params, TINY, tmp_path / "hf2")
    sd = load_file(str(tmp_path / "hf2" / "model.safetensors"))
    sd["embeddings.word_embeddings.weight"] = np.zeros((33, 8), np.float32)
    save_file(sd, str(tmp_path / "hf2" / "model.safetensors"))
    with pytest.raises(ValueError, match=r"embed: expected \(33, 16\), found \(33, 8\)"):
        load_esm2(tmp_path / "hf2")


def test_nothing_there_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        load_esm2(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="model.safetensors or pytorch_model.bin"):
        load_esm2(tmp_path)
