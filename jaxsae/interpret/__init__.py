"""jaxsae.interpret."""
