"""When a photo was taken: EXIF DateTimeOriginal with its sub-seconds (SubSecTimeOriginal), read with
exiv2 (pyexiv2), which reads the EXIF of JPEG, TIFF, PNG, WebP, HEIC/AVIF and every RAW format.

DateTimeDigitized (with SubSecTimeDigitized) stands in when DateTimeOriginal is missing: both are
the moment of capture on cameras and phones. DateTime (IFD0) is not used: editors change it on
save. Time zones (OffsetTimeOriginal) are ignored: a shoot's frames come from cameras set to the
same clock, and bursts are seconds apart, so local times compare as they are.
"""
from __future__ import annotations

import datetime
import re
from typing import Optional

INSTALL = "pip install 'vila-tf[cull]', or pyexiv2"
_KEYS = (("Exif.Photo.DateTimeOriginal", "Exif.Photo.SubSecTimeOriginal"),
         ("Exif.Photo.DateTimeDigitized", "Exif.Photo.SubSecTimeDigitized"))
_EXIF_TIME = re.compile(r"^\s*(\d{4}):(\d{2}):(\d{2})[ T](\d{2}):(\d{2}):(\d{2})")
_EPOCH = datetime.datetime(1970, 1, 1)


def pyexiv2():
    """The exiv2 binding, set up once: errors raise (not logged). ImportError naming the extra
    when it is not installed. (pyexiv2 2.14+ reads BMFF files, CR3 and HEIC, unasked.)"""
    try:
        import pyexiv2 as lib
    except ImportError:
        raise ImportError(f"vila-tf cull needs pyexiv2 (capture times, XMP sidecars): {INSTALL}") from None
    if not getattr(lib, "_vila_tf_ready", False):
        lib.set_log_level(3)  # errors raise as exceptions; warnings (unknown maker notes) stay quiet
        lib._vila_tf_ready = True
    return lib


def parse(value: Optional[str], subsec: Optional[str] = None) -> Optional[str]:
    """An EXIF time ('2024:05:01 10:00:03') and its sub-seconds ('25') -> ISO 8601
    ('2024-05-01T10:00:03.25'), or None when it is blank or not a date (cameras write
    '0000:00:00 00:00:00' when their clock was never set)."""
    m = _EXIF_TIME.match(value or "")
    if not m:
        return None
    try:
        when = datetime.datetime(*map(int, m.groups()))
    except ValueError:
        return None
    text = when.isoformat()
    digits = re.sub(r"\D", "", subsec or "")
    return f"{text}.{digits}" if digits else text


def seconds(iso: Optional[str]) -> float:
    """An ISO time of `parse` -> seconds since 1970 (as if UTC), NaN for None."""
    if not iso:
        return float("nan")
    base, _, frac = iso.partition(".")
    return (datetime.datetime.fromisoformat(base) - _EPOCH).total_seconds() + (float("0." + frac) if frac else 0.0)


def read(path: str) -> Optional[str]:
    """The capture time of the photo at `path` as ISO 8601, or None (no EXIF time, or unreadable)."""
    lib = pyexiv2()
    try:
        try:
            img = lib.Image(path)
        except UnicodeError:  # a name that is not UTF-8: exiv2 reads the bytes instead
            with open(path, "rb") as f:
                img = lib.ImageData(f.read())
        try:
            exif = img.read_exif()
        finally:
            img.close()
    except Exception:  # noqa: BLE001  (no EXIF, a format exiv2 does not read: grouped by similarity alone)
        return None
    for key, subkey in _KEYS:
        when = parse(exif.get(key), exif.get(subkey))
        if when:
            return when
    return None
