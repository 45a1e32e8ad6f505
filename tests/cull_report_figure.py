"""docs/images/cull_report.png and the example run of docs/culling.md: a generated shoot (bursts with
capture times, a single frame, a RAW file, two photos without a capture time) culled by the tiny
test model (random weights: its scores order the frames, its captions are nonsense words).

    .venv/bin/python tests/cull_report_figure.py [--out docs/images/cull_report.png]
"""
import argparse
import contextlib
import io
import os
import sys
import tempfile

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import raw_files  # noqa: E402
import tiny_models  # noqa: E402


def landscape(seed: int, shift: float = 0.0, h: int = 240, w: int = 320) -> Image.Image:
    """A sky, a hill and a sun; `shift` moves the sun (a burst's frames differ by a little)."""
    rng = np.random.default_rng(seed)
    sky, ground = rng.uniform(90, 230, 3), rng.uniform(20, 140, 3)
    yy = np.linspace(0, 1, h)[:, None, None]
    img = Image.fromarray((sky * (1 - 0.4 * yy) + np.zeros((h, w, 3))).clip(0, 255).astype(np.uint8))
    d = ImageDraw.Draw(img)
    cx, cy, r = w * (0.2 + 0.6 * rng.uniform()) + shift * 12, h * 0.3, 18 + 10 * rng.uniform()
    d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=tuple(int(v) for v in rng.uniform(200, 255, 3)))
    horizon = h * (0.55 + 0.2 * rng.uniform())
    d.polygon([(0, horizon), (w * 0.4, horizon - 40 * rng.uniform()), (w, horizon + 10), (w, h), (0, h)],
              fill=tuple(int(v) for v in ground))
    noise = np.random.default_rng(seed * 100 + int(shift * 10)).normal(0, 4 + 10 * shift, (h, w, 3))
    return Image.fromarray((np.asarray(img, np.float64) + noise).clip(0, 255).astype(np.uint8))


def jpeg(img, when=None, subsec=None) -> bytes:
    exif = Image.Exif()
    if when:
        exif.get_ifd(0x8769)[0x9003] = when
        if subsec:
            exif.get_ifd(0x8769)[0x9291] = subsec
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=88, exif=exif.tobytes())
    return buf.getvalue()


def write_shoot(folder: str) -> None:
    os.makedirs(folder, exist_ok=True)
    k = 0
    for scene, (minute, frames) in enumerate([(0, 5), (3, 3), (6, 1), (9, 2)]):
        for j in range(frames):
            k += 1
            when, sub = f"2024:06:01 18:{minute:02d}:{j // 4:02d}", f"{(j % 4) * 25:02d}"
            img = landscape(scene, shift=j * 0.7)
            name = f"DSC_{k:04d}"
            if scene == 3 and j == 0:  # a RAW file: its embedded preview is what is scored and drawn
                with open(os.path.join(folder, name + ".DNG"), "wb") as f:
                    f.write(raw_files.dng(jpeg(img), img.size, captured=when, subsec=sub))
                continue
            with open(os.path.join(folder, name + ".JPG"), "wb") as f:
                f.write(jpeg(img, when, sub))
    for j in range(2):  # scanned prints: no capture time, grouped by similarity alone
        k += 1
        landscape(9, shift=j * 0.2).save(os.path.join(folder, f"scan_{j + 1}.png"))


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                               "docs", "images", "cull_report.png"))
    args = p.parse_args()
    from vila_tf.cli import main as cli
    with tempfile.TemporaryDirectory() as tmp:
        spm = tiny_models.train_spm(os.path.join(tmp, "spm.model"))
        model = tiny_models.export_fixture("vila_r_tiny", spm, os.path.join(tmp, "exported", "vila_r", "1"))
        with contextlib.chdir(tmp):
            write_shoot("photos")
            code = cli.main(["cull", os.path.join("exported", "vila_r"), "photos", "--output", "cull.csv",
                             "--report", "report.png"])
            with open("cull.csv", encoding="utf-8") as f:
                print(f.read())
            os.replace("report.png", args.out)
    print(f"exit {code}; report -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
