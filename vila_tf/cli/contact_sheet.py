"""A contact sheet: thumbnails sorted by score, the score under each, then (when given) one small bar
per zero-shot attribute or prompt pair and the caption: what the model thinks of the photo and why.

The bars diverge from the middle of their track at 0.5 (the pair undecided): to the right, green,
toward the good prompt; to the left, red, toward the bad one. Without a temperature the release's
pair softmaxes stay close to 0.5, so a full half-track is the largest distance from 0.5 on the
sheet, and each bar's value is printed beside it.
"""
from __future__ import annotations

import io
import math
import os
import textwrap
from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from vila_tf.inputs import image_formats

THUMB = 192  # thumbnail box, pixels
PAD = 8
COLUMNS = 5
SCORE_HEIGHT = 22
CAPTION_LINES = 3
LINE_HEIGHT = 15
CAPTION_CHARS = 30
BAR_HEIGHT = 11  # one attribute's row
BAR_LABEL = 64  # pixels of the row taken by its name
BAR_VALUE = 32  # pixels taken by its value
BAR_LABEL_CHARS = 11
GOOD, BAD, TRACK = (46, 139, 87), (200, 60, 50), (225, 225, 225)


def _cell_height(with_captions: bool, attribute_rows: int) -> int:
    bars = attribute_rows * BAR_HEIGHT + (4 if attribute_rows else 0)
    return THUMB + SCORE_HEIGHT + bars + (CAPTION_LINES * LINE_HEIGHT if with_captions else 0)


def sheet_size(n: int, with_captions: bool, columns: int = COLUMNS, attribute_rows: int = 0) -> tuple[int, int]:
    """(width, height) of the sheet for n images, with `attribute_rows` bars under each score."""
    cols = max(1, min(columns, n))
    rows = max(1, math.ceil(n / cols))
    return cols * (THUMB + PAD) + PAD, rows * (_cell_height(with_captions, attribute_rows) + PAD) + PAD


def bar_label(name: str) -> str:
    """A bar's name: the attribute, or a pair's good prompt ('sharp photo|blurry photo' -> 'sharp photo'),
    cut to fit."""
    label = name.split("|", 1)[0]
    return label if len(label) <= BAR_LABEL_CHARS else label[:BAR_LABEL_CHARS - 1] + "…"


