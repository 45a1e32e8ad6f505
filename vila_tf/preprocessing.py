"""In-graph image preprocessing: exactly the release's pipeline (docs/model.md §11), batched.

run_vila_predict.preprocess_image: decode_image(bytes, 3, expand_animations=False) -> TF1
resize_bilinear to 272x272 (align_corners=False, half_pixel_centers=False; aspect ratio not kept)
-> resize_with_crop_or_pad to 224 (center crop, offset 24) -> float32 / 255 -> clip [0, 1].
The TF1 resize is the raw `ResizeBilinear` op with half_pixel_centers=False; TF2's `tf.image.resize`
differs by up to 0.48 per pixel on noisy images, so it must not be used.

Before decoding, each image's header is read and images declaring more than `max_pixels` are
rejected, so a decompression bomb never gets a buffer allocated.
"""
from __future__ import annotations

import tensorflow as tf

PRE_CROP_SIZE = 272
IMAGE_SIZE = 224
DEFAULT_MAX_PIXELS = 50_000_000


def _uint(image_bytes: tf.Tensor, offset: int, size: int, big_endian: bool) -> tf.Tensor:
    raw = tf.cast(tf.io.decode_raw(tf.strings.substr(image_bytes, offset, size), tf.uint8), tf.int64)
    weights = [256 ** (size - 1 - i) if big_endian else 256 ** i for i in range(size)]
    return tf.reduce_sum(raw * tf.constant(weights, tf.int64))


def _signed32_le(image_bytes: tf.Tensor, offset: int) -> tf.Tensor:
    v = _uint(image_bytes, offset, 4, big_endian=False)
    return tf.abs(tf.where(v >= 2 ** 31, v - 2 ** 32, v))  # BMP heights are negative for top-down


def image_format(image_bytes: tf.Tensor) -> tf.Tensor:
    """'jpeg', 'png', 'gif', 'bmp' or '' from the magic bytes."""
    head = tf.strings.substr(image_bytes, 0, 8)
    return tf.case([
        (tf.equal(tf.strings.substr(head, 0, 3), b"\xff\xd8\xff"), lambda: tf.constant("jpeg")),
        (tf.equal(head, b"\x89PNG\r\n\x1a\n"), lambda: tf.constant("png")),
        (tf.equal(tf.strings.substr(head, 0, 4), b"GIF8"), lambda: tf.constant("gif")),
        (tf.equal(tf.strings.substr(head, 0, 2), b"BM"), lambda: tf.constant("bmp")),
    ], default=lambda: tf.constant(""), exclusive=False)


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

    return tf.case([(tf.equal(fmt, "png"), png), (tf.equal(fmt, "gif"), gif), (tf.equal(fmt, "bmp"), bmp),
                    (tf.equal(fmt, "jpeg"), jpeg)], default=lambda: tf.zeros([2], tf.int64), exclusive=True)


def _hex(data: tf.Tensor) -> tf.Tensor:
    """'ff d8 ff': raw bytes in an error message would not be valid UTF-8 and break the error."""
    table = tf.constant([f"{i:02x}" for i in range(256)])
    codes = tf.cast(tf.io.decode_raw(data, tf.uint8), tf.int32)
    return tf.strings.reduce_join(tf.gather(table, codes), separator=" ")


def decode(image_bytes: tf.Tensor, index: tf.Tensor | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> tf.Tensor:
    """One encoded image -> uint8 [H, W, 3], after checking format, emptiness and declared size."""
    where = tf.constant("image") if index is None else tf.strings.format("image {} of the batch", index)
    fmt = image_format(image_bytes)
    n = tf.strings.length(image_bytes)
    # Messages are joined, not tf.strings.format-ted, which would quote every string argument.
    checks = [tf.debugging.Assert(n > 0, [tf.strings.join([where, ": image_bytes is empty"])])]
    checks.append(tf.debugging.Assert(tf.not_equal(fmt, ""), [tf.strings.join([
        where, ": not a JPEG, PNG, GIF or BMP image (first bytes ", _hex(tf.strings.substr(image_bytes, 0, 8)), ")"])]))
    with tf.control_dependencies(checks):
        hw = declared_size(image_bytes, fmt)
    pixels = hw[0] * hw[1]
    bomb = tf.debugging.Assert(pixels <= max_pixels, [tf.strings.join([
        where, ": header declares ", tf.strings.as_string(hw[0]), " x ", tf.strings.as_string(hw[1]), " = ",
        tf.strings.as_string(pixels), " pixels, more than the allowed ", str(max_pixels), " (max_pixels)"])])
    with tf.control_dependencies([bomb]):
        return tf.io.decode_image(image_bytes, channels=3, expand_animations=False, dtype=tf.uint8)


def crop_and_scale(image: tf.Tensor) -> tf.Tensor:
    """uint8/float [H, W, 3] -> float32 [224, 224, 3] in [0, 1], the release's numerics."""
    resized = tf.raw_ops.ResizeBilinear(images=image[None], size=[PRE_CROP_SIZE, PRE_CROP_SIZE],
                                        align_corners=False, half_pixel_centers=False)
    cropped = tf.image.resize_with_crop_or_pad(resized, IMAGE_SIZE, IMAGE_SIZE)[0]
    return tf.clip_by_value(tf.cast(cropped, tf.float32) / 255.0, 0.0, 1.0)


def preprocess_batch(image_bytes: tf.Tensor, max_pixels: int = DEFAULT_MAX_PIXELS) -> tf.Tensor:
    """string [B] (or a scalar, treated as [1]) -> float32 [B, 224, 224, 3]."""
    image_bytes = tf.reshape(image_bytes, [-1])
    indices = tf.range(tf.shape(image_bytes)[0])
    return tf.map_fn(lambda x: crop_and_scale(decode(x[0], x[1], max_pixels)), (image_bytes, indices),
                     fn_output_signature=tf.TensorSpec([IMAGE_SIZE, IMAGE_SIZE, 3], tf.float32))
