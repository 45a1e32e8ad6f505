"""TF Serving: request builders and response parsers (REST and gRPC), and a model-server check.

  body = rest_request("serving_default", ["a.jpg", "b.jpg"])      # {"signature_name": ..., "instances": [{"b64": ...}]}
  requests.post("http://HOST:8501/v1/models/vila_r:predict", json=body)
  parse_rest_response(resp.json(), "serving_default")          # {"predictions": array [2, 1]}

  req = grpc_request("caption", [jpeg_bytes], model_name="vila_r")   # a PredictRequest proto
  parse_grpc_response(stub.Predict(req, 60.0))                  # {"caption": [...], "caption_ids": ...}

`python -m vila_tf.serving check SAVEDMODEL_DIR` loads an export the way tensorflow_model_server
does (TF1 loader, tag `serve`, SignatureDefs run by tensor name in a Session) and proves the
`--xla_cpu_compilation_enabled=true` flag necessary and sufficient; see `check()`.
"""
from __future__ import annotations

import argparse
import base64
import ctypes
import json
import os
import subprocess
import sys
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from vila_tf import tf_compat
from vila_tf.signatures import (BYTES, METADATA_RELATIVE, PIXELS, SIGNATURE_INPUTS, SIGNATURE_OUTPUTS, TEXT,
                                WARMUP_RELATIVE)



def _signature_input(signature: str) -> tuple[str, str]:
    if signature not in SIGNATURE_INPUTS:
        raise KeyError(f"unknown signature {signature!r}; known: {sorted(SIGNATURE_INPUTS)}")
    return SIGNATURE_INPUTS[signature]


def _as_bytes(item) -> bytes:
    if isinstance(item, (bytes, bytearray, memoryview)):
        return bytes(item)
    if isinstance(item, (str, os.PathLike)):
        with open(item, "rb") as f:
            return f.read()
    raise TypeError(f"expected image bytes or a file path, got {type(item).__name__}")


def _items_for(signature: str, items) -> tuple[str, str, Any]:
    key, kind = _signature_input(signature)
    if kind == BYTES:
        return key, kind, [_as_bytes(i) for i in items]
    if kind == TEXT:
        return key, kind, [i if isinstance(i, str) else bytes(i).decode("utf-8") for i in items]
    return key, kind, np.asarray(items, np.float32)


# ---------------------------------------------------------------------------------------------
# REST


def rest_request(signature: str, items: Iterable, columnar: bool = False) -> dict:
    """The JSON body of a REST `:predict` call. Images (bytes or paths) travel as {"b64": ...}.

    Row format: {"signature_name": S, "instances": [...]}; columnar: {"signature_name": S,
    "inputs": {key: [...]}}.
    """
    key, kind, values = _items_for(signature, list(items) if not isinstance(items, np.ndarray) else items)
    if kind == BYTES:
        values = [{"b64": base64.b64encode(v).decode("ascii")} for v in values]
    elif kind == PIXELS:
        values = values.tolist()
    body = {"signature_name": signature}
    if columnar:
        body["inputs"] = {key: values}
    else:
        body["instances"] = values
    return body


def _decode_json_value(v):
    if isinstance(v, dict) and set(v) == {"b64"}:
        return base64.b64decode(v["b64"])
    if isinstance(v, list):
        return [_decode_json_value(x) for x in v]
    return v


def rest_body_to_inputs(body: Mapping) -> tuple[str, dict]:
    """What the model server makes of a REST body: (signature name, {input key: numpy array}).

    Follows TF Serving's JSON rules: {"b64": ...} is base64 bytes; row format stacks instances
    (a bare value when the signature has one input, else a dict per instance); columnar format
    takes each input as given.
    """
    signature = body.get("signature_name", "serving_default")
    key, kind = _signature_input(signature)
    if ("instances" in body) == ("inputs" in body):
        raise ValueError("a REST predict body needs exactly one of 'instances' (row) or 'inputs' (columnar)")
    if "instances" in body:
        rows = [_decode_json_value(r) for r in body["instances"]]
        values = [r[key] if isinstance(r, dict) else r for r in rows]
    else:
        inputs = body["inputs"]
        values = _decode_json_value(inputs[key] if isinstance(inputs, dict) else inputs)
    if kind == PIXELS:
        return signature, {key: np.asarray(values, np.float32)}
    values = [v.encode("utf-8") if isinstance(v, str) else v for v in values] if isinstance(values, list) else values
    return signature, {key: np.asarray(values, dtype=object)}


def _json_value(v, key: str):
    v = np.asarray(v)
    if v.dtype == object or v.dtype.kind in "SU":
        flat = [x.decode("utf-8", "replace") if isinstance(x, bytes) else x for x in v.reshape(-1)]
        return np.array(flat, dtype=object).reshape(v.shape).tolist()
    return v.tolist()


