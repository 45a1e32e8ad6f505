"""Photo formats (docs/formats.md): WebP in the graph, AVIF/HEIC/TIFF on the host, EXIF orientation,
and folder walks that report every file they do not score.

Ground truth: the SavedModel's own `score_pixels` on the release pipeline's pixels of a PNG
(`reference.release_pixels`), and Pillow's reading of each file.
"""
import io
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageOps

from conftest import vila_tf_command
from reference import release_pixels as release_pipeline
from vila_tf.inputs import image_formats

pillow_heif = pytest.importorskip("pillow_heif")  # in the dev extra: `make test` has it
pillow_heif.register_heif_opener()

# AVIF and HEIC are lossy even at their best settings (4:2:0 chroma, YUV rounding). Measured on
# the tiny model (scores near -0.07): within 8.4e-4 of the PNG's score, as JPEG q95 is (4e-4);
# docs/formats.md has the table.
LOSSY_SCORE_TOLERANCE = 1.5e-3


def _photo(h=180, w=240, seed=0):
    """A smooth 'photo' with some texture: lossy codecs keep it close to the source."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([120 + 100 * np.sin(yy / 23.0), 120 + 100 * np.cos(xx / 31.0), 60 + (yy + xx) * 0.3], -1)
    return (base + rng.uniform(-6, 6, (h, w, 3))).clip(0, 255).astype(np.uint8)


def _encode(pixels, fmt, **kw):
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt, **kw)
    return buf.getvalue()


def _with_orientation(pixels, fmt, orientation, **kw):
    exif = Image.Exif()
    exif[image_formats.EXIF_ORIENTATION_TAG] = orientation
    return _encode(pixels, fmt, exif=exif.tobytes(), **kw)


def _score_of_pixels(model, pixels):
    """The SavedModel on the release pipeline's preprocessing of the PNG of `pixels`."""
    x = release_pipeline(_encode(pixels, "PNG"))[None]
    return float(model.signatures["score_pixels"](image=tf.constant(x))["predictions"].numpy()[0, 0])


def test_same_pixels_as_png_webp_tiff_score_identically(model):
    pixels = _photo()
    files = {"png": _encode(pixels, "PNG"), "webp": _encode(pixels, "WEBP", lossless=True, exact=True),
             "tiff": _encode(pixels, "TIFF"), "tiff_lzw": _encode(pixels, "TIFF", compression="tiff_lzw"),
             "webp_animated": _encode(pixels, "WEBP", lossless=True, save_all=True, duration=40,
                                      append_images=[Image.fromarray(255 - pixels)])}
    scores, errors = model.score(list(files.values()), return_errors=True)
    assert not errors
    truth = _score_of_pixels(model, pixels)
    for name, s in zip(files, scores):
        assert abs(s - truth) <= 1e-5, (name, s, truth)


@pytest.mark.parametrize("fmt", ["AVIF", "HEIF"])
def test_avif_and_heic_score_close_to_png(model, fmt):
    pixels = _photo(seed=1)
    data = _encode(pixels, fmt, quality=100 if fmt == "AVIF" else -1)
    assert image_formats.sniff(data[:64]) == fmt.lower()
    score = model.score([data])[0]
    truth = _score_of_pixels(model, pixels)
    assert abs(score - truth) <= LOSSY_SCORE_TOLERANCE, (score, truth)
    # And exactly the score of the pixels the codec gives back, resized by the release's code.
    with Image.open(io.BytesIO(data)) as im:
        decoded = np.asarray(im.convert("RGB"))
    assert np.abs(decoded.astype(int) - pixels).mean() < 4
    assert abs(score - _score_of_pixels(model, decoded)) <= 1e-5


def test_host_formats_check_the_pixel_limit(model):
    data = [_encode(_photo(100, 100), f) for f in ("TIFF", "AVIF", "HEIF")]
    limit, model.max_pixels = model.max_pixels, 100 * 100 - 1  # read per call on the host
    try:
        _, errors = model.score(data, return_errors=True)
    finally:
        model.max_pixels = limit
    assert [e.index for e in errors] == [0, 1, 2]
    assert all("header declares 100 x 100 (width x height) = 10000 pixels, more than the allowed 9999" in e.reason for e in errors)


