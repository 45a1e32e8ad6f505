"""TensorFlow and the SentencePiece ops, imported with nothing a VILA model does not use.

`import tensorflow` imports Keras eagerly (and Keras imports scikit-learn and matplotlib when they
are installed) and, where JAX is installed, JAX (for TFLite's converter): 1-2 s of a command's
start-up for libraries no VILA signature calls. `import tensorflow_text` imports Keras again
through its layers. `vila-tf` therefore imports TensorFlow with Keras and JAX held back
(`tensorflow(lean=True)`: `tf.keras` still imports Keras on first use) and registers only the op
library of the SentencePiece ops its graphs hold (`register_text_ops`). A library user's process
imports TensorFlow as it always does.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import threading

_TEXT_OP_LIBRARY = os.path.join("python", "ops", "_sentencepiece_tokenizer.so")
_lock = threading.Lock()
_text_ops_registered = False


# Imported by `import tensorflow` when installed, called by no vila-tf command (TensorFlow's import
# of each is in a try block).
HELD_BACK = ("keras", "jax")


@contextlib.contextmanager
def _held_back(names):
    """`import NAME` fails inside and works again after; a process that imported one keeps it."""
    held = [name for name in names if name not in sys.modules]
    for name in held:
        sys.modules[name] = None  # a None entry makes `import NAME` raise ImportError
    try:
        yield
    finally:
        for name in held:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]


def tensorflow(lean: bool = False):
    """The `tensorflow` module; imported without Keras and JAX when `lean` and not imported yet."""
    if not lean or "tensorflow" in sys.modules:
        import tensorflow as tf
        return tf
    with _lock, _held_back(HELD_BACK):
        import tensorflow as tf
    return tf


def register_text_ops() -> None:
    """Registers the SentencePiece ops (SentencepieceOp, SentencepieceTokenizeOp, ...) that the
    export's tokenizer runs, from tensorflow-text's op library, without importing its Python
    package (which imports Keras). Falls back to the package import for a tensorflow-text whose
    files are laid out differently. Safe to call many times and after `import tensorflow_text`
    (TensorFlow loads a library file once)."""
    global _text_ops_registered
    if _text_ops_registered:
        return
    tf = tensorflow()
    with _lock:
        if _text_ops_registered:
            return
        spec = importlib.util.find_spec("tensorflow_text")
        library = os.path.join(os.path.dirname(spec.origin), _TEXT_OP_LIBRARY) if spec and spec.origin else None
        if library and os.path.isfile(library):
            tf.load_op_library(library)
        else:
            import tensorflow_text  # noqa: F401  (registers every op of the package)
        _text_ops_registered = True


def ensure_ops(op_names) -> None:
    """After `register_text_ops`: imports the whole tensorflow-text package when a graph holds an
    op its SentencePiece library does not register (an export from a newer vila-tf, say), so
    loading reports only ops that no installed package has."""
    from tensorflow.python.framework import op_def_registry
    if all(op_def_registry.get(name) is not None for name in op_names):
        return
    import tensorflow_text  # noqa: F401
