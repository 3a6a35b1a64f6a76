"""Save and load SAEs in SAELens' on-disk layout (``sae_weights.safetensors`` + ``cfg.json``).

The layout (SAELens ≥ 6): a directory with

* ``sae_weights.safetensors``: tensors ``W_enc (d_in, d_sae)``, ``b_enc (d_sae,)``,
  ``W_dec (d_sae, d_in)``, ``b_dec (d_in,)`` and, for ``jumprelu``, ``threshold (d_sae,)`` — the
  same names and layout as ``SAEParams``;
* ``cfg.json``: ``d_in``, ``d_sae``, ``dtype``, ``device``, ``architecture`` (``"standard"``,
  ``"topk"`` with ``k``, or ``"jumprelu"``), ``apply_b_dec_to_input``, ``normalize_activations``,
  ``reshape_activations`` and ``metadata`` (``model_name``, ``hook_name``, ``hook_layer``,
  ``context_size``, ``prepend_bos``, ``dataset_path``, …, and any other key given).

These are SAELens' *inference* forms. Each jaxsae architecture is exported as the one its
``Architecture.saelens_name`` names (``jaxsae.kernels.architectures``): L1 as ``standard``, TopK
as ``topk``, JumpReLU, BatchTopK and Matryoshka BatchTopK as ``jumprelu`` (BatchTopK's running
threshold in every entry of ``threshold``, as SAELens saves its BatchTopK SAEs), and read back
with ``saelens_architecture(cfg)``.

Conventions: jaxsae's standard and JumpReLU SAEs encode ``x`` (no ``b_dec`` subtraction), so
they are saved with ``apply_b_dec_to_input = false``; its TopK SAE encodes ``x − b_dec``
(``true``). A file with the other convention is loaded exactly by folding ``b_dec`` into
``b_enc`` (``b_enc ∓ b_dec W_enc``; the pre-activations, hence JumpReLU's comparison with the
threshold, are unchanged). Files are written atomically: into a temporary directory beside the
target, then renamed. Legacy (SAELens < 6) files with the metadata keys at the top level load too.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from jaxsae.kernels.architectures import Architecture, inference_architecture
from jaxsae.kernels.sae import SAEParams

__all__ = [
    "save_saelens",
    "load_saelens",
    "saelens_fields",
    "saelens_architecture",
    "WEIGHTS_FILENAME",
    "CFG_FILENAME",
]

WEIGHTS_FILENAME = "sae_weights.safetensors"
CFG_FILENAME = "cfg.json"

_TENSORS = ("W_enc", "b_enc", "W_dec", "b_dec")
#: SAELens architecture → whether jaxsae's encoder of that form reads ``x − b_dec``
_APPLY_B_DEC = {"standard": False, "topk": True, "jumprelu": False}
_ARCHITECTURES = tuple(_APPLY_B_DEC)
_NORMALISATIONS = ("none", "expected_average_only_in", "constant_norm_rescale", "layer_norm")
#: top-level keys of SAELens' config; every other key of a given cfg goes to ``metadata``
_TOP_LEVEL = {
    "d_in",
    "d_sae",
    "dtype",
    "device",
    "architecture",
    "apply_b_dec_to_input",
    "normalize_activations",
    "reshape_activations",
    "metadata",
    "k",
    "rescale_acts_by_decoder_norm",
}
_METADATA_DEFAULTS: dict[str, Any] = {
    "model_name": None,
    "hook_name": None,
    "hook_layer": None,
    "hook_head_index": None,
    "context_size": None,
    "prepend_bos": True,
    "dataset_path": None,
    "model_from_pretrained_kwargs": {},
}


def _expected_shapes(d_in: int, d_sae: int, arch: str) -> dict[str, tuple[int, ...]]:
    want = {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_in), "b_dec": (d_in,)}
    if arch == "jumprelu":
        want["threshold"] = (d_sae,)
    return want


def saelens_fields(arch: Architecture) -> dict[str, Any]:
    """SAELens config fields naming ``arch``'s inference form (``architecture``, ``k``…)."""
    return {"architecture": arch.saelens_name, **dict(arch.saelens_options)}


def saelens_architecture(cfg: dict[str, Any]) -> Architecture:
    """The jaxsae architecture that reads a loaded SAELens config's inference form."""
    arch = cfg.get("architecture", "standard")
    options = {"k": int(cfg["k"])} if arch == "topk" else {}
    return inference_architecture(arch, **options)


