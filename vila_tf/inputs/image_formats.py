"""Photo formats on the host: what a file is (by content), what the graph cannot decode, which way up.

The SavedModel's graph decodes JPEG, PNG, GIF, BMP and WebP (`vila_tf.savedmodel.preprocessing`). The runtime
(`vila_tf`, the CLI, Beam) also reads AVIF, HEIC/HEIF and TIFF with Pillow (HEIF through the
pillow-heif plugin, `pip install 'vila-tf[heif]'`) and camera RAW files by their embedded preview
(`vila_tf.inputs.raw_photos`, LibRaw through rawpy, `pip install 'vila-tf[raw]'`), and then
resizes them with the graph's own release-exact code. By default it shows the model each photo the way photo viewers do: the EXIF
orientation is applied before resizing; `exif_orientation=False` scores the stored pixels as the
release did. Folder and glob walks keep what is an image by content and report what is not
(`SkipReport`). The rules, for users: docs/formats.md.

Pure Python + numpy + Pillow: no TensorFlow here (the model passes its graph decoder in).
"""
from __future__ import annotations

import collections
import io
import os
import re
from typing import Callable, Optional

import numpy as np

from vila_tf.inputs import raw_photos, warn

# Formats by where they are decoded. Names are those sniff() returns.
GRAPH_FORMATS = ("jpeg", "png", "gif", "bmp", "webp")
HOST_FORMATS = ("avif", "heif", "tiff")
UNSUPPORTED_FORMATS = {"jxl": "JPEG XL", "psd": "Photoshop (PSD)"}
DISPLAY = {"jpeg": "JPEG", "png": "PNG", "gif": "GIF", "bmp": "BMP", "webp": "WebP", "avif": "AVIF",
           "heif": "HEIC/HEIF", "tiff": "TIFF", "raw": "RAW camera", **UNSUPPORTED_FORMATS}
PIL_FORMAT = {"avif": "AVIF", "heif": "HEIF", "tiff": "TIFF", "webp": "WEBP", "jpeg": "JPEG", "png": "PNG", "gif": "GIF",
              "bmp": "BMP"}
READS = "JPEG, PNG, GIF, BMP, WebP, AVIF, HEIC/HEIF, TIFF or RAW"

# Extensions that name an image: such a file is always tried (and fails loudly if it is not one).
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".gif", ".bmp", ".webp", ".avif",
                              ".heic", ".heif", ".hif", ".tif", ".tiff"})
# Camera RAW files: TIFF-like containers whose first image may be a small thumbnail, so Pillow
# would "read" that; they are read by LibRaw instead (`raw_photos`: the camera's full preview).
RAW_EXTENSIONS = frozenset({".cr2", ".cr3", ".crw", ".nef", ".nrw", ".arw", ".srf", ".sr2", ".dng", ".orf",
                            ".rw2", ".raf", ".pef", ".srw", ".x3f", ".3fr", ".erf", ".kdc", ".dcr", ".mrw",
                            ".iiq", ".rwl", ".mef", ".mos"})
# Skipped without a word: sidecars that sit next to photos (hidden files are skipped too).
SIDECAR_EXTENSIONS = frozenset({".xmp", ".aae", ".thm"})
SIDECAR_NAMES = frozenset({"thumbs.db", "desktop.ini"})
RECORD_SUFFIX = ".vila-tf.json"  # the record next to a results file (vila_tf.output.output_file)

HEAD_BYTES = 64  # enough for every signature below
EXIF_ORIENTATION_TAG = 0x0112
_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"}
_AVIF_BRANDS = {b"avif", b"avis"}


class ImageFormatError(ValueError):
    """An image the runtime cannot read; the message is the reason reported for it."""


class SkippedFilesWarning(UserWarning):
    """Files of a folder or glob that were not scored because they are not images."""


# -- what a file is --------------------------------------------------------------------------------

