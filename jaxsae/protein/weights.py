"""Load ESM-2 checkpoints without torch.

Supported sources:

* a **Hugging Face directory**: ``config.json`` and ``model.safetensors`` (read with
  ``safetensors.numpy``) or ``pytorch_model.bin``; keys ``embeddings.…``/``encoder.…``, with an
  ``esm.`` prefix from task heads (``EsmForMaskedLM``, ``EsmForSequenceClassification``);
* a **fair-esm** ``.pt`` checkpoint: keys ``encoder.sentence_encoder.layers.0.…`` (or
  ``encoder.layers.0.…``, ``layers.0.…``); the sizes come from ``cfg["model"]`` or ``args``.

``.bin``/``.pt`` files are torch's zip format: ``<name>/data.pkl`` (a pickle) and one raw entry
``<name>/data/<key>`` per storage. The pickle is read by ``RestrictedUnpickler``, which resolves
only the globals torch needs to rebuild tensors (``torch._utils._rebuild_tensor_v2``,
``torch.*Storage``, ``collections.OrderedDict``, …) and rebuilds each tensor as a NumPy array from
the zip entry, its dtype, offset, shape and strides. Any other global — ``os.system``,
``builtins.eval``, an arbitrary class — raises ``UnsafeCheckpointError`` before anything runs.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from jaxsae.protein.esm2 import (
    ESM2_SIZES,
    ESM2Config,
    ESM2Heads,
    ESM2LayerParams,
    ESM2Params,
    check_params,
    default_inv_freq,
)

__all__ = [
    "UnsafeCheckpointError",
    "RestrictedUnpickler",
    "load_torch_file",
    "load_state_dict",
    "config_from_hf",
    "params_from_hf_state_dict",
    "params_from_fair_esm_state_dict",
    "load_esm2",
    "save_esm2_hf",
    "heads_from_state_dict",
    "load_esm2_heads",
]


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint's pickle asked for a global outside the tensor-rebuilding allow-list."""


_STORAGE_DTYPES: dict[str, Any] = {
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "BFloat16Storage": "bfloat16",
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _StorageType:
    """Stands for ``torch.<X>Storage`` in a pickle: only carries the NumPy dtype."""

    def __init__(self, name: str):
        self.name = name
        self.dtype = _STORAGE_DTYPES[name]


class _Namespace:
    """Stands for ``argparse.Namespace`` (fair-esm ``args``): attributes from the pickled dict."""

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)


def _reconstruct(cls: Any, base: Any, state: Any) -> Any:
    if cls is not _Namespace or base is not object:
        raise UnsafeCheckpointError(f"refusing to reconstruct {cls!r} from {base!r}")
    return _Namespace()


def _rebuild_tensor(
    storage: np.ndarray, offset: int, size: tuple, stride: tuple, *_: Any
) -> np.ndarray:
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    needed = offset + (
        sum((n - 1) * s for n, s in zip(size, stride, strict=True)) + 1 if all(size) else 0
    )
    if needed > storage.size:
        raise ValueError(
            f"checkpoint tensor of shape {size} at offset {offset} needs {needed} elements, "
            f"its storage has {storage.size}"
        )
    item = storage.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage[offset:], shape=size, strides=tuple(s * item for s in stride)
    )
    return np.array(view)  # a compact copy


