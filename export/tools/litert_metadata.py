"""TFLite Model Metadata for every LiteRT model of an export, written by mediapipe's metadata writer.

What an app's tooling reads from the `.tflite` itself (Android Studio's model viewer, MediaPipe
Tasks, `metadata_displayer`): the model's name, version, description, author and license; the
input's meaning; every output head by name (`score` for the signature's `predictions`, then
`image_embedding`, `zero_shot_score`, the six attributes and `zero_shot_prompt_scores`, labelled
with your pairs) with its value range. The names are vila_tf.litert.format's (`head_name`).

The input differs by model. A MediaPipe-ready model (export/tools/litert_mediapipe.py) declares an
RGB image, raw 0-255 levels (normalization mean 0, std 1: the /255 is inside), which MediaPipe
Tasks resize the photo to. A plain model's input is any size, which MediaPipe cannot use (it would
resize to the stored [1, 1, 1, 3]): its input is declared a feature tensor, so MediaPipe refuses it
("Expected ImageProperties") instead of returning numbers from a one-pixel photo.

Everything goes through mediapipe's writer (`metadata_writers.metadata_writer.MetadataWriter`):
metadata_info's records, its flatbuffer packing and MetadataPopulator. The subclass below only
hands it the general fields and tensor records its `add_*` helpers leave out (version, author,
license; value ranges; tensor names, which pair each record with its tensor whatever the graph's
output order).
"""
from __future__ import annotations

import dataclasses
from typing import Optional

from vila_tf.core.signatures import ZERO_SHOT_ATTRIBUTES
from vila_tf.litert import format as litert_format
from . import metadata_parser_version, tflite_flatbuffer

metadata_parser_version.install()  # before mediapipe's metadata module is imported (see there)
from mediapipe.tasks.python.metadata import metadata as _metadata  # noqa: E402
from mediapipe.tasks.python.metadata.metadata_writers import metadata_info, metadata_writer  # noqa: E402

# mediapipe's populator copies the whole model through files several times, with TensorFlow's
# gfile whenever TensorFlow is importable (as here), in small chunks: 10.8 s for a full-size
# float32 model where plain files take 4.4 s. Its files are local temporary ones.
_metadata._open_file = open

