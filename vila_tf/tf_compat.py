"""Refuses, at load time, a TensorFlow older than an export runs on (docs/compatibility.md).

An export records the oldest TensorFlow / TF Serving release that runs it in its metadata
(`assets.extra/vila_tf.json`, key `tensorflow_support`, written by the exporter from the versions it
lowered with). An older TensorFlow would load the SavedModel and then fail at the first request
("Cannot deserialize computation", "XlaCallModuleOp with version 10 is not supported by this
build"); `vila_tf.load` and `python -m vila_tf.serving check` say so before loading instead.
"""
from __future__ import annotations

import os
import re
import warnings
from typing import Optional

from vila_tf.metadata import ExportMetadata, path_in

METADATA_KEY = "tensorflow_support"  # the ExportMetadata field
# Releases that run an export but compute different numbers (measured by `make compat`).
DIFFERENT_NUMBERS = {
    (2, 17): "TensorFlow 2.17's XLA computes this model's outputs differently from every other release "
             "(up to 0.07 on text embeddings, other captions; docs/compatibility.md): serve from 2.16 or 2.18+",
}


class IncompatibleTensorFlowError(RuntimeError):
    """The export needs a newer TensorFlow than the one running."""


def release_key(version: str) -> tuple:
    """'2.21.0' / '2.20.0rc1' / '2.16' -> (2, 21)."""
    m = re.match(r"^(\d+)\.(\d+)", str(version))
    if not m:
        raise ValueError(f"not a TensorFlow version: {version!r} (expected X.Y, e.g. 2.16)")
    return int(m.group(1)), int(m.group(2))


def _release(version: str) -> str:
    return "%d.%d" % release_key(version)


def minimum_tensorflow(metadata: ExportMetadata) -> Optional[str]:
    """The oldest release the export runs on, as its metadata records it (None: not recorded)."""
    return (metadata.tensorflow_support or {}).get("minimum")


def _max_calling_convention() -> Optional[int]:
    try:
        from tensorflow.compiler.tf2xla.python import xla as tfxla
        return int(tfxla.call_module_maximum_supported_version())
    except (ImportError, AttributeError):
        return None


def check(metadata: ExportMetadata, path: str, tf_version: Optional[str] = None) -> None:
    """Raises IncompatibleTensorFlowError naming both versions when `tf_version` (default: the
    running TensorFlow) is older than the export supports."""
    running = tf_version is None
    if running:
        import tensorflow as tf
        tf_version = tf.__version__
    where = path_in(path)
    if release_key(tf_version) in DIFFERENT_NUMBERS:
        warnings.warn(f"{path}: {DIFFERENT_NUMBERS[release_key(tf_version)]}", RuntimeWarning, stacklevel=3)
    minimum = minimum_tensorflow(metadata)
    if minimum is not None:
        if release_key(tf_version) < release_key(minimum):
            raise IncompatibleTensorFlowError(
                f"{path} runs on TensorFlow / TF Serving {minimum} and newer ({where}: {METADATA_KEY}.minimum), "
                f"but this is TensorFlow {tf_version}: upgrade tensorflow and tensorflow-text to {minimum} or "
                f"newer, or re-export the model with `--target-tensorflow {_release(tf_version)}` "
                "(docs/compatibility.md lists the releases an export can target)")
        return
    # An export from before the record: its calling convention alone says something.
    version = metadata.calling_convention_version
    newest = _max_calling_convention() if running else None
    if version is not None and newest is not None and int(version) > newest:
        raise IncompatibleTensorFlowError(
            f"{path} was lowered with XlaCallModule calling convention {version} ({where}), but TensorFlow "
            f"{tf_version} runs at most {newest}: upgrade TensorFlow, or re-export the model with "
            f"`--target-tensorflow {_release(tf_version)}` (docs/compatibility.md)")


def graph_ops(path: str) -> set:
    """Every op type in a SavedModel's graph and its functions (function calls included)."""
    from tensorflow.core.protobuf import saved_model_pb2
    sm = saved_model_pb2.SavedModel()
    with open(os.path.join(path, "saved_model.pb"), "rb") as f:
        sm.ParseFromString(f.read())
    ops = set()
    for mg in sm.meta_graphs:
        ops |= {n.op for n in mg.graph_def.node}
        for fn in mg.graph_def.library.function:
            ops |= {n.op for n in fn.node_def}
    return ops
