"""Run in a process where neither jax nor Apache Beam can be imported, as after a plain
`pip install vila-tf` on a serving host (the `jaxless` fixture of tests/conftest.py, shared by
test_export.py, test_runtime.py and test_beam.py): runs every signature of each export with hub.load
on its fixture's inputs at batch sizes 1, 3 and 8, then the `vila_tf` runtime and command line on
the same export, and saves the outputs.

    python jaxless_outputs.py SAVEDMODEL GOLDEN.npz OUT.npz [SAVEDMODEL GOLDEN.npz OUT.npz ...]
"""
import contextlib
import io
import json
import sys

from blocked_imports import block  # tests/ is on the path (conftest.run_without_jax)

# As where the [beam] extra is not installed (jax is blocked by tests/without_jax/sitecustomize.py).
block(("apache_beam",), "a plain install has no Beam")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_hub as hub  # noqa: E402
import tensorflow_text  # noqa: E402,F401  (registers the SentencePiece ops)

assert "jax" not in sys.modules
ATTRIBUTES = ("image", "lighting", "content", "background", "foreground", "composition")
GRAY = np.full((50, 60, 3), 128, np.uint8)  # the runtime's input (tests/test_runtime.py)


def runtime(savedmodel_dir) -> dict:
    """`vila_tf`'s score and caption of GRAY, and its command line: `info` runs, `beam` says what
    to install (exit code and stderr)."""
    import vila_tf
    from vila_tf.cli import main as cli
    m = vila_tf.load(savedmodel_dir)
    out = {"runtime/score": m.score([GRAY]), "runtime/caption": np.array(m.caption([GRAY]))}
    m.close()
    for name, args in (("info", ["info", savedmodel_dir]),
                       ("beam", ["beam", "score", savedmodel_dir, "--input", "x", "--output", "y"])):
        err = io.StringIO()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            out[f"cli/{name}_returncode"] = np.array(cli.main(args))
        out[f"cli/{name}_stderr"] = np.array(err.getvalue())
    # None of jax, flax or Beam is loaded (blocked, an import of one that is not guarded fails).
    out["imported_blocked"] = np.array(sorted({k.split(".")[0] for k in sys.modules} & {"jax", "flax", "apache_beam"}))
    return out


def run(savedmodel_dir, golden_path, out_path):
    g = np.load(golden_path, allow_pickle=False)
    model = hub.load(savedmodel_dir)
    images = g["input/image"]
    out = {}
    for b in (1, 3, 8):
        x = tf.constant(np.concatenate([images] * 4)[:b])
        out[f"{b}/predictions"] = model.signatures["score_pixels"](image=x)["predictions"].numpy()
        out[f"{b}/image_embedding"] = model.signatures["image_embedding_pixels"](image=x)["image_embedding"].numpy()
        zsl = model.signatures["zero_shot_pixels"](image=x)
        out[f"{b}/zero_shot_score"] = zsl["zero_shot_score"].numpy()
        # the per-attribute scores, as columns in the release's order
        out[f"{b}/zero_shot_attributes"] = np.stack([zsl[f"zero_shot_{a}"].numpy() for a in ATTRIBUTES], 1)
        cap = model.signatures["caption_pixels"](image=x)
        out[f"{b}/caption_ids"] = cap["caption_ids"].numpy()
        out[f"{b}/caption_length"] = cap["caption_length"].numpy()
        out[f"{b}/caption"] = np.array([s.decode("utf-8") for s in cap["caption"].numpy()])
    texts = ["good image", "a photo of a dog", "", "lovely bokeh in the background " * 10]
    for b in (1, 3, 4):
        out[f"{b}/text_embedding"] = model.signatures["text_embedding"](text=tf.constant(texts[:b]))["text_embedding"].numpy()
    # bytes signatures, on a lossless PNG of the first golden image
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(np.round(images[0] * 255).astype(np.uint8)).save(buf, format="PNG")
    png = buf.getvalue()
    scalar = model.signatures["serving_default"](tf.constant(png))["predictions"]
    out["scalar_predictions"] = scalar.numpy()
    out["batch_predictions"] = model.signatures["serving_default"](image_bytes=tf.constant([png, png]))["predictions"].numpy()
    out["preprocessed"] = model.signatures["preprocess"](image_bytes=tf.constant([png]))["image"].numpy()
    zsl = model.signatures["zero_shot"](image_bytes=tf.constant([png]))
    out["bytes_zero_shot"] = zsl["zero_shot_score"].numpy()
    out["bytes_zero_shot_keys"] = np.array(sorted(zsl))
    try:
        model.signatures["serving_default"](tf.constant(b"this is not an image"))
        out["bad_image_error"] = np.array("no error")
    except tf.errors.InvalidArgumentError as e:
        out["bad_image_error"] = np.array(e.message)
    # variables captured by all signatures together: each parameter exactly once
    n_vars = len({id(v) for f in model.signatures.values() for v in f.variables})
    out.update(runtime(savedmodel_dir))
    np.savez(out_path, n_vars=np.array(n_vars), **out)
    print(json.dumps({"ok": True, "variables": n_vars}))


for i in range(1, len(sys.argv), 3):
    run(*sys.argv[i:i + 3])
