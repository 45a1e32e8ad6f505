"""Seed images of every supported kind and the mutations the fault suite applies to them.

Shared by the hypothesis test (tests/test_faults.py) and the atheris fuzz target
(tests/fuzz_images.py), so both explore the same space.
"""
from __future__ import annotations

import functools
import io
import struct
import zlib

import numpy as np
from PIL import Image

GIANT = 60000  # declared width/height: 3.6 gigapixels, far over the 50 MP guard


def _photo(h, w, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([np.sin(yy / 5.0), np.cos(xx / 7.0), np.sin((xx + yy) / 9.0)], -1)
    return ((base + 1) * 100 + rng.uniform(0, 50, (h, w, 3))).clip(0, 255).astype(np.uint8)


def _save(img, fmt, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


@functools.lru_cache(maxsize=None)
def seeds() -> dict:
    """name -> valid encoded image bytes (small, so mutations stay cheap)."""
    rgb = Image.fromarray(_photo(40, 56))
    gif_frames = [Image.fromarray(_photo(24, 32, s)).convert("P", palette=Image.ADAPTIVE) for s in range(3)]
    png16 = io.BytesIO()
    Image.fromarray((_photo(20, 30)[..., 0].astype(np.uint16) * 257)).save(png16, format="PNG")
    return {
        "jpeg": _save(rgb, "JPEG", quality=85),
        "jpeg_progressive": _save(rgb, "JPEG", quality=80, progressive=True),
        "jpeg_gray": _save(rgb.convert("L"), "JPEG"),
        "jpeg_cmyk": _save(rgb.convert("CMYK"), "JPEG"),
        "png": _save(rgb, "PNG"),
        "png_rgba": _save(rgb.convert("RGBA"), "PNG"),
        "png_gray": _save(rgb.convert("L"), "PNG"),
        "png_palette": _save(rgb.convert("P", palette=Image.ADAPTIVE), "PNG"),
        "png_16bit": png16.getvalue(),
        "gif_animated": _save(gif_frames[0], "GIF", save_all=True, append_images=gif_frames[1:], loop=0),
        "bmp": _save(rgb, "BMP"),
        "webp_lossy": _save(rgb, "WEBP", quality=80),
        "webp_lossless_alpha": _save(rgb.convert("RGBA"), "WEBP", lossless=True),
        "webp_animated": _save(rgb, "WEBP", save_all=True, duration=50, quality=70,
                               append_images=[Image.fromarray(_photo(40, 56, 1))]),
    }


def as_png(data: bytes) -> bytes:
    """The first frame of any image Pillow reads, as an RGB PNG (alpha dropped)."""
    with Image.open(io.BytesIO(data)) as img:
        return _save(img.convert("RGB"), "PNG")


def with_declared_size(data: bytes, height: int, width: int) -> bytes:
    """Rewrites the image header's declared size (each format's own field), keeping the rest."""
    b = bytearray(data)
    if b[:8] == b"\x89PNG\r\n\x1a\n":
        b[16:24] = struct.pack(">II", width, height)
        b[29:33] = struct.pack(">I", zlib.crc32(bytes(b[12:29])) & 0xFFFFFFFF)  # keep the IHDR CRC valid
    elif b[:4] == b"GIF8":
        b[6:10] = struct.pack("<HH", min(width, 65535), min(height, 65535))
    elif b[:2] == b"BM":
        b[18:26] = struct.pack("<ii", width, height)
    elif b[:4] == b"RIFF" and b[8:12] == b"WEBP" and len(b) >= 30:
        if b[12:16] == b"VP8X":  # canvas: 24-bit sizes minus one
            b[24:30] = (min(width, 1 << 24) - 1).to_bytes(3, "little") + (min(height, 1 << 24) - 1).to_bytes(3, "little")
        elif b[12:16] == b"VP8L":  # 14-bit sizes minus one, then alpha and version bits
            bits = int.from_bytes(b[21:25], "little") & ~((1 << 28) - 1)
            bits |= (min(width, 1 << 14) - 1) | ((min(height, 1 << 14) - 1) << 14)
            b[21:25] = bits.to_bytes(4, "little")
        elif b[12:16] == b"VP8 ":  # 14-bit sizes, 2 scale bits kept
            b[26:28] = ((b[26] | b[27] << 8) & 0xC000 | min(width, 0x3FFF)).to_bytes(2, "little")
            b[28:30] = ((b[28] | b[29] << 8) & 0xC000 | min(height, 0x3FFF)).to_bytes(2, "little")
    elif b[:2] == b"\xff\xd8":
        i = 2
        while i + 9 < len(b):
            if b[i] != 0xFF:
                break
            marker, length = b[i + 1], struct.unpack(">H", b[i + 2:i + 4])[0]
            if marker in (0xC0, 0xC1, 0xC2):  # SOF: precision, height, width
                b[i + 5:i + 9] = struct.pack(">HH", min(height, 65535), min(width, 65535))
                break
            i += 2 + length
    return bytes(b)


def bit_flips(data: bytes, positions, bits) -> bytes:
    b = bytearray(data)
    for p, bit in zip(positions, bits):
        if b:
            b[p % len(b)] ^= 1 << (bit % 8)
    return bytes(b)


def mutate(data: bytes, kind: str, a: int, b: int) -> bytes:
    """One mutation chosen by `kind`, parametrised by two integers."""
    if kind == "truncate":
        return data[: a % (len(data) + 1)]
    if kind == "flip":
        return bit_flips(data, [a, b, a * 7 + b], [a, b, a + b])
    if kind == "header_flip":  # flips within the first 64 bytes, where the structure is
        return bit_flips(data, [a % 64, b % 64], [a, b])
    if kind == "giant":
        return with_declared_size(data, GIANT, GIANT)
    if kind == "resize_header":
        return with_declared_size(data, 1 + a % 9000, 1 + b % 9000)
    if kind == "empty":
        return b""
    if kind == "garbage":
        return np.random.default_rng(a).integers(0, 256, 1 + b % 2000, dtype=np.uint8).tobytes()
    if kind == "splice":  # header of one format followed by another's body
        return data[: 1 + a % 40] + list(seeds().values())[b % len(seeds())][1 + a % 40:]
    return data


MUTATIONS = ("none", "truncate", "flip", "header_flip", "giant", "resize_header", "empty", "garbage", "splice")
