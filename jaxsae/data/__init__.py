"""jaxsae.data: activation stores on disk and resumable, shuffled batches of activations."""

from jaxsae.data.loader import Loader, Normalisation, as_source, compute_normalisation
from jaxsae.data.store import ActivationStore, finalize_store, open_store, shard_exists, write_shard

__all__ = [
    "ActivationStore",
    "Loader",
    "Normalisation",
    "as_source",
    "compute_normalisation",
    "finalize_store",
    "open_store",
    "shard_exists",
    "write_shard",
]
