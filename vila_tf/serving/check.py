"""`python -m vila_tf.serving check SAVEDMODEL_DIR`: loads an export the way tensorflow_model_server
does (TF1 loader, tag `serve`, SignatureDefs run by tensor name in a Session) and proves the
`--xla_cpu_compilation_enabled=true` flag necessary and sufficient; see `check()`.
"""
from __future__ import annotations

import ctypes
import importlib.util
import json
import os
import subprocess
import sys
from typing import Mapping

import numpy as np

from vila_tf.core import metadata as export_metadata
from vila_tf.savedmodel import tf_compat
from vila_tf.core.signatures import WARMUP_RELATIVE



from vila_tf.serving.requests import request_to_inputs


# ---------------------------------------------------------------------------------------------
# The model-server-equivalent path: TF1 loader + Session


class SessionModel:
    """A SavedModel loaded as tensorflow_model_server loads it (TF1 loader, tag `serve`)."""

    def __init__(self, path: str, config=None):
        import tensorflow as tf
        import tensorflow_text  # noqa: F401  (the model server links these ops)
        self.graph = tf.Graph()
        self.session = tf.compat.v1.Session(graph=self.graph, config=config)
        with self.graph.as_default():
            meta = tf.compat.v1.saved_model.loader.load(self.session, ["serve"], path)
        self.signature_defs = dict(meta.signature_def)

    def run(self, signature: str, inputs: Mapping[str, np.ndarray]) -> dict:
        if signature not in self.signature_defs:
            raise KeyError(f"unknown signature {signature!r}; known: {sorted(self.signature_defs)}")
        sig = self.signature_defs[signature]
        missing = set(sig.inputs) - set(inputs)
        if missing:
            raise KeyError(f"signature {signature!r} needs inputs {sorted(missing)}")
        feeds = {sig.inputs[k].name: v for k, v in inputs.items()}
        fetches = {k: t.name for k, t in sig.outputs.items()}
        return self.session.run(fetches, feed_dict=feeds)

    def close(self):
        self.session.close()


def disable_xla_compilation() -> None:
    """What tensorflow_model_server does without --xla_cpu_compilation_enabled=true.

    Calls tensorflow::DisableXlaCompilation() in the loaded TensorFlow library (process-wide,
    irreversible: use a separate process).
    """
    import tensorflow as tf
    lib = os.path.join(os.path.dirname(tf.__file__), "libtensorflow_cc.so.2")
    ctypes.CDLL(lib, mode=ctypes.RTLD_GLOBAL)._ZN10tensorflow21DisableXlaCompilationEv()


def read_warmup(path: str) -> list:
    """The PredictionLog records of a SavedModel's warmup file."""
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2
    records = []
    for raw in tf.data.TFRecordDataset(os.path.join(path, WARMUP_RELATIVE)).as_numpy_iterator():
        records.append(prediction_log_pb2.PredictionLog.FromString(raw))
    return records


def unregistered_ops(path: str) -> list:
    """Ops in the graph or its functions that TensorFlow + tensorflow_text do not register."""
    import tensorflow_text  # noqa: F401  (registers its ops: only unknown ones are reported)
    from tensorflow.core.protobuf import saved_model_pb2
    from tensorflow.python.framework import op_def_registry
    sm = saved_model_pb2.SavedModel()
    with open(os.path.join(path, "saved_model.pb"), "rb") as f:
        sm.ParseFromString(f.read())
    # Graph functions are invoked as ops by name.
    called = {fn.signature.name for mg in sm.meta_graphs for fn in mg.graph_def.library.function}
    return sorted(op for op in tf_compat.graph_ops(path) if op_def_registry.get(op) is None and op not in called)


