"""How many pixels a model's decode threads may decode at once (docs/streaming.md).

Decoding a photo holds several full-size copies of it while it is resized. Measured on 49
megapixels (peak resident memory, one photo alone): a TIFF, AVIF or HEIC decoded on the host,
or a JPEG turned upright by its EXIF orientation, holds about 25 bytes per pixel (1.2 GB); a JPEG
or PNG the graph decodes as stored holds 4-8 (0.2-0.4 GB). Threads alone do not bound that:
eight threads on eight large TIFFs want 10 GB and more. So every decode first takes its cost out
of one budget shared by the model's threads (`cost`: the pixels its header declares, read before
the file is, a quarter of them for a photo the graph decodes as stored) and gives it back when
its 224 x 224 result is ready; a decode that does not fit waits. Waiters are served in arrival
order, so a large photo is never starved by small ones, and one larger than the whole budget
decodes alone. The default, 64 million, is one 49 MP TIFF at a time (about 1.6 GB), or every
thread busy on 12 MP JPEGs.
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

from vila_tf.inputs import image_formats

DEFAULT_DECODE_BUDGET = 64_000_000  # pixels (full weight): one 49 MP TIFF at a time
GRAPH_SHARE = 4  # a photo the graph decodes as stored costs a quarter of its pixels (measured above)
BYTES_PER_PIXEL = 25  # what a full-weight pixel holds while decoded: the encoded bytes count at this rate
_GRAPH_FORMATS = {"JPEG", "PNG", "GIF", "BMP", "WEBP"}  # Pillow's names
_ROTATABLE = {"JPEG", "PNG", "WEBP"}  # those whose EXIF orientation the runtime applies on the host
RAW_PREVIEW_PIXELS = 24_000_000  # the largest embedded preview current cameras write (full size)


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


def _header_cost(f, apply_orientation: bool) -> Optional[int]:
    """The cost of decoding an image from its header (Pillow reads the header only), None if unreadable."""
    from PIL import Image
    try:
        head = f.read(image_formats.HEAD_BYTES)
        f.seek(0)
        if image_formats.sniff(head) == "heif":
            image_formats.register_heif()
        with Image.open(f) as im:
            width, height = im.size
            graph = im.format in _GRAPH_FORMATS
            if graph and apply_orientation and im.format in _ROTATABLE:
                orientation = im.getexif().get(image_formats.EXIF_ORIENTATION_TAG, 1)
                graph = orientation not in range(2, 9)  # turned upright on the host: full weight
        return width * height // (GRAPH_SHARE if graph else 1)
    except Image.DecompressionBombError:
        return 2 ** 62  # far over any budget: decoded alone, where the pixel guard refuses it
    except Exception:  # noqa: BLE001  (not an image, or a broken header: the decoder says why)
        return None


def _size(path: Optional[str]) -> int:
    try:
        return os.stat(path).st_size if path else 0
    except OSError:
        return 0


def cost(item, max_file_bytes: int, unknown: int, apply_orientation: bool = True) -> int:
    """What a decode of `item` (a `vila_tf.inputs.items.Item`) takes out of the budget: the pixels its
    header declares (a quarter for a photo the graph decodes as stored), or its file size / 25
    when that is more (the bytes are held too); `unknown` when the header cannot be read. A file
    that will not be read costs nothing."""
    if item.error:
        return 0
    if image_formats.format_of(b"", item.path or item.source) == "raw":
        # Pillow reads a RAW file's first image (a thumbnail, or nothing): its preview's size is
        # unknown until LibRaw has the whole file, so it counts as a 24 MP JPEG preview
        size = len(item.data) if isinstance(item.data, (bytes, bytearray)) else _size(item.path)
        return max(RAW_PREVIEW_PIXELS // GRAPH_SHARE, size // BYTES_PER_PIXEL)
    if isinstance(item.data, np.ndarray):
        return int(item.data.shape[0]) * int(item.data.shape[1])
    if isinstance(item.data, (bytes, bytearray)):
        pixels = _header_cost(io.BytesIO(item.data), apply_orientation)
        return max(unknown if pixels is None else pixels, len(item.data) // BYTES_PER_PIXEL)
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
        pixels = _header_cost(f, apply_orientation)
    return max(unknown if pixels is None else pixels, st.st_size // BYTES_PER_PIXEL)
