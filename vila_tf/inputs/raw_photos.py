"""Camera RAW files (DNG, CR2, CR3, NEF, ARW, RAF, ORF, RW2, ...) -> the picture a photo viewer shows:
the camera's embedded preview, read with LibRaw (rawpy, `pip install 'vila-tf[raw]'`).

Every RAW file carries a JPEG the camera rendered from it (1-24 megapixels on current cameras, far
more than the model's 224 x 224), with the camera's own white balance, tone curve and colour, so it
is what the photographer saw on the camera's screen. Decoding the sensor data instead would score
a flat, LibRaw-rendered image. Only a file without any preview is demosaiced (half size, camera
white balance). The preview is stored as the sensor lies; which way up it is shown is the RAW's
orientation (LibRaw's `flip`), applied by the caller like an EXIF orientation: the preview's own
EXIF block is not trusted for it (LibRaw writes one; cameras often write none).

No TensorFlow here: the JPEG is decoded by the caller's decoder (the graph's, or LiteRT's
TensorFlow-exact one), so a RAW file scores exactly as its preview saved as a JPEG would.
"""
from __future__ import annotations

import functools
import io
from typing import Union

import numpy as np

INSTALL = "pip install 'vila-tf[raw]', or rawpy"

# LibRaw's flip (dcraw's: bit 2 transpose, bit 1 mirror rows, bit 0 mirror columns) -> EXIF orientation.
_FLIP_TO_ORIENTATION = {0: 1, 1: 2, 2: 4, 3: 3, 4: 5, 5: 8, 6: 6, 7: 7}


class RawError(ValueError):
    """A RAW file that cannot be read; the message is the reason reported for it."""


@functools.lru_cache(maxsize=None)
def available() -> bool:
    """Whether the RAW reader (rawpy) is installed (asked once: a walk asks for every RAW file)."""
    try:
        import rawpy  # noqa: F401
    except ImportError:
        return False
    return True


def _rawpy():
    try:
        import rawpy
    except ImportError:
        raise RawError(f"RAW camera image: the RAW reader is not installed ({INSTALL})") from None
    return rawpy


def preview(data: bytes, max_pixels: int) -> tuple[Union[bytes, np.ndarray], int]:
    """(the embedded preview as JPEG bytes, or uint8 [H, W, 3] pixels; the EXIF orientation (1-8)
    that turns it upright). A file without a preview is demosaiced at half size, as stored.
    Raises RawError with the reason."""
    rawpy = _rawpy()
    try:
        with rawpy.imread(io.BytesIO(data)) as raw:
            orientation = _FLIP_TO_ORIENTATION.get(int(raw.sizes.flip), 1)
            try:
                thumb = raw.extract_thumb()
            except (rawpy.LibRawNoThumbnailError, rawpy.LibRawUnsupportedThumbnailError):
                thumb = None
            if thumb is not None and thumb.format == rawpy.ThumbFormat.JPEG:
                return bytes(thumb.data), orientation
            if thumb is not None and thumb.format == rawpy.ThumbFormat.BITMAP:
                pixels = np.asarray(thumb.data)
            else:
                width, height = int(raw.sizes.width) // 2, int(raw.sizes.height) // 2
                if width * height > max_pixels:
                    raise RawError(f"RAW camera image without a preview of {width} x {height} (width x height) "
                                   f"= {width * height} pixels at half size, more than the allowed {max_pixels} "
                                   "(max_pixels)")
                # user_flip=0: as stored, so the caller turns it as it turns a preview
                pixels = raw.postprocess(half_size=True, use_camera_wb=True, output_bps=8, user_flip=0)
    except RawError:
        raise
    except (rawpy.LibRawError, OSError, ValueError) as e:
        arg = e.args[0] if e.args else ""
        text = (arg.decode("utf-8", "replace") if isinstance(arg, bytes) else str(arg)).strip() or type(e).__name__
        raise RawError(f"RAW camera image that cannot be read: {text} (LibRaw)") from None
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[..., None], 3, axis=-1)
    if pixels.dtype != np.uint8:
        pixels = (pixels >> 8).astype(np.uint8) if pixels.dtype == np.uint16 else pixels.astype(np.uint8)
    h, w = pixels.shape[:2]
    if h * w > max_pixels:
        raise RawError(f"RAW camera image whose preview is {w} x {h} (width x height) = {w * h} pixels, more "
                       f"than the allowed {max_pixels} (max_pixels)")
    return np.ascontiguousarray(pixels[..., :3]), orientation
