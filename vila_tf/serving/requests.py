"""TF Serving requests and responses, REST and gRPC, built from and parsed into the signature
contract (`vila_tf.core.signatures`).

  body = rest_request("serving_default", ["a.jpg", "b.jpg"])      # {"signature_name": ..., "instances": [{"b64": ...}]}
  requests.post("http://HOST:8501/v1/models/vila_r:predict", json=body)
  parse_rest_response(resp.json(), "serving_default")          # {"predictions": array [2, 1]}

  req = grpc_request("caption", [jpeg_bytes], model_name="vila_r")   # a PredictRequest proto
  parse_grpc_response(stub.Predict(req, 60.0))                  # {"caption": [...], "caption_ids": ...}
"""
from __future__ import annotations

import base64
import os
from typing import Any, Iterable, Mapping

import numpy as np

from vila_tf.core.signatures import BYTES, PIXELS, SIGNATURE_INPUTS, SIGNATURE_OUTPUTS, TEXT



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
