"""bfloat16 compute against the praxis goldens, and the StableHLO bundle run by JAX alone.

Bounds are those documented in docs/accelerators.md ("Accuracy of bfloat16 compute").
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from conftest import DATA, FIXTURE_OVERRIDES, build_once, shared_dir, golden
from export.model.tree import flatten
from vila_tf.core.signatures import ZERO_SHOT_ATTRIBUTES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNNER = os.path.join(ROOT, "benchmarks", "accelerator.py")
# docs/accelerators.md: bfloat16 compute vs praxis float32, on the fixtures.
BF16_EMBEDDING_ABS = 5e-3
BF16_EMBEDDING_COSINE = 0.9999
BF16_SCORE_ABS = 3e-3


def _cosine(a, b):
    return np.sum(a * b, -1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def _bf16_export(name, spm_model, out):
    """A fixture exported with bfloat16 compute (CPU lowering only, to keep the suite fast)."""
    from export.checkpoints import paxml as checkpoint
    from export.savedmodel import writer as savedmodel
    ck = checkpoint.load(os.path.join(DATA, name, "ckpt"), **FIXTURE_OVERRIDES)
    return savedmodel.write_savedmodel(
        ck.params, ck.config, spm_model, out, savedmodel.ExportOptions(compute_dtype="bfloat16", platforms=("cpu",)),
        log=lambda m: None, consume_params=True)


# ~50 s per fixture: `make test-slow`. The default suite checks the same lowered functions in
# test_bfloat16_heads_within_documented_bounds.
@pytest.mark.slow
@pytest.mark.parametrize("name", ["vila_r_tiny", "vila_p_tiny"])
def test_bfloat16_compute_export_within_documented_bounds(tmp_path, spm_model, name):
    import tensorflow_text  # noqa: F401
    path = _bf16_export(name, spm_model, str(tmp_path / name))
    m = tf.saved_model.load(path)
    g = golden(name)
    image = tf.constant(g["input/image"])
    emb = m.signatures["image_embedding_pixels"](image=image)["image_embedding"].numpy()
    want = g["pred/contrastive_img_embed_norm"]
    assert np.abs(emb - want).max() <= BF16_EMBEDDING_ABS
    assert _cosine(emb, want).min() >= BF16_EMBEDDING_COSINE
    # ...and not float32 in disguise: bfloat16 rounding shows at this size.
    assert np.abs(emb - want).max() > 1e-5
    cap = m.signatures["caption_pixels"](image=image)
    np.testing.assert_array_equal(cap["caption_ids"].numpy(), g["decode/hyp"][:, 0])
    np.testing.assert_array_equal(cap["caption_length"].numpy(), g["decode/hyplen"][:, 0])
    if name == "vila_r_tiny":
        score = m.signatures["score_pixels"](image=image)["predictions"].numpy()
        assert np.abs(score - g["pred/quality_scores"]).max() <= BF16_SCORE_ABS
    meta = json.load(open(os.path.join(path, "assets.extra", "vila_tf.json")))
    assert meta["dtype"] == "float32" and meta["compute_dtype"] == "bfloat16"
    # The model card states what this export computes in.
    from export.publish import model_card
    card = model_card.render(model_card.read_facts(path), model_card.PackageInfo(name, 1, f"{name}_1.tar.gz", "0" * 64, 1))
    assert "| Weights dtype | float32 |" in card
    assert "| Compute dtype | bfloat16: matrix multiplications take bfloat16 operands" in card


@pytest.mark.parametrize("name", ["vila_r_tiny", "vila_p_tiny"])
def test_bfloat16_heads_within_documented_bounds(name):
    """The functions the export lowers, with the export's bfloat16 compute cast: the text tower on the
    golden token ids (the signature tokenizes strings with another SentencePiece model), the image
    embedding, the caption and (VILA-R) the score."""
    from export.checkpoints import paxml as checkpoint
    from export.model import heads
    ck = checkpoint.load(os.path.join(DATA, name, "ckpt"), **FIXTURE_OVERRIDES)
    g = golden(name)
    import functools

    import jax
    p = heads.compute_params(ck.params, "bfloat16")
    jit = lambda f: jax.jit(functools.partial(f, cfg=ck.config))
    got = np.asarray(jit(heads.text_embedding)(p, ids=g["input/ids"][:, 0], paddings=g["input/paddings"][:, 0]))
    want = g["text_only/contrastive_txt_embed_norm"]
    assert np.abs(got - want).max() <= BF16_EMBEDDING_ABS
    assert _cosine(got, want).min() >= BF16_EMBEDDING_COSINE
    emb = np.asarray(jit(heads.image_embedding)(p, images=g["input/image"]))
    want = g["pred/contrastive_img_embed_norm"]
    assert np.abs(emb - want).max() <= BF16_EMBEDDING_ABS and _cosine(emb, want).min() >= BF16_EMBEDDING_COSINE
    assert np.abs(emb - want).max() > 1e-5  # bfloat16 rounding shows: not float32 in disguise
    if name == "vila_r_tiny":
        score = np.asarray(jit(heads.score)(p, images=g["input/image"]))
        assert np.abs(score - g["pred/quality_scores"]).max() <= BF16_SCORE_ABS
    ids, lengths, _ = jit(heads.caption)(p, images=g["input/image"])
    np.testing.assert_array_equal(np.asarray(ids), g["decode/hyp"][:, 0])


def test_compute_params_casts_only_matmul_weights():
    from export.checkpoints import paxml as checkpoint
    from export.model import heads
    ck = checkpoint.load(os.path.join(DATA, "vila_r_tiny", "ckpt"), **FIXTURE_OVERRIDES)
    flat = flatten(heads.compute_params(ck.params, "bfloat16"))
    for path, v in flat.items():
        assert v.dtype == ("bfloat16" if path.endswith("/w") else "float32"), path
    with pytest.raises(ValueError, match="compute dtype"):
        heads.compute_params(ck.params, "float16")


def _run_runner(bundle, *args):
    """benchmarks/accelerator.py in a fresh process in which `import tensorflow` fails."""
    code = ("import sys\n"
            f"sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})\n"
            "from blocked_imports import block\n"
            "block(('tensorflow', 'tensorflow_text', 'tf_keras', 'flax'), 'the runner must need only jax and numpy')\n"
            "sys.path.pop(0)\n"
            f"sys.argv = [{RUNNER!r}, {bundle!r}] + {list(args)!r}\n"
            f"exec(compile(open({RUNNER!r}).read(), {RUNNER!r}, 'exec'))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, JAX_PLATFORMS="cpu"))
    return r, (json.loads(r.stdout) if r.stdout.strip().startswith("{") else None)


@pytest.fixture(scope="session")
def bundle(exported, tmp_path_factory, worker_id):
    """The tiny VILA-R export's bundle, written once per run and shared by the workers."""
    from export.tools import stablehlo_bundle
    return build_once(str(shared_dir(tmp_path_factory, worker_id) / "bundle"),
                       lambda d: stablehlo_bundle.write_bundle(exported["vila_r_tiny"], d, log=lambda m: None))


