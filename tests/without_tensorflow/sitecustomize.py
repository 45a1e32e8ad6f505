"""Imported at start-up by every Python process whose PYTHONPATH begins with this folder
(`conftest.env_without_tensorflow`): TensorFlow (and JAX) cannot be imported there, as in the
LiteRT runtime's install (`pip install ai-edge-litert numpy pillow`), so the LiteRT backend, the
command line on a LiteRT export and `import vila_tf` are shown not to need them."""
import sys

BLOCKED = ("tensorflow", "tensorflow_text", "tensorflow_hub", "tf_keras", "keras", "jax", "jaxlib", "flax")


class _BlockTensorFlow:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked: the LiteRT runtime must not need it")


sys.meta_path.insert(0, _BlockTensorFlow())
