"""The TensorFlow functions the LiteRT converter turns into the on-device image heads.

Two choices make the `.tflite` fast on a phone's (or laptop's) CPU:

- Static shapes. The SavedModel's heads are lowered with a polymorphic batch, which the converter
  keeps as ~250 shape-computation ops (SHAPE, BROADCAST_TO, UNSORTED_SEGMENT_PROD) that split the
  XNNPACK delegate's graph. Here the image tower is lowered for one fixed batch, so every tensor
  after the resize has a static shape. Only the input image's height and width are free: the
  resize to 272x272 is the one op that reads them (LiteRT resizes the input tensor per call).
- GELU as one op. jax lowers the encoder's exact GELU through `erf`, which the converter expands
  into ~12 elementwise ops (LESS, SELECT, EXP...) that XNNPACK does not take: 37 delegate
  partitions instead of 1, 1.5x slower. While the heads are lowered here, the activation is the
  same function wrapped as a StableHLO composite named like PyTorch's (`aten.gelu.default`), which
  the converter maps to TFLite's GELU op (approximate=False: the same erf form, docs/model.md §3).

The preprocessing is the SavedModel's own code (`vila_tf.preprocessing.crop_and_scale`: the TF1
resize without half-pixel centers to 272, center crop 224, /255; docs/model.md §11), so an app that
passes decoded pixels gets the export's score.
"""
from __future__ import annotations

import contextlib
import jax
import tensorflow as tf
from jax.experimental import jax2tf

from ..model import heads, modules
from ..savedmodel import tf_targets
from vila_tf import preprocessing
from vila_tf.litert.format import IMAGE_INPUT, IMAGE_SIGNATURE

def _gelu_composite(x):
    exact = lambda x, approximate="none": jax.nn.gelu(x, approximate=False)
    return jax.lax.composite(exact, name="aten.gelu.default")(x, approximate="none")


@contextlib.contextmanager
def _tflite_gelu():
    """The encoder's activation as a composite while the heads are traced (modules reads
    `gelu_exact` when the Flax modules are set up, i.e. at every trace)."""
    saved = modules.gelu_exact
    modules.gelu_exact = _gelu_composite
    try:
        yield
    finally:
        modules.gelu_exact = saved


def converter_stablehlo() -> str:
    """The StableHLO version this TensorFlow's converter reads (jax's default is newer)."""
    release = tf_targets.release_of(tf.__version__)
    known = tf_targets.TARGETS.get(release)
    newest_known = tf_targets.TARGETS[max(tf_targets.TARGETS, key=tf_targets.release_key)]
    return (known or newest_known).stablehlo


class ImageHeadsModule(tf.Module):
    """The image tower's weights as variables (frozen into constants by the converter) and the
    one signature function: uint8 pixels [1, H, W, 3] -> the three image heads."""

    def __init__(self, source):
        super().__init__(name="vila_litert")
        cfg = self.cfg = source.config
        self.weights = tf.nest.map_structure(lambda a: tf.Variable(a, trainable=False), source.params)
        zero_shot, quality = source.zero_shot_prompts, source.quality_prompt

        def image_outputs(params, images):
            return heads.image_outputs(params, cfg, images, zero_shot, quality)

        # Batch 1, static: the converter then emits no shape computation (see the module docstring).
        self._lowered = jax2tf.convert(image_outputs, with_gradient=False, native_serialization_platforms=("cpu",))
        self.image_fn = tf.function(self._image, autograph=False,
                                    input_signature=[tf.TensorSpec([1, None, None, 3], tf.uint8, name=IMAGE_INPUT)])

    def _image(self, image):
        pixels = preprocessing.crop_and_scale(tf.cast(image[0], tf.float32))[None]
        out = self._lowered(self.weights, pixels)
        # A pretrain model has no quality head: its score is the zero-shot score (as the SavedModel's).
        score = out[2] if self.cfg.has_quality_head else out[1][:, None]
        return {"predictions": score, "image_embedding": out[0], "zero_shot_score": out[1]}

    def concrete_functions(self) -> dict:
        """{signature name: concrete function}, lowered with the GELU composite, for the StableHLO
        version this TensorFlow's converter reads."""
        with _tflite_gelu(), tf_targets.stablehlo_target(converter_stablehlo()):
            return {IMAGE_SIGNATURE: self.image_fn.get_concrete_function()}


def convert(module: ImageHeadsModule, work_dir: str) -> bytes:
    """The float32 `.tflite` flatbuffer: TFLite builtin ops only (no Flex/TF ops, no custom ops).

    Converted from a SavedModel written to `work_dir` (a scratch folder), the converter's one
    entry point that keeps the signatures' names for any number of them."""
    fns = module.concrete_functions()
    tf.saved_model.save(module, work_dir, signatures=fns)
    converter = tf.lite.TFLiteConverter.from_saved_model(work_dir, signature_keys=list(fns))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    return converter.convert()
