"""In-graph preprocessing == the release's pipeline composed from TF ops (run_vila_predict)."""
import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from reference import release_pixels as release_pipeline  # run_vila_predict's preprocessing, op for op
from vila_tf.savedmodel import preprocessing as preprocess


def _rng_image(h, w, c, seed, dtype=np.uint8):
    rng = np.random.default_rng(seed)
    top = 65535 if dtype == np.uint16 else 255
    yy, xx = np.mgrid[0:h, 0:w]
    smooth = (np.sin(yy / 7.0)[..., None] * np.cos(xx / 11.0)[..., None] + 1) / 2 * top * 0.8
    noise = rng.uniform(0, top * 0.2, size=(h, w, c))
    return (smooth + noise).clip(0, top).astype(dtype)


def _encode(kind, h, w, seed):
    buf = io.BytesIO()
    if kind.startswith("webp"):
        return _webp(kind, _rng_image(h, w, 4, seed))
    if kind == "png16":
        return tf.io.encode_png(_rng_image(h, w, 3, seed, np.uint16)).numpy()
    if kind == "png_gray16":
        return tf.io.encode_png(_rng_image(h, w, 1, seed, np.uint16)).numpy()
    mode, fmt = {"jpeg": ("RGB", "JPEG"), "png": ("RGB", "PNG"), "png_gray": ("L", "PNG"),
                 "png_rgba": ("RGBA", "PNG"), "gif": ("P", "GIF"), "bmp": ("RGB", "BMP"),
                 "jpeg_gray": ("L", "JPEG")}[kind]
    channels = {"RGB": 3, "L": 1, "RGBA": 4, "P": 3}[mode]
    arr = _rng_image(h, w, channels, seed)
    img = Image.fromarray(arr[..., 0] if channels == 1 else arr)
    if mode == "P":
        img = img.convert("P", palette=Image.ADAPTIVE)
        frames = [img, Image.fromarray(255 - arr).convert("P", palette=Image.ADAPTIVE)]
        frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])  # animated: first frame
        return buf.getvalue()
    img.save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


KINDS = ["jpeg", "jpeg_gray", "png", "png_gray", "png_rgba", "png16", "png_gray16", "gif", "bmp"]
SIZES = [(375, 500), (500, 375), (224, 224), (100, 61), (1000, 300), (272, 272)]


@pytest.mark.parametrize("kind", KINDS)
def test_parity_with_release_pipeline(kind):
    data = [_encode(kind, h, w, i) for i, (h, w) in enumerate(SIZES)]
    got = preprocess.preprocess_batch(tf.constant(data)).numpy()
    assert got.shape == (len(SIZES), 224, 224, 3) and got.dtype == np.float32
    for i, d in enumerate(data):
        np.testing.assert_allclose(got[i], release_pipeline(d), atol=1e-6, rtol=0)


def test_not_tf2_resize():
    """The TF1 (no half-pixel) resize differs visibly from TF2's: a guard that the right one is used."""
    d = _encode("png", 375, 500, 1)
    img = tf.io.decode_image(d, 3)
    tf2 = tf.image.resize_with_crop_or_pad(tf.image.resize(img[None], [272, 272]), 224, 224)[0] / 255.0
    assert np.abs(preprocess.preprocess_batch(tf.constant([d])).numpy()[0] - tf2.numpy()).max() > 0.05


def test_scalar_input_is_a_batch_of_one():
    d = _encode("jpeg", 300, 400, 2)
    assert preprocess.preprocess_batch(tf.constant(d)).shape == (1, 224, 224, 3)


def _png_header(width, height):
    import struct
    import zlib
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk
            + struct.pack(">I", zlib.crc32(chunk) & 0xFFFFFFFF))


@pytest.mark.parametrize("data,pattern", [
    (b"", "image_bytes is empty"),
    (b"hello world, not an image", "not a JPEG, PNG, GIF, BMP or WebP image"),
    (b"RIFF", "not a JPEG, PNG, GIF, BMP or WebP image"),
    (_png_header(20000, 20000) + b"\x00" * 100, "header declares.*20000.*x.*20000.*more than the allowed"),
])
def test_bad_inputs_name_the_problem(data, pattern):
    good = _encode("png", 50, 50, 0)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"image 1 of the batch[\s\S]*" + pattern):
        preprocess.preprocess_batch(tf.constant([good, data]))


