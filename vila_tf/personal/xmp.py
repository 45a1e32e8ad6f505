"""Star ratings photographers already keep: XMP `xmp:Rating`, read with pyexiv2 (libexiv2, which
parses XMP packets, sidecars and every container that embeds them), never by hand.

Where a photo's rating is looked for, first found wins:

1. `NAME.EXT.xmp` beside it: the sidecar darktable and digiKam write (`IMG_0001.JPG.xmp`);
2. `NAME.xmp` beside it: the sidecar Lightroom and Capture One write next to a RAW file, which
   a camera's JPEG of the same name (`IMG_0001.JPG` beside `IMG_0001.CR2`) shares;
3. the XMP embedded in the photo itself.

`xmp:Rating` runs from 1 to 5 stars; 0 (or no rating) is unrated and is no label; -1 is rejected,
taken as 0 stars: below every rated photo.
"""
from __future__ import annotations

import math
import os
from typing import Iterator, NamedTuple, Optional

RATING_KEY = "Xmp.xmp.Rating"
REJECTED = -1
REJECTED_AS = 0.0  # stars: a rejected photo ranks below a one-star one
UNRATED = 0


class RatingError(ValueError):
    """A sidecar or photo whose XMP cannot be read, or whose rating is not one (names the file)."""


class Rating(NamedTuple):
    path: str  # the photo
    stars: Optional[float]  # None: unrated
    source: str  # the file the rating was read from (a sidecar, or the photo)


def _exiv2():
    try:
        import pyexiv2
    except ImportError:
        raise RatingError("reading XMP star ratings needs pyexiv2: pip install 'vila-tf[fit]'") from None
    pyexiv2.set_log_level(4)  # its warnings about odd tags: the rating is all that is read
    return pyexiv2


def sidecars(photo: str) -> list[str]:
    """The sidecar names looked for, in order (either case of the extension)."""
    stem = os.path.splitext(photo)[0]
    return [photo + ".xmp", photo + ".XMP", stem + ".xmp", stem + ".XMP"]


def _read(path: str) -> Optional[str]:
    """The raw `xmp:Rating` of a sidecar or photo, None when it has none."""
    exiv2 = _exiv2()
    try:
        with open(path, "rb") as f:
            data = f.read()
        image = exiv2.ImageData(data)
        try:
            value = image.read_xmp().get(RATING_KEY)
        finally:
            image.close()
    except OSError as e:
        raise RatingError(f"{path}: cannot read it: {e.strerror or e}") from None
    except RuntimeError as e:  # exiv2: not an XMP packet nor an image it knows
        raise RatingError(f"{path}: its XMP cannot be read ({str(e).strip() or 'exiv2 refused it'})") from None
    return value


def stars(value: str, where: str) -> Optional[float]:
    """`xmp:Rating` -> stars (None: unrated); RatingError for anything else."""
    try:
        number = float(str(value).strip())
    except ValueError:
        number = math.nan
    if not math.isfinite(number) or not (number == REJECTED or 0 <= number <= 5):
        raise RatingError(f"{where}: xmp:Rating {value!r} is not a star rating (-1 rejected, 0 unrated, 1 to 5)")
    if number == UNRATED:
        return None
    return REJECTED_AS if number == REJECTED else number


def rating(photo: str) -> Rating:
    """The rating of one photo: from its sidecar if it has one, else embedded."""
    for sidecar in sidecars(photo):
        if os.path.isfile(sidecar):
            value = _read(sidecar)
            if value is not None:
                return Rating(photo, stars(value, sidecar), sidecar)
            return Rating(photo, None, sidecar)  # a sidecar without a rating: unrated, not looked past
    try:
        value = _read(photo)
    except RatingError:
        return Rating(photo, None, photo)  # a photo exiv2 cannot read: no rating (scoring reports it)
    return Rating(photo, None if value is None else stars(value, photo), photo)


def ratings(photos) -> Iterator[Rating]:
    """The rating of each photo, in order (one at a time: exiv2 is not used from several threads)."""
    for photo in photos:
        yield rating(photo)
