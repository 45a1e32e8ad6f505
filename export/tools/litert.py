"""`python -m export litert`: the image heads as LiteRT models for phones, edge boxes and a
TensorFlow-free `vila_tf` (docs/on_device.md).

    python -m export litert SAVEDMODEL_DIR --out LITERT_DIR [--prompt 'GOOD|BAD' ...]
    python -m export litert --checkpoint CKPT_DIR --spm SPM_MODEL --out LITERT_DIR

One `.tflite` per variant, each with one signature `image`: decoded RGB pixels, uint8
[1, H, W, 3] at any size, with the release's preprocessing inside, -> `predictions` [1, 1] (the
VILA-R score; the zero-shot score for a pretrain model), `image_embedding` [1, D],
`zero_shot_score` [1] and its six attributes `zero_shot_image` ... `zero_shot_composition` [1]
each (the SavedModel's zero-shot outputs), and with `--prompt` your own pairs' scores
`zero_shot_prompt_scores` [1, K] (embedded at conversion; vila_tf/litert/format.py). The
variants: float32 (converted by the TFLite converter, builtin ops only), float16 and int8 weights
(the float32 model quantized by ai-edge-quantizer: float16 weight casting; per-channel int8
weights with dynamic-range int8 compute). Every model is checked before it is
written: builtin ops only and no shape computation (static shapes, export/tools/litert_graph.py).
Beside each variant, its MediaPipe-ready copy `vila_image_mediapipe_<variant>.tflite` (the same
graph, input fixed at 272x272 for MediaPipe Tasks: export/tools/litert_mediapipe.py), checked to
give the variant's outputs on a 272x272 photo. Every file carries TFLite Model Metadata
(export/tools/litert_metadata.py). The folder is written atomically with `vila_litert.json`
(vila_tf/litert/format.py).
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import io
import json
import os
import shutil
import sys
import tempfile
import time
from typing import Callable, Iterable, Optional

from .. import PROG, overrides
from ..log import log as _log
from vila_tf.core.atomic import atomic_dir
from vila_tf.litert import format as litert_format
from vila_tf.core import personal, zero_shot
from vila_tf.core.digest import file_sha256

# Ops that compute shapes at run time: a model holding one was not lowered for static shapes.
SHAPE_OPS = frozenset({"SHAPE", "RANK", "SIZE", "BROADCAST_TO", "BROADCAST_ARGS", "UNSORTED_SEGMENT_PROD",
                       "RANGE", "FILL", "WHERE", "DYNAMIC_UPDATE_SLICE"})
# What the variants are and how they were made (written into the metadata and the model card).
QUANTIZATION = {
    "float32": "none: float32 weights and compute (the SavedModel's numbers)",
    "float16": "float16 weights of every fully-connected layer (ai-edge-quantizer float casting), float32 compute",
    "int8": "int8 per-channel weights of every fully-connected layer, activations quantized to int8 at run time "
            "(dynamic range; ai-edge-quantizer)",
}


class LiteRTError(ValueError):
    """A model that is not what the on-device contract promises (ops, signature)."""


# -- what a .tflite holds ------------------------------------------------------------------------

def op_counts(model: bytes) -> dict:
    """{signature key (or subgraph index): Counter of builtin op names} of a `.tflite` flatbuffer."""
    from tensorflow.lite.python import schema_py_generated as schema
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    root = schema.Model.GetRootAs(model, 0)
    codes = []
    for i in range(root.OperatorCodesLength()):
        c = root.OperatorCodes(i)
        code = max(c.BuiltinCode(), c.DeprecatedBuiltinCode())
        custom = c.CustomCode()
        codes.append(f"CUSTOM:{custom.decode()}" if custom else names.get(code, str(code)))
    keys = {}
    for i in range(root.SignatureDefsLength()):
        sig = root.SignatureDefs(i)
        keys[sig.SubgraphIndex()] = sig.SignatureKey().decode()
    out = {}
    for s in range(root.SubgraphsLength()):
        g = root.Subgraphs(s)
        out[keys.get(s, str(s))] = collections.Counter(codes[g.Operators(k).OpcodeIndex()]
                                                       for k in range(g.OperatorsLength()))
    return out


def check_ops(model: bytes, variant: str) -> dict:
    """The ops of each signature; raises when one is a shape computation or not a builtin."""
    counts = op_counts(model)
    for key, ops in counts.items():
        bad = sorted(op for op in ops if op in SHAPE_OPS or op.startswith("CUSTOM") or op.startswith("FLEX"))
        if bad:
            raise LiteRTError(f"{variant} model, signature {key!r}: {', '.join(bad)} (shape computation or "
                              "non-builtin ops): the heads were not lowered for static shapes")
    return {k: dict(sorted(v.items())) for k, v in counts.items()}


def gpu_delegate_report(model_path: str) -> dict:
    """TFLite's model analyzer with its GPU-delegate compatibility check (tf.lite.experimental.Analyzer):
    whether every op runs on the GPU delegate, and the analyzer's own lines about it."""
    import tensorflow as tf
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        tf.lite.experimental.Analyzer.analyze(model_path=model_path, gpu_compatibility=True)
    lines = [ln.strip() for ln in text.getvalue().splitlines()
             if "GPU" in ln or "gpu" in ln or "not supported" in ln.lower()]
    compatible = any("looks compatible with GPU delegate" in ln for ln in lines) and \
        not any("not supported" in ln.lower() or "incompatible" in ln.lower() for ln in lines)
    return {"compatible": compatible, "analyzer": sorted(set(lines)), "tensorflow": tf.__version__}


