"""The signature contract of a vila-tf SavedModel: names, inputs and outputs.

Shared by the exporter (which builds them), the runtime, the TF Serving clients and the warmup
writer, so the three can never disagree.
"""
BYTES, TEXT, PIXELS = "bytes", "text", "pixels"

# signature name -> (input key, input kind)
SIGNATURE_INPUTS = {
    "serving_default": ("image_bytes", BYTES),
    "image_embedding": ("image_bytes", BYTES),
    "zero_shot": ("image_bytes", BYTES),
    "caption": ("image_bytes", BYTES),
    "preprocess": ("image_bytes", BYTES),
    "score_pixels": ("image", PIXELS),
    "image_embedding_pixels": ("image", PIXELS),
    "zero_shot_pixels": ("image", PIXELS),
    "caption_pixels": ("image", PIXELS),
    "text_embedding": ("text", TEXT),
}

# The release's six zero-shot attributes (its good/bad prompt pairs "good image"/"bad image", ...),
# in its order. The zero-shot signatures return each one's score as its own output, named
# `zero_shot_<attribute>`: self-describing to a TF Serving client (GetModelMetadata,
# saved_model_cli, a REST response's keys) without the export metadata.
ZERO_SHOT_ATTRIBUTES = ("image", "lighting", "content", "background", "foreground", "composition")
ZERO_SHOT_ATTRIBUTE_OUTPUTS = tuple(f"zero_shot_{a}" for a in ZERO_SHOT_ATTRIBUTES)
ZERO_SHOT_OUTPUTS = ("zero_shot_score",) + ZERO_SHOT_ATTRIBUTE_OUTPUTS

# signature name -> output keys
SIGNATURE_OUTPUTS = {
    "serving_default": ("predictions",),
    "score_pixels": ("predictions",),
    "image_embedding": ("image_embedding",),
    "image_embedding_pixels": ("image_embedding",),
    "zero_shot": ZERO_SHOT_OUTPUTS,
    "zero_shot_pixels": ZERO_SHOT_OUTPUTS,
    "caption": ("caption", "caption_ids", "caption_length"),
    "caption_pixels": ("caption", "caption_ids", "caption_length"),
    "preprocess": ("image",),
    "text_embedding": ("text_embedding",),
}

ALL_SIGNATURES = tuple(SIGNATURE_INPUTS)

# Files inside a SavedModel, relative to its folder.
METADATA_RELATIVE = "assets.extra/vila_tf.json"  # export metadata (model kind, config, demo flag...)
WARMUP_RELATIVE = "assets.extra/tf_serving_warmup_requests"  # TF Serving warmup (PredictionLog TFRecord)
