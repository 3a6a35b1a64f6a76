"""jaxsae.models: parameter-holding wrappers (Flax NNX, Equinox) and SAELens export/import.

``SparseAutoencoder`` is the Flax NNX module; the Equinox one is
``jaxsae.models.eqx.SparseAutoencoder``.
"""

from jaxsae.models.nnx import SparseAutoencoder
from jaxsae.models.saelens import load_saelens, save_saelens

__all__ = ["SparseAutoencoder", "load_saelens", "save_saelens"]