def _run_records(path: str, xla_disabled: bool) -> dict:
    """Runs warmup requests by tensor name in a Session, as the server does.

    With XLA enabled every record is replayed (all signatures, all bucket sizes); with XLA disabled
    one record per signature shows whether it can run at all.
    Returns {"signatures": {name: "ok" or the error}, "batch_sizes": {...}, "failures": [...]}.
    """
    if xla_disabled:
        disable_xla_compilation()
    model = SessionModel(path)
    try:
        status, sizes, failures = {}, {}, []
        for rec in read_warmup(path):
            signature, inputs = request_to_inputs(rec.predict_log.request)
            if xla_disabled and signature in status:
                continue
            batch = len(next(iter(inputs.values())))
            try:
                outputs = model.run(signature, inputs)
            except Exception as e:  # noqa: BLE001 - the report says what failed
                msg = " ".join(str(e).split())
                at = msg.find("XLA compilation disabled")
                status[signature] = f"{type(e).__name__}: " + (msg[at:at + 200] if at >= 0 else msg[:300])
                failures.append(f"{signature}[batch {batch}]: {status[signature]}")
                continue
            sizes.setdefault(signature, []).append(batch)
            bad = [k for k, v in outputs.items() if v.dtype != object and not np.all(np.isfinite(v))]
            if bad:
                failures.append(f"{signature}[batch {batch}]: non-finite outputs {bad}")
            status.setdefault(signature, "ok" if not bad else f"non-finite outputs {bad}")
    finally:
        model.close()
    return {"signatures": status, "batch_sizes": sizes, "failures": failures}


def _in_subprocess(path: str) -> dict:
    r = subprocess.run([sys.executable, "-m", "vila_tf.serving", "_child", path], capture_output=True,
                       text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    if r.returncode:
        raise RuntimeError(f"model-server check crashed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def check_tensorflow_version(path: str, server_version: str | None = None) -> None:
    """Refuses (IncompatibleTensorFlowError) this TensorFlow, or the named TF Serving release, when
    older than the export's recorded minimum."""
    metadata = export_metadata.read(path)
    tf_compat.check(metadata, path)
    if server_version:
        tf_compat.check(metadata, path, server_version)


class MissingServingApiError(RuntimeError):
    """tensorflow-serving-api (TF Serving's request and warmup protos) is not installed."""


def require_serving_api() -> None:
    if importlib.util.find_spec("tensorflow_serving") is None:
        raise MissingServingApiError(
            "the model-server check reads TF Serving's warmup protos, which need tensorflow-serving-api: "
            "pip install 'vila-tf[serving]' (or tensorflow-serving-api), then run it again")


def check(path: str, server_version: str | None = None) -> dict:
    """Model-server-equivalent checks of one SavedModel, in a fresh process like a server.
    First, this TensorFlow (and `server_version`, a TF Serving release, if given) must not be older
    than the export supports: IncompatibleTensorFlowError otherwise. Then:

    - unregistered_ops: ops of the graph or its functions unknown once tensorflow_text is imported;
    - xla_enabled: every warmup record (each signature at each bucket size) runs by tensor name in
      a TF1 Session with finite outputs;
    - xla_disabled: then, in a new Session of the same process, the same runs fail with XLA
      compilation disabled as the server disables it (irreversible, hence second; the switch is
      checked before any compiled kernel is looked up, so the first part cannot mask it).
    """
    require_serving_api()
    metadata = export_metadata.read(path)  # a missing or damaged record: refused here, in one line
    if server_version:  # the named release: from the metadata alone
        tf_compat.check(metadata, path, server_version)
    # The child checks this TensorFlow first: the parent never imports it (a 3 s start saved).
    report = _in_subprocess(path)
    if "incompatible" in report:
        raise tf_compat.IncompatibleTensorFlowError(report["incompatible"])
    enabled, disabled = report["xla_on"], report["xla_off"]
    necessary = all("XLA compilation disabled" in v for k, v in disabled["signatures"].items() if k != "preprocess")
    sufficient = not enabled["failures"] and all(v == "ok" for v in enabled["signatures"].values())
    return {"path": path, "unregistered_ops": enabled["unregistered_ops"], "xla_enabled": enabled,
            "xla_disabled": disabled["signatures"], "xla_flag_necessary": necessary,
            "xla_flag_sufficient": sufficient, "ok": necessary and sufficient and not enabled["unregistered_ops"]}


def _child(path: str) -> dict:
    try:
        check_tensorflow_version(path)
    except tf_compat.IncompatibleTensorFlowError as e:
        return {"incompatible": str(e)}
    enabled = {"unregistered_ops": unregistered_ops(path), **_run_records(path, xla_disabled=False)}
    return {"xla_on": enabled, "xla_off": _run_records(path, xla_disabled=True)}
