"""Full-size (303 M parameter) checks: `make test-slow` / `pytest -m slow`. Minutes and ~6 GB RAM."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from export.model import demo

pytestmark = pytest.mark.slow
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def demo_export(tmp_path_factory):
    out = tmp_path_factory.mktemp("full") / "exported"
    r = subprocess.run([sys.executable, "-m", "export", "all", "--out", str(out)], capture_output=True, text=True,
                       cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2"))
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def test_make_export_layout_and_metadata(demo_export):
    model_dir = demo_export / "vila_demo" / "1"
    meta = json.loads((model_dir / "assets.extra" / "vila_tf.json").read_text())
    assert meta["demo_weights"] is True and meta["model_type"] == "vila_r"
    assert meta["config"]["model_dims"] == 768 and meta["config"]["num_encoder_layers"] == 12
    assert (demo_export / "models.config").read_text().count("config {") == 1
    assert (demo_export / "batching_parameters.txt").is_file()
    size = sum(f.stat().st_size for f in (model_dir / "variables").iterdir())
    assert 1.2e9 < size < 1.3e9  # float32 weights, stored once


def test_full_size_runtime(demo_export):
    """vila_tf on a photo gives what the SavedModel's pixel signatures give on the release's
    preprocessing of it, the caption detokenized by the Python SentencePiece library (the pixel
    signatures equal native JAX: test_full_size_matches_native_jax)."""
    import io
    import sentencepiece as spm
    import tensorflow as tf
    import vila_tf
    from PIL import Image
    from reference import release_pixels
    with pytest.warns(vila_tf.DemoModelWarning):
        model = vila_tf.load(str(demo_export / "vila_demo"))
    photo = (np.random.default_rng(0).uniform(size=(300, 400, 3)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(photo).save(buf, format="PNG")
    pixels = tf.constant(release_pixels(buf.getvalue())[None])
    m = tf.saved_model.load(str(demo_export / "vila_demo" / "1"))
    scores = model.score([photo, photo])
    assert scores.shape == (2,) and scores[0] == scores[1]
    np.testing.assert_allclose(scores[:1], m.signatures["score_pixels"](image=pixels)["predictions"].numpy()[:, 0],
                               atol=1e-5)
    emb = model.image_embedding([photo])
    assert emb.shape == (1, 768)
    np.testing.assert_allclose(emb, m.signatures["image_embedding_pixels"](image=pixels)["image_embedding"].numpy(),
                               atol=1e-5)
    out = m.signatures["caption_pixels"](image=pixels)
    sp = spm.SentencePieceProcessor(model_file=str(demo_export / "vila_demo" / "1" / "assets" / "spm.model"))
    ids, n = out["caption_ids"].numpy()[0], int(out["caption_length"].numpy()[0])
    # The demo's 64000-id vocabulary is larger than its tokenizer's: ids the tokenizer does not have
    # are detokenized as id 0 (export/savedmodel/tokenizer.py).
    ids = [int(i) if int(i) < sp.get_piece_size() else 0 for i in ids[:n]]
    assert model.caption([photo]) == [sp.decode(ids)]


def test_full_size_matches_native_jax(demo_export):
    """The lowered SavedModel equals the Flax model it came from, at full size."""
    import tensorflow as tf
    from export import exporter
    from export.model import heads
    from export.model.config import VilaConfig
    cfg = VilaConfig()
    params = demo.init_params(cfg, exporter.DEMO_SEED)
    x = np.random.default_rng(1).uniform(size=(2, 224, 224, 3)).astype(np.float32)
    want = np.asarray(heads.score(params, cfg, x))
    m = tf.saved_model.load(str(demo_export / "vila_demo" / "1"))
    got = m.signatures["score_pixels"](image=tf.constant(x))["predictions"].numpy()
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_full_size_personal_export(demo_export, tmp_path):
    """`vila-tf fit` at full size (768 + 7 features, 1.2 GB of weights carried into the personal
    SavedModel): a dozen small photos, two folds; the export's serving_default is the head applied
    by hand to the base model's own outputs."""
    import tensorflow as tf
    from PIL import Image
    from conftest import vila_tf_command
    from vila_tf.core import personal
    rng = np.random.default_rng(0)
    rows = ["path,score"]
    for k in range(12):
        Image.fromarray((rng.uniform(size=(48, 48, 3)) * 255).astype(np.uint8)).save(tmp_path / f"p{k}.png")
        rows.append(f"p{k}.png,{k % 5 + 1}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "mine"
    r = vila_tf_command("fit", str(demo_export / "vila_demo"), "--labels", tmp_path / "labels.csv", "--output", out,
                        "--folds", "2", "--bootstrap", "0")
    assert r.returncode == 0, r.stderr[-3000:]
    meta = json.loads((out / "1" / "assets.extra" / "vila_tf.json").read_text())
    assert meta["personal"]["feature_count"] == 768 + 7 and meta["demo_weights"] is True
    photos = tf.constant([(tmp_path / f"p{k}.png").read_bytes() for k in range(4)])
    base = tf.saved_model.load(str(demo_export / "vila_demo" / "1"))
    zs = base.signatures["zero_shot"](image_bytes=photos)
    features = np.concatenate([base.signatures["image_embedding"](image_bytes=photos)["image_embedding"].numpy()]
                              + [zs[k].numpy()[:, None] for k in personal.ATTRIBUTES]
                              + [base.signatures["serving_default"](image_bytes=photos)["predictions"].numpy()], 1)
    reader = tf.train.load_checkpoint(str(out / "1" / "variables" / "variables"))
    weights = reader.get_tensor(f"{personal.WEIGHTS_VARIABLE}/.ATTRIBUTES/VARIABLE_VALUE")
    by_hand = personal.apply(weights, reader.get_tensor(f"{personal.BIAS_VARIABLE}/.ATTRIBUTES/VARIABLE_VALUE"),
                             features)
    served = tf.saved_model.load(str(out / "1")).signatures["serving_default"](image_bytes=photos)["predictions"]
    # The graph sums 775 float32 products; with a dozen labels the fitted weights are large and the
    # terms cancel, so its error is float32's on the terms' magnitude, not on the result's.
    terms = np.abs(np.asarray(features, np.float64) * np.asarray(weights, np.float64).reshape(-1)).sum(1)
    assert np.all(np.abs(served.numpy()[:, 0] - by_hand) <= 1e-4 + 4 * np.finfo(np.float32).eps * terms), \
        (served.numpy()[:, 0], by_hand, terms)