def _iso_bmff_kind(head: bytes) -> Optional[str]:
    """'avif' / 'heif' / 'raw' (Canon CR3) from an ISO BMFF `ftyp` box; None for video and the rest."""
    size = int.from_bytes(head[0:4], "big")
    major = head[8:12]
    compatible = {head[i:i + 4] for i in range(16, min(size, len(head)) - 3, 4)}
    if major in _AVIF_BRANDS:
        return "avif"
    if major in _HEIF_BRANDS:
        return "heif"
    if major == b"crx ":
        return "raw"
    # A still image whose major brand is a generic one (e.g. 'miaf') still lists its image brand.
    if major not in (b"qt  ", b"isom", b"mp41", b"mp42", b"M4V ", b"3gp4", b"3gp5", b"3g2a", b"avc1", b"dash"):
        if compatible & _AVIF_BRANDS:
            return "avif"
        if compatible & {b"heic", b"heix", b"mif1"}:
            return "heif"
    return None


def sniff(head: bytes) -> Optional[str]:
    """The image format of a file from its first bytes (HEAD_BYTES suffice), or None if not an image."""
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"GIF8"):
        return "gif"
    if head.startswith(b"BM") and len(head) >= 14:
        return "bmp"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "webp"
    if head[4:8] == b"ftyp":
        return _iso_bmff_kind(head)
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "raw" if head[:4] == b"II*\x00" and head[8:10] == b"CR" else "tiff"  # Canon CR2
    if head[:4] in (b"IIRO", b"IIRS", b"MMOR", b"IIU\x00") or head.startswith(b"FUJIFILMCCD-RAW"):
        return "raw"  # Olympus ORF, Panasonic RW2, Fujifilm RAF
    if head.startswith(b"\xff\x0a") or head.startswith(b"\x00\x00\x00\x0cJXL \r\n\x87\n"):
        return "jxl"
    if head.startswith(b"8BPS"):
        return "psd"
    return None


def _extension(path: str) -> str:
    return os.path.splitext(path)[1].lower()


def is_silently_skipped(path: str) -> bool:
    """Hidden files and known sidecars (.xmp, .aae, .thm, Thumbs.db, desktop.ini)."""
    name = os.path.basename(path)
    return name.startswith(".") or name.lower() in SIDECAR_NAMES or _extension(name) in SIDECAR_EXTENSIONS \
        or name.endswith(RECORD_SUFFIX)


def _some(paths: list[str], shown: int = 3) -> str:
    from vila_tf.inputs import names
    text = ", ".join(names.written(p) for p in paths[:shown])
    return text + (f" and {len(paths) - shown} more" if len(paths) > shown else "")


class SkipReport:
    """The files a folder or glob walk left out, for one summary line per kind."""

    def __init__(self):
        self.not_images: list[str] = []
        self.raw: list[str] = []
        self.special: list[str] = []  # FIFOs, sockets, devices: never opened
        self.loops: list[str] = []  # folders met again: links that loop, folders given twice
        self.other_names: list[str] = []  # files and folders met again under another name (links)

    def __len__(self) -> int:
        return len(self.not_images) + len(self.raw) + len(self.special) + len(self.loops) + len(self.other_names)

    @staticmethod
    def _by_extension(paths: list[str]) -> str:
        counts = collections.Counter(_extension(p) or "(no extension)" for p in paths)
        return ", ".join(f"{n} {ext}" for ext, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))

    def lines(self) -> list[str]:
        out = []
        if self.not_images:
            n = len(self.not_images)
            what = "files that are not images" if n > 1 else "file that is not an image"
            out.append(f"skipped {n} {what}: {self._by_extension(self.not_images)}")
        if self.raw:
            n = len(self.raw)
            out.append(f"skipped {n} RAW camera file{'s' if n > 1 else ''} (the RAW reader is not installed: "
                       f"{raw_photos.INSTALL}): {self._by_extension(self.raw)}")
        if self.special:
            n = len(self.special)
            out.append(f"skipped {n} file{'s' if n > 1 else ''} that {'are' if n > 1 else 'is'} not a regular file "
                       f"(FIFO, socket or device; never opened): {_some(self.special)}")
        if self.loops:
            n = len(self.loops)
            out.append(f"did not walk {n} folder{'s' if n > 1 else ''} a second time (a link that loops or leads "
                       f"back into the walk, or a folder given twice): {_some(self.loops)}")
        if self.other_names:
            n = len(self.other_names)
            out.append(f"skipped {n} link{'s' if n > 1 else ''} to a file or folder scored under another name: "
                       f"{_some(self.other_names)}")
        return out

    def warn(self) -> None:
        """One warning per kind of skipped file, attributed to the user's line."""
        for line in self.lines():
            warn.warn(line, SkippedFilesWarning)