def _rebuild_parameter(data: np.ndarray, *_: Any) -> np.ndarray:
    return data


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler for torch checkpoints that resolves only an allow-list of globals.

    Allowed: ``torch._utils._rebuild_tensor_v2``, ``torch._utils._rebuild_parameter``
    (and ``_with_state``), ``torch.<dtype>Storage``, ``collections.OrderedDict``,
    ``argparse.Namespace`` (as a plain attribute holder) and ``copyreg._reconstructor`` for that
    one class. Everything else raises ``UnsafeCheckpointError``.

    Args:
      file: the pickle stream.
      storages: ``key -> raw bytes`` of the archive's storages (``data/<key>``), or a callable
        returning the bytes of a key.
    """

    _ALLOWED: dict[tuple[str, str], Any] = {
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
        ("collections", "OrderedDict"): OrderedDict,
        ("argparse", "Namespace"): _Namespace,
        ("copyreg", "_reconstructor"): _reconstruct,
        ("builtins", "object"): object,
    }

    def __init__(self, file: Any, storages: Any):
        super().__init__(file)
        self._storages = storages
        self._cache: dict[str, np.ndarray] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return self._ALLOWED[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise UnsafeCheckpointError(
            f"checkpoint pickle refers to {module}.{name}, which is not a tensor-rebuilding "
            "global; refusing to load it (only torch tensor storages, OrderedDict and "
            "argparse.Namespace are allowed)"
        )

    def persistent_load(self, pid: Any) -> np.ndarray:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise UnsafeCheckpointError(f"unexpected persistent id in checkpoint: {pid!r}")
        storage_type, key, _location, numel = pid[1], str(pid[2]), pid[3], int(pid[4])
        if not isinstance(storage_type, _StorageType):
            raise UnsafeCheckpointError(f"unexpected storage type in checkpoint: {storage_type!r}")
        if key not in self._cache:
            raw = self._storages(key) if callable(self._storages) else self._storages[key]
            if storage_type.dtype == "bfloat16":
                bits = np.frombuffer(raw, dtype="<u2")[:numel].astype(np.uint32) << 16
                arr = bits.view(np.float32)
            else:
                arr = np.frombuffer(raw, dtype=np.dtype(storage_type.dtype).newbyteorder("<"))
                arr = arr[:numel]
            self._cache[key] = arr
        return self._cache[key]


def load_torch_file(path: str | os.PathLike) -> Any:
    """Read a ``torch.save`` zip archive (``.bin``/``.pt``) into NumPy arrays, without torch.

    Returns:
      The unpickled object (usually a dict) with every tensor as a ``np.ndarray``.

    Raises:
      UnsafeCheckpointError: the pickle refers to a global outside the allow-list.
      ValueError: not a zip archive (torch's legacy format is not supported), or no ``data.pkl``.
    """
    path = Path(path)
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            head = f.read(4)
        if head.startswith(b"PK"):  # a zip's local header without its central directory
            found = "a damaged or truncated zip archive"
            fix = "download or copy it again"
        elif head[:1] == b"\x80":  # a pickle stream: torch's legacy (pre-1.6) format
            found = "torch's legacy (pre-1.6) format"
            fix = "re-save it with a recent torch, or convert it to safetensors"
        else:
            found = f"a file starting with {head!r}" if head else "an empty file"
            fix = "give the checkpoint file itself"
        raise ValueError(
            f"{path}: expected a torch zip archive (torch.save since torch 1.6), found {found}; "
            f"{fix}"
        )
    try:
        return _load_torch_zip(path)
    except (zipfile.BadZipFile, EOFError, pickle.UnpicklingError) as err:
        if isinstance(err, UnsafeCheckpointError):
            raise UnsafeCheckpointError(f"{path}: {err}") from err
        raise ValueError(
            f"{path}: damaged torch checkpoint ({err}); download or copy it again"
        ) from err


def _load_torch_zip(path: Path) -> Any:
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        pkl = [n for n in names if n.endswith("data.pkl")]
        if len(pkl) != 1:
            raise ValueError(f"{path}: expected one data.pkl in the archive, found {len(pkl)}")
        root = pkl[0][: -len("data.pkl")]
        order = (
            zf.read(root + "byteorder").decode().strip()
            if root + "byteorder" in names
            else "little"
        )
        if order != "little":
            raise ValueError(f"{path}: expected a little-endian checkpoint, found {order}")
        return RestrictedUnpickler(
            io.BytesIO(zf.read(pkl[0])), lambda key: zf.read(f"{root}data/{key}")
        ).load()


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A flat ``name -> array`` dict from ``.safetensors``, ``.bin`` or ``.pt`` (a fair-esm
    checkpoint's ``"model"`` entry is returned)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.numpy import load_file

        try:
            return dict(load_file(str(path)))
        except Exception as err:  # safetensors raises its own SafetensorError
            if type(err).__name__ != "SafetensorError" and not isinstance(err, ValueError):
                raise
            raise ValueError(
                f"{path}: expected a safetensors file, found an unreadable one ({err}); it may "
                "be truncated or damaged: download or copy it again"
            ) from err
    obj = load_torch_file(path)
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a state dict, found {type(obj).__name__}")
    return {k: v for k, v in obj.items() if isinstance(v, np.ndarray)}


def config_from_hf(cfg: dict, name: str | None = None) -> ESM2Config:
    """``ESM2Config`` from a Hugging Face ``config.json`` of an ESM model."""
    if cfg.get("model_type", "esm") != "esm":
        raise ValueError(f"config.json: expected model_type 'esm', found {cfg.get('model_type')!r}")
    if cfg.get("position_embedding_type", "rotary") != "rotary" or cfg.get("emb_layer_norm_before"):
        raise ValueError(
            "config.json: expected an ESM-2 model (rotary positions, no embedding LayerNorm), "
            f"found position_embedding_type={cfg.get('position_embedding_type')!r}, "
            f"emb_layer_norm_before={cfg.get('emb_layer_norm_before')!r}"
        )
    if cfg.get("hidden_act", "gelu") != "gelu":
        raise ValueError(f"config.json: expected hidden_act 'gelu', found {cfg['hidden_act']!r}")
    try:
        return ESM2Config(
            num_layers=int(cfg["num_hidden_layers"]),
            d_model=int(cfg["hidden_size"]),
            num_heads=int(cfg["num_attention_heads"]),
            d_ff=int(cfg["intermediate_size"]),
            vocab_size=int(cfg.get("vocab_size", 33)),
            max_tokens=min(int(cfg.get("max_position_embeddings", 1026)) - 2, 1024),
            layer_norm_eps=float(cfg.get("layer_norm_eps", 1e-5)),
            token_dropout=bool(cfg.get("token_dropout", True)),
            rope_theta=float(cfg.get("rope_theta", 10000.0)),
            name=name or str(cfg.get("_name_or_path") or "esm2"),
        )
    except KeyError as err:
        raise ValueError(f"config.json: missing field {err.args[0]!r}") from err


def _assemble(
    sd: dict[str, np.ndarray],
    config: ESM2Config,
    names: dict[str, Any],
    layer_names: dict[str, str],
) -> ESM2Params:
    """Collect, transpose and stack checkpoint arrays; list every missing or mis-shaped key."""
    missing: list[str] = []

    def get(key: str) -> np.ndarray | None:
        # LayerNorm weight/bias are also written as gamma/beta (transformers >= 5 save_pretrained)
        alias = (
            re.sub(r"\.weight$", ".gamma", key)
            if key.endswith(".weight")
            else (re.sub(r"\.bias$", ".beta", key))
        )
        found = key if key in sd else alias if alias in sd else None
        if found is None:
            missing.append(key)
            return None
        return np.asarray(sd[found], dtype=np.float32)

    def linear(prefix: str) -> tuple[np.ndarray | None, np.ndarray | None]:
        w, b = get(prefix + ".weight"), get(prefix + ".bias")
        return (None if w is None else w.T), b

    layers: dict[str, list] = {f: [] for f in ESM2LayerParams._fields}
    for i in range(config.num_layers):
        p = layer_names["prefix"].format(i=i)
        ln1 = get(p + layer_names["attn_ln"] + ".weight"), get(p + layer_names["attn_ln"] + ".bias")
        q, k, v = (linear(p + layer_names[x]) for x in ("q", "k", "v"))
        out = linear(p + layer_names["out"])
        ln2 = get(p + layer_names["mlp_ln"] + ".weight"), get(p + layer_names["mlp_ln"] + ".bias")
        fc1, fc2 = linear(p + layer_names["fc1"]), linear(p + layer_names["fc2"])
        parts = [*ln1, q, k, v, *out, *ln2, *fc1, *fc2]
        if any(x is None for x in parts) or any(a is None for t in (q, k, v) for a in t):
            continue
        try:
            W_qkv = np.concatenate([q[0], k[0], v[0]], axis=1)
            b_qkv = np.concatenate([q[1], k[1], v[1]], axis=0)
        except ValueError:
            W_qkv = b_qkv = np.zeros((0,), np.float32)  # reported as mis-shaped below
        vals = [ln1[0], ln1[1], W_qkv, b_qkv, out[0], out[1], ln2[0], ln2[1], *fc1, *fc2]
        for f, x in zip(ESM2LayerParams._fields, vals, strict=True):
            layers[f].append(x)
    embed = get(names["embed"])
    fs, fb = get(names["final_ln"] + ".weight"), get(names["final_ln"] + ".bias")
    if missing:
        shown = ", ".join(missing[:20]) + (
            f" … ({len(missing)} in all)" if len(missing) > 20 else ""
        )
        raise ValueError(f"ESM-2 checkpoint: missing keys: {shown}")
    shape_err = [
        f"layer {i}: {f} has shape {x.shape}"
        for f, xs in layers.items()
        for i, x in enumerate(xs)
        if x.shape != xs[0].shape
    ]
    if shape_err:
        raise ValueError(
            "ESM-2 checkpoint: inconsistent layer shapes: " + "; ".join(shape_err[:10])
        )
    # rotary frequencies: the checkpoint's buffer where it has one (float16-rounded in ESM-2)
    inv_freq = next((sd[k] for k in names["inv_freq"] if k in sd), None)
    inv_freq = default_inv_freq(config) if inv_freq is None else np.asarray(inv_freq, np.float32)
    params = ESM2Params(
        embed=embed,
        layers=ESM2LayerParams(**{f: np.stack(xs) for f, xs in layers.items()}),
        final_ln_scale=fs,
        final_ln_bias=fb,
        inv_freq=inv_freq,
    )
    return check_params(params, config)


def _strip_prefix(sd: dict[str, np.ndarray], prefixes: tuple[str, ...]) -> dict[str, np.ndarray]:
    for p in prefixes:
        if any(k.startswith(p) for k in sd):
            return {k[len(p) :]: v for k, v in sd.items() if k.startswith(p)}
    return sd


def params_from_hf_state_dict(sd: dict[str, np.ndarray], config: ESM2Config) -> ESM2Params:
    """``ESM2Params`` from a Hugging Face ``EsmModel`` state dict (``esm.`` prefix allowed)."""
    sd = _strip_prefix(sd, ("esm.",))
    return _assemble(
        sd,
        config,
        {
            "embed": "embeddings.word_embeddings.weight",
            "final_ln": "encoder.emb_layer_norm_after",
            "inv_freq": (
                "rotary_embeddings.inv_freq",
                "encoder.layer.0.attention.self.rotary_embeddings.inv_freq",
            ),
        },
        {
            "prefix": "encoder.layer.{i}.",
            "attn_ln": "attention.LayerNorm",
            "q": "attention.self.query",
            "k": "attention.self.key",
            "v": "attention.self.value",
            "out": "attention.output.dense",
            "mlp_ln": "LayerNorm",
            "fc1": "intermediate.dense",
            "fc2": "output.dense",
        },
    )


def params_from_fair_esm_state_dict(sd: dict[str, np.ndarray], config: ESM2Config) -> ESM2Params:
    """``ESM2Params`` from a fair-esm ``ESM2`` state dict (``encoder.sentence_encoder.``,
    ``encoder.`` prefixes allowed)."""
    sd = _strip_prefix(sd, ("encoder.sentence_encoder.", "encoder."))
    return _assemble(
        sd,
        config,
        {
            "embed": "embed_tokens.weight",
            "final_ln": "emb_layer_norm_after",
            "inv_freq": ("layers.0.self_attn.rot_emb.inv_freq",),
        },
        {
            "prefix": "layers.{i}.",
            "attn_ln": "self_attn_layer_norm",
            "q": "self_attn.q_proj",
            "k": "self_attn.k_proj",
            "v": "self_attn.v_proj",
            "out": "self_attn.out_proj",
            "mlp_ln": "final_layer_norm",
            "fc1": "fc1",
            "fc2": "fc2",
        },
    )


def _find_field(obj: Any, field: str, depth: int = 0) -> Any:
    """Look up ``field`` in nested dicts / attribute holders (fair-esm ``cfg`` / ``args``)."""
    if depth > 4 or obj is None:
        return None
    d = obj if isinstance(obj, dict) else getattr(obj, "__dict__", None)
    if not isinstance(d, dict):
        return None
    if field in d:
        return d[field]
    for v in d.values():
        found = _find_field(v, field, depth + 1)
        if found is not None:
            return found
    return None


def _fair_esm_config(ckpt: dict, sd: dict[str, np.ndarray], name: str) -> ESM2Config:
    sd = _strip_prefix(sd, ("encoder.sentence_encoder.", "encoder."))
    layer_ids = {int(m.group(1)) for k in sd if (m := re.match(r"layers\.(\d+)\.", k))}
    if "embed_tokens.weight" not in sd or not layer_ids:
        raise ValueError(
            "fair-esm checkpoint: expected keys embed_tokens.weight and layers.<i>.… (after the "
            f"encoder prefix), found {sorted(sd)[:5]}"
        )
    vocab, d = sd["embed_tokens.weight"].shape
    meta = {k: ckpt.get(k) for k in ("cfg", "args")}
    heads = _find_field(meta, "encoder_attention_heads")
    if heads is None:
        known = {(L, dm): h for L, dm, h in ESM2_SIZES.values()}
        heads = known.get((len(layer_ids), d))
        if heads is None:
            raise ValueError(
                "fair-esm checkpoint: no encoder_attention_heads in cfg/args and "
                f"({len(layer_ids)} layers, d={d}) is not a published ESM-2 size"
            )
    d_ff = sd["layers.0.fc1.weight"].shape[0] if "layers.0.fc1.weight" in sd else 4 * d
    token_dropout = _find_field(meta, "token_dropout")
    return ESM2Config(
        num_layers=len(layer_ids),
        d_model=int(d),
        num_heads=int(heads),
        d_ff=int(d_ff),
        vocab_size=int(vocab),
        token_dropout=True if token_dropout is None else bool(token_dropout),
        name=name,
    )


def _finite(params: ESM2Params, path: Path) -> ESM2Params:
    """``params``, or a ``ValueError`` naming the tensors with NaN/inf (a damaged file)."""
    arrays = {k: v for k, v in params._asdict().items() if k != "layers"}
    arrays.update({f"layers.{k}": v for k, v in params.layers._asdict().items()})
    bad = [k for k, v in arrays.items() if not np.isfinite(v).all()]
    if bad:
        raise ValueError(
            f"{path}: expected finite weights, found NaN/inf in {', '.join(bad)}; the file is "
            "probably damaged: download or copy it again"
        )
    return params


def load_esm2(path: str | os.PathLike) -> tuple[ESM2Config, ESM2Params]:
    """Load an ESM-2 checkpoint (see the module docstring for the formats), without torch.

    Args:
      path: a Hugging Face directory (``config.json`` + ``model.safetensors`` or
        ``pytorch_model.bin``), one of those weight files inside such a directory, or a fair-esm
        ``.pt`` file.

    Returns:
      ``(config, params)`` with float32 NumPy parameters in ``ESM2Params`` layout.

    Raises:
      FileNotFoundError: nothing loadable at ``path``.
      ValueError: missing or mis-shaped keys (listed), or an unsupported configuration.
      UnsafeCheckpointError: a pickle that asks for anything but tensor storages.
    """
    path = Path(path)
    if path.is_dir():
        hf_dir = path
        weights = next(
            (
                hf_dir / n
                for n in ("model.safetensors", "pytorch_model.bin")
                if (hf_dir / n).is_file()
            ),
            None,
        )
        if weights is None:
            raise FileNotFoundError(
                f"{path}: expected model.safetensors or pytorch_model.bin in the directory"
            )
    elif path.is_file():
        hf_dir, weights = path.parent, path
    else:
        raise FileNotFoundError(
            f"{path}: expected an ESM-2 checkpoint (a Hugging Face directory or a fair-esm .pt "
            "file), found no such checkpoint file or directory"
        )
    if (hf_dir / "config.json").is_file() and weights.suffix in (".safetensors", ".bin"):
        try:
            cfg = json.loads((hf_dir / "config.json").read_text())
        except ValueError as err:  # not JSON, or not UTF-8
            raise ValueError(
                f"{hf_dir / 'config.json'}: expected a JSON model configuration, found "
                f"unreadable content ({err}); download or copy it again"
            ) from err
        config = config_from_hf(cfg, name=cfg.get("_name_or_path") or hf_dir.name)
        return config, _finite(params_from_hf_state_dict(load_state_dict(weights), config), weights)
    ckpt = load_torch_file(weights)
    if not isinstance(ckpt, dict):
        raise ValueError(f"{weights}: expected a checkpoint dict, found {type(ckpt).__name__}")
    sd = ckpt["model"] if isinstance(ckpt.get("model"), dict) else ckpt
    sd = {k: v for k, v in sd.items() if isinstance(v, np.ndarray)}
    config = _fair_esm_config(ckpt, sd, name=weights.stem)
    return config, _finite(params_from_fair_esm_state_dict(sd, config), weights)


def save_esm2_hf(params: ESM2Params, config: ESM2Config, out_dir: str | os.PathLike) -> Path:
    """Write ``(config, params)`` as a Hugging Face ``EsmModel`` directory (``config.json`` +
    ``model.safetensors``), loadable by ``load_esm2`` and by ``transformers``.

    Returns:
      the directory.
    """
    from safetensors.numpy import save_file

    check_params(params, config)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    p = {k: np.asarray(v, np.float32) for k, v in params._asdict().items() if k != "layers"}
    lp = {k: np.asarray(v, np.float32) for k, v in params.layers._asdict().items()}
    d = config.d_model
    sd = {
        "embeddings.word_embeddings.weight": p["embed"],
        "encoder.emb_layer_norm_after.weight": p["final_ln_scale"],
        "encoder.emb_layer_norm_after.bias": p["final_ln_bias"],
        "rotary_embeddings.inv_freq": p["inv_freq"],
    }
    for i in range(config.num_layers):
        pre = f"encoder.layer.{i}."
        W, b = lp["W_qkv"][i], lp["b_qkv"][i]
        for j, name in enumerate(("query", "key", "value")):
            sd[pre + f"attention.self.{name}.weight"] = W[:, j * d : (j + 1) * d].T
            sd[pre + f"attention.self.{name}.bias"] = b[j * d : (j + 1) * d]
        pairs = {
            "attention.LayerNorm": ("attn_ln_scale", "attn_ln_bias", False),
            "attention.output.dense": ("W_out", "b_out", True),
            "LayerNorm": ("mlp_ln_scale", "mlp_ln_bias", False),
            "intermediate.dense": ("W_fc1", "b_fc1", True),
            "output.dense": ("W_fc2", "b_fc2", True),
        }
        for name, (w, bias, linear) in pairs.items():
            sd[pre + name + ".weight"] = lp[w][i].T if linear else lp[w][i]
            sd[pre + name + ".bias"] = lp[bias][i]
    save_file({k: np.ascontiguousarray(v) for k, v in sd.items()}, str(out / "model.safetensors"))
    cfg = {
        "model_type": "esm",
        "architectures": ["EsmModel"],
        "_name_or_path": config.name,
        "vocab_size": config.vocab_size,
        "hidden_size": d,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "intermediate_size": config.d_ff,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "max_position_embeddings": config.max_tokens + 2,
        "layer_norm_eps": config.layer_norm_eps,
        "position_embedding_type": "rotary",
        "emb_layer_norm_before": False,
        "token_dropout": config.token_dropout,
        "mask_token_id": 32,
        "pad_token_id": 1,
    }
    (out / "config.json").write_text(json.dumps(cfg, indent=1))
    return out


# --------------------------------------------------------------------------- optional heads

#: Prefixes under which a checkpoint may hold the heads: Hugging Face (``lm_head.`` at the top,
#: ``esm.contact_head.``), fair-esm (top level, or under ``encoder.``).
_HEAD_PREFIXES = ("", "esm.", "encoder.", "encoder.sentence_encoder.")


def _head_arrays(
    sd: dict[str, np.ndarray], names: dict[str, tuple[str, ...]]
) -> dict[str, np.ndarray] | None:
    """``field -> array`` for one head, looked up under every prefix; ``None`` if none of its
    keys is there; a ``ValueError`` listing the missing ones if only some are."""
    for prefix in _HEAD_PREFIXES:
        found = {
            f: next((sd[prefix + k] for k in keys if prefix + k in sd), None)
            for f, keys in names.items()
        }
        if all(v is None for v in found.values()):
            continue
        missing = [prefix + keys[0] for f, keys in names.items() if found[f] is None]
        if missing:
            raise ValueError(f"ESM-2 checkpoint: incomplete head, missing keys: {missing}")
        return {f: np.asarray(v, np.float32) for f, v in found.items()}
    return None


def heads_from_state_dict(
    sd: dict[str, np.ndarray], params: ESM2Params, config: ESM2Config
) -> ESM2Heads:
    """The masked-LM and contact heads of a Hugging Face or fair-esm state dict, where present.

    The LM decoder is tied to the token embeddings in ESM-2: a checkpoint that does not store
    it (``lm_head.decoder.weight`` in Hugging Face, ``lm_head.weight`` in fair-esm) gets
    ``params.embed``.

    Returns:
      ``ESM2Heads(lm, contact)``, ``None`` for a head the checkpoint lacks.

    Raises:
      ValueError: a head with some of its keys missing, or of the wrong shape.
    """
    from jaxsae.protein.esm2 import ContactHeadParams, LMHeadParams

    d, V, L, H = config.d_model, config.vocab_size, config.num_layers, config.num_heads
    lm = _head_arrays(
        sd,
        {
            "W_dense": ("lm_head.dense.weight",),
            "b_dense": ("lm_head.dense.bias",),
            "ln_scale": ("lm_head.layer_norm.weight", "lm_head.layer_norm.gamma"),
            "ln_bias": ("lm_head.layer_norm.bias", "lm_head.layer_norm.beta"),
            "bias": ("lm_head.bias",),
        },
    )
    contact = _head_arrays(
        sd,
        {
            "weight": ("contact_head.regression.weight",),
            "bias": ("contact_head.regression.bias",),
        },
    )
    heads_lm = heads_contact = None
    if lm is not None:
        dec_keys = [
            p + k for p in _HEAD_PREFIXES for k in ("lm_head.decoder.weight", "lm_head.weight")
        ]
        dec = next((sd[k] for k in dec_keys if k in sd), None)
        dec = np.asarray(params.embed if dec is None else dec, np.float32)
        want = {"W_dense": (d, d), "b_dense": (d,), "ln_scale": (d,), "ln_bias": (d,),
                "bias": (V,)}  # fmt: skip
        bad = [f"{f}: expected {s}, found {lm[f].shape}" for f, s in want.items()
               if lm[f].shape != s]  # fmt: skip
        if dec.shape != (V, d):
            bad.append(f"decoder: expected {(V, d)}, found {dec.shape}")
        if bad:
            raise ValueError("ESM-2 checkpoint: LM head of the wrong shape: " + "; ".join(bad))
        heads_lm = LMHeadParams(
            W_dense=lm["W_dense"].T, b_dense=lm["b_dense"], ln_scale=lm["ln_scale"],
            ln_bias=lm["ln_bias"], W_decoder=dec.T.copy(), bias=lm["bias"],
        )  # fmt: skip
    if contact is not None:
        w, b = contact["weight"], contact["bias"]
        if w.size != L * H or b.size != 1:
            raise ValueError(
                f"ESM-2 checkpoint: contact head: expected a weight of {L * H} = layers × heads "
                f"and one bias, found shapes {w.shape} and {b.shape}"
            )
        heads_contact = ContactHeadParams(weight=w.reshape(L, H), bias=b.reshape(()))
    return ESM2Heads(lm=heads_lm, contact=heads_contact)


def load_esm2_heads(path: str | os.PathLike, params: ESM2Params, config: ESM2Config) -> ESM2Heads:
    """The optional heads of the checkpoint at ``path`` (the formats of ``load_esm2``).

    Args:
      path: as for ``load_esm2``.
      params, config: what ``load_esm2(path)`` returned (the tied LM decoder is its embedding).

    Returns:
      ``ESM2Heads``; a checkpoint without a head gets ``None`` for it.
    """
    path = Path(path)
    if path.is_dir():
        weights = next(
            (path / n for n in ("model.safetensors", "pytorch_model.bin") if (path / n).is_file()),
            None,
        )
        if weights is None:
            raise FileNotFoundError(
                f"{path}: expected model.safetensors or pytorch_model.bin in the directory"
            )
    else:
        weights = path
    return heads_from_state_dict(load_state_dict(weights), params, config)
