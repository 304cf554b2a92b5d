"""diffjax: JAX/Flax diffusion over text and features."""
__version__ = "0.1.0"
