"""Small camera RAW files the tests write themselves: a DNG (TIFF-based, as Adobe's DNG 1.4
specification lays it out) holding a tiny CFA sensor image in its first directory and the JPEG
preview a camera embeds in a SubIFD, with an orientation and an EXIF capture time. LibRaw and
exiftool read it as they read a camera's DNG."""
import struct

_SHORT, _LONG, _ASCII, _BYTE, _SRATIONAL = 3, 4, 2, 1, 10


def _entry(tag, typ, values):
    if typ == _ASCII:
        data = values.encode() + b"\0"
        return tag, typ, len(data), data
    fmt = {_SHORT: "H", _LONG: "I", _BYTE: "B", _SRATIONAL: "i"}[typ]
    count = len(values) // 2 if typ == _SRATIONAL else len(values)
    return tag, typ, count, struct.pack("<%d%s" % (len(values), fmt), *values)


def _ifd(entries, base):
    """A directory at file offset `base`, with the values that do not fit in an entry after it."""
    entries = sorted(entries)
    size = 2 + 12 * len(entries) + 4
    head, extra = struct.pack("<H", len(entries)), b""
    for tag, typ, count, data in entries:
        if len(data) <= 4:
            head += struct.pack("<HHI", tag, typ, count) + data.ljust(4, b"\0")
        else:
            head += struct.pack("<HHII", tag, typ, count, base + size + len(extra))
            extra += data + b"\0" * (len(data) % 2)
    return head + struct.pack("<I", 0) + extra


def dng(preview_jpeg: bytes, preview_size: tuple, orientation: int = 1, captured: str = "",
        subsec: str = "", sensor=(32, 48)) -> bytes:
    """A DNG whose embedded preview is `preview_jpeg` ((width, height) `preview_size`)."""
    h, w = sensor
    sensor_bytes = bytes(((x * 7 + y * 13) % 251) for y in range(h) for x in range(w) for _ in (0, 1))

    def build(off_sub, off_exif, off_raw, off_jpeg):
        main = [_entry(254, _LONG, [0]), _entry(256, _LONG, [w]), _entry(257, _LONG, [h]),
                _entry(258, _SHORT, [16]), _entry(259, _SHORT, [1]), _entry(262, _SHORT, [32803]),
                _entry(271, _ASCII, "vila-tf"), _entry(272, _ASCII, "test DNG"), _entry(273, _LONG, [off_raw]),
                _entry(274, _SHORT, [orientation]), _entry(277, _SHORT, [1]), _entry(278, _LONG, [h]),
                _entry(279, _LONG, [len(sensor_bytes)]), _entry(330, _LONG, [off_sub]),
                _entry(33421, _SHORT, [2, 2]), _entry(33422, _BYTE, [0, 1, 1, 2]), _entry(34665, _LONG, [off_exif]),
                _entry(50706, _BYTE, [1, 4, 0, 0]), _entry(50708, _ASCII, "vila-tf test DNG"),
                _entry(50717, _SHORT, [65535]),
                _entry(50721, _SRATIONAL, [1, 1, 0, 1, 0, 1, 0, 1, 1, 1, 0, 1, 0, 1, 0, 1, 1, 1])]
        pw, ph = preview_size
        preview = [_entry(254, _LONG, [1]), _entry(256, _LONG, [pw]), _entry(257, _LONG, [ph]),
                   _entry(258, _SHORT, [8, 8, 8]), _entry(259, _SHORT, [7]), _entry(262, _SHORT, [6]),
                   _entry(273, _LONG, [off_jpeg]), _entry(277, _SHORT, [3]), _entry(278, _LONG, [ph]),
                   _entry(279, _LONG, [len(preview_jpeg)])]
        exif = [_entry(36867, _ASCII, captured)] if captured else [_entry(36864, _BYTE, [48, 50, 51, 50])]
        if subsec:
            exif.append(_entry(37521, _ASCII, subsec))
        ifd0 = _ifd(main, 8)
        sub = _ifd(preview, 8 + len(ifd0))
        return ifd0, sub, _ifd(exif, 8 + len(ifd0) + len(sub))

    ifd0, sub, exif = build(0, 0, 0, 0)  # sizes do not depend on the offsets
    off_sub = 8 + len(ifd0)
    off_exif = off_sub + len(sub)
    off_raw = off_exif + len(exif)
    ifd0, sub, exif = build(off_sub, off_exif, off_raw, off_raw + len(sensor_bytes))
    return b"II*\x00" + struct.pack("<I", 8) + ifd0 + sub + exif + sensor_bytes + preview_jpeg
