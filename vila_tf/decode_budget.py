"""How many pixels a model's decode threads may decode at once (docs/streaming.md).

Decoding and resizing a photo holds several full-size copies of it (the encoded bytes, uint8
pixels, float32 pixels, TensorFlow's own copies): about 15-40 bytes per pixel depending on the
path, so a 49-megapixel TIFF costs close to 2 GB while it is decoded. Threads alone do not bound
that: eight threads on eight such files want 14 GB. So every decode first takes its image's
pixels (read from the header, before the file is read: `cost`) out of one budget shared by the
model's threads, and gives them back when its 224 x 224 result is ready; a decode that does not
fit waits. Waiters are served in arrival order, so a large photo is never starved by small ones,
and one larger than the whole budget runs alone.
"""
from __future__ import annotations

import collections
import contextlib
import io
import os
import stat
import threading
from typing import Optional

import numpy as np

from vila_tf import image_formats

DEFAULT_DECODE_BUDGET = 64_000_000  # pixels: one 49 MP photo at a time, or five 12 MP ones


class DecodeBudget:
    """A counting budget of pixels, shared by threads (`with budget.hold(cost): decode`)."""

    def __init__(self, pixels: int = DEFAULT_DECODE_BUDGET):
        if int(pixels) < 1:
            raise ValueError(f"decode budget must be at least 1 pixel, got {pixels}")
        self.pixels = int(pixels)
        self.in_use = 0
        self.peak = 0  # the most pixels held at once so far (for tests and measurements)
        self._cond = threading.Condition()
        self._queue: collections.deque = collections.deque()

    @contextlib.contextmanager
    def hold(self, cost: int):
        """Holds `cost` pixels (at most the whole budget) for the duration of the block."""
        cost = max(0, min(int(cost), self.pixels))
        ticket = object()
        with self._cond:
            self._queue.append(ticket)
            try:
                while self._queue[0] is not ticket or self.in_use + cost > self.pixels:
                    self._cond.wait()
            finally:
                self._queue.remove(ticket)
                self._cond.notify_all()  # the next in line may fit as well
            self.in_use += cost
            self.peak = max(self.peak, self.in_use)
        try:
            yield
        finally:
            with self._cond:
                self.in_use -= cost
                self._cond.notify_all()


def _header_pixels(f) -> Optional[int]:
    """Width x height from an image header (Pillow reads the header only), None if unreadable."""
    from PIL import Image
    try:
        head = f.read(image_formats.HEAD_BYTES)
        f.seek(0)
        if image_formats.sniff(head) == "heif":
            image_formats.register_heif()
        with Image.open(f) as im:
            width, height = im.size
        return width * height
    except Image.DecompressionBombError:
        return 2 ** 62  # far over any budget: decoded alone, where the pixel guard refuses it
    except Exception:  # noqa: BLE001  (not an image, or a broken header: the decoder says why)
        return None


def cost(item, max_file_bytes: int, unknown: int) -> int:
    """The pixels a decode of `item` (a `vila_tf.inputs.Item`) holds: its header's width x height,
    or its file size / 3 when that is more (the bytes are held too; 3 bytes per RGB pixel);
    `unknown` when the header cannot be read. A file that will not be read costs nothing."""
    if item.error:
        return 0
    if isinstance(item.data, np.ndarray):
        return int(item.data.shape[0]) * int(item.data.shape[1])
    if isinstance(item.data, (bytes, bytearray)):
        pixels = _header_pixels(io.BytesIO(item.data))
        return max(unknown if pixels is None else pixels, len(item.data) // 3)
    if item.path is None:
        return 0
    try:
        fd = os.open(item.path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return 0
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > max_file_bytes:
            return 0  # refused by `inputs.load` before it reads anything
        pixels = _header_pixels(f)
    return max(unknown if pixels is None else pixels, st.st_size // 3)
