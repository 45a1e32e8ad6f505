"""Refuses, at load time, a TensorFlow older than an export runs on, or one known to compute other
numbers (docs/compatibility.md).

An export records the oldest TensorFlow / TF Serving release that runs it in its metadata
(`assets.extra/vila_tf.json`, key `tensorflow_support`, written by the exporter from the versions it
lowered with). An older TensorFlow would load the SavedModel and then fail at the first request
("Cannot deserialize computation", "XlaCallModuleOp with version 10 is not supported by this
build"); `vila_tf.load` and `python -m vila_tf.serving check` say so before loading instead.
"""
from __future__ import annotations

import os
import re
from typing import Optional

from vila_tf.core.metadata import ExportMetadata, path_in

METADATA_KEY = "tensorflow_support"  # the ExportMetadata field
# Releases that run an export but compute other numbers than every other release (measured by
# `make compat`, docs/compatibility.md): refused, since wrong numbers served quietly are worse than
# a refusal. The exporter also records them in the metadata (`tensorflow_support.known_bad`); this
# table covers the exports made before that record.
KNOWN_BAD = {
    "2.17": "TensorFlow 2.17 runs this model but computes other numbers than every other release (up to 0.073 "
            "on text embeddings, other captions; measured by `make compat`)",
}


class IncompatibleTensorFlowError(RuntimeError):
    """The export needs a newer TensorFlow than the one running, or the running one is known to
    compute other numbers (KNOWN_BAD)."""


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


def known_bad(metadata: ExportMetadata) -> dict:
    """{"X.Y": why} of the releases refused for this export: the recorded ones and this table's."""
    return _known_bad(metadata.tensorflow_support)


def _known_bad(support: Optional[dict]) -> dict:
    return {**KNOWN_BAD, **((support or {}).get("known_bad") or {})}


def supported_releases(metadata: ExportMetadata) -> Optional[str]:
    """The releases an export runs correctly on, in words: '2.16, or 2.18 and newer' (None: not recorded)."""
    return releases_in_words(metadata.tensorflow_support)


def releases_in_words(support: Optional[dict]) -> Optional[str]:
    """`supported_releases` of a `tensorflow_support` record (the exporter's and the model card's)."""
    minimum = (support or {}).get("minimum")
    if minimum is None:
        return None
    parts, low = [], release_key(minimum)
    for bad in sorted(release_key(b) for b in _known_bad(support)):
        if bad < low:
            continue
        if bad > low:
            below = (bad[0], bad[1] - 1)
            parts.append("%d.%d" % low if below == low else "%d.%d to %d.%d" % (low + below))
        low = (bad[0], bad[1] + 1)
    newest = "%d.%d and newer" % low
    return f"{', '.join(parts)}, or {newest}" if parts else newest


def _max_calling_convention() -> Optional[int]:
    try:
        from tensorflow.compiler.tf2xla.python import xla as tfxla
        return int(tfxla.call_module_maximum_supported_version())
    except (ImportError, AttributeError):
        return None


def check(metadata: ExportMetadata, path: str, tf_version: Optional[str] = None) -> None:
    """Raises IncompatibleTensorFlowError naming both versions when `tf_version` (default: the
    running TensorFlow) is older than the export supports or a known-bad release, saying which
    releases to use."""
    running = tf_version is None
    if running:
        import tensorflow as tf
        tf_version = tf.__version__
    where = path_in(path)
    minimum = minimum_tensorflow(metadata)
    bad = known_bad(metadata).get(_release(tf_version))
    if bad:  # first: re-exporting for this release (the advice below) would not help
        use = supported_releases(metadata) or f"of another release than {_release(tf_version)}"
        raise IncompatibleTensorFlowError(
            f"{path}: refused on TensorFlow {tf_version}: {bad}; use TensorFlow / TF Serving {use} "
            "(tensorflow and tensorflow-text of the same release; docs/compatibility.md)")
    if minimum is not None:
        if release_key(tf_version) < release_key(minimum):
            raise IncompatibleTensorFlowError(
                f"{path} runs on TensorFlow / TF Serving {supported_releases(metadata)} ({where}: "
                f"{METADATA_KEY}.minimum), but this is TensorFlow {tf_version}: upgrade tensorflow and "
                f"tensorflow-text to {minimum} or newer, or re-export the model with `--target-tensorflow "
                f"{_release(tf_version)}` (docs/compatibility.md lists the releases an export can target)")
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
