"""In-graph image preprocessing: exactly the release's pipeline (docs/model.md §11), batched.

run_vila_predict.preprocess_image: decode_image(bytes, 3, expand_animations=False) -> TF1
resize_bilinear to 272x272 (align_corners=False, half_pixel_centers=False; aspect ratio not kept)
-> resize_with_crop_or_pad to 224 (center crop, offset 24) -> float32 / 255 -> clip [0, 1].
The TF1 resize is the raw `ResizeBilinear` op with half_pixel_centers=False; TF2's `tf.image.resize`
differs by up to 0.48 per pixel on noisy images, so it must not be used.

Before decoding, each image's header is read and images declaring more than `max_pixels` are
rejected, so a decompression bomb never gets a buffer allocated.

WebP is decoded in the graph too unless `webp=False` (for TensorFlow releases without a WebP
decoder); the release's formats (JPEG, PNG, GIF, BMP) go through the unchanged release call.
docs/formats.md lists what the graph and the `vila_tf` runtime read.
"""
from __future__ import annotations

import tensorflow as tf

PRE_CROP_SIZE = 272
IMAGE_SIZE = 224
DEFAULT_MAX_PIXELS = 50_000_000
RELEASE_FORMATS = ("JPEG", "PNG", "GIF", "BMP")


def graph_formats(webp: bool = True) -> tuple:
    """The formats the graph decodes, as named in its error messages and the export's metadata."""
    return RELEASE_FORMATS + (("WebP",) if webp else ())


def _uint(image_bytes: tf.Tensor, offset: int, size: int, big_endian: bool) -> tf.Tensor:
    raw = tf.cast(tf.io.decode_raw(tf.strings.substr(image_bytes, offset, size), tf.uint8), tf.int64)
    weights = [256 ** (size - 1 - i) if big_endian else 256 ** i for i in range(size)]
    return tf.reduce_sum(raw * tf.constant(weights, tf.int64))


def _signed32_le(image_bytes: tf.Tensor, offset: int) -> tf.Tensor:
    v = _uint(image_bytes, offset, 4, big_endian=False)
    return tf.abs(tf.where(v >= 2 ** 31, v - 2 ** 32, v))  # BMP heights are negative for top-down


def _is_webp(image_bytes: tf.Tensor) -> tf.Tensor:
    # Padded: substr past the end of a short input would raise instead of answering.
    head = tf.strings.join([tf.strings.substr(image_bytes, 0, 12), b"\0" * 12])
    return tf.logical_and(tf.equal(tf.strings.substr(head, 0, 4), b"RIFF"),
                          tf.equal(tf.strings.substr(head, 8, 4), b"WEBP"))


def image_format(image_bytes: tf.Tensor, webp: bool = True) -> tf.Tensor:
    """'jpeg', 'png', 'gif', 'bmp', 'webp' (when `webp`) or '' from the magic bytes."""
    head = tf.strings.substr(image_bytes, 0, 8)
    cases = [
        (tf.equal(tf.strings.substr(head, 0, 3), b"\xff\xd8\xff"), lambda: tf.constant("jpeg")),
        (tf.equal(head, b"\x89PNG\r\n\x1a\n"), lambda: tf.constant("png")),
        (tf.equal(tf.strings.substr(head, 0, 4), b"GIF8"), lambda: tf.constant("gif")),
        (tf.equal(tf.strings.substr(head, 0, 2), b"BM"), lambda: tf.constant("bmp")),
    ]
    if webp:
        cases.append((_is_webp(image_bytes), lambda: tf.constant("webp")))
    return tf.case(cases, default=lambda: tf.constant(""), exclusive=False)