@pytest.mark.parametrize("orientation", [6, 5])
def test_exif_rotated_jpeg_scores_like_the_upright_photo(model, orientation):
    """A camera stores the sensor's pixels and says in EXIF how to turn them; viewers show them turned."""
    upright = _photo(240, 180, seed=2)  # portrait
    inverse = {6: 8, 8: 6}.get(orientation, orientation)
    stored = image_formats.orient(upright, inverse)  # what the sensor recorded
    rotated_jpeg = _with_orientation(stored, "JPEG", orientation, quality=95)
    upright_jpeg = _encode(upright, "JPEG", quality=95)
    stored_jpeg = _encode(stored, "JPEG", quality=95)  # the same stored pixels, no EXIF
    default = model.score([rotated_jpeg, upright_jpeg, stored_jpeg])
    # The two JPEGs of the same photo differ only by the encoder's blocks on turned pixels
    # (measured: 1e-4 to 3e-4), several times less than turning the photo moves the score.
    assert abs(default[0] - default[1]) < 5e-4, default
    assert abs(default[0] - _score_of_pixels(model, upright)) < 1e-3
    assert abs(default[0] - default[2]) > max(1.5e-3, 3 * abs(default[0] - default[1])), default
    model.exif_orientation = False  # the release-exact flag (`load(..., exif_orientation=False)`)
    try:
        as_release = model.score([rotated_jpeg, upright_jpeg, stored_jpeg])
    finally:
        model.exif_orientation = True
    assert as_release[0] == as_release[2] == default[2]  # today's result: EXIF ignored
    assert as_release[1] == default[1]
    # The turn is exact: the graph's decode of the stored pixels, turned by numpy.
    decoded = tf.io.decode_image(rotated_jpeg, 3, expand_animations=False).numpy()
    shown = image_formats.orient(decoded, orientation)
    assert shown.shape[:2] == upright.shape[:2]
    assert default[0] == pytest.approx(_score_of_pixels(model, shown), abs=1e-5)


def test_orientation_matches_pillow_for_all_eight():
    pixels = np.random.default_rng(3).integers(0, 256, (5, 7, 3), np.uint8)
    for o in range(1, 9):
        data = _with_orientation(pixels, "PNG", o)
        assert image_formats.exif_orientation(data) == o
        with Image.open(io.BytesIO(data)) as im:
            np.testing.assert_array_equal(image_formats.orient(pixels, o), np.asarray(ImageOps.exif_transpose(im)))


@pytest.mark.parametrize("fmt", ["TIFF", "WEBP", "PNG"])
def test_orientation_of_other_formats(model, fmt):
    upright = _photo(200, 150, seed=4)
    stored = np.rot90(upright, 1)  # displayed with orientation 6 (turn clockwise)
    data = _with_orientation(stored, fmt, 6, **({"lossless": True, "exact": True} if fmt == "WEBP" else {}))
    assert model.score([data])[0] == pytest.approx(_score_of_pixels(model, upright), abs=1e-5)


def test_serving_default_on_webp_equals_png(model):
    fn = model.signatures["serving_default"]  # the SavedModel's own signature, bytes in
    assert model.metadata.image_formats == ("JPEG", "PNG", "GIF", "BMP", "WebP")
    pixels = _photo(150, 210, seed=5)
    png = fn(image_bytes=tf.constant([_encode(pixels, "PNG")]))["predictions"].numpy()
    for webp in (_encode(pixels, "WEBP", lossless=True), _encode(pixels, "WEBP", lossless=True, save_all=True,
                                                                   append_images=[Image.fromarray(pixels[::-1])])):
        np.testing.assert_array_equal(fn(image_bytes=tf.constant([webp]))["predictions"].numpy(), png)


