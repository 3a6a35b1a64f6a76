"""jaxsae.training."""
