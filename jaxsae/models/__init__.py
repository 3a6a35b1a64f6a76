"""jaxsae.models."""