RELEASE = "VILA: Learning Image Aesthetics from User Comments with Vision-Language Pretraining (CVPR 2023)"


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What the metadata says about one model file."""
    model_type: str  # "vila_r", "vila_p"...
    model_kind: str  # "VILA-R (CoCaVilaRankBasedFinetune)"...
    variant: str  # float32, float16, int8
    quantization: str  # how the variant was made (export/tools/litert.py QUANTIZATION)
    demo_weights: bool
    source: dict  # the LiteRT metadata's "source" (checkpoint, sha256, step, the release's pairs)
    prompts: tuple = ()  # your own (good, bad) pairs, in zero_shot_prompt_scores' column order
    mediapipe: bool = False  # the MediaPipe-ready copy (fixed 272x272 input)


class _Writer(metadata_writer.MetadataWriter):
    def set_general(self, md: metadata_info.GeneralMd) -> "_Writer":
        self._general_md = md  # what add_general_info sets, with every field
        return self

    def add_tensor_input(self, md: metadata_info.TensorMd) -> "_Writer":
        self._input_mds.append(md)  # what add_feature_input appends, with a range
        return self

    def add_tensor_output(self, md: metadata_info.TensorMd, labels: Optional[list] = None) -> "_Writer":
        if labels:  # one label per column, packed into the model as add_classification_output does
            md.associated_files = self._create_label_file_md(
                metadata_writer.Labels().add(labels, exported_filename=f"{md.name}_labels.txt"))
        self._output_mds.append(md)
        return self


def output_tensor_names(model: bytes) -> dict:
    """{signature output name: its tensor's name in the graph} of the `image` signature."""
    from ai_edge_litert import schema_py_generated as schema
    root = schema.Model.GetRootAs(model, 0)
    sig = next(root.SignatureDefs(i) for i in range(root.SignatureDefsLength())
               if root.SignatureDefs(i).SignatureKey().decode() == litert_format.IMAGE_SIGNATURE)
    graph = root.Subgraphs(sig.SubgraphIndex())
    return {sig.Outputs(i).Name().decode(): graph.Tensors(sig.Outputs(i).TensorIndex()).Name().decode()
            for i in range(sig.OutputsLength())}


def _general(info: ModelInfo) -> metadata_info.GeneralMd:
    pretrain = info.model_type != "vila_r"
    what = ("the zero-shot aesthetic score (this pretrain model has no VILA-R head)" if pretrain
            else "the VILA-R aesthetic score")
    usage = (f"Input: one photo's RGB pixels, which MediaPipe Tasks resize to "
             f"{litert_format.MEDIAPIPE_INPUT_SIZE}x{litert_format.MEDIAPIPE_INPUT_SIZE} (the release resizes to "
             "that size first, with TF1 bilinear without half-pixel centers); the center crop to 224 and /255 run "
             "inside the model." if info.mediapipe else
             "Input: one photo's decoded RGB pixels at its own size (resize the input tensor to [1, H, W, 3] "
             "before each call); the release's preprocessing runs inside the model (TF1 bilinear resize to "
             "272x272 without half-pixel centers, center crop 224, /255). For MediaPipe Tasks use "
             f"{litert_format.mediapipe_file(info.variant)}, which takes a fixed 272x272 input.")
    demo = (" DEMO weights (seeded random numbers made by vila-tf): the outputs mean nothing." if info.demo_weights
            else "")
    description = (f"The image heads of a VILA image-aesthetics model ({info.model_kind}): {what}, the image "
                   "embedding, and the zero-shot aesthetic score with its six attributes, from one photo. "
                   f"{usage} Weights: {info.variant}, {info.quantization}. Outputs named in this metadata; the "
                   f"signature '{litert_format.IMAGE_SIGNATURE}' names the score 'predictions'.{demo}")
    src = info.source or {}
    version = "; ".join(x for x in (
        info.model_type,
        f"checkpoint step {src['source_step']}" if src.get("source_step") is not None else "",
        f"checkpoint sha256 {src['source_sha256'][:16]}" if src.get("source_sha256") else "",
        "demo weights" if info.demo_weights else "",
        f"{litert_format.FORMAT} {'MediaPipe ' if info.mediapipe else ''}{info.variant}",
    ) if x)
    if info.demo_weights:
        author = "vila-tf (the VILA architecture by Google Research, with generated weights)"
        licenses = "Apache-2.0 (weights and tokenizer generated by vila-tf; nothing from the VILA release)"
    else:
        author = f"Google Research ({RELEASE}); converted to LiteRT by vila-tf"
        licenses = ("VILA code: Apache-2.0 (google-research/google-research, vila). Weights: the VILA release's "
                    "checkpoints, under the release's terms; check them before you redistribute. "
                    "Conversion (vila-tf): Apache-2.0.")
    name = f"VILA {info.model_type} image heads{' for MediaPipe Tasks' if info.mediapipe else ''} ({info.variant})"
    return metadata_info.GeneralMd(name=name, version=version, description=description, author=author,
                                   licenses=licenses)


def _outputs(info: ModelInfo, dims: int) -> list:
    """(signature output name, head description, (min, max), labels or None), in OUTPUTS' order."""
    pretrain = info.model_type != "vila_r"
    score = ("The zero-shot aesthetic score (as zero_shot_score: this pretrain model has no VILA-R head), "
             "float32 [1, 1]", (0.0, 1.0)) if pretrain else \
        ("The VILA-R aesthetic score, higher is better: the cosine between the photo's VILA-R embedding and "
         "the prompt 'good image', float32 [1, 1]", (-1.0, 1.0))
    out = [("predictions", *score, None),
           ("image_embedding", f"The image embedding, float32 [1, {dims}], l2-normalized: the dot product of two "
                               "is their cosine similarity", (-1.0, 1.0), None),
           ("zero_shot_score", "The zero-shot aesthetic score: the mean of the six attribute scores, float32 [1]",
            (0.0, 1.0), None)]
    pairs = (info.source or {}).get("zero_shot_prompts") or [(f"good {a}", f"bad {a}")
                                                             for a in ZERO_SHOT_ATTRIBUTES]
    for name, (good, bad) in zip(litert_format.ATTRIBUTE_OUTPUTS, pairs):
        out.append((name, f"The zero-shot score of the prompt pair '{good}' / '{bad}': softmax over the photo's "
                          "cosines with the two prompts, the first's share, float32 [1]", (0.0, 1.0), None))
    if info.prompts:
        out.append((litert_format.PROMPT_SCORES_OUTPUT,
                    f"Your own prompt pairs, embedded at conversion (python -m export litert --prompt): float32 "
                    f"[1, {len(info.prompts)}], column k the score of pair k (labels: 'GOOD|BAD'), as the "
                    "attributes are scored", (0.0, 1.0), ["|".join(p) for p in info.prompts]))
    return out


def with_metadata(model: bytes, info: ModelInfo, dims: int) -> bytes:
    """`model` with its TFLite Model Metadata (replacing any it had)."""
    model = tflite_flatbuffer.inline_buffers(model)  # the populator rewrites the flatbuffer (see there)
    writer = _Writer.create(bytearray(model))
    writer.set_general(_general(info))
    if info.mediapipe:
        writer.add_image_input(
            norm_mean=[0.0], norm_std=[1.0], name=litert_format.IMAGE_INPUT,
            description=f"The photo as RGB pixels, uint8 {list(litert_format.MEDIAPIPE_INPUT_SHAPE)}, levels 0-255: "
                        "MediaPipe Tasks resize each photo to it (aspect ratio not kept, as the release's resize)")
    else:
        writer.add_tensor_input(metadata_info.TensorMd(
            name=litert_format.IMAGE_INPUT, min_values=[0], max_values=[255],
            description="The decoded RGB pixels of one photo, uint8 [1, H, W, 3] at its own size, levels 0-255 "
                        "(resize the input tensor to the photo's shape; the model resizes and crops). Not an "
                        f"input MediaPipe Tasks can fill: use {litert_format.mediapipe_file(info.variant)}"))
    tensors = output_tensor_names(model)
    for output, description, (lo, hi), labels in _outputs(info, dims):
        writer.add_tensor_output(metadata_info.TensorMd(
            name=litert_format.head_name(output), description=description, min_values=[lo], max_values=[hi],
            tensor_name=tensors[output]), labels)
    populated, _ = writer.populate()
    del writer  # its temporary label folder goes now, not at interpreter exit
    return bytes(populated)
