"""The signature contract of a vila-tf SavedModel: one table, from which the exporter builds the
signatures, the runtime and the TF Serving clients read their inputs and outputs, the warmup writer
makes its requests, the StableHLO bundle names its functions and the model card describes them.

Each signature runs one lowered head on pixels; an image-bytes signature is its pixel twin behind
the in-graph preprocessing (decode, resize, crop: `vila_tf.savedmodel.preprocessing`).
"""
from __future__ import annotations

from typing import NamedTuple, Optional

BYTES, TEXT, PIXELS = "bytes", "text", "pixels"  # input kinds

# The lowered heads (export/model/heads.py). IMAGE is one function returning the image embedding,
# the zero-shot score with its six per-attribute scores and, for VILA-R, the quality score from one
# tower pass, so TensorFlow compiles the image tower once per batch size for the three heads.
IMAGE_HEAD, CAPTION_HEAD, TEXT_HEAD, NO_HEAD = "image", "caption", "text_embedding", None

# The release's six zero-shot attributes (its good/bad prompt pairs "good image"/"bad image", ...),
# in its order. The zero-shot signatures return each one's score as its own output, named
# `zero_shot_<attribute>`: self-describing to a TF Serving client (GetModelMetadata,
# saved_model_cli, a REST response's keys) without the export metadata.
ZERO_SHOT_ATTRIBUTES = ("image", "lighting", "content", "background", "foreground", "composition")
ZERO_SHOT_ATTRIBUTE_OUTPUTS = tuple(f"zero_shot_{a}" for a in ZERO_SHOT_ATTRIBUTES)
ZERO_SHOT_OUTPUTS = ("zero_shot_score",) + ZERO_SHOT_ATTRIBUTE_OUTPUTS


class Signature(NamedTuple):
    name: str
    input: str  # the input key
    kind: str  # BYTES, TEXT or PIXELS
    outputs: tuple  # output keys, in order
    head: Optional[str]  # the lowered head it runs (NO_HEAD: TensorFlow ops only)
    pixels: Optional[str] = None  # a bytes signature: the pixel signature it calls after preprocessing
    any_rank: bool = False  # also takes a scalar (the TF Hub `google/vila/image` call)
    purpose: str = ""  # one line, for the model card and the docs


_SIGNATURES = (
    Signature("serving_default", "image_bytes", BYTES, ("predictions",), IMAGE_HEAD, "score_pixels", any_rank=True,
              purpose="{scorer}; one image as a scalar string or a batch `[B]` (the TF Hub `google/vila/image` call)"),
    Signature("image_embedding", "image_bytes", BYTES, ("image_embedding",), IMAGE_HEAD, "image_embedding_pixels",
              purpose="l2-normalized contrastive image embedding"),
    Signature("zero_shot", "image_bytes", BYTES, ZERO_SHOT_OUTPUTS, IMAGE_HEAD, "zero_shot_pixels",
              purpose="zero-shot aesthetic score `zero_shot_score`: mean over the prompt pairs of softmax(good vs "
                      "bad similarity); each pair's own softmax as `zero_shot_<attribute>` (image, lighting, "
                      "content, background, foreground, composition)"),
    Signature("caption", "image_bytes", BYTES, ("caption", "caption_ids", "caption_length"), CAPTION_HEAD,
              "caption_pixels", purpose="greedy aesthetic comment: text, token ids and length"),
    Signature("preprocess", "image_bytes", BYTES, ("image",), NO_HEAD,
              purpose="the model's preprocessing alone: decoded, resized, cropped pixels in [0, 1]"),
    Signature("score_pixels", "image", PIXELS, ("predictions",), IMAGE_HEAD),
    Signature("image_embedding_pixels", "image", PIXELS, ("image_embedding",), IMAGE_HEAD),
    Signature("zero_shot_pixels", "image", PIXELS, ZERO_SHOT_OUTPUTS, IMAGE_HEAD),
    Signature("caption_pixels", "image", PIXELS, ("caption", "caption_ids", "caption_length"), CAPTION_HEAD),
    Signature("text_embedding", "text", TEXT, ("text_embedding",), TEXT_HEAD,
              purpose="l2-normalized contrastive text embedding"),
)
SIGNATURES = {s.name: s for s in _SIGNATURES}
ALL_SIGNATURES = tuple(SIGNATURES)

# A personal export (`vila-tf fit`, docs/personal.md) has every signature above, `serving_default`
# and `score_pixels` returning the personal score, and the base model's own score under these.
_PERSONAL_SIGNATURES = (
    Signature("base_score", "image_bytes", BYTES, ("predictions",), IMAGE_HEAD, "base_score_pixels", any_rank=True,
              purpose="the base model's own score ({scorer}), as its `serving_default` returned it before the "
                      "personal head"),
    Signature("base_score_pixels", "image", PIXELS, ("predictions",), IMAGE_HEAD),
)
PERSONAL_SIGNATURES = tuple(s.name for s in _PERSONAL_SIGNATURES)
_EVERY = _SIGNATURES + _PERSONAL_SIGNATURES

# Views of the table for callers that need one column (the personal signatures included).
SIGNATURE_INPUTS = {s.name: (s.input, s.kind) for s in _EVERY}  # name -> (input key, kind)
SIGNATURE_OUTPUTS = {s.name: s.outputs for s in _EVERY}  # name -> output keys


def bytes_twin(pixel_signature: str) -> str:
    """The image-bytes signature that calls a pixel signature (score_pixels -> serving_default)."""
    return next(s.name for s in _EVERY if s.pixels == pixel_signature)


def purpose(name: str, scorer: str) -> str:
    """One line on what a signature returns; `scorer` names the score this model gives."""
    sig = SIGNATURES.get(name) or next(s for s in _PERSONAL_SIGNATURES if s.name == name)
    if sig.kind == PIXELS:
        return f"as `{bytes_twin(name)}`, on already preprocessed pixels (float32 in [0, 1])"
    return sig.purpose.format(scorer=scorer)


# Files inside a SavedModel, relative to its folder.
METADATA_RELATIVE = "assets.extra/vila_tf.json"  # export metadata (vila_tf.core.metadata)
WARMUP_RELATIVE = "assets.extra/tf_serving_warmup_requests"  # TF Serving warmup (PredictionLog TFRecord)
