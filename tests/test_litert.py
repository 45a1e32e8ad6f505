"""LiteRT on device: `python -m export litert` (static shapes, variants, checks) and the
TensorFlow-free runtime `vila_tf.load(LITERT_DIR)`, against the SavedModel of the same checkpoint
(itself checked against the praxis goldens in test_export.py)."""
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import FIXTURES, LITERT_PROMPTS, env_without_tensorflow, export_command
from reference import in_buckets

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def _photo(seed, h, w):
    """A smooth-with-grain RGB photo-like image (uint8 HWC)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([np.sin(yy / (9 + seed)), np.cos(xx / 13.0), np.sin((xx + yy) / 17.0)], -1)
    return ((base + 1) * 110 + rng.uniform(0, 30, (h, w, 3))).clip(0, 255).astype(np.uint8)


def _encode(arr, fmt, **kw):
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **kw)
    return buf.getvalue()


# Encoded images of several formats and sizes: JPEG without (4:4:4) and with (4:2:0, 4:2:2) chroma
# subsampling, PNG, BMP, GIF (a palette image), gray PNG and an RGBA PNG.
def encoded_images():
    out = {
        "jpeg444": _encode(_photo(0, 375, 500), "JPEG", quality=92, subsampling=0),
        "jpeg420": _encode(_photo(1, 480, 640), "JPEG", quality=85, subsampling=2),
        "jpeg422": _encode(_photo(2, 333, 250), "JPEG", quality=90, subsampling=1),
        "png": _encode(_photo(3, 200, 300), "PNG"),
        "bmp": _encode(_photo(4, 150, 151), "BMP"),
        "gif": _encode(_photo(5, 240, 180), "GIF"),
        "gray_png": _encode(_photo(6, 220, 260)[..., 0], "PNG"),
        "rgba_png": _encode(np.dstack([_photo(7, 230, 230), np.full((230, 230), 128, np.uint8)]), "PNG"),
    }
    return list(out), list(out.values())


@pytest.mark.parametrize("progressive", [False, True])
def test_jpeg_pixels_equal_tensorflows(progressive):
    """vila_tf.litert.jpeg gives tf.io.decode_image's pixels bit for bit (the release's decoder:
    fast IDCT, fancy upsampling), where plain Pillow is ~1 level off."""
    import tensorflow as tf
    from vila_tf.litert import pillow_decode
    worst_plain = 0
    for h, w in [(375, 500), (333, 251), (17, 9), (2, 3), (1, 1), (64, 4)]:
        photo = _photo(h % 7, h, w)
        for quality, subsampling in [(92, 0), (75, 2), (95, 1), (50, 2)]:
            data = _encode(photo, "JPEG", quality=quality, subsampling=subsampling, progressive=progressive)
            want = tf.io.decode_image(data, channels=3).numpy()
            got = pillow_decode.decode(data, 10 ** 8, False)
            assert np.array_equal(got, want), ((h, w), quality, subsampling)
            plain = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)
            worst_plain = max(worst_plain, np.abs(plain - want).max())
        gray = _encode(photo[..., 1], "JPEG", quality=80, progressive=progressive)
        assert np.array_equal(pillow_decode.decode(gray, 10 ** 8, False), tf.io.decode_image(gray, channels=3).numpy())
    assert worst_plain >= 2  # the accurate IDCT alone would not do


@pytest.fixture(scope="module")
def savedmodel_outputs(exported):
    """The SavedModel's own outputs on the encoded images (its in-graph decode and preprocessing),
    and the text embeddings of the prompt pairs its LiteRT export bakes in (LITERT_PROMPTS)."""
    import tensorflow as tf
    import tensorflow_text  # noqa: F401
    from vila_tf.core.signatures import ZERO_SHOT_OUTPUTS
    from vila_tf.core.zero_shot import pairs_from
    _, images = encoded_images()
    out = {}
    for n in FIXTURES:
        m = tf.saved_model.load(exported[n])
        call = lambda sig, keys: in_buckets(
            lambda b: np.stack([v.numpy() for v in map(m.signatures[sig](image_bytes=tf.constant(b)).get, keys)], -1),
            images)
        zero_shot = call("zero_shot", ZERO_SHOT_OUTPUTS)  # [N, 7]: the score, then the six attributes
        out[n] = {"score": call("serving_default", ["predictions"])[:, 0, 0],
                  "image_embedding": call("image_embedding", ["image_embedding"])[..., 0],
                  "zero_shot": zero_shot[:, 0],
                  "zero_shot_attributes": zero_shot[:, 1:]}
        texts = [t for pair in pairs_from(LITERT_PROMPTS[n]) for t in pair] if LITERT_PROMPTS[n] else []
        if texts:
            out[n]["prompt_text_embeddings"] = m.signatures["text_embedding"](text=tf.constant(texts))[
                "text_embedding"].numpy()
    return out


def _ops(path):
    from export.tools import litert
    with open(path, "rb") as f:
        return litert.op_counts(f.read())


@pytest.mark.parametrize("variant", ["float32", "float16", "int8"])
def test_static_shapes_builtin_ops_one_signature(litert_exported, fixture_name, variant):
    from ai_edge_litert.interpreter import Interpreter
    from export.tools.litert import SHAPE_OPS
    meta = json.load(open(os.path.join(litert_exported[fixture_name], "vila_litert.json")))
    path = os.path.join(litert_exported[fixture_name], meta["variants"][variant]["file"])
    ops = _ops(path)
    assert list(ops) == ["image"]
    names = set(ops["image"])
    assert not names & SHAPE_OPS, names & SHAPE_OPS
    assert not [n for n in names if n.startswith(("CUSTOM", "FLEX"))]
    # the preprocessing is inside; the exact GELU is one op (XNNPACK takes the whole graph)
    assert {"RESIZE_BILINEAR", "GELU", "FULLY_CONNECTED", "SOFTMAX"} <= names
    assert not names & {"LESS", "SELECT", "SELECT_V2", "ERF"}  # no expanded erf
    runner = Interpreter(model_path=path).get_signature_runner("image")
    (inp,) = runner.get_input_details().values()
    assert inp["dtype"] == np.uint8 and list(inp["shape_signature"]) == [1, -1, -1, 3]
    outs = runner.get_output_details()
    # the SavedModel's zero-shot outputs, and with --prompt one column per pair of yours
    attributes = ("zero_shot_image", "zero_shot_lighting", "zero_shot_content", "zero_shot_background",
                  "zero_shot_foreground", "zero_shot_composition")
    k = len(LITERT_PROMPTS[fixture_name])
    want = {"predictions": [1, 1], "image_embedding": [1, meta["config"]["model_dims"]], "zero_shot_score": [1],
            **{a: [1] for a in attributes}, **({"zero_shot_prompt_scores": [1, k]} if k else {})}
    assert {n: list(o["shape"]) for n, o in outs.items()} == want
    assert all(o["dtype"] == np.float32 for o in outs.values())
    # the metadata records them in the contract's order (vila_tf.litert.format)
    recorded = meta["signatures"]["image"]["outputs"]
    assert list(recorded) == list(want) and {n: o["shape"] for n, o in recorded.items()} == want
    # the metadata records the file as written
    import hashlib
    assert hashlib.sha256(open(path, "rb").read()).hexdigest() == meta["variants"][variant]["sha256"]


def test_float32_matches_the_savedmodel_on_encoded_images(litert_exported, savedmodel_outputs, fixture_name):
    """The TensorFlow-free runtime (host decode, the model's own resize) gives the SavedModel's
    score (in-graph decode) within 2e-6 (the requirement is 1e-4)."""
    import vila_tf
    names, images = encoded_images()
    want = savedmodel_outputs[fixture_name]
    m = vila_tf.load(litert_exported[fixture_name])
    got = {"score": m.score(images), "image_embedding": m.image_embedding(images), "zero_shot": m.zero_shot(images)}
    m.close()
    err = np.abs(got["score"] - want["score"])
    assert err.max() <= 2e-6, dict(zip(names, err))  # the same pixels (test_jpeg_pixels...), the same model
    np.testing.assert_allclose(got["zero_shot"], want["zero_shot"], atol=1e-4)
    cos = np.sum(got["image_embedding"] * want["image_embedding"], axis=1)
    assert cos.min() >= 1 - 1e-5, dict(zip(names, cos))


# Bounds on the tiny fixtures (docs/on_device.md has the full-size figures): the largest score
# error and the smallest embedding cosine against the SavedModel.
VARIANT_BOUNDS = {"float32": (1e-4, 1 - 1e-5), "float16": (1e-3, 1 - 1e-4), "int8": (2e-2, 0.99)}


@pytest.mark.parametrize("variant", ["float16", "int8"])
def test_quantized_variants_accuracy(litert_exported, savedmodel_outputs, fixture_name, variant):
    import vila_tf
    _, images = encoded_images()
    want = savedmodel_outputs[fixture_name]
    m = vila_tf.load(litert_exported[fixture_name], variant=variant)
    score, emb = m.score(images), m.image_embedding(images)
    m.close()
    max_err, min_cos = VARIANT_BOUNDS[variant]
    assert np.abs(score - want["score"]).max() <= max_err
    assert np.sum(emb * want["image_embedding"], axis=1).min() >= min_cos
    # the export measured it too (against the heads in JAX) and recorded it within the same bounds
    acc = json.load(open(os.path.join(litert_exported[fixture_name], "vila_litert.json")))["accuracy"]["variants"]
    assert acc[variant]["score_max_abs_error"] <= max_err and acc[variant]["embedding_min_cosine"] >= min_cos
    assert acc[variant]["zero_shot_attributes_max_abs_error"] <= max_err
    assert acc["float32"]["score_max_abs_error"] <= 1e-5
    assert acc["float32"]["zero_shot_attributes_max_abs_error"] <= 1e-5


def test_zero_shot_attributes_and_prompt_scores_equal_the_savedmodels(litert_exported, savedmodel_outputs,
                                                                      fixture_name):
    """The six attribute outputs are the SavedModel's zero-shot ones (`zero_shot_pixels` behind its
    in-graph decode) on the same photos; the pairs given with --prompt (recorded in the metadata, in
    order) are scored in the model as the runtime scores them on the SavedModel:
    pair_scores(its image embedding, its text embeddings)."""
    from ai_edge_litert.interpreter import Interpreter
    from vila_tf.core.signatures import ZERO_SHOT_ATTRIBUTE_OUTPUTS
    from vila_tf.core.zero_shot import pair_scores, pairs_from
    from vila_tf.litert import format as litert_format
    from vila_tf.litert.pillow_decode import decode  # TensorFlow's pixels (test_jpeg_pixels_equal_tensorflows)
    folder = litert_exported[fixture_name]
    meta = litert_format.read_metadata(folder)
    pairs = litert_format.prompts(meta)
    given = LITERT_PROMPTS[fixture_name]
    assert pairs == (pairs_from(given) if given else ())
    assert meta[litert_format.PROMPTS_KEY] == [list(p) for p in pairs]
    assert litert_format.outputs(meta) == litert_format.OUTPUTS + ((litert_format.PROMPT_SCORES_OUTPUT,) if pairs else ())
    assert litert_format.ATTRIBUTE_OUTPUTS == ZERO_SHOT_ATTRIBUTE_OUTPUTS
    want = savedmodel_outputs[fixture_name]
    runner = Interpreter(model_path=os.path.join(folder, litert_format.model_file("float32"))) \
        .get_signature_runner(litert_format.IMAGE_SIGNATURE)
    got = [runner(image=decode(data, 10 ** 8, True)[None]) for data in encoded_images()[1]]
    attributes = np.array([[g[k][0] for k in ZERO_SHOT_ATTRIBUTE_OUTPUTS] for g in got])
    np.testing.assert_allclose(attributes, want["zero_shot_attributes"], atol=1e-4)  # as zero_shot_score's
    np.testing.assert_allclose([g["zero_shot_score"][0] for g in got], want["zero_shot"], atol=1e-4)
    if not pairs:
        assert all(litert_format.PROMPT_SCORES_OUTPUT not in g for g in got)
        return
    scores = np.concatenate([g[litert_format.PROMPT_SCORES_OUTPUT] for g in got])
    # measured: 6e-8 at most (float32 rounding of the same sums)
    np.testing.assert_allclose(scores, pair_scores(want["image_embedding"], want["prompt_text_embeddings"]), atol=1e-6)
    acc = meta["accuracy"]["variants"]
    assert acc["float32"]["prompt_scores_max_abs_error"] <= 1e-6
    assert acc["int8"]["prompt_scores_max_abs_error"] <= VARIANT_BOUNDS["int8"][0]


NO_TF_SCRIPT = r"""
import io, json, sys
import numpy as np
from PIL import Image
import vila_tf
folder, photos = sys.argv[1], sys.argv[2]
m = vila_tf.load(folder)
arrays = [np.asarray(Image.open(f"{photos}/p{i}.png").convert("RGB")) for i in range(3)]
paths = [f"{photos}/p{i}.png" for i in range(3)]
out = {
    "paths": m.score(paths).tolist(),
    "folder": m.score(photos).tolist(),
    "glob": m.score(photos + "/p*.png").tolist(),
    "bytes": m.score([open(p, "rb").read() for p in paths]).tolist(),
    "arrays": m.score(arrays).tolist(),
    "nhwc": m.score(np.stack([a[:100, :100] for a in arrays])).tolist(),
    "pil": m.score([Image.open(p) for p in paths]).tolist(),
    "stream": [[r.index, r.source, r.value, r.error] for r in m.stream(("score", "zero_shot"), paths + [b"junk"])],
    "embedding_shape": list(m.image_embedding(paths).shape),
}
scores, errors = m.score([paths[0], b"", b"not an image", photos + "/missing.jpg", open(paths[1], "rb").read()[:300]],
                         return_errors=True)
