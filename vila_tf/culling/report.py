"""The page a photographer looks at after `vila-tf cull --report`: one row per group (a burst, a
near-duplicate set, or a single frame), its frames in time order, the pick framed in green, and
under each thumbnail its name, score, stars (or REJECT) and the reason.

- `.html`: every group, streamed group by group into one self-contained file (thumbnails inline
  as small JPEGs): memory holds one thumbnail at a time, whatever the shoot's size.
- `.png`: a picture of the first `PNG_GROUPS` groups, at most `ROW_FRAMES` frames a row (the pick
  always among them); what is left out is said on the picture and on stderr.
"""
from __future__ import annotations

import base64
import html
import io
import math
import os
import textwrap
from typing import Iterable, Optional

from PIL import Image, ImageDraw, ImageFont, ImageOps

from vila_tf.inputs import image_formats
from vila_tf.inputs import items as inputs_lib
from vila_tf.inputs import names

PNG_GROUPS = 30  # groups drawn on a PNG report (an .html report has them all)
ROW_FRAMES = 8  # frames drawn in a group's row
THUMB = 176
CELL = THUMB + 24
LABEL = 118  # the group's label, left of its row
PAD = 10
REASON_CHARS = 33
REASON_LINES = 6
LINE = 13
PICK, REJECT, GRAY = (34, 139, 34), (200, 40, 40), (120, 120, 120)
HTML_THUMB = 240


def thumbnail(source: str, size: int = THUMB) -> Optional[Image.Image]:
    """The photo at `source` as a viewer shows it (upright; a RAW file's embedded preview), within
    size x size; None when it cannot be read now."""
    item = inputs_lib.load(inputs_lib.Item(source, path=source))
    if item.error or not item.data:
        return None
    data = image_formats.display_bytes(item.data, source)
    try:
        if image_formats.sniff(data[:image_formats.HEAD_BYTES]) == "heif":
            image_formats.register_heif()
        img = Image.open(io.BytesIO(data))
        img.draft("RGB", (size, size))  # JPEG: decoded at a fraction of its size
        img = ImageOps.exif_transpose(img).convert("RGB")
    except Exception:  # noqa: BLE001  (drawn as an empty box; the row says why elsewhere)
        return None
    img.thumbnail((size, size))
    return img


def _stars(rating: Optional[int]) -> str:
    if rating is None:
        return ""
    return "REJECT" if rating < 0 else "★" * rating + "☆" * (5 - rating)


def _group_label(group: list) -> list[str]:
    first = group[0]
    lines = [f"group {first.group}", f"{len(group)} frame{'s' if len(group) > 1 else ''}"]
    if first.captured:
        lines += first.captured.split("T", 1)
    return lines


def _shown(group: list) -> tuple[list, int]:
    """The frames drawn for a group (time order, the pick always among them) and how many are not."""
    if len(group) <= ROW_FRAMES:
        return group, 0
    pick = [d for d in group if d.pick]
    rest = [d for d in group if not d.pick][:ROW_FRAMES - len(pick)]
    keep = {d.index for d in pick + rest}
    return [d for d in group if d.index in keep], len(group) - ROW_FRAMES


# -- PNG -----------------------------------------------------------------------------------------

def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType
        return ImageFont.load_default()


def _draw_stars(draw, x: int, y: int, rating: int, size: int = 9) -> None:
    """Five stars drawn as shapes (the default font has no star glyph): `rating` of them filled."""
    for k in range(5):
        cx, cy, pts = x + k * (size * 2 + 2) + size, y + size, []
        for j in range(10):
            r = size if j % 2 == 0 else size * 0.45
            a = math.pi / 2 + j * math.pi / 5
            pts.append((cx + r * math.cos(a), cy - r * math.sin(a)))
        draw.polygon(pts, fill=(230, 170, 20) if k < rating else None, outline=(160, 120, 20))


