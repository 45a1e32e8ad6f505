"""Imported at start-up by every Python process whose PYTHONPATH begins with this folder
(`conftest.env_without_tensorflow`): TensorFlow (and JAX) cannot be imported there, as in the
LiteRT runtime's install (`pip install ai-edge-litert numpy pillow`), so the LiteRT backend, the
command line on a LiteRT export and `import vila_tf` are shown not to need them."""
from blocked_imports import block  # tests/, next on the path (conftest.env_without_tensorflow)

block(("tensorflow", "tensorflow_text", "tensorflow_hub", "tf_keras", "keras", "jax", "jaxlib", "flax"),
      "the LiteRT runtime must not need it")