def _check_tensors(
    tensors: dict[str, np.ndarray], d_in: int, d_sae: int, where: str, arch: str
) -> None:
    want = _expected_shapes(d_in, d_sae, arch)
    missing = sorted(set(want) - set(tensors))
    extra = sorted(set(tensors) - set(want))
    wrong = {
        n: tuple(tensors[n].shape)
        for n in want
        if n in tensors and tuple(tensors[n].shape) != want[n]
    }
    if missing or extra or wrong:
        parts = []
        if missing:
            parts.append(f"missing tensors {missing}")
        if extra:
            parts.append(
                f"unexpected tensors {extra} (for a {arch!r} SAE; supported: {_ARCHITECTURES})"
            )
        if wrong:
            parts.append("wrong shapes " + ", ".join(f"{n} {s}" for n, s in wrong.items()))
        expected = ", ".join(f"{n} {s}" for n, s in want.items())
        raise ValueError(
            f"{where}: expected tensors {expected} (d_in={d_in}, d_sae={d_sae}); "
            f"found " + "; ".join(parts)
        )


def _fold_b_dec(tensors: dict[str, np.ndarray], sign: float) -> np.ndarray:
    """``b_enc + sign · b_dec W_enc`` (moves the input's ``− b_dec`` into / out of ``b_enc``)."""
    return tensors["b_enc"] + sign * (tensors["b_dec"] @ tensors["W_enc"])


def _to_json(value: Any) -> Any:
    """NumPy/JAX scalars and arrays as Python numbers and lists; anything else is an error."""
    if isinstance(value, np.generic) or (hasattr(value, "shape") and hasattr(value, "dtype")):
        return np.asarray(value).tolist()
    raise TypeError(
        f"save_saelens: cfg value {value!r} of type {type(value).__name__} is not JSON-serialisable"
    )


def save_saelens(
    directory: str | os.PathLike, params: SAEParams, cfg: dict[str, Any] | None = None
) -> Path:
    """Write ``params`` and a config in SAELens' layout, atomically.

    Args:
      directory: target directory (created; an existing one is replaced).
      params: the SAE (a standard one, or a TopK one with ``cfg["architecture"] = "topk"`` and
        ``cfg["k"]``), acting on the activations as the model produces them (fold any input
        normalisation first: ``fold_normalisation``).
      cfg: SAELens fields (``architecture``, ``k``, ``normalize_activations``, ``device``, …)
        and metadata (``model_name``, ``hook_name``, ``hook_layer``, ``context_size``,
        ``prepend_bos``, ``dataset_path``, or anything else JSON-serialisable, at the top level
        or under ``"metadata"``). ``d_in``, ``d_sae`` and ``dtype`` come from ``params``.

    Returns:
      The directory's path.

    Raises:
      ValueError: inconsistent shapes, an unknown architecture, a TopK SAE without a valid
        ``k``, a ``d_in``/``d_sae``/``apply_b_dec_to_input`` in ``cfg`` that contradicts
        ``params``.
    """
    from safetensors.numpy import save_file

    cfg = dict(cfg or {})
    arch = cfg.get("architecture", "topk" if "k" in cfg else "standard")
    if arch not in _ARCHITECTURES:
        raise ValueError(f"save_saelens: expected architecture in {_ARCHITECTURES}, found {arch!r}")
    names = _TENSORS + (("threshold",) if params.threshold is not None else ())
    tensors = {n: np.ascontiguousarray(np.asarray(getattr(params, n))) for n in names}
    d_sae, d_in = tensors["W_dec"].shape if tensors["W_dec"].ndim == 2 else (-1, -1)
    _check_tensors(tensors, d_in, d_sae, "save_saelens", arch)
    out = _cfg_json(cfg, arch, d_in, d_sae, str(tensors["W_dec"].dtype))
    # fails here, before anything is written, if a value is not JSON-serialisable
    text = json.dumps(out, indent=2, default=_to_json)

    def write(tmp: Path) -> None:
        save_file(tensors, str(tmp / WEIGHTS_FILENAME))
        (tmp / CFG_FILENAME).write_text(text)

    return _replace_directory(Path(directory), write, (WEIGHTS_FILENAME, CFG_FILENAME))


def _cfg_json(cfg: dict[str, Any], arch: str, d_in: int, d_sae: int, dtype: str) -> dict:
    """SAELens' ``cfg.json`` of an SAE of ``arch`` and these sizes, from the caller's ``cfg``
    (checked against them); fields SAELens does not know go to ``"metadata"``."""
    for key, value in (("d_in", d_in), ("d_sae", d_sae)):
        if key in cfg and int(cfg[key]) != value:
            raise ValueError(f"save_saelens: cfg[{key!r}]={cfg[key]} contradicts params ({value})")
    apply_b_dec = _APPLY_B_DEC[arch]
    if cfg.get("apply_b_dec_to_input", apply_b_dec) != apply_b_dec:
        raise ValueError(
            f"save_saelens: a jaxsae {arch} SAE has apply_b_dec_to_input={apply_b_dec}, found "
            f"{cfg['apply_b_dec_to_input']}"
        )
    norm = cfg.get("normalize_activations", "none")
    if norm not in _NORMALISATIONS:
        raise ValueError(
            f"save_saelens: expected normalize_activations in {_NORMALISATIONS}, found {norm!r}"
        )
    metadata = dict(_METADATA_DEFAULTS)
    metadata.update(cfg.get("metadata", {}))
    metadata.update({k: v for k, v in cfg.items() if k not in _TOP_LEVEL})
    out: dict[str, Any] = {
        "d_in": int(d_in),
        "d_sae": int(d_sae),
        "dtype": dtype,
        "device": cfg.get("device", "cpu"),
        "apply_b_dec_to_input": apply_b_dec,
        "normalize_activations": norm,
        "reshape_activations": cfg.get("reshape_activations", "none"),
        "architecture": arch,
        "metadata": metadata,
    }
    if arch == "topk":
        k = cfg.get("k")
        if isinstance(k, bool) or not isinstance(k, int) or not 0 < k <= d_sae:
            raise ValueError(
                f"save_saelens: a topk SAE needs an int 0 < k <= d_sae={d_sae} in "
                f"cfg, found k={k!r}"
            )
        out["k"] = k
        out["rescale_acts_by_decoder_norm"] = False
    return out


