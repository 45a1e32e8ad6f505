"""The SavedModel's signatures run on batches padded to the export's buckets (`vila_tf.core.buckets`):
any number of inputs costs at most one XLA compilation per bucket and signature, and those are the
sizes TF Serving's warmup compiles too."""
from __future__ import annotations

from typing import Optional

import numpy as np
import tensorflow as tf

from vila_tf.core import buckets
from vila_tf.savedmodel import compile_cache
from vila_tf.savedmodel.host_decode import on_device


class BucketedRunner:
    def __init__(self, signatures: dict, device: Optional[str] = None):
        self.signatures, self.device = signatures, device

    def output_shape(self, signature: str, key: str) -> tuple:
        """An output's shape past the batch dimension (unknown sizes as 0)."""
        return tuple(d or 0 for d in self.signatures[signature].structured_outputs[key].shape[1:])

    def run(self, signature: str, arrays: list) -> dict:
        """`signature` on one batch (at most MAX_BATCH arrays), padded to its bucket: {output: numpy [B, ...]}."""
        fn = self.signatures[signature]
        key = next(iter(fn.structured_input_signature[1]), None)  # None: a function taking one positional input
        batch = np.stack(arrays)
        size = buckets.bucket_for(len(arrays))
        if size > len(arrays):
            pad = np.zeros((size - len(arrays),) + batch.shape[1:], batch.dtype) if batch.dtype != object \
                else np.array([b""] * (size - len(arrays)), dtype=object)
            batch = np.concatenate([batch, pad])
        try:
            with on_device(self.device):
                result = fn(**{key: tf.constant(batch)}) if key else fn(tf.constant(batch))
        except tf.errors.OpError as e:
            compile_cache.check_call_error(e)  # a cache XLA could not write: one line, not a traceback
            raise
        return {k: v.numpy()[: len(arrays)] for k, v in result.items()}

    def run_all(self, signature: str, arrays: list, batch_size: int) -> dict:
        """`signature` over every entry of `arrays`, in chunks of at most `batch_size` (and MAX_BATCH)."""
        step = max(1, min(batch_size, buckets.MAX_BATCH))
        chunks = [self.run(signature, arrays[start:start + step]) for start in range(0, len(arrays), step)]
        return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]} if chunks else {}
