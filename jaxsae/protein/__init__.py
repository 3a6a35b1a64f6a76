"""jaxsae.protein."""