def test_bundle_holds_the_savedmodels_outputs(bundle, exported):
    """The bundle's expected outputs are what the SavedModel's signatures give for its inputs."""
    import tensorflow_text  # noqa: F401
    m = tf.saved_model.load(exported["vila_r_tiny"])
    manifest = json.load(open(os.path.join(bundle, "manifest.json")))
    assert set(manifest["functions"]) == {"image", "caption", "text_embedding"}
    # The score, embedding and zero-shot signatures share one lowered function.
    assert sorted(manifest["functions"]["image"]["signatures"]) == sorted(
        ["serving_default", "score_pixels", "image_embedding", "image_embedding_pixels", "zero_shot", "zero_shot_pixels"])
    # (function, signature, output key, the function's output, its column or None)
    checks = [("image", "image_embedding_pixels", "image_embedding", 0, None),
              ("image", "zero_shot_pixels", "zero_shot_score", 1, None),
              ("image", "score_pixels", "predictions", 3, None),
              ("caption", "caption_pixels", "caption_ids", 0, None)]
    # the per-attribute scores: one [B, 6] output of the image function, a named output each
    checks += [("image", "zero_shot_pixels", f"zero_shot_{a}", 2, i) for i, a in enumerate(ZERO_SHOT_ATTRIBUTES)]
    for name, signature, key, output, column in checks:
        spec = manifest["functions"][name]
        image_pos = next(k for k, i in enumerate(spec["inputs"]) if i.get("data") == "image")
        z = np.load(os.path.join(bundle, spec["samples"]), allow_pickle=False)
        got = m.signatures[signature](image=tf.constant(z[f"input_{image_pos}"]))[key].numpy()
        want = z[f"output_{output}"] if column is None else z[f"output_{output}"][:, column]
        np.testing.assert_allclose(got, want, atol=1e-6)
    assert manifest["functions"]["image"]["outputs"][2] == {"shape": [None, len(ZERO_SHOT_ATTRIBUTES)],
                                                            "dtype": "float32"}


def test_bundle_round_trip_without_tensorflow(bundle, tmp_path):
    # Batch 2 is the samples' batch: one compilation per function serves the check and the timing.
    r, res = _run_runner(bundle, "--batch-sizes", "2", "--repeats", "1")
    assert r.returncode == 0, r.stderr[-3000:]
    assert res["passed"] is True and res["backend"] == "cpu" and res["weights"] == "bundle"
    assert set(res["functions"]) == {"image", "caption", "text_embedding"}
    for name, f in res["functions"].items():
        assert f["check"]["passed"] is True, (name, f["check"])
        assert [t["batch"] for t in f["timings"]] == [2] and all(t["seconds"] > 0 for t in f["timings"])
    assert all(o["agreement"] == 1.0 for o in res["functions"]["caption"]["check"]["outputs"])
    assert res["functions"]["caption"]["timings"][0]["tokens_per_s"] > 0


def test_runner_catches_a_wrong_output(bundle, tmp_path):
    """The check can fail: shift one expected score by 1e-3 (over the float32 bound of 1e-4)."""
    import shutil
    bad = str(tmp_path / "bad")
    shutil.copytree(bundle, bad)
    path = os.path.join(bad, "image.npz")
    z = dict(np.load(path, allow_pickle=False))
    z["output_3"] = z["output_3"] + 1e-3  # the image function's fourth output: the quality score
    np.savez(path, **z)
    r, res = _run_runner(bad, "--functions", "image", "--batch-sizes", "2", "--repeats", "1")
    assert r.returncode == 1 and res["passed"] is False
    errors = [o["max_abs_error"] for o in res["functions"]["image"]["check"]["outputs"]]
    assert errors[3] == pytest.approx(1e-3, rel=1e-2) and max(errors[:3]) < 1e-4