@pytest.mark.parametrize("kind", ["jpeg", "png", "gif", "bmp", "webp_lossy", "webp_lossless", "webp_animated"])
def test_pixel_limit_is_read_from_each_header(kind):
    d = _encode(kind, 300, 400, 3)
    preprocess.preprocess_batch(tf.constant([d]), max_pixels=300 * 400)
    with pytest.raises(tf.errors.InvalidArgumentError, match="300.*x.*400.*more than the allowed"):
        preprocess.preprocess_batch(tf.constant([d]), max_pixels=300 * 400 - 1)


def test_truncated_jpeg_is_an_error():
    d = _encode("jpeg", 300, 400, 4)
    with pytest.raises(tf.errors.InvalidArgumentError):
        preprocess.preprocess_batch(tf.constant([d[: len(d) // 2]]))


# -- WebP: decoded in the graph (not by the release), compared with the PNG of the same pixels -------

def _webp(kind, rgba):
    """WebP variants as cameras, browsers and converters write them."""
    buf = io.BytesIO()
    img = Image.fromarray(rgba if kind.endswith("alpha") else rgba[..., :3])
    if kind.startswith("webp_animated"):  # VP8X + ANIM/ANMF; the second frame differs
        img.save(buf, format="WEBP", save_all=True, lossless=kind.endswith("lossless") or "alpha" in kind,
                 exact=True, append_images=[Image.fromarray(255 - rgba[..., :3])], duration=80)
    elif kind.startswith("webp_lossless"):  # VP8L
        img.save(buf, format="WEBP", lossless=True, exact=True)
    else:  # VP8 (lossy)
        img.save(buf, format="WEBP", quality=85)
    return buf.getvalue()


WEBP_KINDS = ["webp_lossy", "webp_lossless", "webp_lossless_alpha", "webp_animated", "webp_animated_lossless",
              "webp_animated_alpha"]


def _png_of(pixels):
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("kind", WEBP_KINDS)
def test_webp_equals_the_png_of_the_same_pixels(kind):
    """The reference pixels are libwebp's through Pillow (first frame, alpha dropped as for PNG)."""
    data = [_encode(kind, h, w, i) for i, (h, w) in enumerate(SIZES[:4])]
    got = preprocess.preprocess_batch(tf.constant(data)).numpy()
    for i, d in enumerate(data):
        with Image.open(io.BytesIO(d)) as im:
            assert im.format == "WEBP" and (im.n_frames > 1) == ("animated" in kind)
            pixels = np.asarray(im.convert("RGB"))  # the first frame
        np.testing.assert_array_equal(got[i], release_pipeline(_png_of(pixels)))


def test_lossless_webp_is_the_source_pixels():
    rgba = _rng_image(375, 500, 4, 7)
    got = preprocess.preprocess_batch(tf.constant([_webp("webp_lossless_alpha", rgba)])).numpy()[0]
    np.testing.assert_array_equal(got, release_pipeline(_png_of(rgba[..., :3])))


def test_webp_can_be_left_out_of_the_graph():
    d = _encode("webp_lossless", 50, 60, 0)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"not a JPEG, PNG, GIF or BMP image \(first bytes 52 49"):
        preprocess.preprocess_batch(tf.constant([d]), webp=False)
    assert preprocess.graph_formats(webp=False) == ("JPEG", "PNG", "GIF", "BMP")


@pytest.mark.parametrize("cut", [12, 16, 29, 40, 0.5])
def test_truncated_webp_is_an_error(cut):
    d = _encode("webp_animated", 300, 400, 4)
    d = d[: int(len(d) * cut) if isinstance(cut, float) else cut]
    with pytest.raises(tf.errors.InvalidArgumentError):
        preprocess.preprocess_batch(tf.constant([d]))
