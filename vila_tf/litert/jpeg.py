"""TensorFlow's JPEG pixels without TensorFlow: Pillow's libjpeg plus the last two steps in numpy.

`tf.io.decode_image` (the release's decoder, docs/model.md §11) runs libjpeg with the fast integer
IDCT (JDCT_IFAST) and "fancy" (triangle-filter) chroma upsampling. Pillow runs the accurate IDCT,
which differs by up to ~5 levels (mean ~1) on 0..255, enough to move a VILA score by 3e-4. Pillow's
reduced-quality mode (its `draft` decoder flag) does use the fast IDCT but turns fancy upsampling
off, so here Pillow is asked for the fast-IDCT YCbCr planes only (chroma merely replicated, so the
stored chroma samples are read back exactly), and the upsampling and the YCbCr -> RGB conversion
are done as libjpeg does them, in integers (jdsample.c h2v1/h2v2 fancy upsampling, jdcolor.c
fixed-point conversion). The result equals TensorFlow's pixels bit for bit on baseline and
progressive 4:4:4, 4:2:2 and 4:2:0 JPEGs (tests/test_litert.py checks it against
tf.io.decode_image). Other layouts (4:4:0, 4:1:1, CMYK) keep Pillow's own decode.
"""
from __future__ import annotations

import numpy as np

_SCALEBITS = 16
_ONE_HALF = 1 << (_SCALEBITS - 1)


def _fix(x: float) -> int:
    return int(x * (1 << _SCALEBITS) + 0.5)


_CENTERED = np.arange(256, dtype=np.int64) - 128
# jdcolor.c build_ycc_rgb_table: the nearest integers of the JFIF YCbCr -> RGB coefficients
_CR_R = (_fix(1.40200) * _CENTERED + _ONE_HALF) >> _SCALEBITS
_CB_B = (_fix(1.77200) * _CENTERED + _ONE_HALF) >> _SCALEBITS
_CR_G = -_fix(0.71414) * _CENTERED
_CB_G = -_fix(0.34414) * _CENTERED + _ONE_HALF


def ycc_to_rgb(y: np.ndarray, cb: np.ndarray, cr: np.ndarray) -> np.ndarray:
    """libjpeg's fixed-point YCbCr -> RGB, clamped to 0..255: uint8 [H, W, 3]."""
    y = y.astype(np.int64)
    cb, cr = cb.astype(np.intp), cr.astype(np.intp)
    rgb = np.stack([y + _CR_R[cr], y + ((_CB_G[cb] + _CR_G[cr]) >> _SCALEBITS), y + _CB_B[cb]], -1)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def _neighbours(a: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """(previous, next) along `axis`, the edge repeated."""
    first, last = np.take(a, [0], axis), np.take(a, [-1], axis)
    n = a.shape[axis]
    return (np.concatenate([first, np.take(a, range(n - 1), axis)], axis),
            np.concatenate([np.take(a, range(1, n), axis), last], axis))


def upsample_h2v1(c: np.ndarray) -> np.ndarray:
    """Twice as wide: libjpeg's h2v1 triangle filter (3/4 nearer + 1/4 further sample)."""
    c = c.astype(np.int32)
    if c.shape[1] <= 2:  # libjpeg replicates such narrow planes instead
        return np.repeat(c, 2, axis=1)
    prev, nxt = _neighbours(c, 1)
    out = np.empty((c.shape[0], 2 * c.shape[1]), np.int32)
    out[:, 0::2] = (c * 3 + prev + 1) >> 2
    out[:, 1::2] = (c * 3 + nxt + 2) >> 2
    out[:, 0], out[:, -1] = c[:, 0], c[:, -1]
    return out


def upsample_h2v2(c: np.ndarray) -> np.ndarray:
    """Twice as wide and tall: libjpeg's h2v2 triangle filter (column sums 3:1, then 3:1 across)."""
    c = c.astype(np.int32)
    if c.shape[1] <= 2:
        return np.repeat(np.repeat(c, 2, axis=0), 2, axis=1)
    above, below = _neighbours(c, 0)
    out = np.empty((2 * c.shape[0], 2 * c.shape[1]), np.int32)
    for row, other in ((0, above), (1, below)):
        s = c * 3 + other
        prev, nxt = _neighbours(s, 1)
        half = np.empty_like(out[row::2])
        half[:, 0::2] = (s * 3 + prev + 8) >> 4
        half[:, 1::2] = (s * 3 + nxt + 7) >> 4
        half[:, 0] = (s[:, 0] * 4 + 8) >> 4
        half[:, -1] = (s[:, -1] * 4 + 7) >> 4
        out[row::2] = half
    return out


def decode_like_tensorflow(im) -> np.ndarray | None:
    """An opened (not yet loaded) Pillow JPEG -> uint8 [H, W, 3] as tf.io.decode_image gives it, or
    None for a layout this does not cover (the caller decodes it with Pillow as it is)."""
    from PIL import JpegImagePlugin
    if im.mode == "L":
        im.decoderconfig = (1, 1)  # (scale, draft): the fast IDCT; gray has no chroma to upsample
        im.load()
        return np.repeat(np.asarray(im)[..., None], 3, axis=-1)
    sampling = JpegImagePlugin.get_sampling(im) if im.mode == "RGB" else -1
    if sampling not in (0, 1, 2):  # 4:4:4, 4:2:2, 4:2:0
        return None
    im.draft("YCbCr", None)  # the planes, not converted to RGB
    im.decoderconfig = (1, 1)
    im.load()
    ycc = np.asarray(im)
    h, w = ycc.shape[:2]
    if sampling == 0:
        return ycc_to_rgb(ycc[..., 0], ycc[..., 1], ycc[..., 2])
    # Without fancy upsampling libjpeg replicates each chroma sample: every other one is the stored plane.
    up = upsample_h2v2 if sampling == 2 else upsample_h2v1
    rows = slice(None, None, 2) if sampling == 2 else slice(None)
    cb, cr = (up(ycc[rows, 0::2, k])[:h, :w] for k in (1, 2))
    return ycc_to_rgb(ycc[..., 0], cb, cr)