def bar_extent(value: float, scale: float, width: int) -> tuple[int, int]:
    """(left, right) pixel offsets, within a track `width` wide, of the bar for `value`: from the
    middle (0.5) toward the value, `scale` (a distance from 0.5) filling half the track."""
    mid = width // 2
    end = mid + int(round((float(value) - 0.5) / scale * (width // 2)))
    end = max(0, min(width, end))
    return (mid, end) if end >= mid else (end, mid)


# Fonts that draw names beyond ASCII (accents, Greek, Cyrillic; the CJK ones Chinese and Japanese
# too), first found wins; Pillow's own default font draws only Latin text and shows the rest as boxes.
UNICODE_FONTS = (
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc", "/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/noto/NotoSans-Regular.ttf", "/System/Library/Fonts/Supplemental/Arial Unicode.ttf",
    "/Library/Fonts/Arial Unicode.ttf", "C:\\Windows\\Fonts\\arialuni.ttf", "C:\\Windows\\Fonts\\segoeui.ttf")
FONT_SIZE = 10


def label_font():
    """A font for file names and captions that draws non-ASCII text (the first of UNICODE_FONTS
    there is, or matplotlib's DejaVu Sans when it is installed), else Pillow's default."""
    candidates = list(UNICODE_FONTS)
    try:
        import matplotlib
        candidates.append(os.path.join(matplotlib.get_data_path(), "fonts", "ttf", "DejaVuSans.ttf"))
    except ImportError:
        pass
    for path in candidates:
        if os.path.isfile(path):
            try:
                return ImageFont.truetype(path, FONT_SIZE)
            except OSError:
                continue
    return ImageFont.load_default()


def _draw_bars(draw, font, x: int, y: int, names: Sequence[str], values: Sequence[float], scale: float) -> None:
    track = THUMB - BAR_LABEL - BAR_VALUE
    for k, (name, v) in enumerate(zip(names, values)):
        top = y + k * BAR_HEIGHT
        draw.text((x, top), bar_label(name), fill="dimgray", font=font)
        tx = x + BAR_LABEL
        draw.rectangle([tx, top + 2, tx + track - 1, top + BAR_HEIGHT - 3], fill=TRACK)
        if math.isfinite(v):
            left, right = bar_extent(v, scale, track)
            if right > left:
                draw.rectangle([tx + left, top + 2, tx + right - 1, top + BAR_HEIGHT - 3], fill=GOOD if v >= 0.5 else BAD)
            draw.text((tx + track + 3, top), f"{v:.3f}", fill="black", font=font)
        draw.line([tx + track // 2, top + 1, tx + track // 2, top + BAR_HEIGHT - 2], fill="gray")


def _thumbnail(data) -> Image.Image:
    if isinstance(data, np.ndarray):
        arr = data if data.dtype == np.uint8 else (np.clip(data, 0, 1) * 255).astype(np.uint8)
        img = Image.fromarray(arr)
    else:
        if image_formats.sniff(data[:image_formats.HEAD_BYTES]) == "heif":
            image_formats.register_heif()
        img = Image.open(io.BytesIO(data))
        img.seek(0)
        img = ImageOps.exif_transpose(img)  # upright, as a photo viewer shows it
    img = img.convert("RGB")
    img.thumbnail((THUMB, THUMB))
    return img


def render(images: Sequence, scores: Sequence[float], captions: Optional[Sequence[Optional[str]]] = None,
           labels: Optional[Sequence[str]] = None, columns: int = COLUMNS,
           attributes: Optional[Sequence[Optional[Sequence[float]]]] = None,
           attribute_names: Sequence[str] = ()) -> Image.Image:
    """`images`: encoded bytes or HWC arrays. Best score first; failed images (NaN) are left out.
    `attributes`: per image its zero-shot pair scores (None: none known), named by
    `attribute_names` (the release's attributes, or 'good|bad' pairs)."""
    order = [i for i in np.argsort(-np.asarray(scores, np.float64), kind="stable") if np.isfinite(scores[i])]
    n_bars = len(attribute_names) if attributes is not None else 0
    width, height = sheet_size(len(order), captions is not None, columns, n_bars)
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    font = label_font()
    cols = max(1, min(columns, len(order)))
    cell_h = _cell_height(captions is not None, n_bars)
    bars_h = n_bars * BAR_HEIGHT + (4 if n_bars else 0)
    scale = 1e-3
    if n_bars:  # the largest distance from 0.5 on the sheet fills half a track
        drawn = np.array([a for i in order if (a := attributes[i]) is not None], np.float64).reshape(-1)
        drawn = drawn[np.isfinite(drawn)]
        scale = max(scale, float(np.max(np.abs(drawn - 0.5)))) if drawn.size else scale
    for slot, i in enumerate(order):
        x = PAD + (slot % cols) * (THUMB + PAD)
        y = PAD + (slot // cols) * (cell_h + PAD)
        try:
            thumb = _thumbnail(images[i])
            sheet.paste(thumb, (x + (THUMB - thumb.width) // 2, y + (THUMB - thumb.height) // 2))
        except Exception:  # noqa: BLE001 - PIL may not read what TF could; the score still shows
            draw.rectangle([x, y, x + THUMB - 1, y + THUMB - 1], outline="gray")
        label = f"{scores[i]:.3f}" + (f"  {labels[i]}" if labels else "")
        draw.text((x, y + THUMB + 4), label[:CAPTION_CHARS + 8], fill="black", font=font)
        if n_bars and attributes[i] is not None:
            _draw_bars(draw, font, x, y + THUMB + SCORE_HEIGHT, attribute_names, attributes[i], scale)
        if captions is not None and captions[i]:
            for k, line in enumerate(textwrap.wrap(captions[i], CAPTION_CHARS)[:CAPTION_LINES]):
                draw.text((x, y + THUMB + SCORE_HEIGHT + bars_h + k * LINE_HEIGHT), line, fill="dimgray", font=font)
    return sheet