def keep(path: str, report: Optional[SkipReport] = None) -> bool:
    """Whether a file met in a folder or glob walk is scored; what is not is added to `report`
    (except hidden files and sidecars). A file named like an image is always kept, so a corrupt
    photo fails loudly; any other file is kept when its content is an image. RAW files are kept
    when the RAW reader is installed (scored by their preview), else reported."""
    if is_silently_skipped(path):
        return False
    ext = _extension(path)
    if ext in RAW_EXTENSIONS:
        kind = "raw"
    elif ext in IMAGE_EXTENSIONS:
        return True
    else:
        try:
            # O_NONBLOCK: a FIFO given by name must not block the walk (a walk yields regular files only)
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
            try:
                kind = sniff(os.read(fd, HEAD_BYTES))
            finally:
                os.close(fd)
        except OSError:
            return True  # reading it again fails and is reported against the file
    if kind == "raw" and not raw_photos.available():  # kept when LibRaw can read it (scored by its preview)
        if report is not None:
            report.raw.append(path)
        return False
    if kind is None:
        if report is not None:
            report.not_images.append(path)
        return False
    return True


# -- which way up -----------------------------------------------------------------------------------

def exif_orientation(data: bytes) -> int:
    """The EXIF orientation (1-8) of encoded JPEG / PNG / WebP bytes; 1 when there is none or it is unreadable."""
    from PIL import Image
    # No warnings.catch_warnings here or below: it is not thread-safe, and the runtime decodes in threads.
    try:
        with Image.open(io.BytesIO(data)) as im:
            value = im.getexif().get(EXIF_ORIENTATION_TAG, 1)
    except Exception:  # noqa: BLE001  (a broken EXIF block must not lose the photo: the pixels decide)
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def orient(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """HWC pixels as stored -> as displayed, for EXIF orientation 1-8 (exact: transposes and flips)."""
    transposed = pixels.transpose(1, 0, *range(2, pixels.ndim))
    shown = {
        1: pixels,
        2: pixels[:, ::-1],             # mirrored left-right
        3: pixels[::-1, ::-1],          # rotated 180
        4: pixels[::-1],                # mirrored top-bottom
        5: transposed,                  # mirrored along the main diagonal
        6: transposed[:, ::-1],         # stored rotated 90 counter-clockwise: turn clockwise
        7: transposed[::-1, ::-1],      # mirrored along the anti-diagonal
        8: transposed[::-1],            # stored rotated 90 clockwise: turn counter-clockwise
    }[orientation]
    return np.ascontiguousarray(shown)


# -- decoding on the host ---------------------------------------------------------------------------

def _hex(data: bytes) -> str:
    return " ".join(f"{b:02x}" for b in data[:8])


def register_heif() -> None:
    try:
        import pillow_heif
    except ImportError:
        raise ImageFormatError("HEIC/HEIF image: the HEIF decoder is not installed "
                               "(pip install 'vila-tf[heif]', or pillow-heif)") from None
    pillow_heif.register_heif_opener()  # idempotent


def _to_rgb(im) -> np.ndarray:
    """A Pillow image -> uint8 [H, W, 3], alpha dropped as the graph's decoder drops it."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):  # 16-bit gray: the high byte, as for 16-bit PNG
        gray = (np.asarray(im, np.uint32) >> 8).clip(0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=-1)
    # RGBA, LA, PA: Pillow drops the alpha channel, no compositing; an RGB image is not copied again
    return np.asarray(im if im.mode == "RGB" else im.convert("RGB"))


def _pil_reason(err: Exception) -> str:
    """Pillow's message without the repr of the in-memory buffer it was given."""
    text = re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-fA-F]+>", "", str(err)).strip()
    return text or type(err).__name__


