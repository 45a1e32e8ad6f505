"""`vila_tf.load(path)`: an exported VILA model behind a Python API that never imports jax.

    import vila_tf
    model = vila_tf.load("exported/vila_r")            # a SavedModel, or a TF Serving base folder
    scores = model.score(["a.jpg", "photos/", "shots/*.png"])      # float32 [N], input order
    captions = model.caption(pil_images)                            # list of str
    emb = model.image_embedding(np.stack(arrays))                   # float32 [N, D], l2-normalized

    for r in model.stream("score", photo_generator()):           # results as they come, any number
        print(r.index, r.source, r.value, r.error)                  # of inputs, in bounded memory

`VilaModel` is a façade over three parts, each in its own module: the inputs (`vila_tf.inputs.items`:
paths, folders, globs, bytes, arrays, PIL images, walked lazily), the host decoder
(`vila_tf.savedmodel.host_decode`: the exact code the SavedModel runs in-graph, in a thread pool a few batches
ahead of the model, `vila_tf.core.pipeline`) and the bucketed runner (`vila_tf.savedmodel.runner`: the pixel
signatures on batches padded to the export's buckets). Everything is a collector over `stream`. A
bad image (unreadable, empty, truncated, not an image, over the pixel limit) fails alone: its row
is NaN (None for captions, value None in `stream`), a warning names it, and `return_errors=True`
returns the failures too; every other image is still scored. See docs/streaming.md.

A VilaModel is safe to call from several threads at once. By default TensorFlow places the model
(a GPU when it sees one, else the CPU); `device="CPU:0"` or `device="GPU:1"` pins it. On TPU, load
and call the model under `tf.distribute.TPUStrategy(...).scope()` with `device=None`; the exported
StableHLO includes the TPU platform.
"""
from __future__ import annotations

import concurrent.futures
import logging
import os
import threading
from typing import Iterator, Optional, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_text  # noqa: F401  (registers the SentencePiece ops of the graph)

from vila_tf.core import buckets
from vila_tf.inputs import image_formats
from vila_tf.inputs import items as inputs_lib
from vila_tf.core import metadata
from vila_tf.core import pipeline
from vila_tf.savedmodel import preprocessing
from vila_tf.core import tasks
from vila_tf.savedmodel import tf_compat
from vila_tf.core import zero_shot as zsl
from vila_tf.savedmodel.host_decode import HostDecoder, on_device
from vila_tf.core.results import DemoModelWarning, ImageError, Result
from vila_tf.savedmodel.runner import BucketedRunner
from vila_tf.core.versions import resolve_savedmodel
from vila_tf.core.warn import warn

log = logging.getLogger("vila_tf")
PROMPT_SETS_KEPT = 16  # prompt sets whose text embeddings a model keeps