def render_png(groups: Iterable[list], total_groups: int) -> Image.Image:
    """The PNG report of the first PNG_GROUPS groups."""
    groups = [g for _, g in zip(range(PNG_GROUPS), groups)]
    small, normal = _font(11), _font(13)
    row_h = THUMB + 8 + 2 * LINE + 6 + REASON_LINES * LINE + PAD
    cols = max([len(_shown(g)[0]) for g in groups] + [1])
    width = LABEL + cols * CELL + PAD
    footer = 2 * LINE if total_groups > len(groups) else 0
    height = PAD + len(groups) * row_h + footer + PAD
    sheet = Image.new("RGB", (width, max(height, 2 * PAD + LINE)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, group in enumerate(groups):
        top = PAD + r * row_h
        if r:
            draw.line([PAD, top - PAD // 2, width - PAD, top - PAD // 2], fill=(215, 215, 215))
        for k, line in enumerate(_group_label(group)):
            draw.text((PAD, top + k * 16), line, fill="black" if k == 0 else GRAY, font=normal if k == 0 else small)
        frames, hidden = _shown(group)
        if hidden:
            draw.text((PAD, top + 64), f"+{hidden} more (see the CSV)", fill=GRAY, font=small)
        for c, d in enumerate(frames):
            x, y = LABEL + c * CELL, top
            thumb = thumbnail(names.source_of(d.input))
            if thumb is not None:
                sheet.paste(thumb, (x + (THUMB - thumb.width) // 2, y + (THUMB - thumb.height) // 2))
            else:
                draw.rectangle([x, y, x + THUMB - 1, y + THUMB - 1], outline=GRAY)
            if d.pick:
                draw.rectangle([x - 4, y - 4, x + THUMB + 3, y + THUMB + 3], outline=PICK, width=4)
                draw.rectangle([x, y, x + 34, y + 16], fill=PICK)
                draw.text((x + 4, y + 2), "PICK", fill="white", font=small)
            ty = y + THUMB + 6
            draw.text((x, ty), os.path.basename(d.input)[:REASON_CHARS], fill="black", font=small)
            ty += LINE
            draw.text((x, ty + 2), f"{d.score:.3f}", fill="black", font=small)
            if d.rating is not None and d.rating < 0:
                draw.text((x + 48, ty + 2), "REJECT", fill=REJECT, font=small)
            elif d.rating is not None:
                _draw_stars(draw, x + 48, ty + 1, d.rating, 6)
            ty += LINE + 6
            for k, line in enumerate(textwrap.wrap(d.reason, REASON_CHARS)[:REASON_LINES]):
                draw.text((x, ty + k * LINE), line, fill=(70, 70, 70), font=small)
    if footer:
        draw.text((PAD, height - PAD - footer + 4),
                  f"the first {len(groups)} of {total_groups} groups: the .html report and the CSV have them all",
                  fill=GRAY, font=small)
    return sheet


# -- HTML ----------------------------------------------------------------------------------------

_STYLE = """body{font:13px/1.35 system-ui,sans-serif;margin:16px;color:#222}
section{display:flex;gap:12px;border-top:1px solid #ddd;padding:10px 0}
.g{width:120px;flex:none;color:#777}.g b{color:#222}
figure{margin:0;width:250px}figure img{display:block;max-width:240px;max-height:240px;border:4px solid transparent}
figure.pick img{border-color:#228b22}.badge{background:#228b22;color:#fff;padding:0 4px;font-size:11px}
.stars{color:#d4a017}.reject{color:#c82828;font-weight:bold}.reason{color:#555;font-size:12px}"""


def _img_tag(source: str) -> str:
    thumb = thumbnail(source, HTML_THUMB)
    if thumb is None:
        return '<div class="reason">(cannot be read now)</div>'
    buf = io.BytesIO()
    thumb.save(buf, format="JPEG", quality=80)
    return f'<img alt="" src="data:image/jpeg;base64,{base64.b64encode(buf.getvalue()).decode("ascii")}">'


def write_html(f, groups: Iterable[list], title: str) -> int:
    """Streams the HTML report of every group into the text file `f`; returns the groups written."""
    f.write(f"<!DOCTYPE html>\n{_MARK}\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body>\n<h1>{html.escape(title)}</h1>\n")
    count = 0
    for group in groups:
        count += 1
        label = _group_label(group)
        f.write(f'<section><div class="g"><b>{html.escape(label[0])}</b><br>'
                + "<br>".join(html.escape(x) for x in label[1:]) + "</div>\n")
        for d in group:
            stars = _stars(d.rating)
            mark = f'<span class="reject">{stars}</span>' if d.rating is not None and d.rating < 0 else \
                f'<span class="stars">{stars}</span>'
            badge = ' <span class="badge">PICK</span>' if d.pick else ""
            f.write(f'<figure class="{"pick" if d.pick else ""}">{_img_tag(names.source_of(d.input))}'
                    f"<figcaption>{html.escape(os.path.basename(d.input))}{badge}<br>{d.score:.3f} {mark}<br>"
                    f'<span class="reason">{html.escape(d.reason)}</span></figcaption></figure>\n')
        f.write("</section>\n")
    f.write("</body></html>\n")
    return count


_MARK = "<!-- vila-tf cull report -->"  # how a later run knows the file is ours (vila_tf.output.cull_files)