def rest_response(outputs: Mapping[str, np.ndarray], columnar: bool = False) -> dict:
    """Formats outputs as the model server's REST response (for tests and local servers)."""
    if columnar:
        if len(outputs) == 1:
            return {"outputs": _json_value(next(iter(outputs.values())), next(iter(outputs)))}
        return {"outputs": {k: _json_value(v, k) for k, v in outputs.items()}}
    n = len(next(iter(outputs.values())))
    if len(outputs) == 1:
        (k, v), = outputs.items()
        return {"predictions": _json_value(v, k)}
    return {"predictions": [{k: _json_value(v[i], k) for k, v in outputs.items()} for i in range(n)]}


def parse_rest_response(response: Mapping, signature: str) -> dict:
    """A REST response (row or columnar) -> {output key: numpy array, or a list of str}."""
    _signature_input(signature)
    keys = SIGNATURE_OUTPUTS[signature]
    if "error" in response:
        raise RuntimeError(f"model server error: {response['error']}")
    if "outputs" in response:
        out = response["outputs"]
        per_key = out if isinstance(out, dict) else {keys[0]: out}
    elif "predictions" in response:
        preds = response["predictions"]
        if preds and isinstance(preds[0], dict):
            per_key = {k: [p[k] for p in preds] for k in preds[0]}
        else:
            per_key = {keys[0]: preds}
    else:
        raise ValueError("a REST predict response has 'predictions' or 'outputs'")
    return {k: (list(v) if k == "caption" else np.asarray(v)) for k, v in per_key.items()}


# ---------------------------------------------------------------------------------------------
# gRPC


def grpc_request(signature: str, items: Iterable, model_name: str, version: int | None = None):
    """A tensorflow_serving PredictRequest for `signature` (needs tensorflow-serving-api)."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2
    key, kind, values = _items_for(signature, list(items) if not isinstance(items, np.ndarray) else items)
    req = predict_pb2.PredictRequest()
    req.model_spec.name = model_name
    req.model_spec.signature_name = signature
    if version is not None:
        req.model_spec.version.value = version
    array = values if kind == PIXELS else np.array(
        [v.encode("utf-8") if isinstance(v, str) else v for v in values], dtype=object)
    req.inputs[key].CopyFrom(tf.make_tensor_proto(array))
    return req


def parse_grpc_response(response) -> dict:
    import tensorflow as tf
    out = {}
    for k, proto in response.outputs.items():
        v = tf.make_ndarray(proto)
        out[k] = [x.decode("utf-8", "replace") for x in v.reshape(-1)] if v.dtype == object else v
    return out


def request_to_inputs(request) -> tuple[str, dict]:
    """A PredictRequest -> (signature, {input key: numpy array}), as the model server reads it."""
    import tensorflow as tf
    return (request.model_spec.signature_name or "serving_default",
            {k: tf.make_ndarray(v) for k, v in request.inputs.items()})


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
    import tensorflow as tf
    import tensorflow_text  # noqa: F401
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


def read_metadata(path: str) -> dict:
    p = os.path.join(path, METADATA_RELATIVE)
    if not os.path.isfile(p):
        return {}
    with open(p) as f:
        return json.load(f)


def check_tensorflow_version(path: str, server_version: str | None = None) -> None:
    """Refuses (IncompatibleTensorFlowError) this TensorFlow, or the named TF Serving release, when
    older than the export's recorded minimum."""
    metadata = read_metadata(path)
    tf_compat.check(metadata, path)
    if server_version:
        tf_compat.check(metadata, path, server_version)


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
    if server_version:  # the named release: from the metadata alone
        tf_compat.check(read_metadata(path), path, server_version)
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


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_child":
        print(json.dumps(_child(argv[1])))
        return 0
    p = argparse.ArgumentParser(prog="python -m vila_tf.serving")
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("check", help="load an export the way tensorflow_model_server does and run it")
    c.add_argument("path")
    c.add_argument("--server-version", metavar="X.Y",
                   help="also refuse the export unless TF Serving X.Y runs it (its recorded minimum release)")
    r = sub.add_parser("request", help="print the REST JSON body for a signature and inputs")
    r.add_argument("signature", choices=sorted(SIGNATURE_INPUTS))
    r.add_argument("inputs", nargs="+", help="image files (or texts, for text_embedding)")
    r.add_argument("--columnar", action="store_true", help='{"inputs": ...} instead of {"instances": ...}')
    args = p.parse_args(argv)
    if args.cmd == "request":
        print(json.dumps(rest_request(args.signature, args.inputs, args.columnar)))
        return 0
    try:
        report = check(args.path, args.server_version)
    except tf_compat.IncompatibleTensorFlowError as e:
        print(f"FAILED: {e}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=1))
    print("OK: serves under tensorflow_model_server with --xla_cpu_compilation_enabled=true"
          if report["ok"] else "FAILED", file=sys.stderr)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
