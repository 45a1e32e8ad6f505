"""The LiteRT export's contract: folder layout, metadata file, signatures and variants.

Written by `python -m export litert` (export/tools/litert.py) and read by the runtime
(vila_tf.litert.model), `vila-tf info` and the model card, so the three cannot disagree.
No TensorFlow, no LiteRT here: only names and the metadata reader.

    LITERT_DIR/vila_litert.json          metadata: model type, config, demo flag, variants, sha256
    LITERT_DIR/vila_image_float32.tflite the image heads, float32 weights (the exact variant)
    LITERT_DIR/vila_image_float16.tflite float16 weights (half the size)
    LITERT_DIR/vila_image_int8.tflite    int8 weights, dynamic-range (a quarter of the size, fastest)
    LITERT_DIR/vila_image_mediapipe_{float32,float16,int8}.tflite  the same, input fixed at 272x272
                                          (MediaPipe Tasks; MEDIAPIPE_KEY below)

Every `.tflite` carries TFLite Model Metadata (export/tools/litert_metadata.py).
"""
from __future__ import annotations

import json
import os

from vila_tf.core.signatures import ZERO_SHOT_ATTRIBUTE_OUTPUTS

FORMAT = "vila-tf-litert/1"
METADATA_FILE = "vila_litert.json"
VARIANTS = ("float32", "float16", "int8")
DEFAULT_VARIANT = "float32"

# The one signature: decoded RGB pixels of one photo at any size, the release's preprocessing
# inside (docs/model.md §11), all three image heads out.
IMAGE_SIGNATURE = "image"
IMAGE_INPUT = "image"  # uint8 [1, H, W, 3]
# The release's six zero-shot attributes, each pair's score as its own output [1], named and
# ordered as the SavedModel's zero-shot signature (`zero_shot_image`, `zero_shot_lighting`, ...).
ATTRIBUTE_OUTPUTS = ZERO_SHOT_ATTRIBUTE_OUTPUTS
# Every export's outputs: [1, 1], [1, D], [1], then [1] per attribute.
OUTPUTS = ("predictions", "image_embedding", "zero_shot_score") + ATTRIBUTE_OUTPUTS
# Your own prompt pairs, embedded at conversion (`python -m export litert --prompt 'GOOD|BAD'`):
# one more output, float32 [1, K], column k = softmax(image·good_k, image·bad_k)[good], the pairs
# in the order given and recorded in the metadata under PROMPTS_KEY as [["good", "bad"], ...].
# An export converted without --prompt has neither the output nor the pairs.
PROMPT_SCORES_OUTPUT = "zero_shot_prompt_scores"
PROMPTS_KEY = "prompts"

# The heads as the models' TFLite metadata names them (MediaPipe Tasks' `head_name`): the
# signature's output names, but `score` for `predictions` (the SavedModel's name for it).
HEAD_NAMES = {"predictions": "score"}

# MediaPipe-ready copies of the variants, for MediaPipe Tasks (ImageEmbedder, ImageClassifier),
# which resize each photo to the model's stored input shape: the same graph with its input fixed at
# the size the release's preprocessing resizes to first (docs/model.md §11; the center crop and /255
# stay inside), its outputs in OUTPUTS' order. Recorded under MEDIAPIPE_KEY as {"input": {...},
# "heads": [...], "variants": {variant: {"file", "bytes", "sha256"}}}, beside "variants" (the
# runtime's models); an export written before them has no MEDIAPIPE_KEY.
MEDIAPIPE_KEY = "mediapipe"
MEDIAPIPE_INPUT_SIZE = 272
MEDIAPIPE_INPUT_SHAPE = (1, MEDIAPIPE_INPUT_SIZE, MEDIAPIPE_INPUT_SIZE, 3)  # uint8 RGB


class LiteRTExportError(ValueError):
    """A folder that is not a complete LiteRT export, or a variant it does not hold."""


def model_file(variant: str) -> str:
    return f"vila_image_{variant}.tflite"


def mediapipe_file(variant: str) -> str:
    return f"vila_image_mediapipe_{variant}.tflite"


def head_name(output: str) -> str:
    return HEAD_NAMES.get(output, output)


def mediapipe_variants(meta: dict) -> dict:
    """{variant: record} of the MediaPipe-ready models; {} for an export written before them."""
    return dict((meta.get(MEDIAPIPE_KEY) or {}).get("variants") or {})


def resolve(path) -> str | None:
    """The LiteRT export at `path`: the folder itself, or the newest numbered version of a base
    folder (`make litert` writes LITERT_OUT/<name>/<version>/, as TF Serving's layout); None if neither."""
    from vila_tf.core.versions import local_versions, numbered
    path = os.fspath(path)
    if os.path.isfile(os.path.join(path, METADATA_FILE)):
        return path
    versions = local_versions(path, marker=METADATA_FILE)
    return os.path.join(path, numbered(os.listdir(path))[versions[-1]]) if versions else None


def is_litert_dir(path) -> bool:
    return resolve(path) is not None


def read_metadata(path) -> dict:
    path = os.fspath(path)
    meta_path = os.path.join(path, METADATA_FILE)
    try:
        with open(meta_path) as f:
            meta = json.load(f)
    except FileNotFoundError:
        raise LiteRTExportError(f"{path}: not a LiteRT export (no {METADATA_FILE}); write one with "
                                "`python -m export litert SAVEDMODEL --out DIR`") from None
    except (OSError, json.JSONDecodeError) as e:
        raise LiteRTExportError(f"{meta_path}: unreadable ({e}); write the export again") from None
    if meta.get("format") != FORMAT:
        raise LiteRTExportError(f"{meta_path}: format {meta.get('format')!r}, this vila_tf reads {FORMAT!r}")
    return meta


def prompts(meta: dict) -> tuple:
    """The prompt pairs baked into the export, ((good, bad), ...) in the column order of
    PROMPT_SCORES_OUTPUT; () when it was converted without --prompt."""
    pairs = meta.get(PROMPTS_KEY) or ()
    if not isinstance(pairs, (list, tuple)) or not all(
            isinstance(p, (list, tuple)) and len(p) == 2 and all(isinstance(x, str) for x in p) for p in pairs):
        raise LiteRTExportError(f"{METADATA_FILE}: {PROMPTS_KEY!r} is {pairs!r}, expected [[good, bad], ...]; "
                                "write the export again")
    return tuple((p[0], p[1]) for p in pairs)


def outputs(meta: dict) -> tuple:
    """The output names of the export's `image` signature as its metadata records them (an export
    converted before the attribute outputs has only the first three of OUTPUTS)."""
    recorded = meta.get("signatures", {}).get(IMAGE_SIGNATURE, {}).get("outputs")
    return tuple(recorded) if recorded else OUTPUTS[:3]


def variant_path(path, meta: dict, variant: str) -> str:
    variants = meta.get("variants", {})
    if variant not in variants:
        raise LiteRTExportError(f"{path}: no {variant!r} model (this export has {', '.join(variants) or 'none'}); "
                                f"choose one of those")
    file = os.path.join(os.fspath(path), variants[variant]["file"])
    if not os.path.isfile(file):
        raise LiteRTExportError(f"{file}: missing (the metadata lists it): copy the whole export folder")
    return file
