"""Encoded photos -> uint8 RGB pixels [H, W, 3] with Pillow: what the LiteRT models take.

Where the SavedModel decodes in its graph (`tf.io.decode_image`, docs/model.md §11), the LiteRT
backend decodes on the host, with the same rules: RGBA and palette images lose their alpha (no
compositing), gray is replicated to three channels, a GIF or WebP animation gives its first frame,
images over `max_pixels` are refused from their header, and the other formats of
docs/formats.md (AVIF, HEIC, TIFF, and RAW files by their embedded JPEG preview) go through
`vila_tf.inputs.image_formats` exactly as for the SavedModel runtime.

JPEG: TensorFlow decodes with libjpeg's fast integer IDCT and fancy chroma upsampling, which
Pillow cannot be asked for as such; vila_tf.litert.jpeg rebuilds TensorFlow's pixels exactly
from Pillow's fast-IDCT planes (4:4:4, 4:2:2, 4:2:0 and gray JPEGs; other layouts are decoded
by Pillow as it is).
"""
from __future__ import annotations


import numpy as np

from vila_tf.inputs import image_formats
from vila_tf.litert import jpeg
from vila_tf.inputs.image_formats import ImageFormatError

_PIL_FORMATS = ("jpeg", "png", "gif", "bmp", "webp")  # what the graph decodes: Pillow here


def _rgb(im) -> np.ndarray:
    """A Pillow image -> uint8 [H, W, 3], alpha dropped as TensorFlow's decoder drops it."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):  # 16-bit gray: the high byte
        gray = (np.asarray(im, np.uint32) >> 8).clip(0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=-1)
    return np.asarray(im.convert("RGB"))


def decode(data: bytes, max_pixels: int, apply_orientation: bool, source: str = "") -> np.ndarray:
    """Encoded bytes -> uint8 [H, W, 3]; raises ImageFormatError with the reason reported for the image
    (the checks and messages are vila_tf.inputs.image_formats', as for the SavedModel runtime)."""
    if not data:
        raise ImageFormatError("image_bytes is empty")
    fmt = image_formats.format_of(data, source)
    if fmt == "raw":  # its embedded JPEG preview, decoded here as any JPEG (image_formats.decode_raw)
        return image_formats.decode_raw(data, max_pixels, apply_orientation, lambda b: decode(b, max_pixels, False))
    if fmt in image_formats.HOST_FORMATS:
        return image_formats.decode_host_format(data, fmt, max_pixels, apply_orientation)
    if fmt not in _PIL_FORMATS:
        image_formats.refuse(fmt, data)
    with image_formats.open_checked(data, fmt, max_pixels) as im:
        try:
            pixels = jpeg.decode_like_tensorflow(im) if fmt == "jpeg" else None
            if pixels is None:
                im.load()
                pixels = _rgb(im)
            if apply_orientation and fmt in ("jpeg", "png", "webp"):
                pixels = image_formats.orient(pixels, image_formats.exif_orientation(data))
            return pixels
        except Exception as e:  # noqa: BLE001
            raise ImageFormatError(f"{image_formats.DISPLAY[fmt]} image that cannot be decoded: {e}") from None
