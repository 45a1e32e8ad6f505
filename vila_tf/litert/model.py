"""`vila_tf.load(LITERT_DIR)`: the LiteRT image heads behind the runtime's API, without TensorFlow.

    import vila_tf
    model = vila_tf.load("vila_litert")                  # written by `python -m export litert`
    model.score(["a.jpg", "photos/", "shots/*.png"])      # float32 [N], input order
    model.image_embedding(pil_images)                     # float32 [N, D], l2-normalized
    for r in model.stream("score", photo_generator()):    # results as they come, bounded memory
        print(r.index, r.source, r.value, r.error)

The LiteRT backend of the model core (`vila_tf.core.model.Model`: the inputs, the decode pool and
budget, `stream` and every collector are the core's). Photos are decoded on the host with Pillow
(vila_tf.litert.pillow_decode), exactly as TensorFlow decodes them. The model itself resizes and crops
(the release's preprocessing is inside the `.tflite`), one image per call: the models are lowered
for batch 1, where the phone runs them too. One call gives the score, the embedding, the
zero-shot score with its six attributes (and the prompt pairs baked in at conversion), so a stream
of several tasks costs one call per image.

What the LiteRT export holds is the image tower: `caption`, `text_embedding`, `similarity` and
prompt pairs that were not baked in need the text tower and the SavedModel (docs/on_device.md). Imports ai-edge-litert,
numpy and Pillow; never TensorFlow.
"""
from __future__ import annotations

import os
import threading
from typing import Optional

import numpy as np

from vila_tf.core import personal
from vila_tf.core import zero_shot as zsl
from vila_tf.core.metadata import ExportMetadata
from vila_tf.core.model import Model, UnsupportedTaskError
from vila_tf.litert import format as litert_format
from vila_tf.litert import pillow_decode

def export_metadata(meta: dict) -> ExportMetadata:
    """vila_litert.json -> the typed record both backends read (the LiteRT-only fields in `extra`)."""
    src = meta.get("source") or {}
    known = {"model_type", "config", "demo_weights", "model_kind", "max_pixels"}
    return ExportMetadata(
        model_type=meta.get("model_type", "unknown"), config=dict(meta.get("config") or {}),
        demo_weights=bool(meta.get("demo_weights")), model_kind=meta.get("model_kind", ""),
        max_pixels=meta.get("max_pixels"), source_checkpoint=src.get("source_checkpoint"),
        source_sha256=src.get("source_sha256"),
        zero_shot_prompts=litert_format.prompts(meta),
        extra={k: v for k, v in meta.items() if k not in known})


