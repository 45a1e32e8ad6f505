"""One input item -> the model's pixels, float32 [224, 224, 3] in [0, 1], on the host, in a decode
thread: the exact TensorFlow ops the SavedModel runs in-graph (`vila_tf.savedmodel.preprocessing`), with the
photos the graph cannot decode or must turn upright decoded by `vila_tf.inputs.image_formats` first."""
from __future__ import annotations

import contextlib
import re
import threading
from typing import Optional

import numpy as np
import tensorflow as tf

from vila_tf.inputs import image_formats
from vila_tf.inputs import items as inputs_lib
from vila_tf.savedmodel import preprocessing


def on_device(device: Optional[str]):
    """Where TensorFlow runs: the named device, or TensorFlow's own choice (a GPU when there is one)."""
    return tf.device(device) if device else contextlib.nullcontext()


def reason(err: Exception) -> str:
    """The useful sentence of a TensorFlow error about one image."""
    msg = getattr(err, "message", None) or str(err)
    for pattern in (r"Summarized data: b'(.*?)'", r"Summarized data: b\"(.*?)\"", r"assertion failed: \[(.*?)\]"):
        m = re.search(pattern, msg, re.S)
        if m:
            return re.sub(r"^image: ", "", m.group(1)).strip()
    first = msg.strip().splitlines()[0] if msg.strip() else type(err).__name__
    first = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", first)  # TF's internal function name
    return re.sub(r"\s*\[\[.*", "", first)[:300]


class HostDecoder:
    """Thread-safe once warmed up: `pixels(item, ...)` may run in many threads at once. The decode
    budget, the file-size cap and reading the file are the model core's (`vila_tf.core.model`)."""

    def __init__(self, device: Optional[str] = None):
        self.device = device
        # WebP in the graph needs a TensorFlow with its decoder; without one Pillow decodes it.
        self.graph_webp = hasattr(tf.io, "decode_webp")
        self._decode: dict = {}  # max_pixels -> (decode and resize, decode only): traced once each
        self._resize = tf.function(preprocessing.crop_and_scale,
                                   input_signature=[tf.TensorSpec([None, None, 3], tf.float32)], autograph=False)
        self._trace_lock = threading.Lock()

    def _functions(self, max_pixels: int):
        fns = self._decode.get(max_pixels)
        if fns is None:
            with self._trace_lock:
                fns = self._decode.get(max_pixels)
                if fns is None:
                    spec = [tf.TensorSpec([], tf.string)]
                    fns = (tf.function(lambda b: preprocessing.crop_and_scale(
                               preprocessing.decode(b, None, max_pixels, self.graph_webp)),
                               input_signature=spec, autograph=False),
                           tf.function(lambda b: preprocessing.decode(b, None, max_pixels, self.graph_webp),
                                       input_signature=spec, autograph=False))
                    self._decode[max_pixels] = fns
        return fns

    def warm_up(self, max_pixels: int, background: bool = False) -> None:
        """Traces the decode functions once, before the threads call them (not once per thread).
        `background`: ahead of time in a thread of its own, where a failure is left for the call
        that needs the functions to report."""
        try:
            decode, _ = self._functions(max_pixels)
            if decode.experimental_get_tracing_count() and self._resize.experimental_get_tracing_count():
                return
            with self._trace_lock, on_device(self.device):
                if not decode.experimental_get_tracing_count():
                    decode(tf.io.encode_png(tf.zeros([2, 2, 3], tf.uint8)))
                if not self._resize.experimental_get_tracing_count():
                    self._resize(tf.zeros([2, 2, 3], tf.float32))
        except Exception:  # noqa: BLE001
            if not background:
                raise

    def pixels(self, item: inputs_lib.Item, max_pixels: int, exif_orientation: bool) -> np.ndarray:
        """A loaded item (bytes or an array) -> float32 [224, 224, 3]; ImageFormatError with the
        reason when it cannot be decoded."""
        decode, decode_only = self._functions(max_pixels)
        try:
            with on_device(self.device):
                if isinstance(item.data, bytes):
                    # Photos the graph cannot decode or must turn upright come back as pixels.
                    pixels = image_formats.decode_on_host(
                        item.data, max_pixels, exif_orientation,
                        lambda b: decode_only(tf.constant(b)).numpy(), self.graph_webp, item.source)
                    if pixels is None:
                        return decode(tf.constant(item.data)).numpy()
                    # cast in TensorFlow: no float32 copy of a full-size photo in numpy as well (decode memory)
                    return self._resize(tf.cast(tf.constant(pixels), tf.float32)).numpy()
                arr = item.data.astype(np.float32) * (255.0 if item.data.dtype != np.uint8 else 1.0)
                return self._resize(tf.constant(arr)).numpy()
        except (tf.errors.InvalidArgumentError, tf.errors.OutOfRangeError, tf.errors.UnknownError) as e:
            raise image_formats.ImageFormatError(reason(e)) from None
