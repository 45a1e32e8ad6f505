"""Source locations in lowered modules that do not depend on where or how the export ran.

jax writes each operation's full Python traceback into the StableHLO it serializes: the caller's
frames (a test runner, a notebook, `python -m export`) and the checkout's absolute paths. The same
checkpoint exported from two places then gave different `XlaCallModule` bytes: the SavedModel was
not reproducible, and XLA's compilation cache, keyed by the module, missed between them.
"""
from __future__ import annotations

import contextlib

import jax

# File name and line of the innermost frame of the model's code, without its folder.
_SETTINGS = {"jax_include_full_tracebacks_in_locations": False,
             "jax_hlo_source_file_canonicalization_regex": r".*/"}


@contextlib.contextmanager
def reproducible_locations():
    """Within this context jax records one `file.py:line` location per operation, not the full
    traceback with absolute paths (jax's default); the previous settings are restored after."""
    saved = {name: getattr(jax.config, name) for name in _SETTINGS}
    try:
        for name, value in _SETTINGS.items():
            jax.config.update(name, value)
        yield
    finally:
        for name, value in saved.items():
            jax.config.update(name, value)
