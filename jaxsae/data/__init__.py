"""jaxsae.data."""
