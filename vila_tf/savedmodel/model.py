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

import logging
import threading
from typing import Optional

import numpy as np
import tensorflow as tf

from vila_tf.core import buckets, metadata, personal
from vila_tf.core.model import Model
from vila_tf.core.versions import resolve_savedmodel
from vila_tf.savedmodel import preprocessing, saved_functions, tf_compat, tf_import
from vila_tf.savedmodel.host_decode import HostDecoder, on_device
from vila_tf.savedmodel.runner import BucketedRunner


def check_device(device: Optional[str]) -> None:
    """ValueError (one line, naming the devices there are) for a device this machine does not have."""
    if not device:
        return
    name = device if device.startswith("/") else f"/device:{device.upper()}"
    known = [d.name for d in tf.config.list_logical_devices()]
    if not any(k.upper().endswith(name.upper().split("/DEVICE:")[-1]) for k in known):
        seen = ", ".join(k.split("device:")[-1] for k in known)
        raise ValueError(f"device {device!r}: this machine has no such device (TensorFlow sees {seen}); "
                         "leave the device out to let TensorFlow choose")


def _image_outputs(module, meta) -> dict:
    """{IMAGE_OUTPUTS: every output of the image heads from one tower pass} (the features of
    `vila-tf fit`), from the function the image signatures call (export/savedmodel/writer.py's
    `image_outputs_fn`); {} for an export without it. Three signatures would run the tower three
    times."""
    size = int(meta.config.get("image_size", preprocessing.IMAGE_SIZE))
    spec = tf.TensorSpec([None, size, size, 3], tf.float32, name="image")
    if isinstance(module, saved_functions.SavedFunctions):
        for fn in module.functions.get("image_outputs_fn", ()):
            args, _ = fn.structured_input_signature
            if len(args) == 1 and args[0].dtype == tf.float32 and args[0].shape.is_compatible_with(spec.shape):
                return {personal.IMAGE_OUTPUTS: fn}
        return {}
    fn = getattr(module, "image_outputs_fn", None)
    if fn is None:
        return {}
    return {personal.IMAGE_OUTPUTS: tf.function(lambda image: fn(image), input_signature=[spec],
                                                autograph=False).get_concrete_function()}


def _load(path: str):
    """The export's functions handed to the runtime as they are (saved_functions: seconds faster,
    and shared with the other models of the same export in this process), or `tf.saved_model.load`
    for an export that loader does not take."""
    try:
        return saved_functions.shared(path)
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001
        # NotLoadable, or a damaged export (which tf.saved_model.load then reports in its own
        # words), or a TensorFlow whose internals differ: TensorFlow's loader takes over.
        logging.getLogger("vila_tf").debug("%s: loaded with tf.saved_model.load (%s)", path, e)
        return tf.saved_model.load(path)


class VilaModel(Model):
    """An exported VILA model as a SavedModel. Use `vila_tf.load`."""

    backend = "SavedModel"
    tasks = frozenset(("score", "zero_shot", "caption", "image_embedding", "zero_shot_attributes",
                       "zero_shot_prompts", "text_embedding", "similarity", "preprocess"))

    def __init__(self, path: str, device: Optional[str] = None, max_workers: Optional[int] = None,
                 exif_orientation: bool = True, decode_budget_pixels: Optional[int] = None,
                 max_file_bytes: Optional[int] = None):
        path = resolve_savedmodel(path)
        meta = metadata.read(path)
        # Before loading: an older TensorFlow would load it and fail at the first call.
        tf_compat.check(meta, path)
        check_device(device)
        super().__init__(path, meta, max_workers, exif_orientation, decode_budget_pixels, max_file_bytes)
        self.device = device
        tf_import.register_text_ops()
        self._decoder = HostDecoder(device)
        # The decode functions are traced while the weights are read (reading waits on the disk
        # and memory, tracing on Python): the first photo is decoded that much sooner. Not a
        # daemon: a process that ends first waits for it (TensorFlow aborts when a thread is
        # killed inside it at exit).
        threading.Thread(target=self._decoder.warm_up, args=(self.max_pixels, True),
                         name="vila-tf-trace").start()
        with on_device(device):
            module = _load(self.path)
        self.signatures = dict(module.signatures)
        self._module = module  # owns the variables the signatures read
        self._runner = BucketedRunner({**self.signatures, **_image_outputs(module, meta)}, device)

    # -- the backend's parts ----------------------------------------------------------------------
    def _warm_up(self) -> None:
        self._decoder.warm_up(self.max_pixels)

    def _pixels(self, item) -> np.ndarray:
        return self._decoder.pixels(item, self.max_pixels, self.exif_orientation)

    def _run(self, signature: str, pixels: list) -> dict:
        if signature == personal.IMAGE_OUTPUTS and signature not in self._runner.signatures:
            # An export without the module's own function: the three image signatures, merged.
            out = {}
            for name in ("score_pixels", "image_embedding_pixels", "zero_shot_pixels"):
                out.update(self._runner.run(name, pixels))
            return out
        return self._runner.run(signature, pixels)

    def _text_embedding(self, texts: list[str], batch_size: int) -> np.ndarray:
        arrays = [np.array(t.encode("utf-8"), dtype=object) for t in texts]
        return self._runner.run_all("text_embedding", arrays, batch_size)["text_embedding"]

    def refusal(self, task: str) -> str:
        return f"{task}: not something a vila-tf model does (one of the tasks in docs/runtime.md)"

    def preprocess(self, images, return_errors: bool = False, batch_size: int = buckets.MAX_BATCH):
        """float32 [N, 224, 224, 3] of the release's preprocessing (NaN rows for failed images):
        one pass over the inputs, decoded a few batches ahead like `stream`."""
        from vila_tf.core.results import ImageError
        from vila_tf.inputs import image_formats
        from vila_tf.core import pipeline
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

    def describe(self) -> list[str]:
        meta = self.metadata
        lines = [f"model: {self.path} (SavedModel)",
                 f"kind: {meta.model_kind or meta.model_type}"
                 + ("  (DEMO weights: outputs mean nothing)" if self.is_demo else "")]
        for k in ("source_checkpoint", "source_sha256", "dtype", "compute_dtype", "platforms",
                  "calling_convention_version"):
            value = getattr(meta, k)
            if value not in (None, ()):
                lines.append(f"{k}: {list(value) if isinstance(value, tuple) else value}")
        if meta.tensorflow_support:
            lines.append(f"runs on TensorFlow: {tf_compat.supported_releases(meta)}")
        if meta.config:
            lines.append("config: " + ", ".join(f"{k}={v}" for k, v in sorted(meta.config.items())))
        lines += personal.describe(meta.extra.get(personal.METADATA_KEY))
        lines.append("signatures:")
        for name, fn in sorted(self.signatures.items()):
            ins = ", ".join(f"{k} {v.dtype.name}{v.shape}" for k, v in fn.structured_input_signature[1].items())
            outs = ", ".join(f"{k} {v.dtype.name}{v.shape}" for k, v in fn.structured_outputs.items())
            lines.append(f"  {name}({ins}) -> {outs}")
        return lines