def _replace_directory(target: Path, write: Callable[[Path], None], files: tuple[str, ...]) -> Path:
    """Fill a fresh temporary directory with ``write(tmp)``, then put it in ``target``'s place
    (an existing ``target`` is replaced whole, never left half-written)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        write(tmp)
        _usual_permissions(tmp, files)
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
            os.replace(target, old / "d")
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _usual_permissions(directory: Path, files: tuple[str, ...]) -> None:
    """Give a ``mkdtemp`` directory (0700) and its files the modes the umask gives new files."""
    try:  # Linux: read it without changing it (os.umask sets it, racing other threads)
        status = Path("/proc/self/status").read_text()
        umask = int(next(x for x in status.splitlines() if x.startswith("Umask:")).split()[1], 8)
    except (OSError, StopIteration, ValueError, IndexError):
        umask = os.umask(0o022)
        os.umask(umask)
    directory.chmod(0o777 & ~umask)
    for name in files:
        (directory / name).chmod(0o666 & ~umask)


def load_saelens(directory: str | os.PathLike) -> tuple[SAEParams, dict[str, Any]]:
    """Read an SAE saved in SAELens' layout (by ``save_saelens`` or by SAELens).

    Args:
      directory: a directory with ``sae_weights.safetensors`` and ``cfg.json``.

    Returns:
      ``(params, cfg)``: ``SAEParams`` as JAX arrays in jaxsae's convention (standard and
      jumprelu: encoder on ``x``; topk: encoder on ``x − b_dec``; ``b_enc`` adjusted when the
      file used the other convention; ``threshold`` for jumprelu) and the config dict as stored
      (legacy top-level metadata moved under ``"metadata"``). ``saelens_architecture(cfg)``
      gives the architecture whose ``encode``/``forward`` read these parameters.

    Raises:
      FileNotFoundError: a missing file.
      ValueError: an unsupported architecture, or tensors with missing/unexpected names or wrong
        shapes (all listed).
    """
    import jax.numpy as jnp
    from safetensors.numpy import load_file

    path = Path(directory)
    for name in (WEIGHTS_FILENAME, CFG_FILENAME):
        if not (path / name).is_file():
            raise FileNotFoundError(
                f"SAE directory {path}: expected {name} (an SAE in SAELens layout, e.g. the sae/ "
                "folder `jaxsae train` writes), found no such file"
            )
    try:
        cfg = json.loads((path / CFG_FILENAME).read_text())
    except ValueError as err:  # not JSON, or not UTF-8
        raise ValueError(
            f"SAE directory {path}: {CFG_FILENAME} is not readable JSON ({err}); write it again"
        ) from err
    for key in ("d_in", "d_sae"):
        if key not in cfg:
            raise ValueError(
                f"load_saelens: expected {key!r} in {path / CFG_FILENAME}, found keys {sorted(cfg)}"
            )
    arch = cfg.get("architecture", "standard")
    if arch not in _ARCHITECTURES:
        raise ValueError(f"load_saelens: expected architecture in {_ARCHITECTURES}, found {arch!r}")
    metadata = dict(cfg.get("metadata", {}))
    for key in [k for k in cfg if k not in _TOP_LEVEL]:
        metadata.setdefault(key, cfg.pop(key))
    cfg["metadata"] = metadata
    tensors = load_file(str(path / WEIGHTS_FILENAME))
    _check_tensors(tensors, int(cfg["d_in"]), int(cfg["d_sae"]), f"load_saelens({path})", arch)
    apply_b_dec = bool(cfg.get("apply_b_dec_to_input", True))
    want = _APPLY_B_DEC[arch]
    if apply_b_dec and not want:
        tensors["b_enc"] = _fold_b_dec(tensors, -1.0)
    elif want and not apply_b_dec:
        tensors["b_enc"] = _fold_b_dec(tensors, +1.0)
    params = SAEParams(**{n: jnp.asarray(v) for n, v in tensors.items()})
    return params, cfg