out["errors"] = [[e.index, e.reason] for e in errors]
out["error_scores"] = [None if np.isnan(s) else float(s) for s in scores]
out["tensorflow_imported"] = any(k.split(".")[0] in ("tensorflow", "jax") for k in sys.modules)
print(json.dumps(out))
"""


def test_runtime_and_command_line_without_tensorflow(litert_exported, savedmodel_outputs, exported, tmp_path):
    """In a process where `import tensorflow` fails: every input kind, per-image errors, streams,
    and `vila-tf score|zero-shot|embed|info` on a LiteRT export."""
    import tensorflow as tf
    import tensorflow_text  # noqa: F401
    photos = tmp_path / "photos"
    photos.mkdir()
    arrays = [_photo(10 + i, 120 + 20 * i, 160) for i in range(3)]
    for i, a in enumerate(arrays):
        (photos / f"p{i}.png").write_bytes(_encode(a, "PNG"))
    (photos / "notes.txt").write_text("not an image")
    script = tmp_path / "no_tf.py"
    script.write_text(NO_TF_SCRIPT)
    env = env_without_tensorflow()
    folder = litert_exported["vila_r_tiny"]
    r = subprocess.run([sys.executable, str(script), folder, str(photos)], capture_output=True, text=True,
                       env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["tensorflow_imported"] is False
    sm = tf.saved_model.load(exported["vila_r_tiny"])
    want = in_buckets(lambda b: sm.signatures["serving_default"](image_bytes=tf.constant(b))["predictions"].numpy(),
                      [_encode(a, "PNG") for a in arrays])[:, 0]
    for key in ("paths", "folder", "glob", "bytes", "arrays", "pil"):
        np.testing.assert_allclose(out[key], want, atol=2e-6, err_msg=key)
    crops = in_buckets(lambda b: sm.signatures["serving_default"](image_bytes=tf.constant(b))["predictions"].numpy(),
                       [_encode(a[:100, :100], "PNG") for a in arrays])[:, 0]
    np.testing.assert_allclose(out["nhwc"], crops, atol=2e-6)
    stream = out["stream"]
    assert [s[0] for s in stream] == [0, 1, 2, 3] and stream[3][2] is None and "not a JPEG" in stream[3][3]
    np.testing.assert_allclose([s[2][0] for s in stream[:3]], want, atol=2e-6)
    assert out["embedding_shape"] == [3, 64]
    reasons = dict((i, why) for i, why in out["errors"])
    assert set(reasons) == {1, 2, 3, 4}
    assert "empty" in reasons[1] and "not a JPEG" in reasons[2] and "no such file" in reasons[3]
    assert "PNG image" in reasons[4]  # truncated
    assert out["error_scores"][0] == pytest.approx(float(want[0]), abs=2e-6)

    cli = [sys.executable, "-m", "vila_tf.cli.main"]
    r = subprocess.run(cli + ["score", folder, str(photos), "--format", "csv"], capture_output=True, text=True,
                       env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [line.split(",") for line in r.stdout.strip().splitlines()]
    assert rows[0] == ["input", "score", "error"] and len(rows) == 4
    np.testing.assert_allclose([float(x[1]) for x in rows[1:]], want, atol=1e-5)
    assert "notes.txt" not in r.stdout and "not an image" in r.stderr  # skipped, said once
    r = subprocess.run(cli + ["embed", folder, str(photos / "p0.png"), "--variant", "int8", "--format", "jsonl"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert len(json.loads(r.stdout.splitlines()[0])["embedding"]) == 64
    r = subprocess.run(cli + ["info", folder], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0 and "LiteRT" in r.stdout and "image(image uint8[1, -1, -1, 3])" in r.stdout
    r = subprocess.run(cli + ["caption", folder, str(photos)], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 2 and "caption needs the SavedModel" in r.stderr


def test_orientation_and_arguments_as_the_savedmodel_runtime(litert_exported, model, tmp_path):
    """EXIF orientation is applied as by the SavedModel runtime; what a LiteRT export cannot do is
    refused with a sentence saying what to use."""
    import vila_tf
    from vila_tf.litert.format import LiteRTExportError
    photo = _photo(20, 120, 200)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: turn clockwise
    buf = io.BytesIO()
    Image.fromarray(photo).save(buf, format="JPEG", quality=95, subsampling=0, exif=exif)
    lite = vila_tf.load(litert_exported["vila_r_tiny"])
    for orientation in (True, False):
        tf_model = vila_tf.load(model.path, exif_orientation=orientation)
        lite_model = vila_tf.load(litert_exported["vila_r_tiny"], exif_orientation=orientation)
        np.testing.assert_allclose(lite_model.score([buf.getvalue()]), tf_model.score([buf.getvalue()]), atol=2e-6)
        tf_model.close(), lite_model.close()
    for call in (lite.caption, lite.text_embedding):
        with pytest.raises(ValueError, match="needs the SavedModel"):
            call(["x.jpg"])
    with pytest.raises(ValueError, match="unknown task"):
        next(lite.stream("colour", []))
    lite.close()
    with pytest.raises(LiteRTExportError, match="no 'int4' model"):
        vila_tf.load(litert_exported["vila_r_tiny"], variant="int4")
    with pytest.raises(ValueError, match="CPU"):
        vila_tf.load(litert_exported["vila_r_tiny"], device="GPU:0")
    with pytest.raises(ValueError, match="only a LiteRT export has variants"):
        vila_tf.load(model.path, variant="int8")


def test_export_command_line(exported, tmp_path):
    r = subprocess.run([sys.executable, "-m", "export", "--help"], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0 and "litert" in r.stdout
    r = export_command("litert", tmp_path, "--out", tmp_path / "x")
    assert r.returncode == 2 and "not a SavedModel folder" in r.stderr and not (tmp_path / "x").exists()
    r = export_command("litert", exported["vila_r_tiny"], "--out", tmp_path / "y", "--variants", "int8")
    assert r.returncode == 2 and "float32 included" in r.stderr
    for bad in ("sharp photo", "sharp photo|", "a|b|c"):  # refused in one line, before any work
        r = export_command("litert", exported["vila_r_tiny"], "--out", tmp_path / "z", "--prompt", "good|bad",
                           "--prompt", bad)
        assert r.returncode == 2 and not (tmp_path / "z").exists(), r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and "--prompt" in r.stderr and repr(bad) in r.stderr


def test_checkpoint_source_gives_the_export_source(exported, spm_model):
    """From the checkpoint (prompts embedded here) the heads' inputs equal those read back from the export."""
    from conftest import DATA, FIXTURE_OVERRIDES
    from export.model.tree import flatten
    from export.tools import litert_source
    prompts = ["sharp photo|blurry photo"]
    a = litert_source.from_savedmodel(exported["vila_r_tiny"], prompts)
    b = litert_source.from_checkpoint(os.path.join(DATA, "vila_r_tiny", "ckpt"), spm_model, overrides=FIXTURE_OVERRIDES,
                                      prompts=prompts)
    fa, fb = flatten(a.params), flatten(b.params)
    assert sorted(fa) == sorted(fb) and all(np.array_equal(fa[k], fb[k]) for k in fa)
    np.testing.assert_allclose(a.zero_shot_prompts, b.zero_shot_prompts, atol=1e-6)
    np.testing.assert_allclose(a.quality_prompt, b.quality_prompt, atol=1e-6)
    # your pairs: the export's text_embedding signature, and the checkpoint's text tower in JAX
    assert a.prompts == b.prompts == (("sharp photo", "blurry photo"),)
    assert a.prompt_embeddings.shape == (2, a.config.model_dims)
    np.testing.assert_allclose(a.prompt_embeddings, b.prompt_embeddings, atol=1e-6)
    assert a.config == b.config