def test_sniff_by_content():
    pixels = _photo(20, 30)
    for fmt, kind in [("JPEG", "jpeg"), ("PNG", "png"), ("GIF", "gif"), ("BMP", "bmp"), ("WEBP", "webp"),
                      ("TIFF", "tiff"), ("AVIF", "avif"), ("HEIF", "heif")]:
        assert image_formats.sniff(_encode(pixels, fmt)[:64]) == kind, fmt
    mp4 = b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom" + b"\x00" * 20
    mov = b"\x00\x00\x00\x14ftypqt  \x00\x00\x02\x00qt  " + b"\x00" * 20
    for not_image in (b"", b"hello", b"%PDF-1.7\n", b"PK\x03\x04", mp4, mov, b"\x00" * 64):
        assert image_formats.sniff(not_image) is None, not_image
    assert image_formats.sniff(b"II*\x00\x10\x00\x00\x00CR\x02\x00") == "raw"  # Canon CR2


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory):
    """The same photo in every format, plus what lives next to photos."""
    d = tmp_path_factory.mktemp("mixed")
    pixels = _photo(120, 160, seed=6)
    for name, fmt, kw in [("a.jpg", "JPEG", {}), ("b.webp", "WEBP", {"lossless": True}), ("c.avif", "AVIF", {}),
                          ("d.tiff", "TIFF", {}), ("e.JPG", "JPEG", {}), ("f.heic", "HEIF", {}),
                          ("sub/g.png", "PNG", {})]:
        (d / name).parent.mkdir(exist_ok=True)
        (d / name).write_bytes(_encode(pixels, fmt, **kw))
    (d / "no_extension").write_bytes(_encode(pixels, "PNG"))  # an image by content: scored
    (d / "notes.txt").write_text("not an image")
    (d / "todo.txt").write_text("not an image either")
    (d / "clip.mov").write_bytes(b"\x00\x00\x00\x14ftypqt  \x00\x00\x02\x00qt  " + b"\x00" * 100)
    (d / "IMG_0001.CR2").write_bytes(b"II*\x00\x10\x00\x00\x00CR\x02\x00" + b"\x00" * 100)
    (d / "sub" / "g.png.xmp").write_text("<x:xmpmeta/>")  # sidecars and hidden files: silent
    (d / "IMG_0001.AAE").write_text("<plist/>")
    (d / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (d / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 10)  # named as an image: fails loudly
    return d


# IMG_0001.CR2 is a RAW file by name and content, read by LibRaw: its bytes are no camera's, so it fails loudly.
SCORED = ["IMG_0001.CR2", "a.jpg", "b.webp", "broken.png", "c.avif", "d.tiff", "e.JPG", "f.heic", "no_extension",
          "g.png"]
RAW_NOT_INSTALLED = ("skipped 1 RAW camera file (the RAW reader is not installed: pip install 'vila-tf[raw]', or "
                     "rawpy): 1 .cr2")


def test_folder_walk_reports_every_file_it_does_not_score(mixed_folder):
    from vila_tf.inputs import items as inputs
    report = image_formats.SkipReport()
    items = inputs.expand([str(mixed_folder)], skipped=report)
    assert [os.path.basename(it.source) for it in items] == SCORED
    assert sorted(map(os.path.basename, report.not_images)) == ["clip.mov", "notes.txt", "todo.txt"]
    assert report.raw == [] and report.lines() == ["skipped 3 files that are not images: 2 .txt, 1 .mov"]
    # A glob is walked by the same rule.
    report = image_formats.SkipReport()
    items = inputs.expand([str(mixed_folder / "*")], skipped=report)
    assert [os.path.basename(it.source) for it in items] == sorted(SCORED[:-1])
    assert len(report) == 3
    # Without the RAW reader, RAW files are listed as skipped, with what to install.
    from vila_tf.inputs import raw_photos
    raw_photos.available.cache_clear()
    try:
        import unittest.mock
        with unittest.mock.patch.dict("sys.modules", {"rawpy": None}):
            report = image_formats.SkipReport()
            items = inputs.expand([str(mixed_folder)], skipped=report)
            assert "IMG_0001.CR2" not in [os.path.basename(it.source) for it in items]
            assert report.lines()[-1] == RAW_NOT_INSTALLED
    finally:
        raw_photos.available.cache_clear()


def test_api_warns_once_with_the_summary(model, mixed_folder):
    with pytest.warns(image_formats.SkippedFilesWarning, match="skipped 3 files that are not images"):
        scores, errors = model.score(str(mixed_folder), return_errors=True)
    assert [os.path.basename(e.source) for e in errors] == ["IMG_0001.CR2", "broken.png"]
    good = [s for i, s in enumerate(scores) if SCORED[i] not in ("broken.png", "IMG_0001.CR2")]
    # The same photo in eight files: lossless ones identical, lossy ones (JPEG, AVIF, HEIC) close.
    assert np.ptp(good) < 2 * LOSSY_SCORE_TOLERANCE, good


def test_stream_reports_skips_once_at_its_end_or_into_a_given_report(model, mixed_folder, tmp_path):
    import itertools
    import warnings
    # A stream stopped early says nothing (the walk has not finished).
    with warnings.catch_warnings():
        warnings.simplefilter("error", image_formats.SkippedFilesWarning)
        first = list(itertools.islice(model.stream("score", str(mixed_folder)), 2))
    assert [os.path.basename(r.source) for r in first] == SCORED[:2]
    # Run to its end: one warning per kind, after the last result.
    with pytest.warns(image_formats.SkippedFilesWarning) as caught:
        results = list(model.stream("score", [str(mixed_folder)]))
    assert [os.path.basename(r.source) for r in results] == SCORED
    assert [str(w.message) for w in caught if w.category is image_formats.SkippedFilesWarning] == [
        "skipped 3 files that are not images: 2 .txt, 1 .mov"]
    # A report of the caller's own: filled, and no warning.
    report = image_formats.SkipReport()
    with warnings.catch_warnings():
        warnings.simplefilter("error", image_formats.SkippedFilesWarning)
        assert len(list(model.stream("score", str(mixed_folder / "*.txt"), skipped=report))) == 1
    assert sorted(map(os.path.basename, report.not_images)) == ["notes.txt", "todo.txt"]
    # A pattern that matches files but no image, and one that matches nothing, fail differently.
    with pytest.warns(image_formats.SkippedFilesWarning, match="skipped 2 files that are not images: 2 .txt"):
        _, errors = model.score([str(mixed_folder / "*.txt"), str(tmp_path / "*.jpg")], return_errors=True)
    assert [e.reason for e in errors] == ["pattern matches no image files", "pattern matches no files"]


def test_cli_lists_what_it_skipped_and_exit_codes(exported, mixed_folder, tmp_path):
    def run(*args):
        r = vila_tf_command("score", exported["vila_r_tiny"], *args, "--format", "csv")
        return r.returncode, r.stdout, r.stderr

    code, out, err = run(mixed_folder)
    assert code == 1, err  # broken.png and the CR2 that is no camera's failed
    assert len(out.splitlines()) == 1 + len(SCORED)
    assert "vila-tf: skipped 3 files that are not images: 2 .txt, 1 .mov" in err
    assert "skipped 1 RAW" not in err and "2 of 10 inputs failed" in err
    assert ".xmp" not in err and "Thumbs" not in err and "DS_Store" not in err and "AAE" not in err
    # Skipped non-images alone do not fail the run.
    clean = tmp_path / "clean"
    clean.mkdir()
    (clean / "a.webp").write_bytes((mixed_folder / "b.webp").read_bytes())
    (clean / "readme.txt").write_text("hi")
    code, out, err = run(clean)
    assert code == 0 and "vila-tf: skipped 1 file that is not an image: 1 .txt" in err, err


def test_cli_release_exact_orientation_flag(exported, model, tmp_path):
    """The CLI's rows: turned upright by default, the stored pixels with --release-exact-orientation."""
    import csv
    upright = _photo(240, 180, seed=3)
    stored = image_formats.orient(upright, 8)  # shown with orientation 6
    photo = tmp_path / "portrait.jpg"
    photo.write_bytes(_with_orientation(stored, "JPEG", 6, quality=95))
    expected_upright = float(model.score(str(photo))[0])
    model.exif_orientation = False
    try:
        expected_stored = float(model.score(str(photo))[0])
    finally:
        model.exif_orientation = True
    assert abs(expected_upright - expected_stored) > 1e-3
    for flags, expected in [((), expected_upright), (("--release-exact-orientation",), expected_stored)]:
        r = vila_tf_command("score", exported["vila_r_tiny"], photo, "--format", "csv", *flags)
        assert r.returncode == 0, r.stderr
        rows = list(csv.DictReader(io.StringIO(r.stdout)))
        assert len(rows) == 1 and abs(float(rows[0]["score"]) - expected) < 1e-5, (flags, rows)


def test_raw_and_unsupported_files_named_directly_fail_with_the_reason(model, mixed_folder, tmp_path):
    nef = tmp_path / "DSC_0001.NEF"  # a plain TIFF named as a RAW file: LibRaw finds no camera's data
    nef.write_bytes(_encode(_photo(30, 40), "TIFF"))
    jxl = b"\xff\x0a" + b"\x00" * 40
    _, errors = model.score([str(mixed_folder / "IMG_0001.CR2"), str(nef), jxl, b"%PDF-1.7"], return_errors=True)
    reasons = [e.reason for e in errors]
    assert [e.index for e in errors] == [0, 1, 2, 3]
    assert reasons[0].startswith("RAW camera image that cannot be read: ") and reasons[0].endswith("(LibRaw)")
    assert reasons[1].startswith("RAW camera image that cannot be read: ")
    assert reasons[2].startswith("JPEG XL image: not supported")
    assert reasons[3] == ("not a JPEG, PNG, GIF, BMP, WebP, AVIF, HEIC/HEIF, TIFF or RAW image (first bytes 25 50 44 46 "
                          "2d 31 2e 37)")


def test_raw_scored_by_its_embedded_preview_on_both_backends(model, litert_exported, tmp_path):
    """A DNG (written by the test, as a camera lays it out) scores as the JPEG preview inside it,
    turned by the RAW's orientation, on the SavedModel and on LiteRT: the preview as exiftool
    extracts it, decoded by TensorFlow's own JPEG decoder and turned here."""
    import shutil
    import subprocess

    import raw_files
    import vila_tf
    pytest.importorskip("rawpy")
    pixels = _photo(120, 160, seed=8)
    preview = _encode(pixels, "JPEG", quality=92)
    for orientation in (1, 6):
        (tmp_path / f"IMG_{orientation}.DNG").write_bytes(raw_files.dng(preview, (160, 120), orientation))
    files = [str(tmp_path / "IMG_1.DNG"), str(tmp_path / "IMG_6.DNG")]
    if shutil.which("exiftool"):  # the reader nobody here wrote finds the same preview
        assert subprocess.run(["exiftool", "-b", "-PreviewImage", files[1]], capture_output=True).stdout == preview
    shown = tf.io.decode_jpeg(preview).numpy()
    expected = model.score([shown, image_formats.orient(shown, 6), image_formats.orient(shown, 6)])
    lite = vila_tf.load(litert_exported["vila_r_tiny"])
    try:
        got = {"savedmodel": model.score(files + [files[1]]), "litert": lite.score(files + [files[1]])}
        lite.exif_orientation = False  # the stored pixels, as the release scored photos
        stored = lite.score(files[1])
    finally:
        lite.close()
    np.testing.assert_allclose(got["savedmodel"], expected, atol=1e-5)
    np.testing.assert_allclose(got["litert"], expected, atol=1e-3)  # LiteRT float32 (docs/on_device.md)
    np.testing.assert_allclose(stored, expected[:1], atol=1e-3)
    # Given as bytes (vila-tf beam, the Python API), a DNG is known by its DNGVersion tag, and a TIFF stays one.
    assert image_formats.format_of((tmp_path / "IMG_1.DNG").read_bytes()) == "raw"
    assert image_formats.format_of(_encode(pixels, "TIFF")) == "tiff"
