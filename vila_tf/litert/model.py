"""`vila_tf.load(LITERT_DIR)`: the LiteRT image heads behind the runtime's API, without TensorFlow.

    import vila_tf
    model = vila_tf.load("vila_litert")                  # written by `python -m export litert`
    model.score(["a.jpg", "photos/", "shots/*.png"])      # float32 [N], input order
    model.image_embedding(pil_images)                     # float32 [N, D], l2-normalized
    for r in model.stream("score", photo_generator()):    # results as they come, bounded memory
        print(r.index, r.source, r.value, r.error)

Inputs are what `VilaModel` takes (paths, folders, globs, bytes, arrays, PIL images; lazily, through
vila_tf.inputs.items), decoded on the host with Pillow (vila_tf.litert.pillow_decode) by a pool of decode
threads a few images ahead of the model (vila_tf.core.pipeline). The model itself resizes and crops
(the release's preprocessing is inside the `.tflite`), one image per call: the models are lowered
for batch 1, where the phone runs them too. One call gives the score, the embedding and the
zero-shot score, so a stream of several tasks costs one call per image.

What the LiteRT export holds is the image tower: `caption`, `text_embedding` and `similarity`
need the text decoder and the SavedModel (docs/on_device.md says why). Imports ai-edge-litert,
numpy and Pillow; never TensorFlow.
"""
from __future__ import annotations

import concurrent.futures
import logging
import os
import threading
from typing import Iterator, Optional

import numpy as np

from vila_tf.inputs import image_formats
from vila_tf.inputs import items as inputs_lib
from vila_tf.core import pipeline
from vila_tf.core import tasks as tasks_lib
from vila_tf.core.warn import warn
from vila_tf.litert import format as litert_format
from vila_tf.litert import pillow_decode
from vila_tf.core.results import DemoModelWarning, ImageError, Result

log = logging.getLogger("vila_tf")

DEFAULT_MAX_PIXELS = 50_000_000  # as the SavedModel runtime (vila_tf.savedmodel.preprocessing)
# The tasks of the registry (vila_tf.core.tasks) that the image heads compute: the `image` signature has
# each task's output, under the same key as the SavedModel's pixel signature.
TASKS = ("score", "zero_shot", "image_embedding")


