"""jax settings the heads are lowered under, each set for the duration of a `with` block.

- the jax.export calling convention version (the target TensorFlow's, docs/compatibility.md);
- source locations that do not depend on where or how the export ran. By default jax writes each
  operation's full Python traceback into the StableHLO it serializes: the caller's frames (a test
  runner, a notebook, `python -m export`) and the checkout's absolute paths. The same checkpoint
  exported from two places then gave different `XlaCallModule` bytes: the SavedModel was not
  reproducible, and XLA's compilation cache, keyed by the module, missed between them.
"""
from __future__ import annotations

import contextlib

import jax

# File name and line of the innermost frame of the model's code, without its folder.
_REPRODUCIBLE_LOCATIONS = {"jax_include_full_tracebacks_in_locations": False,
                           "jax_hlo_source_file_canonicalization_regex": r".*/"}


@contextlib.contextmanager
def jax_settings(**settings):
    """`jax.config` options set within the context and restored after, e.g.
    `jax_settings(jax_export_calling_convention_version=9)`."""
    saved = {name: getattr(jax.config, name) for name in settings}
    try:
        for name, value in settings.items():
            jax.config.update(name, value)
        yield
    finally:
        for name, value in saved.items():
            jax.config.update(name, value)


def reproducible_locations():
    """Within this context jax records one `file.py:line` location per operation, not the full
    traceback with absolute paths (jax's default)."""
    return jax_settings(**_REPRODUCIBLE_LOCATIONS)


def calling_convention(version: int):
    """Within this context jax.export writes calling convention `version`."""
    return jax_settings(jax_export_calling_convention_version=version)
