"""`vila_tf.load(path)`: an exported VILA model behind a Python API that never imports jax.

    import vila_tf
    model = vila_tf.load("exported/vila_r")            # a SavedModel, or a TF Serving base folder
    scores = model.score(["a.jpg", "photos/", "shots/*.png"])      # float32 [N], input order
    captions = model.caption(pil_images)                            # list of str
    emb = model.image_embedding(np.stack(arrays))                   # float32 [N, D], l2-normalized

    for r in model.stream("score", photo_generator()):           # results as they come, any number
        print(r.index, r.source, r.value, r.error)                  # of inputs, in bounded memory

Everything is a collector over `stream`: images are read and decoded by a thread pool, with the
exact code the SavedModel runs in-graph (`vila_tf.preprocessing`), a few batches ahead of the
model (`vila_tf.pipeline`), then scored in batches through the pixel signatures. A bad image
(unreadable, empty, truncated, not an image, over the pixel limit) fails alone: its row is NaN
(None for captions, value None in `stream`), a warning names it, and `return_errors=True` returns
the failures too; every other image is still scored. See docs/streaming.md.

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
from typing import Iterator, Optional, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_text  # noqa: F401  (registers the SentencePiece ops of the graph)

from vila_tf import buckets, image_formats, inputs as inputs_lib, pipeline, preprocessing, tf_compat, zero_shot as zsl
from vila_tf.results import DemoModelWarning, ImageError, Result
from vila_tf.signatures import METADATA_RELATIVE
from vila_tf.versions import resolve_savedmodel

log = logging.getLogger("vila_tf")
PROMPT_SETS_KEPT = 16  # prompt sets whose text embeddings a model keeps
IncompatibleTensorFlowError = tf_compat.IncompatibleTensorFlowError


# task -> (pixel signature, its output, one output row -> the result's value)
TASKS = {
    "score": ("score_pixels", "predictions", lambda v: float(v[0])),
    "zero_shot": ("zero_shot_pixels", "zero_shot_score", float),
    "caption": ("caption_pixels", "caption", lambda v: v.decode("utf-8", "replace")),
    "image_embedding": ("image_embedding_pixels", "image_embedding", lambda v: np.array(v)),  # a copy, not a view of the batch
}


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

    def __init__(self, path: str, device: Optional[str] = None, max_workers: Optional[int] = None,
                 exif_orientation: bool = True):
        self.path = resolve_savedmodel(path)
        self.device = device
        # True: photos turned upright by their EXIF orientation, as viewers show them; False: the
        # stored pixels, exactly as the release scored them (docs/formats.md).
        self.exif_orientation = exif_orientation
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
        # WebP in the graph needs a TensorFlow with its decoder; without one Pillow decodes it.
        self._graph_webp = hasattr(tf.io, "decode_webp")
        self._decode = tf.function(
            lambda b: preprocessing.crop_and_scale(preprocessing.decode(b, None, self.max_pixels, self._graph_webp)),
            input_signature=[tf.TensorSpec([], tf.string)], autograph=False)
        self._decode_only = tf.function(lambda b: preprocessing.decode(b, None, self.max_pixels, self._graph_webp),
                                        input_signature=[tf.TensorSpec([], tf.string)], autograph=False)
        self._resize = tf.function(preprocessing.crop_and_scale,
                                   input_signature=[tf.TensorSpec([None, None, 3], tf.float32)], autograph=False)
        self._trace_lock = threading.Lock()
        # Your prompt pairs -> their text embeddings, computed once per set (a few sets kept).
        self._prompt_embeddings: dict = {}
        self._prompt_lock = threading.Lock()

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
    def _warm_up(self) -> None:
        """Traces the decode functions once, before the threads call them (not once per thread)."""
        if self._decode.experimental_get_tracing_count() and self._resize.experimental_get_tracing_count():
            return
        with self._trace_lock, self._on_device():
            if not self._decode.experimental_get_tracing_count():
                self._decode(tf.io.encode_png(tf.zeros([2, 2, 3], tf.uint8)))
            if not self._resize.experimental_get_tracing_count():
                self._resize(tf.zeros([2, 2, 3], tf.float32))

    def _pixels(self, item: inputs_lib.Item) -> tuple[Optional[np.ndarray], Optional[str]]:
        """One item -> (float32 [224, 224, 3], None) or (None, why it failed). Runs in a decode thread."""
        item = inputs_lib.load(item)
        if item.error:
            return None, item.error
        try:
            with self._on_device():
                if isinstance(item.data, bytes):
                    # Photos the graph cannot decode or must turn upright come back as pixels.
                    pixels = image_formats.decode_on_host(
                        item.data, self.max_pixels, self.exif_orientation,
                        lambda b: self._decode_only(tf.constant(b)).numpy(), self._graph_webp, item.source)
                    if pixels is None:
                        return self._decode(tf.constant(item.data)).numpy(), None
                    return self._resize(tf.constant(pixels.astype(np.float32))).numpy(), None
                arr = item.data.astype(np.float32) * (255.0 if item.data.dtype != np.uint8 else 1.0)
                return self._resize(tf.constant(arr)).numpy(), None
        except (tf.errors.InvalidArgumentError, tf.errors.OutOfRangeError, tf.errors.UnknownError) as e:
            return None, _reason(e)
        except image_formats.ImageFormatError as e:
            return None, str(e)

    def preprocess(self, images, return_errors: bool = False):
        """float32 [N, 224, 224, 3] of the release's preprocessing (NaN rows for failed images)."""
        self._warm_up()
        skipped = image_formats.SkipReport()
        results = list(self._pool.map(self._pixels, inputs_lib.iter_items(images, skipped)))
        skipped.warn(stacklevel=3)
        out = np.full((len(results), preprocessing.IMAGE_SIZE, preprocessing.IMAGE_SIZE, 3), np.nan, np.float32)
        for i, (p, _) in enumerate(results):
            if p is not None:
                out[i] = p
        errors = []
        if any(err for _, err in results):  # sources only when needed: a second, lazy pass
            for i, it in enumerate(inputs_lib.iter_items(images)):
                if results[i][1]:
                    errors.append(ImageError(i, it.source, results[i][1]))
        return self._finish(out, errors, return_errors)

    # -- batching --------------------------------------------------------------------------------
    def _run_batch(self, signature: str, arrays: list) -> dict:
        """`signature` on one batch (at most MAX_BATCH arrays), padded to its bucket: {output: numpy [B, ...]}."""
        fn = self.signatures[signature]
        key = next(iter(fn.structured_input_signature[1]))
        batch = np.stack(arrays)
        size = buckets.bucket_for(len(arrays))
        if size > len(arrays):
            pad = np.zeros((size - len(arrays),) + batch.shape[1:], batch.dtype) if batch.dtype != object \
                else np.array([b""] * (size - len(arrays)), dtype=object)
            batch = np.concatenate([batch, pad])
        with self._on_device():
            result = fn(**{key: tf.constant(batch)})
        return {k: v.numpy()[: len(arrays)] for k, v in result.items()}

    def _run_batches(self, signature: str, arrays: list, batch_size: int) -> dict:
        """Runs `signature` over the non-None entries of `arrays`, in bucket-padded batches."""
        good = [i for i, a in enumerate(arrays) if a is not None]
        step = max(1, min(batch_size, buckets.MAX_BATCH))
        outputs: dict = {}
        for start in range(0, len(good), step):
            idx = good[start:start + step]
            for k, v in self._run_batch(signature, [arrays[i] for i in idx]).items():
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

    # -- streaming ---------------------------------------------------------------------------------
    def stream(self, task, inputs, batch_size: int = buckets.MAX_BATCH,
               batches_ahead: int = pipeline.DEFAULT_BATCHES_AHEAD,
               skipped: Optional[image_formats.SkipReport] = None) -> Iterator[Result]:
        """Results in input order, while later inputs are still being read: `Result(index, source,
        value, error)`, value a float ("score", "zero_shot"), a str ("caption"), a float32 [D]
        row ("image_embedding") or a dict of zero-shot scores (a `zero_shot_task()`), and None
        with the reason in `error` for an input that failed.

        `inputs`: anything `score` takes, or any iterable or generator (an endless one too).
        `task` may also be a tuple of tasks: each image is then decoded once and `value` is a tuple.
        While the model runs a batch, the decode threads (`vila_tf.load(..., max_workers=)`) read
        and decode up to `batches_ahead` further batches, never more: memory is bounded by
        (batches_ahead + 2) * batch_size decoded images, whatever the number of inputs.

        Files of a folder or glob walk that are not images are not scored (docs/formats.md): they
        are added to `skipped` as the walk meets them when one is given, else summarized in one
        `SkippedFilesWarning` per kind when the stream has run to its end.
        """
        tasks = (task,) if isinstance(task, (str, zsl.PairTask)) else tuple(task)
        for t in tasks:
            if not isinstance(t, zsl.PairTask) and t not in TASKS:
                raise ValueError(f"unknown task {t!r}: one of {', '.join(TASKS)}, or a zero_shot_task()")
        step = max(1, min(int(batch_size), buckets.MAX_BATCH))
        self._warm_up()
        report = image_formats.SkipReport() if skipped is None else skipped
        batches = pipeline.decoded_batches(inputs_lib.iter_items(inputs, report), self._pixels, self._pool, step,
                                           batches_ahead)
        try:
            for batch in batches:
                good = [d for d in batch if d.error is None]
                per_task = []
                for t in tasks:
                    if isinstance(t, zsl.PairTask):  # a dict of scores per image
                        out = t.values(self._run_batch(t.signature, [d.pixels for d in good])) if good else []
                        per_task.append({d.index: v for d, v in zip(good, out)})
                        continue
                    signature, key, convert = TASKS[t]
                    out = self._run_batch(signature, [d.pixels for d in good])[key] if good else []
                    per_task.append({d.index: convert(v) for d, v in zip(good, out)})
                for d in batch:
                    if d.error is not None:
                        value = None
                    else:
                        values = tuple(p[d.index] for p in per_task)
                        value = values if not isinstance(task, (str, zsl.PairTask)) else values[0]
                    yield Result(d.index, d.source, value, d.error)
        finally:
            batches.close()
        if skipped is None:
            report.warn(stacklevel=3)  # at the code that ran the stream to its end

    def _collect(self, task: str, images, batch_size: int, stacklevel: int = 5) -> tuple[list, list[ImageError]]:
        values, errors = [], []
        skipped = image_formats.SkipReport()
        for r in self.stream(task, images, batch_size, skipped=skipped):
            values.append(r.value)
            if r.error is not None:
                errors.append(ImageError(r.index, r.source, r.error))
        skipped.warn(stacklevel=stacklevel)  # warn, _collect, _image_call, score: the user's line
        return values, errors

    def _image_call(self, images, task: str, batch_size: int, return_errors: bool):
        values, errors = self._collect(task, images, batch_size)
        signature, key, _ = TASKS[task]
        dims = tuple(d or 0 for d in self.signatures[signature].structured_outputs[key].shape[1:])
        if task == "score":
            dims = ()  # the [B, 1] predictions as one float per image
        out = np.full((len(values),) + dims, np.nan, np.float32)
        for i, v in enumerate(values):
            if v is not None:
                out[i] = v
        return self._finish(out, errors, return_errors)

    # -- the heads (collectors over `stream`) ------------------------------------------------------
    def score(self, images, batch_size: int = buckets.MAX_BATCH, return_errors: bool = False):
        """Aesthetic score per image, float32 [N] (VILA-R; the zero-shot score for a pretrain model)."""
        return self._image_call(images, "score", batch_size, return_errors)

    def zero_shot(self, images, batch_size: int = buckets.MAX_BATCH, return_errors: bool = False,
                  attributes: bool = False, prompts=None):
        """Zero-shot quality score per image from the release's good/bad prompt pairs, float32 [N].

        `attributes=True`: a `ZeroShotScores` instead, with each pair's own score too (the
        release's six attributes: image, lighting, content, background, foreground, composition).
        `prompts=[("sharp photo", "blurry photo"), "warm light|cold light", ...]`: a
        `ZeroShotScores` for your own pairs instead, each scored like the release's (softmax over
        image·good, image·bad), `score` their mean; their text embeddings are computed once per
        prompt set. See docs/runtime.md."""
        if not attributes and prompts is None:
            return self._image_call(images, "zero_shot", batch_size, return_errors)
        task = self.zero_shot_task(prompts)
        values, errors = self._collect(task, images, batch_size)
        return self._finish(zsl.scores_from_values(values, task), errors, return_errors)

    def zero_shot_task(self, prompts=None) -> zsl.PairTask:
        """A `stream` task giving each image's zero-shot scores as a dict {"score", name: ...}: the
        release's six attributes (prompts None), or your pairs ((good, bad) tuples or 'good|bad'
        strings), whose text embeddings are computed here, once per prompt set."""
        if prompts is None:
            return zsl.release_task()
        pairs = zsl.pairs_from(prompts)
        with self._prompt_lock:
            embeddings = self._prompt_embeddings.get(pairs)
        if embeddings is None:
            embeddings = self.text_embedding([p for pair in pairs for p in pair])
            with self._prompt_lock:
                if len(self._prompt_embeddings) >= PROMPT_SETS_KEPT:
                    self._prompt_embeddings.clear()
                self._prompt_embeddings[pairs] = embeddings
        return zsl.PairTask(tuple(zsl.pair_name(p) for p in pairs), pairs, embeddings)

    def image_embedding(self, images, batch_size: int = buckets.MAX_BATCH, return_errors: bool = False):
        """l2-normalized contrastive image embeddings, float32 [N, D]."""
        return self._image_call(images, "image_embedding", batch_size, return_errors)

    def caption(self, images, batch_size: int = buckets.MAX_BATCH, return_errors: bool = False):
        """Greedy aesthetic comment per image: list of str (None for failed images)."""
        texts, errors = self._collect("caption", images, batch_size, stacklevel=4)
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
        self._pool.shutdown(wait=False, cancel_futures=True)
