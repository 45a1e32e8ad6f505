"""Imported at start-up by every Python process whose PYTHONPATH begins with this folder
(`conftest.env_without_jax`): `import jax` / `jaxlib` / `flax` fail there, as on a serving host
without JAX, so the runtime and the command line are shown not to need them. (TensorFlow's own
optional `from jax import jit` then simply turns off.)"""
from blocked_imports import block  # tests/, next on the path (conftest.env_without_jax)

block(("jax", "jaxlib", "flax"), "the runtime must not need it")
