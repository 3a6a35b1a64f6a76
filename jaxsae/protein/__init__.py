"""jaxsae.protein: amino-acid alphabet, FASTA, ESM-2 in JAX, torch-free weights, extraction.

Names are imported lazily (``jaxsae extract --help`` does not import JAX).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    # alphabet
    "ESM_TOKENS": "alphabet",
    "LETTERS": "alphabet",
    "tokenize": "alphabet",
    "batch_tokenize": "alphabet",
    "one_hot": "alphabet",
    "check_sequence": "alphabet",
    # FASTA
    "FastaRecord": "fasta",
    "read_fasta": "fasta",
    "write_fasta": "fasta",
    # model
    "ESM2Config": "esm2",
    "ESM2Params": "esm2",
    "ESM2LayerParams": "esm2",
    "init_esm2_params": "esm2",
    "esm2_hidden_states": "esm2",
    "ESM2Heads": "esm2",
    "lm_logits": "esm2",
    "esm2_contacts": "esm2",
    # weights
    "load_esm2": "weights",
    "save_esm2_hf": "weights",
    "load_esm2_heads": "weights",
    "load_torch_file": "weights",
    "UnsafeCheckpointError": "weights",
    # embedded default
    "ProteinRecord": "default",
    "default_model_path": "default",
    "load_default_model": "default",
    "load_default_dataset": "default",
    "superfamily_split": "default",
    "INSTALL_COMMAND": "default",
    # extraction
    "extract_activations": "extract",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
