"""Imported at start-up by every Python process whose PYTHONPATH begins with this folder
(`conftest.env_without_jax`): `import jax` / `jaxlib` / `flax` fail there, as on a serving host
without JAX, so the runtime and the command line are shown not to need them. (TensorFlow's own
optional `from jax import jit` then simply turns off.)"""
import sys


class _BlockJax:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("jax", "jaxlib", "flax"):
            raise ImportError(f"{name} is blocked: the runtime must not need it")


sys.meta_path.insert(0, _BlockJax())