def _is_camera_raw(data: bytes) -> bool:
    """Whether TIFF bytes are a camera RAW file: a DNG (its first directory holds the DNGVersion
    tag, 50706), or a TIFF-based RAW (NEF, ARW, PEF, ...) whose first directory is a reduced-size
    preview (NewSubfileType bit 0) with the sensor data in SubIFDs (tag 330). A photo saved as TIFF
    has its full-size image first."""
    import struct
    order = "<" if data[:2] == b"II" else ">"
    try:
        if data[2:4] != (b"*\x00" if order == "<" else b"\x00*"):
            return False  # BigTIFF: no camera writes it
        ifd = struct.unpack_from(order + "I", data, 4)[0]
        count = struct.unpack_from(order + "H", data, ifd)[0]
        tags = {}
        for k in range(min(count, 512)):
            tag, typ = struct.unpack_from(order + "HH", data, ifd + 2 + 12 * k)
            value = struct.unpack_from(order + ("H" if typ == 3 else "I"), data, ifd + 2 + 12 * k + 8)[0]
            tags[tag] = value
    except struct.error:
        return False
    return 50706 in tags or (bool(tags.get(254, 0) & 1) and 330 in tags)


def format_of(data: bytes, source: str = "") -> Optional[str]:
    """An image's format from its first bytes; "raw" for a camera RAW file (TIFF-like: its name,
    or the layout of its first directory, tells it apart)."""
    if _extension(source) in RAW_EXTENSIONS:
        return "raw"
    kind = sniff(data[:HEAD_BYTES])
    return "raw" if kind == "tiff" and _is_camera_raw(data) else kind


def decode_raw(data: bytes, max_pixels: int, apply_orientation: bool,
               decode_jpeg: Callable[[bytes], np.ndarray]) -> np.ndarray:
    """A camera RAW file -> uint8 [H, W, 3]: its embedded preview (`raw_photos`), decoded by
    `decode_jpeg` (the backend's own JPEG decoder, so it scores as the preview saved as a JPEG
    would) and turned upright by the RAW's orientation. The one place both backends read RAW."""
    try:
        preview, orientation = raw_photos.preview(data, max_pixels)
    except raw_photos.RawError as e:
        raise ImageFormatError(str(e)) from None
    pixels = decode_jpeg(preview) if isinstance(preview, bytes) else preview
    return orient(pixels, orientation) if apply_orientation else pixels


def display_bytes(data: bytes, source: str = "", max_side: int = 1024) -> bytes:
    """What a thumbnail is drawn from: for a RAW file its embedded preview, upright and at most
    `max_side` pixels a side (a JPEG preview is decoded at a fraction of its size: 24 MP never
    decoded for a 200-pixel thumbnail); other images as they are."""
    if format_of(data, source) != "raw":
        return data
    try:
        preview, orientation = raw_photos.preview(data, 2 ** 31)
    except raw_photos.RawError:
        return data
    from PIL import Image
    if isinstance(preview, bytes):
        img = Image.open(io.BytesIO(preview))
        img.draft("RGB", (max_side, max_side))
        img = img.convert("RGB")
    else:
        img = Image.fromarray(preview)
    img.thumbnail((max_side, max_side))
    out = io.BytesIO()
    Image.fromarray(orient(np.asarray(img), orientation)).save(out, format="PNG")
    return out.getvalue()


