"""TF Serving warmup records: one PredictRequest per signature per batch-size bucket.

TF Serving replays `assets.extra/tf_serving_warmup_requests` (a TFRecord of PredictionLog, at most
1000 records) when started with `--enable_model_warmup`, so every XLA compilation a bucketed client
can trigger happens at load, not on a user's first request.

Written by the exporter (export/savedmodel/writer.py) and by `vila-tf fit` for the personal
export it makes from a SavedModel (vila_tf.personal): the runtime half has to write them too, so
they live here, beside the model-server check that replays them.
"""
from __future__ import annotations

import os

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

from vila_tf.core.buckets import BUCKETS
from vila_tf.core.signatures import SIGNATURE_INPUTS, WARMUP_RELATIVE

MAX_RECORDS = 1000


def sample_jpeg(height: int = 48, width: int = 64) -> bytes:
    """A small smooth color JPEG: valid input for every bytes signature."""
    yy, xx = np.mgrid[0:height, 0:width]
    img = np.stack([xx * 255 // width, yy * 255 // height, (xx + yy) * 127 // (width + height)], -1)
    return tf.io.encode_jpeg(img.astype(np.uint8), quality=90).numpy()


def _input_proto(kind: str, batch: int, image_size: int):
    if kind == "bytes":
        return tf.make_tensor_proto(np.array([sample_jpeg()] * batch, dtype=object))
    if kind == "text":
        return tf.make_tensor_proto(np.array([b"good image"] * batch, dtype=object))
    # One value and a shape: TensorProto repeats it, so a [32, 224, 224, 3] request costs bytes,
    # not 19 MB, in the warmup file.
    return tf.make_tensor_proto(0.5, tf.float32, shape=[batch, image_size, image_size, 3])


def warmup_requests(signatures, image_size: int, buckets=BUCKETS) -> list:
    records = []
    for name in signatures:
        key, kind = SIGNATURE_INPUTS[name]
        for b in buckets:
            req = predict_pb2.PredictRequest()
            req.model_spec.signature_name = name
            req.inputs[key].CopyFrom(_input_proto(kind, b, image_size))
            records.append(prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=req)))
    if len(records) > MAX_RECORDS:
        raise ValueError(f"{len(records)} warmup records; TF Serving reads at most {MAX_RECORDS}")
    return records


def write_warmup(savedmodel_dir: str, signatures, image_size: int, buckets=BUCKETS) -> str:
    path = os.path.join(savedmodel_dir, WARMUP_RELATIVE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as w:
        for rec in warmup_requests(signatures, image_size, buckets):
            w.write(rec.SerializeToString())
    return path