class LiteRTModel:
    """The image heads of a VILA model as LiteRT models. Use `vila_tf.load`."""

    def __init__(self, path: str, variant: Optional[str] = None, max_workers: Optional[int] = None,
                 exif_orientation: bool = True, num_threads: Optional[int] = None):
        self.path = os.path.abspath(litert_format.resolve(path) or os.fspath(path))
        self.metadata = litert_format.read_metadata(self.path)
        self.variant = variant or litert_format.DEFAULT_VARIANT
        self.model_file = litert_format.variant_path(self.path, self.metadata, self.variant)
        self.exif_orientation = exif_orientation
        self.max_pixels = int(self.metadata.get("max_pixels", DEFAULT_MAX_PIXELS))
        self.is_demo = bool(self.metadata.get("demo_weights"))
        if self.is_demo:
            msg = (f"{self.path} is a DEMO export with random weights: its scores and embeddings mean "
                   "nothing. Export the released checkpoints for real results.")
            warn(msg, DemoModelWarning)
            log.warning(msg)
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            raise ImportError("the LiteRT runtime is not installed: pip install ai-edge-litert "
                              "(or 'vila-tf[litert]')") from None
        # XNNPACK (the default CPU delegate) on every core.
        self._interpreter = Interpreter(model_path=self.model_file, num_threads=num_threads or os.cpu_count() or 1)
        self._runner = self._interpreter.get_signature_runner(litert_format.IMAGE_SIGNATURE)
        self._lock = threading.Lock()  # one interpreter: calls from several threads take turns
        self._workers = max_workers or min(8, os.cpu_count() or 2)
        self._pool = concurrent.futures.ThreadPoolExecutor(self._workers, thread_name_prefix="vila_tf-decode")

    # -- information -----------------------------------------------------------------------------
    @property
    def model_type(self) -> str:
        return self.metadata.get("model_type", "unknown")

    @property
    def has_quality_head(self) -> bool:
        return self.model_type == "vila_r"

    @property
    def tasks(self) -> tuple:
        return tuple(TASKS)

    def __repr__(self) -> str:
        demo = ", DEMO weights" if self.is_demo else ""
        return f"LiteRTModel({self.path!r}, {self.model_type}, {self.variant}{demo})"

    # -- one image ---------------------------------------------------------------------------------
    def _pixels(self, item: inputs_lib.Item) -> tuple[Optional[np.ndarray], Optional[str]]:
        """One item -> (uint8 [H, W, 3], None) or (None, why it failed). Runs in a decode thread."""
        item = inputs_lib.load(item)
        if item.error:
            return None, item.error
        try:
            if isinstance(item.data, bytes):
                return pillow_decode.decode(item.data, self.max_pixels, self.exif_orientation, item.source), None
            arr = item.data
            if arr.dtype != np.uint8:  # float in [0, 1] (vila_tf.inputs.items checked): the model's uint8 levels
                arr = np.round(arr * 255.0).astype(np.uint8)
            if arr.shape[0] * arr.shape[1] > self.max_pixels:
                return None, f"array of {arr.shape[0]} x {arr.shape[1]} pixels, more than the allowed {self.max_pixels}"
            if min(arr.shape[:2]) < 1:
                return None, f"empty image array of shape {arr.shape}"
            return arr, None
        except image_formats.ImageFormatError as e:
            return None, str(e)

    def _run(self, pixels: np.ndarray) -> dict:
        with self._lock:
            return self._runner(**{litert_format.IMAGE_INPUT: np.ascontiguousarray(pixels[None])})

    # -- streaming ---------------------------------------------------------------------------------
    def stream(self, task, inputs, batch_size: int = 32, batches_ahead: int = pipeline.DEFAULT_BATCHES_AHEAD,
               skipped: Optional[image_formats.SkipReport] = None) -> Iterator[Result]:
        """Results in input order, as `VilaModel.stream` gives them (`task` a name or a tuple of names).

        Decoded photos are full-size here (the model resizes them), so the unit of look-ahead is
        `min(batch_size, decode threads)` images: at most (batches_ahead + 2) times that many
        decoded photos are held, whatever the number of inputs."""
        tasks = (task,) if isinstance(task, str) else tuple(task)
        for t in tasks:
            if t not in TASKS:
                raise ValueError(self._unsupported(t))
        step = max(1, min(int(batch_size), self._workers))
        report = image_formats.SkipReport() if skipped is None else skipped
        batches = pipeline.decoded_batches(inputs_lib.iter_items(inputs, report), self._pixels, self._pool, step,
                                           batches_ahead)
        try:
            for batch in batches:
                for d in batch:
                    value = None
                    if d.error is None:
                        out = self._run(d.pixels)
                        values = tuple(tasks_lib.TASKS[t].value(out[tasks_lib.TASKS[t].output][0]) for t in tasks)
                        value = values if len(tasks) > 1 or not isinstance(task, str) else values[0]
                    yield Result(d.index, d.source, value, d.error)
        finally:
            batches.close()
        if skipped is None:
            report.warn()  # at the code that ran the stream to its end

    def _unsupported(self, task: str) -> str:
        if task in ("caption", "text_embedding", "similarity"):
            return (f"{task}: a LiteRT export holds the image heads only (score, zero_shot, image_embedding); "
                    f"{task} needs the text tower: use the SavedModel (docs/on_device.md)")
        return f"unknown task {task!r}: one of {', '.join(TASKS)}"

    # -- the heads (collectors over `stream`) --------------------------------------------------------
    def _image_call(self, images, task: str, batch_size: int, return_errors: bool):
        values, errors = [], []
        skipped = image_formats.SkipReport()
        for r in self.stream(task, images, batch_size, skipped=skipped):
            values.append(r.value)
            if r.error is not None:
                errors.append(ImageError(r.index, r.source, r.error))
        skipped.warn()
        dims = (int(self.metadata["config"]["model_dims"]),) if task == "image_embedding" else ()
        out = np.full((len(values),) + dims, np.nan, np.float32)
        for i, v in enumerate(values):
            if v is not None:
                out[i] = v
        for e in errors:
            warn(f"{e.source}: {e.reason}")
        return (out, errors) if return_errors else out

    def score(self, images, batch_size: int = 32, return_errors: bool = False):
        """Aesthetic score per image, float32 [N] (VILA-R; the zero-shot score for a pretrain model)."""
        return self._image_call(images, "score", batch_size, return_errors)

    def zero_shot(self, images, batch_size: int = 32, return_errors: bool = False):
        """Zero-shot quality score per image from the release's good/bad prompt pairs, float32 [N]."""
        return self._image_call(images, "zero_shot", batch_size, return_errors)

    def image_embedding(self, images, batch_size: int = 32, return_errors: bool = False):
        """l2-normalized contrastive image embeddings, float32 [N, D]."""
        return self._image_call(images, "image_embedding", batch_size, return_errors)

    def caption(self, *args, **kwargs):
        raise ValueError(self._unsupported("caption"))

    def text_embedding(self, *args, **kwargs):
        raise ValueError(self._unsupported("text_embedding"))

    def similarity(self, *args, **kwargs):
        raise ValueError(self._unsupported("similarity"))

    def describe(self) -> list[str]:
        """What `vila-tf info` prints."""
        meta = self.metadata
        rec = meta["variants"][self.variant]
        lines = [f"model: {self.path} (LiteRT, {self.variant}: {rec['file']}, {rec['bytes'] / 1e6:.1f} MB)",
                 f"kind: {meta.get('model_kind', self.model_type)}"
                 + ("  (DEMO weights: outputs mean nothing)" if self.is_demo else "")]
        src = meta.get("source", {})
        for k in ("source_checkpoint", "source_sha256", "savedmodel"):
            if src.get(k):
                lines.append(f"{k}: {src[k]}")
        lines.append("variants: " + ", ".join(f"{v} ({r['bytes'] / 1e6:.1f} MB, sha256 {r['sha256'][:12]}...)"
                                               for v, r in meta["variants"].items()))
        cfg = meta.get("config", {})
        if cfg:
            lines.append("config: " + ", ".join(f"{k}={v}" for k, v in sorted(cfg.items())))
        lines.append("signatures:")
        for name, sig in meta.get("signatures", {}).items():
            fmt = lambda d: ", ".join(f"{k} {v['dtype']}{v['shape']}" for k, v in d.items())
            lines.append(f"  {name}({fmt(sig['inputs'])}) -> {fmt(sig['outputs'])}")
        return lines

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