def refuse(fmt: Optional[str], data: bytes) -> None:
    """ImageFormatError for a format no decoder here reads: a known one named, else the first bytes."""
    if fmt in UNSUPPORTED_FORMATS:
        raise ImageFormatError(f"{UNSUPPORTED_FORMATS[fmt]} image: not supported (docs/formats.md); "
                               f"convert it to JPEG, PNG or TIFF")
    raise ImageFormatError(f"not a {READS} image (first bytes {_hex(data)})")


def open_checked(data: bytes, fmt: str, max_pixels: int):
    """A Pillow image of `data` (opened, not decoded) whose header is within `max_pixels`;
    ImageFormatError naming the format otherwise."""
    from PIL import Image
    name = DISPLAY[fmt]
    try:
        im = Image.open(io.BytesIO(data), formats=[PIL_FORMAT[fmt]])
    except Image.DecompressionBombError as e:
        raise ImageFormatError(f"{name} image: {e} (max_pixels is {max_pixels})") from None
    except Image.UnidentifiedImageError:  # its message names the in-memory buffer, not the file
        raise ImageFormatError(f"{name} image that cannot be read: its header is broken or not one "
                               "Pillow reads") from None
    except Exception as e:  # noqa: BLE001  (Pillow raises several types for a bad header)
        raise ImageFormatError(f"{name} image that cannot be read: {_pil_reason(e)}") from None
    width, height = im.size
    if width * height > max_pixels:
        im.close()
        raise ImageFormatError(f"header declares {width} x {height} (width x height) = {width * height} pixels, "
                               f"more than the allowed {max_pixels} (max_pixels)")
    return im


def decode_host_format(data: bytes, fmt: str, max_pixels: int, apply_orientation: bool) -> np.ndarray:
    """AVIF / HEIC / TIFF (/ WebP) bytes -> uint8 [H, W, 3] (first frame or page), after the pixel limit check."""
    from PIL import ImageOps
    if fmt == "heif":
        register_heif()
    name = DISPLAY[fmt]
    with open_checked(data, fmt, max_pixels) as im:
        try:
            im.load()
            if apply_orientation:
                ImageOps.exif_transpose(im, in_place=True)  # no copy of the full-size photo when upright
            return _to_rgb(im)
        except Exception as e:  # noqa: BLE001
            raise ImageFormatError(f"{name} image that cannot be decoded: {_pil_reason(e)}") from None


def decode_on_host(data: bytes, max_pixels: int, apply_orientation: bool,
                   graph_decode: Callable[[bytes], np.ndarray], graph_webp: bool = True,
                   source: str = "") -> Optional[np.ndarray]:
    """Encoded bytes -> uint8 [H, W, 3] for the runtime to resize, or None when the graph's decode and
    resize take the bytes exactly as the release did (a graph format with nothing to rotate, or
    bytes the graph will refuse with its own message, such as empty ones).

    `graph_decode(bytes) -> uint8 [H, W, 3]` is the graph's decoder (the release's pixels), used
    before turning a photo upright, and for a RAW file's JPEG preview. `source` is the file name,
    if any: RAW files are TIFF-like, so their name tells them apart. Raises ImageFormatError for an image it cannot read.
    """
    if not data:
        return None
    fmt = format_of(data, source)
    if fmt == "raw":
        return decode_raw(data, max_pixels, apply_orientation, graph_decode)
    graph = GRAPH_FORMATS if graph_webp else tuple(f for f in GRAPH_FORMATS if f != "webp")
    if fmt in graph:
        if not apply_orientation or fmt not in ("jpeg", "png", "webp"):
            return None
        orientation = exif_orientation(data)
        return None if orientation == 1 else orient(graph_decode(data), orientation)
    if fmt in HOST_FORMATS or fmt == "webp":  # WebP here only on a TensorFlow without its decoder
        return decode_host_format(data, fmt, max_pixels, apply_orientation)
    refuse(fmt, data)