class VilaModel:
    """An exported VILA model. Use `vila_tf.load`."""

    def __init__(self, path: str, device: Optional[str] = None, max_workers: Optional[int] = None,
                 exif_orientation: bool = True, decode_budget_pixels: Optional[int] = None,
                 max_file_bytes: Optional[int] = None):
        self.path = resolve_savedmodel(path)
        self.device = device
        self.metadata = metadata.read(self.path)
        # Before loading: an older TensorFlow would load it and fail at the first call.
        tf_compat.check(self.metadata, self.path)
        self.is_demo = self.metadata.demo_weights
        if self.is_demo:
            msg = (f"{self.path} is a DEMO export with random weights: its scores, embeddings and "
                   "captions mean nothing. Export the released checkpoints for real results.")
            warn(msg, DemoModelWarning)
            log.warning(msg)
        with on_device(device):
            module = tf.saved_model.load(self.path)
        self.signatures = dict(module.signatures)
        self._module = module  # owns the variables the signatures read
        self._runner = BucketedRunner(self.signatures, device)
        # Decode memory: the pixels decoded at once across the threads, and the largest file read,
        # both checked before a file's bytes are read (docs/streaming.md).
        self._decoder = HostDecoder(int(self.metadata.max_pixels or preprocessing.DEFAULT_MAX_PIXELS),
                                    exif_orientation, device, decode_budget_pixels, max_file_bytes)
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers or min(8, os.cpu_count() or 2),
                                                           thread_name_prefix="vila_tf-decode")
        # Your prompt pairs -> their text embeddings, computed once per set (a few sets kept).
        self._prompt_embeddings: dict = {}
        self._prompt_lock = threading.Lock()

    # -- information -----------------------------------------------------------------------------
    @property
    def model_type(self) -> str:
        return self.metadata.model_type

    @property
    def has_quality_head(self) -> bool:
        return self.metadata.has_quality_head

    @property
    def exif_orientation(self) -> bool:
        """True: photos turned upright by their EXIF orientation, as viewers show them; False: the
        stored pixels, exactly as the release scored them (docs/formats.md)."""
        return self._decoder.exif_orientation

    @exif_orientation.setter
    def exif_orientation(self, value: bool) -> None:
        self._decoder.exif_orientation = value

    @property
    def max_pixels(self) -> int:
        """The pixel limit an image's header is checked against before decoding."""
        return self._decoder.max_pixels

    @max_pixels.setter
    def max_pixels(self, value: int) -> None:  # the host decoders read it per image
        self._decoder.max_pixels = value

    @property
    def decode_budget(self):
        """The pixels the decode threads may decode at once (`.pixels`), and the most held so far (`.peak`)."""
        return self._decoder.budget

    def __repr__(self) -> str:
        demo = ", DEMO weights" if self.is_demo else ""
        return f"VilaModel({self.path!r}, {self.model_type}{demo})"

    # -- streaming ---------------------------------------------------------------------------------
    def _decoded_batches(self, inputs, batch_size: int, batches_ahead: int, report: image_formats.SkipReport):
        self._decoder.warm_up()
        step = max(1, min(int(batch_size), buckets.MAX_BATCH))
        return pipeline.decoded_batches(inputs_lib.iter_items(inputs, report), self._decoder.pixels, self._pool,
                                        step, batches_ahead)

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
        # A zero_shot_task() gives a dict of scores per image; the registry's tasks one value each.
        run = [t if isinstance(t, zsl.PairTask) else tasks.get(t)
               for t in ((task,) if isinstance(task, (str, zsl.PairTask)) else tuple(task))]
        report = image_formats.SkipReport() if skipped is None else skipped
        batches = self._decoded_batches(inputs, batch_size, batches_ahead, report)
        try:
            for batch in batches:
                good = [d for d in batch if d.error is None]
                per_task = []
                for t in run:
                    if isinstance(t, zsl.PairTask):
                        out = t.values(self._runner.run(t.signature, [d.pixels for d in good])) if good else []
                        per_task.append(dict(zip((d.index for d in good), out)))
                        continue
                    out = self._runner.run(t.signature, [d.pixels for d in good])[t.output] if good else []
                    per_task.append({d.index: t.value(v) for d, v in zip(good, out)})
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
            report.warn()  # at the code that ran the stream to its end

    def preprocess(self, images, return_errors: bool = False, batch_size: int = buckets.MAX_BATCH):
        """float32 [N, 224, 224, 3] of the release's preprocessing (NaN rows for failed images):
        one pass over the inputs, decoded a few batches ahead like `stream`."""
        rows, errors = [], []
        nan = np.full((preprocessing.IMAGE_SIZE, preprocessing.IMAGE_SIZE, 3), np.nan, np.float32)
        report = image_formats.SkipReport()
        batches = self._decoded_batches(images, batch_size, pipeline.DEFAULT_BATCHES_AHEAD, report)
        try:
            for batch in batches:
                for d in batch:
                    rows.append(nan if d.error else d.pixels)
                    if d.error:
                        errors.append(ImageError(d.index, d.source, d.error))
        finally:
            batches.close()
        report.warn()
        out = np.stack(rows) if rows else np.zeros((0,) + nan.shape, np.float32)
        return self._finish(out, errors, return_errors)

    # -- collectors over `stream` ------------------------------------------------------------------
    def _collect(self, task: str, images, batch_size: int) -> tuple[list, list[ImageError]]:
        values, errors = [], []
        skipped = image_formats.SkipReport()
        for r in self.stream(task, images, batch_size, skipped=skipped):
            values.append(r.value)
            if r.error is not None:
                errors.append(ImageError(r.index, r.source, r.error))
        skipped.warn()
        return values, errors

    @staticmethod
    def _finish(values, errors: list[ImageError], return_errors: bool):
        for e in errors:
            warn(f"{e.source}: {e.reason}", RuntimeWarning)
        return (values, errors) if return_errors else values

    def _image_call(self, images, task: str, batch_size: int, return_errors: bool):
        values, errors = self._collect(task, images, batch_size)
        t = tasks.TASKS[task]
        # score: the [B, 1] predictions as one float per image
        dims = () if t.field == "score" else self._runner.output_shape(t.signature, t.output)
        out = np.full((len(values),) + dims, np.nan, np.float32)
        for i, v in enumerate(values):
            if v is not None:
                out[i] = v
        return self._finish(out, errors, return_errors)

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
        texts, errors = self._collect("caption", images, batch_size)
        return self._finish(texts, errors, return_errors)

    def text_embedding(self, texts: Sequence[str] | str, batch_size: int = buckets.MAX_BATCH) -> np.ndarray:
        """l2-normalized text embeddings, float32 [N, D] (the text tower's CLS token)."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts:
            return np.zeros((0, self.metadata.model_dims), np.float32)
        arrays = [np.array(t.encode("utf-8"), dtype=object) for t in texts]
        return self._runner.run_all("text_embedding", arrays, batch_size)["text_embedding"]

    def similarity(self, images, texts, batch_size: int = buckets.MAX_BATCH) -> np.ndarray:
        """Cosine image-text similarity matrix [N images, M texts] (NaN rows for failed images)."""
        return self.image_embedding(images, batch_size) @ self.text_embedding(texts, batch_size).T

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