@pytest.mark.slow
def test_fresh_virtualenv_with_litert_numpy_pillow_only(litert_exported, savedmodel_outputs, tmp_path):
    """The documented install: `pip install ai-edge-litert numpy pillow`, then the project with
    --no-deps; `import vila_tf; vila_tf.load(DIR).score(...)` works and imports no TensorFlow."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    py = str(venv / "bin" / "python")
    pins = {}
    for line in open(os.path.join(REPO, "constraints.txt")):
        if "==" in line:
            name, version = line.strip().split("==")
            pins[name.lower()] = version
    reqs = [f"{p}=={pins[p]}" for p in ("ai-edge-litert", "numpy", "pillow")]
    subprocess.run([py, "-m", "pip", "install", "-q", *reqs], check=True, timeout=900)
    subprocess.run([py, "-m", "pip", "install", "-q", "--no-deps", REPO], check=True, timeout=900)
    names, images = encoded_images()
    files = []
    for n, data in zip(names, images):
        p = tmp_path / f"{n}.img"
        p.write_bytes(data)
        files.append(str(p))
    code = ("import json, sys, vila_tf; m = vila_tf.load(sys.argv[1]); s = m.score(sys.argv[2:]).tolist(); "
            "print(json.dumps({'scores': s, 'tf': 'tensorflow' in sys.modules}))")
    r = subprocess.run([py, "-c", code, litert_exported["vila_r_tiny"], *files], capture_output=True, text=True,
                       timeout=300, cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["tf"] is False
    np.testing.assert_allclose(out["scores"], savedmodel_outputs["vila_r_tiny"]["score"], atol=1e-4)
    r = subprocess.run([py, "-m", "pip", "list"], capture_output=True, text=True, timeout=300)
    assert "tensorflow" not in r.stdout.lower()


def test_package_publishes_the_litert_models(exported, litert_exported, tmp_path):
    """`python -m export package --litert` (in a process without jax): each variant beside the
    package with a checksum that verifies, the metadata, and the card's On device section."""
    import hashlib
    from conftest import env_without_jax
    dist = tmp_path / "dist"
    cmd = [sys.executable, "-m", "export", "package", exported["vila_r_tiny"], "--name", "vila_r_tiny",
           "--litert", litert_exported["vila_r_tiny"], "--out", str(dist)]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env_without_jax(), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    meta = json.load(open(os.path.join(litert_exported["vila_r_tiny"], "vila_litert.json")))
    card = (dist / "vila_r_tiny.md").read_text()
    assert "## On device" in card and card.index("## On device") < card.index("## Limitations")
    for variant, rec in meta["variants"].items():
        f = dist / f"vila_r_tiny_1_{variant}.tflite"
        assert hashlib.sha256(f.read_bytes()).hexdigest() == rec["sha256"]
        assert (dist / f"vila_r_tiny_1_{variant}.tflite.sha256").read_text() == f"{rec['sha256']}  {f.name}\n"
        acc = meta["accuracy"]["variants"][variant]
        assert f"| {variant} | `{f.name}` |" in card
        assert f"{acc['score_max_abs_error']:.1e} | {acc['zero_shot_max_abs_error']:.1e} | " \
               f"{acc['embedding_min_cosine']:.6f} |" in card
    for variant, rec in meta["mediapipe"]["variants"].items():  # the MediaPipe-ready copies, beside them
        f = dist / f"vila_r_tiny_1_mediapipe_{variant}.tflite"
        assert hashlib.sha256(f.read_bytes()).hexdigest() == rec["sha256"] and f"`{f.name}`" in card
        assert (dist / f"{f.name}.sha256").read_text() == f"{rec['sha256']}  {f.name}\n"
    assert "names the heads, in this order: `score`, `image_embedding`" in card
    assert json.loads((dist / "vila_r_tiny_1_litert.json").read_text()) == meta
    assert "every op is supported by the GPU delegate" in card
    assert 'getSignatureRunner("image")' in card and 'signatureRunner(with: "image")' in card
    # a LiteRT export of another model is refused, and nothing of it is published (in this process:
    # the refusal needs no fresh one)
    r = export_command("package", exported["vila_r_tiny"], "--name", "vila_r_tiny", "--litert",
                       litert_exported["vila_p_tiny"], "--out", tmp_path / "dist2")
    assert r.returncode == 2 and "is not the SavedModel's" in r.stderr
    assert not (tmp_path / "dist2").exists() or not list((tmp_path / "dist2").glob("*.tflite"))