# -- the variants ----------------------------------------------------------------------------------

def _quantized(float32_path: str, variant: str) -> bytes:
    """The float32 model with its fully-connected weights quantized by ai-edge-quantizer."""
    os.environ.setdefault("TQDM_DISABLE", "1")  # its progress bars (read when tqdm is imported)
    from ai_edge_quantizer import qtyping, quantizer
    from ai_edge_quantizer.algorithm_manager import AlgorithmName
    q = quantizer.Quantizer(float32_path)
    fc = qtyping.TFLOperationName.FULLY_CONNECTED
    # Only the fully-connected layers: they hold all but a few kilobytes of the weights, and the
    # quantizer would also quantize constant left-hand operands of BATCH_MATMUL (the poolers'
    # queries), which the int8 kernel refuses.
    if variant == "float16":
        q.add_weight_only_config(regex=".*", operation_name=fc, num_bits=16, algorithm_key=AlgorithmName.FLOAT_CASTING)
    elif variant == "int8":
        q.add_dynamic_config(regex=".*", operation_name=fc, num_bits=8)
    else:
        raise ValueError(f"unknown variant {variant!r}")
    with contextlib.redirect_stdout(io.StringIO()):  # its summary table
        return bytes(q.quantize().quantized_model)


# The accuracy images: photo-like (smooth structure and grain), of several sizes and aspect ratios.
ACCURACY_SIZES = ((480, 640), (640, 480), (333, 500), (1024, 768), (256, 256), (600, 900))


def accuracy_images(seed: int = 0) -> list:
    import numpy as np
    rng = np.random.default_rng(seed)
    out = []
    for h, w in ACCURACY_SIZES:
        y, x = np.mgrid[0:h, 0:w].astype(np.float32)
        f = rng.uniform(10, 60, size=3)
        base = np.stack([np.sin(x / f[0] + rng.uniform(0, 6)), np.cos(y / f[1]), np.sin((x + y) / f[2])], -1)
        img = 128 + 90 * base + rng.normal(0, 12, (h, w, 3))
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return out


