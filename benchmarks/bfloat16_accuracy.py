"""What bfloat16 compute costs in accuracy, on the genuine fixtures' praxis goldens.

For each fixture (tests/data/*/golden.npz) and each storage x compute dtype pair, runs the heads the
export lowers (export.heads with heads.compute_params: the same functions, run by JAX on CPU) and
compares them with praxis' float32 outputs: quality scores, image and text embeddings (max |error|,
min cosine similarity), teacher-forced logits and greedy-caption token agreement. Prints JSON.

  python benchmarks/bfloat16_accuracy.py [--out FILE.json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # run as a script: the repository root (for `export`) is not on the path

import numpy as np  # noqa: E402
from export.model.tree import flatten, unflatten  # noqa: E402

DATA = os.path.join(ROOT, "tests", "data")
FIXTURES = ("vila_r_tiny", "vila_p_tiny")
FIXTURE_OVERRIDES = {"decoding_max_len": 16}


def _cosine(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.min(np.sum(a * b, -1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))))


def _errors(got, want) -> dict:
    got = np.asarray(got, np.float32)
    return {"max_abs_error": float(np.max(np.abs(got - want))), "min_cosine": _cosine(got, want)}


def measure(name: str, storage: str, compute: str) -> dict:
    import jax.numpy as jnp
    from export.checkpoints import paxml as checkpoint
    from export.model import heads
    ck = checkpoint.load(os.path.join(DATA, name, "ckpt"), **FIXTURE_OVERRIDES)
    g = np.load(os.path.join(DATA, name, "golden.npz"), allow_pickle=False)
    # Storage rounding first (what the SavedModel's variables hold), then the compute cast.
    stored = {k: np.asarray(jnp.asarray(v).astype(storage).astype(jnp.float32))
              for k, v in flatten(ck.params).items()}
    p = heads.compute_params(unflatten(stored), compute)
    cfg, img = ck.config, g["input/image"]
    ids, pad = g["input/ids"][:, 0], g["input/paddings"][:, 0]
    out = {"image_embedding": _errors(heads.image_embedding(p, cfg, img), g["pred/contrastive_img_embed_norm"]),
           "text_embedding": _errors(heads.text_embedding(p, cfg, ids, pad), g["text_only/contrastive_txt_embed_norm"])}
    if cfg.has_quality_head:
        score = np.asarray(heads.score(p, cfg, img), np.float32)
        out["score"] = {"max_abs_error": float(np.max(np.abs(score - g["pred/quality_scores"])))}
    logits = np.asarray(heads.teacher_forced_logits(p, cfg, img, ids, pad))
    valid = pad == 0  # golden logits at padded positions are praxis-specific
    out["teacher_forced_logits"] = {"max_abs_error": float(np.max(np.abs(logits - g["teacher_forced_logits"])[valid]))}
    cap_ids, cap_len, _ = heads.caption(p, cfg, img)
    want = g["decode/hyp"][:, 0]
    out["caption"] = {"token_agreement": float(np.mean(np.asarray(cap_ids) == want)),
                      "identical_captions": int(np.sum(np.all(np.asarray(cap_ids) == want, axis=1))),
                      "captions": int(want.shape[0]),
                      "lengths_identical": bool(np.array_equal(np.asarray(cap_len), g["decode/hyplen"][:, 0]))}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    res = {f"{s}/{c}": {n: measure(n, s, c) for n in FIXTURES}
           for s, c in (("float32", "float32"), ("bfloat16", "float32"), ("float32", "bfloat16"),
                        ("bfloat16", "bfloat16"))}
    text = json.dumps(res, indent=1)
    print(text)
    if a.out:
        from vila_tf.core.atomic import atomic_file
        with atomic_file(a.out) as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