def declared_size(image_bytes: tf.Tensor, fmt: tf.Tensor) -> tf.Tensor:
    """[height, width] int64 the header declares (0, 0 when the header is too short to say)."""
    n = tf.strings.length(image_bytes)

    def png():
        return tf.cond(n >= 24, lambda: tf.stack([_uint(image_bytes, 20, 4, True), _uint(image_bytes, 16, 4, True)]),
                       lambda: tf.zeros([2], tf.int64))

    def gif():
        return tf.cond(n >= 10, lambda: tf.stack([_uint(image_bytes, 8, 2, False), _uint(image_bytes, 6, 2, False)]),
                       lambda: tf.zeros([2], tf.int64))

    def bmp():
        def sizes():
            dib = _uint(image_bytes, 14, 4, False)
            return tf.cond(dib == 12,  # OS/2 BITMAPCOREHEADER: 16-bit sizes
                           lambda: tf.stack([_uint(image_bytes, 20, 2, False), _uint(image_bytes, 18, 2, False)]),
                           lambda: tf.stack([_signed32_le(image_bytes, 22), _signed32_le(image_bytes, 18)]))
        return tf.cond(n >= 26, sizes, lambda: tf.zeros([2], tf.int64))

    def jpeg():
        # Parses the SOF marker only; a corrupt header raises its own InvalidArgumentError.
        return tf.cast(tf.image.extract_jpeg_shape(image_bytes)[:2], tf.int64)

    def webp():
        # The first chunk says the size: VP8X (extended: the canvas, 24-bit sizes minus one),
        # VP8L (lossless: 14-bit sizes minus one after the 0x2f signature), VP8 (lossy key frame).
        def vp8l():
            bits = _uint(image_bytes, 21, 4, False)
            return tf.stack([tf.bitwise.bitwise_and(tf.bitwise.right_shift(bits, 14), 0x3FFF) + 1,
                             tf.bitwise.bitwise_and(bits, 0x3FFF) + 1])

        vp8x = lambda: tf.stack([_uint(image_bytes, 27, 3, False) + 1, _uint(image_bytes, 24, 3, False) + 1])
        vp8 = lambda: tf.stack([tf.bitwise.bitwise_and(_uint(image_bytes, 28, 2, False), 0x3FFF),
                                tf.bitwise.bitwise_and(_uint(image_bytes, 26, 2, False), 0x3FFF)])

        def sizes():
            chunk = tf.strings.substr(image_bytes, 12, 4)
            return tf.case([(tf.equal(chunk, b"VP8X"), vp8x), (tf.equal(chunk, b"VP8L"), vp8l),
                            (tf.equal(chunk, b"VP8 "), vp8)], default=lambda: tf.zeros([2], tf.int64), exclusive=True)
        return tf.cond(n >= 30, sizes, lambda: tf.zeros([2], tf.int64))

    return tf.case([(tf.equal(fmt, "png"), png), (tf.equal(fmt, "gif"), gif), (tf.equal(fmt, "bmp"), bmp),
                    (tf.equal(fmt, "jpeg"), jpeg), (tf.equal(fmt, "webp"), webp)],
                   default=lambda: tf.zeros([2], tf.int64), exclusive=True)


def _hex(data: tf.Tensor) -> tf.Tensor:
    """'ff d8 ff': raw bytes in an error message would not be valid UTF-8 and break the error."""
    table = tf.constant([f"{i:02x}" for i in range(256)])
    codes = tf.cast(tf.io.decode_raw(data, tf.uint8), tf.int32)
    return tf.strings.reduce_join(tf.gather(table, codes), separator=" ")


_BYTE = [bytes([i]) for i in range(256)]