def measure_accuracy(source, folder: str, records: dict, images: list) -> dict:
    """Each variant against the float32 image heads in JAX on the same pixels (the release's
    preprocessing in TensorFlow, then heads.image_outputs: what the SavedModel's `score_pixels`
    computes): the largest score, zero-shot, per-attribute and (with your own pairs) prompt-score
    differences, and the smallest embedding cosine."""
    import jax
    import numpy as np
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter
    from vila_tf.savedmodel import preprocessing
    from ..model import heads
    cfg = source.config

    def reference(p, x):
        out = heads.image_outputs(p, cfg, x, source.zero_shot_prompts, source.quality_prompt)
        own = heads.zero_shot_pairs_from_embeddings(out[0], source.prompt_embeddings) if source.prompts else None
        return out, own
    fn = jax.jit(reference)
    ref = []
    for img in images:
        pixels = preprocessing.crop_and_scale(tf.constant(img.astype(np.float32))).numpy()[None]
        out, own = fn(source.params, pixels)
        out = [np.asarray(o) for o in out]
        score = out[-1][0, 0] if cfg.has_quality_head else out[1][0]  # the quality score comes last
        if source.personal_head is not None:  # a personal export's score: its head over the features
            head = source.personal_head
            features = np.concatenate([out[0][0], out[2][0, :len(litert_format.ATTRIBUTE_OUTPUTS)]]
                                      + ([np.array([score])] if head["layout"].with_score else []))
            score = personal.apply(head["weights"], head["bias"], features[None])[0]
        ref.append((score, out[0][0], out[1][0], out[2][0], None if own is None else np.asarray(own)[0]))
    result = {}
    for variant, rec in records.items():
        runner = Interpreter(model_path=os.path.join(folder, rec["file"]), num_threads=os.cpu_count()) \
            .get_signature_runner(litert_format.IMAGE_SIGNATURE)
        score_err, zsl_err, attr_err, prompt_err, cosine = [], [], [], [], []
        for img, (score, emb, zsl, attributes, own) in zip(images, ref):
            out = runner(**{litert_format.IMAGE_INPUT: img[None]})
            e = out["image_embedding"][0]
            score_err.append(abs(float(out["predictions"][0, 0]) - float(score)))
            zsl_err.append(abs(float(out["zero_shot_score"][0]) - float(zsl)))
            got = np.array([out[k][0] for k in litert_format.ATTRIBUTE_OUTPUTS])
            attr_err.append(float(np.abs(got - attributes).max()))
            if own is not None:
                prompt_err.append(float(np.abs(out[litert_format.PROMPT_SCORES_OUTPUT][0] - own).max()))
            cosine.append(float(e @ emb / (np.linalg.norm(e) * np.linalg.norm(emb))))
        result[variant] = {"images": len(images), "score_max_abs_error": max(score_err),
                           "zero_shot_max_abs_error": max(zsl_err),
                           "zero_shot_attributes_max_abs_error": max(attr_err),
                           "embedding_min_cosine": min(cosine)}
        if prompt_err:
            result[variant]["prompt_scores_max_abs_error"] = max(prompt_err)
    return result


