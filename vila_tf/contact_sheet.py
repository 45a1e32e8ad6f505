"""A contact sheet: thumbnails sorted by score, the score (and caption) under each."""
from __future__ import annotations

import io
import math
import textwrap
from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from vila_tf import image_formats

THUMB = 192  # thumbnail box, pixels
PAD = 8
COLUMNS = 5
SCORE_HEIGHT = 22
CAPTION_LINES = 3
LINE_HEIGHT = 15
CAPTION_CHARS = 30


def sheet_size(n: int, with_captions: bool, columns: int = COLUMNS) -> tuple[int, int]:
    """(width, height) of the sheet for n images."""
    cols = max(1, min(columns, n))
    rows = max(1, math.ceil(n / cols))
    cell_h = THUMB + SCORE_HEIGHT + (CAPTION_LINES * LINE_HEIGHT if with_captions else 0)
    return cols * (THUMB + PAD) + PAD, rows * (cell_h + PAD) + PAD


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
           labels: Optional[Sequence[str]] = None, columns: int = COLUMNS) -> Image.Image:
    """`images`: encoded bytes or HWC arrays. Best score first; failed images (NaN) are left out."""
    order = [i for i in np.argsort(-np.asarray(scores, np.float64), kind="stable") if np.isfinite(scores[i])]
    width, height = sheet_size(len(order), captions is not None, columns)
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    cols = max(1, min(columns, len(order)))
    cell_h = THUMB + SCORE_HEIGHT + (CAPTION_LINES * LINE_HEIGHT if captions is not None else 0)
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
        if captions is not None and captions[i]:
            for k, line in enumerate(textwrap.wrap(captions[i], CAPTION_CHARS)[:CAPTION_LINES]):
                draw.text((x, y + THUMB + SCORE_HEIGHT + k * LINE_HEIGHT), line, fill="dimgray", font=font)
    return sheet