def _decode_webp(image_bytes: tf.Tensor) -> tf.Tensor:
    """WebP -> uint8 [H, W, 3]: the first frame of an animation, alpha dropped (as for PNG and GIF).

    TensorFlow's animation decoder always writes RGBA but sizes its buffer by the file's alpha
    flag: an animation without that flag would overflow it (TF 2.21 corrupts its heap) or be refused.
    Setting the flag in the VP8X header (byte 20, bit 0x10) makes the buffer RGBA; the pixels are
    the same, since libwebp composites animation frames in RGBA anyway.
    """
    def patched():
        flags = _uint(image_bytes, 20, 1, False)
        animated = tf.logical_and(tf.equal(tf.strings.substr(image_bytes, 12, 4), b"VP8X"),
                                  tf.equal(tf.bitwise.bitwise_and(flags, 0x02), 0x02))
        with_alpha_flag = lambda: tf.strings.join([
            tf.strings.substr(image_bytes, 0, 20),
            tf.gather(tf.constant(_BYTE), tf.bitwise.bitwise_or(flags, 0x10)),
            tf.strings.substr(image_bytes, 21, -1)])
        return tf.cond(animated, with_alpha_flag, lambda: image_bytes)

    # Shorter than a VP8X header: left to the decoder, which refuses it.
    contents = tf.cond(tf.strings.length(image_bytes) >= 30, patched, lambda: image_bytes)
    # channels=0: a still WebP decodes to its own 3 or 4 channels (channels=3 refuses RGBA files).
    return tf.io.decode_image(contents, channels=0, expand_animations=False, dtype=tf.uint8)[..., :3]


def decode(image_bytes: tf.Tensor, index: tf.Tensor | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
           webp: bool = True) -> tf.Tensor:
    """One encoded image -> uint8 [H, W, 3], after checking format, emptiness and declared size."""
    where = tf.constant("image") if index is None else tf.strings.format("image {} of the batch", index)
    fmt = image_format(image_bytes, webp)
    n = tf.strings.length(image_bytes)
    names = graph_formats(webp)
    # Messages are joined, not tf.strings.format-ted, which would quote every string argument.
    checks = [tf.debugging.Assert(n > 0, [tf.strings.join([where, ": image_bytes is empty"])])]
    checks.append(tf.debugging.Assert(tf.not_equal(fmt, ""), [tf.strings.join([
        where, f": not a {', '.join(names[:-1])} or {names[-1]} image (first bytes ",
        _hex(tf.strings.substr(image_bytes, 0, 8)), ")"])]))
    with tf.control_dependencies(checks):
        hw = declared_size(image_bytes, fmt)
    pixels = hw[0] * hw[1]
    bomb = tf.debugging.Assert(pixels <= max_pixels, [tf.strings.join([
        where, ": header declares ", tf.strings.as_string(hw[0]), " x ", tf.strings.as_string(hw[1]), " = ",
        tf.strings.as_string(pixels), " pixels, more than the allowed ", str(max_pixels), " (max_pixels)"])])
    with tf.control_dependencies([bomb]):
        release = lambda: tf.io.decode_image(image_bytes, channels=3, expand_animations=False, dtype=tf.uint8)
        if not webp:
            return release()
        image = tf.cond(tf.equal(fmt, "webp"), lambda: _decode_webp(image_bytes), release)
        image.set_shape([None, None, 3])
        return image


def crop_and_scale(image: tf.Tensor) -> tf.Tensor:
    """uint8/float [H, W, 3] -> float32 [224, 224, 3] in [0, 1], the release's numerics."""
    resized = tf.raw_ops.ResizeBilinear(images=image[None], size=[PRE_CROP_SIZE, PRE_CROP_SIZE],
                                        align_corners=False, half_pixel_centers=False)
    cropped = tf.image.resize_with_crop_or_pad(resized, IMAGE_SIZE, IMAGE_SIZE)[0]
    return tf.clip_by_value(tf.cast(cropped, tf.float32) / 255.0, 0.0, 1.0)


def preprocess_batch(image_bytes: tf.Tensor, max_pixels: int = DEFAULT_MAX_PIXELS, webp: bool = True) -> tf.Tensor:
    """string [B] (or a scalar, treated as [1]) -> float32 [B, 224, 224, 3].

    `webp=False` leaves the WebP decoder out of the graph (WebP bytes then fail as not an image).
    """
    image_bytes = tf.reshape(image_bytes, [-1])
    indices = tf.range(tf.shape(image_bytes)[0])
    return tf.map_fn(lambda x: crop_and_scale(decode(x[0], x[1], max_pixels, webp)), (image_bytes, indices),
                     fn_output_signature=tf.TensorSpec([IMAGE_SIZE, IMAGE_SIZE, 3], tf.float32))