def _versions() -> dict:
    from importlib import metadata as md
    out = {}
    for dist in ("tensorflow", "jax", "ai-edge-quantizer", "ai-edge-litert", "mediapipe"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    return out


def signature_outputs(dims: int, own_pairs: int) -> dict:
    """The `image` signature's outputs in litert_format's order: {name: {"dtype", "shape"}}."""
    shapes = {"predictions": [1, 1], "image_embedding": [1, dims], "zero_shot_score": [1],
              **{k: [1] for k in litert_format.ATTRIBUTE_OUTPUTS}}
    if own_pairs:
        shapes[litert_format.PROMPT_SCORES_OUTPUT] = [1, own_pairs]
    return {k: {"dtype": "float32", "shape": shapes[k]}
            for k in litert_format.OUTPUTS + ((litert_format.PROMPT_SCORES_OUTPUT,) if own_pairs else ())}


def check_signature(model: bytes, variant: str, expected: dict, input_shape=(1, -1, -1, 3)) -> None:
    """The model's `image` signature has exactly the outputs (names and shapes) the metadata records,
    and its uint8 input the shape signature `input_shape`."""
    from ai_edge_litert.interpreter import Interpreter
    runner = Interpreter(model_content=model).get_signature_runner(litert_format.IMAGE_SIGNATURE)
    got = {k: list(d["shape"]) for k, d in runner.get_output_details().items()}
    want = {k: v["shape"] for k, v in expected.items()}
    if got != want:
        raise LiteRTError(f"{variant} model: signature {litert_format.IMAGE_SIGNATURE!r} outputs {got}, expected {want}")
    (inp,) = runner.get_input_details().values()
    if list(inp["shape_signature"]) != list(input_shape) or inp["dtype"].__name__ != "uint8":
        raise LiteRTError(f"{variant} model: input {inp['dtype'].__name__}{list(inp['shape_signature'])}, "
                          f"expected uint8{list(input_shape)}")


def mediapipe_difference(model_path: str, mediapipe_path: str) -> float:
    """The largest difference between a model's outputs and its MediaPipe-ready copy's on one
    272x272 photo, which the copy's fixed input takes as it is: 0 when only the input shape changed."""
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter
    size = litert_format.MEDIAPIPE_INPUT_SIZE
    image = accuracy_images()[0][:size, :size][None]  # a photo-like crop of the first accuracy image
    a, b = (Interpreter(model_path=p, num_threads=os.cpu_count()).get_signature_runner(
        litert_format.IMAGE_SIGNATURE)(**{litert_format.IMAGE_INPUT: image}) for p in (model_path, mediapipe_path))
    worst = max(float(np.abs(a[k] - b[k]).max()) for k in a)
    if worst > 1e-5:
        raise LiteRTError(f"{mediapipe_path}: differs from {os.path.basename(model_path)} by {worst:.2e} on a "
                          f"{size}x{size} photo, which it should take as it is")
    return worst


def _model_kind(cfg) -> str:
    return "VILA-R (CoCaVilaRankBasedFinetune)" if cfg.has_quality_head else "VILA-P / CoCa pretrain (CoCaVilaPretrain)"


def _write(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def _metadata_writer():
    """export/tools/litert_metadata; a missing mediapipe is a LiteRTError in one line."""
    try:
        from . import litert_metadata
    except ImportError as e:
        raise LiteRTError(f"the TFLite metadata writer is not installed ({e}): pip install 'mediapipe>=1.2' "
                          "(or 'vila-tf[export]')") from None
    return litert_metadata


def write_litert(source, out_dir: str, variants: Iterable[str] = litert_format.VARIANTS,
                 log: Callable[[str], None] = _log) -> str:
    """Converts `source` (export.tools.litert_source.ImageHeads) and writes LITERT_DIR atomically."""
    litert_metadata = _metadata_writer()  # before the conversion: fails in one line, not minutes later
    from . import litert_graph, litert_mediapipe
    from vila_tf.savedmodel import preprocessing
    variants = list(dict.fromkeys(variants))
    variants.sort(key=lambda v: litert_format.VARIANTS.index(v) if v in litert_format.VARIANTS else -1)  # float32 first
    unknown = [v for v in variants if v not in litert_format.VARIANTS]
    if unknown or "float32" not in variants:
        raise ValueError(f"variants {', '.join(variants)}: choose from {', '.join(litert_format.VARIANTS)}, "
                         "float32 included (the others are made from it)")
    cfg = source.config
    out_dir = os.path.abspath(out_dir)
    t0 = time.time()
    with atomic_dir(out_dir) as tmp:
        log(f"lowering the image heads of {cfg.model_type} for batch 1 (static shapes) and converting")
        outputs = signature_outputs(cfg.model_dims, len(source.prompts))
        if source.prompts:
            log(f"your {len(source.prompts)} prompt pair(s), embedded, as {litert_format.PROMPT_SCORES_OUTPUT} "
                f"[1, {len(source.prompts)}]: " + ", ".join(zero_shot.pair_name(p) for p in source.prompts))
        module = litert_graph.ImageHeadsModule(source)
        mediapipe_outputs = list(outputs)  # the contract's order: MediaPipe reports its heads in it
        with tempfile.TemporaryDirectory(dir=os.path.dirname(out_dir)) as scratch:
            model = litert_graph.convert(module, os.path.join(scratch, "savedmodel"))
            del module
            shutil.rmtree(os.path.join(scratch, "savedmodel"))
            float32_source = os.path.join(scratch, "float32.tflite")  # the quantizer's input, without metadata
            records, mediapipe, ops = {}, {}, {}
            for variant in variants:
                path = os.path.join(tmp, litert_format.model_file(variant))
                if variant != "float32":
                    log(f"quantizing: {variant}")
                    model = _quantized(float32_source, variant)
                ops[variant] = check_ops(model, variant)
                check_signature(model, variant, outputs)
                if variant == "float32":
                    with open(float32_source, "wb") as f:
                        f.write(model)
                info = litert_metadata.ModelInfo(
                    model_type=cfg.model_type, model_kind=_model_kind(cfg), variant=variant,
                    quantization=QUANTIZATION[variant], demo_weights=bool(source.source.get("demo_weights")),
                    source=source.source, prompts=source.prompts)
                _write(path, litert_metadata.with_metadata(model, info, cfg.model_dims))
                records[variant] = {"file": os.path.basename(path), "bytes": os.path.getsize(path),
                                    "sha256": file_sha256(path), "quantization": QUANTIZATION[variant]}
                mp_model = litert_mediapipe.fixed_input_model(model, mediapipe_outputs)
                check_signature(mp_model, f"MediaPipe {variant}", outputs, list(litert_format.MEDIAPIPE_INPUT_SHAPE))
                mp_path = os.path.join(tmp, litert_format.mediapipe_file(variant))
                _write(mp_path, litert_metadata.with_metadata(mp_model, dataclasses.replace(info, mediapipe=True),
                                                              cfg.model_dims))
                del mp_model
                mediapipe[variant] = {"file": os.path.basename(mp_path), "bytes": os.path.getsize(mp_path),
                                      "sha256": file_sha256(mp_path),
                                      "max_abs_difference_at_272": mediapipe_difference(path, mp_path)}
                log(f"{variant}: {records[variant]['bytes'] / 1e6:.1f} MB; MediaPipe copy "
                    f"({litert_format.mediapipe_file(variant)}): equal to it on a 272x272 photo within "
                    f"{mediapipe[variant]['max_abs_difference_at_272']:.1e}")
            del model
        log(f"accuracy of each variant against the float32 heads in JAX ({len(ACCURACY_SIZES)} images)")
        accuracy = measure_accuracy(source, tmp, records, accuracy_images())
        for v, a in accuracy.items():
            prompt = f", prompt scores <= {a['prompt_scores_max_abs_error']:.2e}" if source.prompts else ""
            log(f"{v}: score error <= {a['score_max_abs_error']:.2e}, zero-shot <= {a['zero_shot_max_abs_error']:.2e}, "
                f"attributes <= {a['zero_shot_attributes_max_abs_error']:.2e}{prompt}, "
                f"embedding cosine >= {a['embedding_min_cosine']:.6f}")
        log("GPU-delegate analysis")
        gpu = {v: gpu_delegate_report(os.path.join(tmp, records[v]["file"])) for v in variants}
        meta = {
            "format": litert_format.FORMAT,
            "model_type": cfg.model_type,
            "model_kind": _model_kind(cfg),
            "demo_weights": bool(source.source.get("demo_weights")),
            "config": cfg.to_dict(),
            "source": source.source,
            "signatures": {litert_format.IMAGE_SIGNATURE: {
                "inputs": {litert_format.IMAGE_INPUT: {"dtype": "uint8", "shape": [1, -1, -1, 3]}},
                "outputs": outputs}},
            litert_format.PROMPTS_KEY: [list(p) for p in source.prompts],
            "max_pixels": preprocessing.DEFAULT_MAX_PIXELS,
            "preprocessing": "inside the model: TF1 bilinear resize to 272x272 without half-pixel centers, "
                             "center crop 224, /255 (docs/model.md §11)",
            "variants": records,
            litert_format.MEDIAPIPE_KEY: {
                "input": {litert_format.IMAGE_INPUT: {"dtype": "uint8",
                                                      "shape": list(litert_format.MEDIAPIPE_INPUT_SHAPE)}},
                "heads": [litert_format.head_name(o) for o in mediapipe_outputs],
                "variants": mediapipe},
            "accuracy": {"reference": "float32 image heads in JAX on the same pixels (the SavedModel's score_pixels)",
                         "images": [list(s) for s in ACCURACY_SIZES], "variants": accuracy},
            "ops": ops,
            "gpu_delegate": gpu,
            "versions": _versions(),
            "export_seconds": round(time.time() - t0, 1),
        }
        with open(os.path.join(tmp, litert_format.METADATA_FILE), "w") as f:
            json.dump(meta, f, indent=1)
    return out_dir


def cmd_litert(argv) -> int:
    p = argparse.ArgumentParser(
        prog=f"{PROG} litert",
        description="LiteRT (.tflite) models of the image heads (score, image embedding, zero-shot score and "
                    "its six attributes, and your own prompt pairs' scores with --prompt): "
                    "uint8 pixels of any size in, the release's preprocessing inside; float32, float16 "
                    "and int8 variants, each with a MediaPipe-ready copy (input fixed at 272x272) and "
                    "TFLite metadata naming its heads (docs/on_device.md).")
    p.add_argument("savedmodel", nargs="?", help="an export (SavedModel folder or TF Serving base folder)")
    p.add_argument("--checkpoint", help="or a paxml (or converted) checkpoint folder, with --spm")
    p.add_argument("--spm", help="SentencePiece model (with --checkpoint: tokenizes the zero-shot prompts)")
    p.add_argument("--out", required=True, help="LiteRT folder to write (atomically)")
    p.add_argument("--variants", default=",".join(litert_format.VARIANTS),
                   help=f"comma-separated, float32 included (default: {','.join(litert_format.VARIANTS)})")
    p.add_argument("--prompt", action="append", metavar="'GOOD|BAD'",
                   help="your own good/bad prompt pair (repeatable), embedded at conversion: the `image` signature "
                        f"gains `{litert_format.PROMPT_SCORES_OUTPUT}` [1, K], one column per pair in the order given")
    overrides.add(p)
    args = p.parse_args(argv)
    prompts = ()
    if args.prompt:  # a malformed pair fails before any work, in one line
        try:
            prompts = zero_shot.pairs_from(args.prompt)
        except zero_shot.PromptError as e:
            print(f"error: --prompt: {e}", file=sys.stderr)
            return 2
    if bool(args.savedmodel) == bool(args.checkpoint):
        p.error("give an export folder, or --checkpoint with --spm (not both)")
    if args.checkpoint and not args.spm:
        p.error("--checkpoint needs --spm (the zero-shot prompts are tokenized with it)")
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in variants if v not in litert_format.VARIANTS]
    if bad or "float32" not in variants:
        p.error(f"--variants {args.variants}: choose from {', '.join(litert_format.VARIANTS)}, float32 included")
    _metadata_writer()  # before the export's weights are read
    from . import litert_source
    if args.savedmodel:
        source = litert_source.from_savedmodel(args.savedmodel, prompts)
    else:
        source = litert_source.from_checkpoint(args.checkpoint, args.spm, args.step, overrides.read(args), prompts)
    if source.source.get("demo_weights"):
        _log("DEMO weights: the LiteRT models' scores mean nothing either")
    out = write_litert(source, args.out, variants)
    meta = litert_format.read_metadata(out)
    for rec in [*meta["variants"].values(), *litert_format.mediapipe_variants(meta).values()]:
        print(f"{os.path.join(out, rec['file'])}\t{rec['bytes'] / 1e6:.1f} MB\tsha256 {rec['sha256']}")
    return 0
