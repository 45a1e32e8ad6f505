"""`vila_tf.load(path)`: an exported VILA model behind a Python API that never imports jax.

    import vila_tf
    model = vila_tf.load("exported/vila_r")            # a SavedModel, or a TF Serving base folder
    scores = model.score(["a.jpg", "photos/", "shots/*.png"])      # float32 [N], input order
    captions = model.caption(pil_images)                            # list of str
    emb = model.image_embedding(np.stack(arrays))                   # float32 [N, D], l2-normalized

Images are decoded and resized here, one at a time and in parallel, with the exact code the
SavedModel runs in-graph (`vila_tf.preprocessing`), then scored in batches through the pixel
signatures. A bad image (unreadable, empty, truncated, not an image, over the pixel limit) fails
alone: its row is NaN (None for captions), a warning names it, and `return_errors=True` returns
the failures too; every other image is still scored.

Batches are padded up to the buckets of `vila_tf.buckets` (1, 4, 8, 16, 32) and longer inputs are
split into chunks of 32: each distinct batch size is one XLA compilation of a 303 M parameter
model (seconds), so any number of images costs at most five compilations per signature, and the
padding wastes at most half a batch. The buckets are the ones the TF Serving warmup compiles.

A VilaModel is safe to call from several threads at once. `device="GPU:0"` runs the model there
(CPU by default). On TPU, load and call the model under `tf.distribute.TPUStrategy(...).scope()`
with `device=None`; the exported StableHLO includes the TPU platform.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import json
import logging
import os
import re
import threading
import warnings
from typing import Any, Iterable, NamedTuple, Optional, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_text  # noqa: F401  (registers the SentencePiece ops of the graph)

from vila_tf import buckets, inputs as inputs_lib, preprocessing, tf_compat
from vila_tf.signatures import METADATA_RELATIVE

log = logging.getLogger("vila_tf")
IncompatibleTensorFlowError = tf_compat.IncompatibleTensorFlowError


class DemoModelWarning(UserWarning):
    """The model was exported with random demo weights: its outputs mean nothing."""


class ImageError(NamedTuple):
    index: int  # position in the (expanded) inputs
    source: str  # path, or <bytes i> / <array i> / <image i>
    reason: str


def resolve_savedmodel(path: str) -> str:
    """A SavedModel folder, or a TF Serving base folder (`<name>/<version>/`): the newest version."""
    path = os.fspath(path)
    if os.path.isfile(os.path.join(path, "saved_model.pb")):
        return path
    if os.path.isdir(path):
        versions = [int(v) for v in os.listdir(path)
                    if v.isdigit() and os.path.isfile(os.path.join(path, v, "saved_model.pb"))]
        if versions:
            return os.path.join(path, str(max(versions)))
    raise FileNotFoundError(f"{path}: not a SavedModel folder (no saved_model.pb) nor a TF Serving base "
                            "folder with numbered versions")


def _reason(err: Exception) -> str:
    """The useful sentence of a TensorFlow error about one image."""
    msg = getattr(err, "message", None) or str(err)
    for pattern in (r"Summarized data: b'(.*?)'", r"Summarized data: b\"(.*?)\"", r"assertion failed: \[(.*?)\]"):
        m = re.search(pattern, msg, re.S)
        if m:
            return re.sub(r"^image: ", "", m.group(1)).strip()
    first = msg.strip().splitlines()[0] if msg.strip() else type(err).__name__
    first = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", first)  # TF's internal function name
    return re.sub(r"\s*\[\[.*", "", first)[:300]


class VilaModel:
    """An exported VILA model. Use `vila_tf.load`."""

    def __init__(self, path: str, device: Optional[str] = None, max_workers: Optional[int] = None):
        self.path = resolve_savedmodel(path)
        self.device = device
        self.metadata = self._read_metadata()
        # Before loading: an older TensorFlow would load it and fail at the first call.
        tf_compat.check(self.metadata, self.path)
        self.is_demo = bool(self.metadata.get("demo_weights"))
        if self.is_demo:
            msg = (f"{self.path} is a DEMO export with random weights: its scores, embeddings and "
                   "captions mean nothing. Export the released checkpoints for real results.")
            warnings.warn(msg, DemoModelWarning, stacklevel=3)
            log.warning(msg)
        with self._on_device():
            self._module = tf.saved_model.load(self.path)
        self.signatures = dict(self._module.signatures)
        self.max_pixels = int(self.metadata.get("max_pixels", preprocessing.DEFAULT_MAX_PIXELS))
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers or min(8, os.cpu_count() or 2),
                                                           thread_name_prefix="vila_tf-decode")
        self._decode = tf.function(
            lambda b: preprocessing.crop_and_scale(preprocessing.decode(b, None, self.max_pixels)),
            input_signature=[tf.TensorSpec([], tf.string)], autograph=False)
        self._resize = tf.function(preprocessing.crop_and_scale,
                                   input_signature=[tf.TensorSpec([None, None, 3], tf.float32)], autograph=False)
        self._trace_lock = threading.Lock()

    # -- information -----------------------------------------------------------------------------
    def _read_metadata(self) -> dict:
        p = os.path.join(self.path, METADATA_RELATIVE)
        if not os.path.isfile(p):
            return {}
        with open(p) as f:
            return json.load(f)

    @property
    def model_type(self) -> str:
        return self.metadata.get("model_type", "unknown")

    @property
    def has_quality_head(self) -> bool:
        return self.model_type == "vila_r"

    def __repr__(self) -> str:
        demo = ", DEMO weights" if self.is_demo else ""
        return f"VilaModel({self.path!r}, {self.model_type}{demo})"

    def _on_device(self):
        return tf.device(self.device) if self.device else contextlib.nullcontext()

    # -- preprocessing -----------------------------------------------------------------------------
    def _pixels(self, item: inputs_lib.Item) -> tuple[Optional[np.ndarray], Optional[str]]:
        if item.error:
            return None, item.error
        try:
            with self._on_device():
                if isinstance(item.data, bytes):
                    return self._decode(tf.constant(item.data)).numpy(), None
                arr = item.data.astype(np.float32) * (255.0 if item.data.dtype != np.uint8 else 1.0)
                return self._resize(tf.constant(arr)).numpy(), None
        except (tf.errors.InvalidArgumentError, tf.errors.OutOfRangeError, tf.errors.UnknownError) as e:
            return None, _reason(e)

    def preprocess(self, images, return_errors: bool = False):
        """float32 [N, 224, 224, 3] of the release's preprocessing (NaN rows for failed images)."""
        pixels, errors = self._prepare(images)
        out = np.full((len(pixels), preprocessing.IMAGE_SIZE, preprocessing.IMAGE_SIZE, 3), np.nan, np.float32)
        for i, p in enumerate(pixels):
            if p is not None:
                out[i] = p
        return self._finish(out, errors, return_errors)

    def _prepare(self, images) -> tuple[list, list[ImageError]]:
        items = inputs_lib.expand(images)
        if items and self._decode.experimental_get_tracing_count() == 0:
            with self._trace_lock:  # trace once, not once per thread
                self._pixels(items[0])
        results = list(self._pool.map(self._pixels, items))
        errors = [ImageError(i, it.source, err) for i, (it, (_, err)) in enumerate(zip(items, results)) if err]
        return [p for p, _ in results], errors

    # -- batching --------------------------------------------------------------------------------
    def _run_batches(self, signature: str, arrays: list, batch_size: int) -> dict:
        """Runs `signature` over the non-None entries of `arrays`, in bucket-padded batches."""
        fn = self.signatures[signature]
        key = next(iter(fn.structured_input_signature[1]))
        good = [i for i, a in enumerate(arrays) if a is not None]
        step = max(1, min(batch_size, buckets.MAX_BATCH))
        outputs: dict = {}
        for start in range(0, len(good), step):
            idx = good[start:start + step]
            batch = np.stack([arrays[i] for i in idx])
            size = buckets.bucket_for(len(idx))
            if size > len(idx):
                pad = np.zeros((size - len(idx),) + batch.shape[1:], batch.dtype) if batch.dtype != object \
                    else np.array([b""] * (size - len(idx)), dtype=object)
                batch = np.concatenate([batch, pad])
            with self._on_device():
                result = fn(**{key: tf.constant(batch)})
            for k, v in result.items():
                v = v.numpy()[: len(idx)]
                if k not in outputs:
                    outputs[k] = np.zeros((len(arrays),) + v.shape[1:], v.dtype)
                    if v.dtype.kind == "f":
                        outputs[k][:] = np.nan
                outputs[k][idx] = v
        return outputs

    def _finish(self, values, errors: list[ImageError], return_errors: bool):
        for e in errors:
            warnings.warn(f"{e.source}: {e.reason}", RuntimeWarning, stacklevel=3)
        return (values, errors) if return_errors else values

    def _image_call(self, images, signature: str, key: str, batch_size: int, return_errors: bool):
        pixels, errors = self._prepare(images)
        out = self._run_batches(signature, pixels, batch_size)
        values = out.get(key)
        if values is None:  # nothing scored: shape the empty/failed result from the signature
            dims = self.signatures[signature].structured_outputs[key].shape[1:]
            values = np.full((len(pixels),) + tuple(d or 0 for d in dims), np.nan, np.float32)
        return self._finish(values, errors, return_errors)

    # -- the heads ---------------------------------------------------------------------------------
    def score(self, images, batch_size: int = buckets.MAX_BATCH, return_errors: bool = False):
        """Aesthetic score per image, float32 [N] (VILA-R; the zero-shot score for a pretrain model)."""
        result = self._image_call(images, "score_pixels", "predictions", batch_size, return_errors)
        if return_errors:
            return result[0][:, 0], result[1]
        return result[:, 0]

    def zero_shot(self, images, batch_size: int = buckets.MAX_BATCH, return_errors: bool = False):
        """Zero-shot quality score per image from the release's good/bad prompt pairs, float32 [N]."""
        return self._image_call(images, "zero_shot_pixels", "zero_shot_score", batch_size, return_errors)

    def image_embedding(self, images, batch_size: int = buckets.MAX_BATCH, return_errors: bool = False):
        """l2-normalized contrastive image embeddings, float32 [N, D]."""
        return self._image_call(images, "image_embedding_pixels", "image_embedding", batch_size, return_errors)

    def caption(self, images, batch_size: int = buckets.MAX_BATCH, return_errors: bool = False):
        """Greedy aesthetic comment per image: list of str (None for failed images)."""
        pixels, errors = self._prepare(images)
        out = self._run_batches("caption_pixels", pixels, batch_size)
        texts = [None] * len(pixels)
        if "caption" in out:
            for i, p in enumerate(pixels):
                if p is not None:
                    texts[i] = out["caption"][i].decode("utf-8", "replace")
        return self._finish(texts, errors, return_errors)

    def text_embedding(self, texts: Sequence[str] | str, batch_size: int = buckets.MAX_BATCH) -> np.ndarray:
        """l2-normalized text embeddings, float32 [N, D] (the text tower's CLS token)."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        arrays = [np.array(t.encode("utf-8"), dtype=object) for t in texts]
        if not texts:
            d = self.metadata.get("config", {}).get("model_dims", 0)
            return np.zeros((0, d), np.float32)
        return self._run_batches("text_embedding", arrays, batch_size)["text_embedding"]

    def similarity(self, images, texts, batch_size: int = buckets.MAX_BATCH) -> np.ndarray:
        """Cosine image-text similarity matrix [N images, M texts] (NaN rows for failed images)."""
        return self.image_embedding(images, batch_size) @ self.text_embedding(texts, batch_size).T

    def close(self) -> None:
        self._pool.shutdown(wait=False)


def load(path: str, device: Optional[str] = None, max_workers: Optional[int] = None) -> VilaModel:
    """Loads an exported VILA model (SavedModel folder or TF Serving base folder: newest version)."""
    return VilaModel(path, device=device, max_workers=max_workers)
