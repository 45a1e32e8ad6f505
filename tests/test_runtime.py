"""vila_tf.load: every input kind, bad images reported per item, buckets, threads, no jax."""
import io
import json
import os
import threading
import warnings

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from conftest import golden

HERE = os.path.dirname(__file__)


def _photo(seed, h=180, w=240):
    """A smooth-with-noise RGB photo-like image (uint8 HWC)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([np.sin(yy / (9 + seed)), np.cos(xx / 13.0), np.sin((xx + yy) / 17.0)], -1)
    return ((base + 1) * 110 + rng.uniform(0, 30, (h, w, 3))).clip(0, 255).astype(np.uint8)


def _encode(arr, fmt="PNG"):
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    d = tmp_path_factory.mktemp("photos")
    arrays = [_photo(i) for i in range(5)]
    for i, a in enumerate(arrays):
        (d / f"p{i}.png").write_bytes(_encode(a))
    return d, arrays


def test_every_input_kind_gives_the_same_score(model, reference, photos):
    d, arrays = photos
    want = reference([_encode(a) for a in arrays])
    paths = [str(d / f"p{i}.png") for i in range(5)]
    np.testing.assert_allclose(model.score(paths), want, atol=1e-5)  # list of paths
    np.testing.assert_allclose(model.score(paths[0]), want[:1], atol=1e-5)  # one path
    np.testing.assert_allclose(model.score(str(d)), want, atol=1e-5)  # a folder (sorted)
    np.testing.assert_allclose(model.score(str(d / "p*.png")), want, atol=1e-5)  # a glob
    np.testing.assert_allclose(model.score([open(p, "rb").read() for p in paths]), want, atol=1e-5)  # bytes
    np.testing.assert_allclose(model.score(arrays), want, atol=1e-5)  # uint8 HWC arrays
    np.testing.assert_allclose(model.score(np.stack(arrays)), want, atol=1e-5)  # one NHWC array
    np.testing.assert_allclose(model.score([a.astype(np.float32) / 255 for a in arrays]), want, atol=1e-5)
    np.testing.assert_allclose(model.score([Image.fromarray(a) for a in arrays]), want, atol=1e-5)  # PIL


def test_matches_golden_quality_scores(model):
    """The pixel signature the runtime batches into reproduces the praxis goldens."""
    g = golden("vila_r_tiny")
    emb = model.signatures["score_pixels"](image=tf.constant(g["input/image"]))["predictions"].numpy()
    np.testing.assert_allclose(emb, g["pred/quality_scores"], atol=1e-4)


def test_bad_images_are_reported_and_the_rest_scored(model, reference, photos, tmp_path):
    d, arrays = photos
    good = [_encode(a) for a in arrays[:3]]
    jpeg = _encode(arrays[3], "JPEG")
    (tmp_path / "empty.png").write_bytes(b"")
    inputs = [good[0], b"not an image at all", str(tmp_path / "empty.png"), good[1], jpeg[: len(jpeg) // 3],
              str(tmp_path / "missing.jpg"), good[2], np.zeros((10, 10, 5), np.uint8)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scores, errors = model.score(inputs, return_errors=True)
    assert [e.index for e in errors] == [1, 2, 4, 5, 7]
    reasons = {e.index: e.reason for e in errors}
    assert "not a JPEG, PNG, GIF, BMP, WebP, AVIF, HEIC/HEIF, TIFF or RAW image" in reasons[1]
    assert "empty" in reasons[2] and errors[1].source.endswith("empty.png")
    assert "JPEG" in reasons[4]
    assert reasons[5] == "no such file"
    assert "shape (10, 10, 5)" in reasons[7]
    assert np.isnan(scores[[1, 2, 4, 5, 7]]).all()
    np.testing.assert_allclose(scores[[0, 3, 6]], reference(good), atol=1e-5)  # same as scoring them alone
    assert len([w for w in caught if issubclass(w.category, RuntimeWarning)]) == 5


def test_oversized_image_is_rejected_before_decoding(model):
    import struct
    import zlib
    ihdr = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    scores, errors = model.score([png], return_errors=True)
    assert np.isnan(scores[0]) and "30000 x 30000" in errors[0].reason and "max_pixels" in errors[0].reason


def test_bucket_padding_gives_the_same_numbers(model, reference, photos):
    d, arrays = photos
    many = [_photo(10 + i, 64, 80) for i in range(37)]  # 37 = 32 + 5 -> buckets 32 and 8
    want = reference([_encode(a) for a in many])
    np.testing.assert_allclose(model.score(many), want, atol=1e-5)
    for bs in (1, 3, 5):  # odd batch sizes pad to 1, 4, 8
        np.testing.assert_allclose(model.score(many[:7], batch_size=bs), want[:7], atol=1e-5)


def test_other_heads(model, photos, exported):
    d, arrays = photos
    m = tf.saved_model.load(exported["vila_r_tiny"])
    # Four: a bucket size, so these compilations are the runtime's own (docs/testing.md).
    pngs = tf.constant([_encode(a) for a in arrays[:4]])
    np.testing.assert_allclose(model.image_embedding(arrays[:4]),
                               m.signatures["image_embedding"](image_bytes=pngs)["image_embedding"].numpy(), atol=1e-5)
    np.testing.assert_allclose(model.zero_shot(arrays[:4]),
                               m.signatures["zero_shot"](image_bytes=pngs)["zero_shot_score"].numpy(), atol=1e-5)
    caps = m.signatures["caption"](image_bytes=pngs)["caption"].numpy()
    assert model.caption(arrays[:4]) == [c.decode() for c in caps]
    texts = ["good image", "a photo of a dog", "", "lovely bokeh"]
    np.testing.assert_allclose(model.text_embedding(texts),
                               m.signatures["text_embedding"](text=tf.constant(texts))["text_embedding"].numpy(),
                               atol=1e-5)
    sim = model.similarity(arrays[:2], texts)
    image = m.signatures["image_embedding"](image_bytes=pngs)["image_embedding"].numpy()[:2]
    text = m.signatures["text_embedding"](text=tf.constant(texts))["text_embedding"].numpy()
    np.testing.assert_allclose(sim, image @ text.T, atol=1e-5)  # cosines of unit vectors
    assert model.caption([b"junk"])[0] is None


def test_thread_safety(model, photos):
    d, arrays = photos
    inputs = [[arrays[i % 5], arrays[(i + 1) % 5]] for i in range(8)]
    single = [model.score(x) for x in inputs]
    results, failures = {}, []

    def worker(t):
        try:
            results[t] = [model.score(inputs[t]) for _ in range(20)]
        except Exception as e:  # noqa: BLE001
            failures.append(e)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not failures
    for t in range(8):
        for r in results[t]:
            np.testing.assert_array_equal(r, single[t])


def test_serving_base_folder_takes_newest_version(exported, tmp_path):
    import shutil
    import vila_tf
    base = tmp_path / "vila"
    shutil.copytree(exported["vila_p_tiny"], base / "2")
    shutil.copytree(exported["vila_r_tiny"], base / "10")
    (base / "11.partial").mkdir()
    m = vila_tf.load(str(base))
    assert m.path.endswith(os.path.join("vila", "10")) and m.model_type == "vila_r"
    with pytest.raises(FileNotFoundError, match="not a SavedModel folder"):
        vila_tf.load(str(tmp_path))


def test_demo_export_warns(exported, tmp_path):
    import shutil
    import vila_tf
    demo = tmp_path / "demo"
    shutil.copytree(exported["vila_p_tiny"], demo)
    meta_path = demo / "assets.extra" / "vila_tf.json"
    meta = json.loads(meta_path.read_text())
    meta["demo_weights"] = True
    meta_path.write_text(json.dumps(meta))
    with pytest.warns(vila_tf.DemoModelWarning, match="DEMO export with random weights"):
        m = vila_tf.load(str(demo))
    assert m.is_demo and "DEMO" in repr(m)


@pytest.mark.parametrize("name", ["vila_r_tiny", "vila_p_tiny"])
def test_runtime_never_imports_jax(jaxless, references, name):
    """`vila_tf.load`, score and caption in a process where jax, flax and Beam cannot be imported
    (the `jaxless` fixture's process): the same numbers and caption as the export's signatures."""
    got = jaxless[name]
    assert list(got["imported_blocked"]) == []
    png = _encode(np.full((50, 60, 3), 128, np.uint8))  # lossless: the pixels the process scored
    ref = references[name]
    np.testing.assert_allclose(got["runtime/score"], ref.score([png]), atol=1e-5)
    assert list(got["runtime/caption"]) == ref.caption([png])


def test_source_never_imports_jax():
    import re
    root = os.path.join(HERE, "..", "vila_tf")
    for name in os.listdir(root):
        if name.endswith(".py"):
            text = open(os.path.join(root, name)).read()
            assert not re.search(r"^\s*(import|from)\s+(jax|flax|export)\b", text, re.M), name


def test_warnings_point_at_the_callers_line(model, exported, tmp_path, photos):
    """Every entry point attributes its warnings (a failed image, skipped files, a demo export) to
    the line that called it, whichever depth of the runtime raised them."""
    import shutil
    import vila_tf
    from vila_tf.inputs import image_formats
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "a.png").write_bytes(_encode(photos[1][0]))
    (folder / "notes.txt").write_text("not an image")
    calls = {
        "score": lambda: model.score([b"junk"]),
        "zero_shot": lambda: model.zero_shot([b"junk"]),
        "image_embedding": lambda: model.image_embedding([b"junk"]),
        "caption": lambda: model.caption([b"junk"]),
        "preprocess": lambda: model.preprocess([b"junk"]),
        "similarity": lambda: model.similarity([b"junk"], ["a photo"]),
        "stream": lambda: list(model.stream("score", [str(folder)])),
    }
    for name, call in calls.items():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            call()
        kinds = (RuntimeWarning, image_formats.SkippedFilesWarning)
        ours = [w for w in caught if issubclass(w.category, kinds)]
        assert ours, name
        assert {w.filename for w in ours} == {__file__}, (name, [(w.filename, w.lineno) for w in ours])
    demo = tmp_path / "demo"
    shutil.copytree(exported["vila_p_tiny"], demo)
    meta = json.loads((demo / "assets.extra" / "vila_tf.json").read_text())
    (demo / "assets.extra" / "vila_tf.json").write_text(json.dumps({**meta, "demo_weights": True}))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        vila_tf.load(str(demo)).close()
    assert [w.filename for w in caught if w.category is vila_tf.DemoModelWarning] == [__file__]