class LiteRTModel(Model):
    """The image heads of a VILA model as LiteRT models. Use `vila_tf.load`."""

    backend = "LiteRT"

    def __init__(self, path: str, variant: Optional[str] = None, max_workers: Optional[int] = None,
                 exif_orientation: bool = True, num_threads: Optional[int] = None,
                 decode_budget_pixels: Optional[int] = None, max_file_bytes: Optional[int] = None):
        path = os.path.abspath(litert_format.resolve(path) or os.fspath(path))
        self.litert = litert_format.read_metadata(path)  # the LiteRT record: variants, ops, accuracy
        self.variant = variant or litert_format.DEFAULT_VARIANT
        self.model_file = litert_format.variant_path(path, self.litert, self.variant)
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            raise ImportError("the LiteRT runtime is not installed: pip install ai-edge-litert "
                              "(or 'vila-tf[litert]')") from None
        super().__init__(path, export_metadata(self.litert), max_workers, exif_orientation, decode_budget_pixels,
                         max_file_bytes)
        # XNNPACK (the default CPU delegate) on every core.
        self._interpreter = Interpreter(model_path=self.model_file, num_threads=num_threads or os.cpu_count() or 1)
        self._runner = self._interpreter.get_signature_runner(litert_format.IMAGE_SIGNATURE)
        self._lock = threading.Lock()  # one interpreter: calls from several threads take turns
        outputs = set(self._runner.get_output_details())
        self.outputs = frozenset(outputs)
        self.baked_prompts = litert_format.prompts(self.litert) if litert_format.PROMPT_SCORES_OUTPUT in outputs else ()
        tasks = {"score", "zero_shot", "image_embedding"}
        if set(litert_format.ATTRIBUTE_OUTPUTS) <= outputs:
            tasks.add("zero_shot_attributes")
        if self.baked_prompts:
            tasks.add("zero_shot_prompts")
        self.tasks = frozenset(tasks)

    def __repr__(self) -> str:
        demo = ", DEMO weights" if self.is_demo else ""
        return f"LiteRTModel({self.path!r}, {self.model_type}, {self.variant}{demo})"

    # -- the backend's parts ----------------------------------------------------------------------
    def _batch_step(self, batch_size: int) -> int:
        # Decoded photos are full-size here (the model resizes them): look ahead by as many photos
        # as there are decode threads, so (batches_ahead + 2) times that many are held at most.
        return max(1, min(batch_size, self.decode_threads))

    def _signature(self, task) -> str:
        return litert_format.IMAGE_SIGNATURE  # one call computes every head

    def _pixels(self, item) -> np.ndarray:
        if isinstance(item.data, bytes):
            return pillow_decode.decode(item.data, self.max_pixels, self.exif_orientation, item.source)
        arr = item.data
        if arr.dtype != np.uint8:  # float in [0, 1] (vila_tf.inputs checked): the model's uint8 levels
            arr = np.round(arr * 255.0).astype(np.uint8)
        return arr

    def _run(self, signature: str, pixels: list) -> dict:
        # Lowered for batch 1, as a phone runs it: one call per photo, rows stacked.
        rows = []
        for p in pixels:
            with self._lock:
                rows.append(self._runner(**{litert_format.IMAGE_INPUT: np.ascontiguousarray(p[None])}))
        return {k: np.concatenate([np.asarray(r[k]) for r in rows]) for k in rows[0]}

    def _prompt_task(self, pairs: tuple) -> zsl.PairTask:
        missing = [p for p in pairs if p not in self.baked_prompts]
        if missing:
            raise UnsupportedTaskError(
                f"prompt pair {zsl.pair_name(missing[0])!r} is not in this LiteRT export (it has "
                f"{', '.join(repr(zsl.pair_name(p)) for p in self.baked_prompts) or 'none'}): bake it in with "
                f"`python -m export litert SAVEDMODEL --prompt {zsl.pair_name(missing[0])!r}`, or use the SavedModel")
        return zsl.PairTask(tuple(zsl.pair_name(p) for p in pairs), pairs,
                            columns=tuple(self.baked_prompts.index(p) for p in pairs),
                            output=litert_format.PROMPT_SCORES_OUTPUT)

    def refusal(self, task: str) -> str:
        if task in ("caption", "text_embedding", "similarity", "preprocess"):
            return (f"{task}: a LiteRT export holds the image heads only (score, zero-shot, embeddings); "
                    f"{task} needs the SavedModel (docs/on_device.md)")
        if task == "zero_shot_attributes":
            return ("zero-shot attributes: this LiteRT export was written without the six attribute outputs: "
                    "convert it again with `python -m export litert`, or use the SavedModel")
        if task == "zero_shot_prompts":
            return ("your own prompt pairs: this LiteRT export has none baked in: convert it with "
                    "`python -m export litert SAVEDMODEL --prompt 'GOOD|BAD'`, or use the SavedModel")
        return f"{task}: not something a vila-tf model does (one of the tasks in docs/runtime.md)"

    def describe(self) -> list[str]:
        meta = self.litert
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
        if self.baked_prompts:
            lines.append("prompt pairs: " + ", ".join(zsl.pair_name(p) for p in self.baked_prompts))
        lines += personal.describe(src.get(personal.METADATA_KEY))  # converted from a personal export
        cfg = meta.get("config", {})
        if cfg:
            lines.append("config: " + ", ".join(f"{k}={v}" for k, v in sorted(cfg.items())))
        lines.append("signatures:")
        for name, sig in meta.get("signatures", {}).items():
            fmt = lambda d: ", ".join(f"{k} {v['dtype']}{v['shape']}" for k, v in d.items())
            lines.append(f"  {name}({fmt(sig['inputs'])}) -> {fmt(sig['outputs'])}")
        return lines
