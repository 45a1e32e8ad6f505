"""The model card (`<name>.md`) of a package, generated from the SavedModel itself.

Signature names, dtypes and shapes are read from the loaded SavedModel (so the card cannot drift
from what `hub.load` returns), everything else from its `assets.extra/vila_tf.json` metadata.
The text depends only on those and on the package's bytes: no dates, so it is reproducible too.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Optional

from vila_tf.core import metadata as export_metadata
from vila_tf.core import personal
from vila_tf.core import signatures as signatures_lib
from vila_tf.core.signatures import WARMUP_RELATIVE
from vila_tf.savedmodel.tf_compat import releases_in_words


class ModelCardError(Exception):
    """The folder is not a readable vila-tf export (the message names the file)."""


UNKNOWN_SHAPE = "(any shape)"  # serving_default's image_bytes: a scalar (one image) or a batch

PAPER = ("Junjie Ke, Keren Ye, Jiahui Yu, Yonghui Wu, Peyman Milanfar, Feng Yang. *VILA: Learning Image "
         "Aesthetics from User Comments with Vision-Language Pretraining.* CVPR 2023. "
         "[arXiv:2303.14302](https://arxiv.org/abs/2303.14302)")
RELEASE_URL = "https://github.com/google-research/google-research/tree/master/vila"


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str    # tf.DType.name: "string", "float32", "int32"
    shape: str    # shape_text() of the TensorSpec


@dataclasses.dataclass(frozen=True)
class SignatureInfo:
    name: str
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]


@dataclasses.dataclass(frozen=True)
class ModelFacts:
    """What the card says about the SavedModel, gathered before anything is written."""
    metadata: dict
    signatures: tuple[SignatureInfo, ...]
    has_warmup: bool
    unpacked_size: int


@dataclasses.dataclass(frozen=True)
class PackageInfo:
    name: str
    version: int
    archive: str             # file name of the tar.gz
    sha256: str
    size: int
    base_url: Optional[str] = None


def read_metadata(savedmodel_dir: str) -> dict:
    """The export's metadata record (checked: present, valid, a format this vila-tf reads), as the
    JSON fields the card quotes."""
    try:
        return export_metadata.read(savedmodel_dir).to_json()
    except export_metadata.MetadataError as e:
        raise ModelCardError(str(e)) from None


def shape_text(shape) -> str:
    """A tf.TensorShape as the card writes it: `[B, 224, 224, 3]`; an unknown rank is '(any shape)'."""
    if shape.rank is None:
        return UNKNOWN_SHAPE
    dims = ["B" if i == 0 and d is None else "?" if d is None else str(d) for i, d in enumerate(shape.as_list())]
    return "`[" + ", ".join(dims) + "]`"


def _tensor_infos(specs: dict) -> tuple[TensorInfo, ...]:
    return tuple(TensorInfo(k, specs[k].dtype.name, shape_text(specs[k].shape)) for k in sorted(specs))


def read_signatures(savedmodel_dir: str, order: tuple = ()) -> tuple[SignatureInfo, ...]:
    """Loads the SavedModel and reads each signature's inputs and outputs, `order` first."""
    import tensorflow as tf
    import tensorflow_text  # noqa: F401 - registers the SentencePiece ops; without it the load fails
    try:
        loaded = tf.saved_model.load(savedmodel_dir)
    except Exception as e:  # noqa: BLE001 - any load failure means: do not publish this folder
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelCardError(f"{savedmodel_dir}: the SavedModel does not load ({first_line})") from e
    names = [n for n in order if n in loaded.signatures] + sorted(set(loaded.signatures) - set(order))
    out = []
    for name in names:
        fn = loaded.signatures[name]
        out.append(SignatureInfo(name, _tensor_infos(fn.structured_input_signature[1]),
                                 _tensor_infos(fn.structured_outputs)))
    return tuple(out)


def read_facts(savedmodel_dir: str) -> ModelFacts:
    metadata = read_metadata(savedmodel_dir)
    signatures = read_signatures(savedmodel_dir, tuple(metadata.get("signatures", ())))
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(savedmodel_dir) for f in fs)
    return ModelFacts(metadata, signatures, os.path.isfile(os.path.join(savedmodel_dir, WARMUP_RELATIVE)), size)


# --- what the model is ---------------------------------------------------------------------------

def _is_laion(name: str, metadata: dict) -> bool:
    return "laion" in name.lower() or "laion_pretrain" in (metadata.get("source_checkpoint") or "")


def model_title(name: str, metadata: dict) -> str:
    if metadata["demo_weights"]:
        return "VILA demo export (random weights)"
    if metadata["model_type"] == "vila_r":
        return "VILA-R image aesthetics scorer"
    return "LAION CoCa (VILA release)" if _is_laion(name, metadata) else "VILA-P aesthetic vision-language model"


def model_summary(name: str, metadata: dict) -> str:
    if metadata["demo_weights"]:
        kind = "VILA-R" if metadata["model_type"] == "vila_r" else "VILA-P"
        what = (f"**Demo**: the {kind} architecture with seeded random weights. Signatures, shapes, size and "
                "speed are the real model's; the numbers it returns are not.")
    elif metadata["model_type"] == "vila_r":
        what = ("**VILA-R**: VILA pretrained on image–comment pairs (AVA-Captions), then fine-tuned on the AVA "
                "mean-opinion-score task with the rank-based adapter. `serving_default` returns its aesthetic "
                "score (higher is more aesthetic); the model also embeds images and text, scores zero-shot "
                "from prompts and writes aesthetic comments.")
    elif _is_laion(name, metadata):
        what = ("**LAION CoCa**: the release's CoCa model pretrained on LAION image–text pairs "
                "(`laion_pretrain`), the same architecture as VILA-P. It has no VILA-R head: "
                "`serving_default` returns the zero-shot aesthetic score from the prompt pairs below.")
    else:
        what = ("**VILA-P**: the VILA vision-language model pretrained on image–comment pairs (AVA-Captions) "
                "with contrastive and captioning objectives. It has no VILA-R head: `serving_default` "
                "returns the zero-shot aesthetic score from the prompt pairs below.")
    return (what + " Image decoding, resizing and SentencePiece tokenization run inside the graph, so the "
            "model needs only TensorFlow (and `tensorflow_text` for the tokenizer ops) to run.")


def license_text(metadata: dict) -> str:
    if metadata["demo_weights"]:
        return ("The weights are seeded random numbers and the tokenizer was trained on vila-tf's own text, "
                "both generated by vila-tf (Apache 2.0); nothing from the VILA release is included.")
    return (f"The VILA code is Apache 2.0 ([google-research]({RELEASE_URL})). The weights are the release's "
            "checkpoints (`gs://gresearch/vila`) converted without change and stay under the release's terms: "
            "check them before you redistribute this package. The conversion (vila-tf) is Apache 2.0.")


_DEMO_WARNING = ("> **Demo weights.** This package holds the full VILA architecture with *random* weights, made by "
                 "`make export` without checkpoints to show the pipeline at real size. Its scores, embeddings "
                 "and captions mean nothing. Export the released checkpoints (`make export VILA_DIR=...`) "
                 "before publishing anything for real use.")


def signature_purpose(name: str, metadata: dict) -> str:
    if name not in signatures_lib.SIGNATURE_INPUTS:
        return ""
    scorer = ("the VILA-R aesthetic score" if metadata["model_type"] == "vila_r"
              else "the zero-shot aesthetic score (no VILA-R head in this model)")
    if metadata.get(personal.METADATA_KEY) and name in ("serving_default", "score_pixels"):
        # A personal export (`vila-tf fit`): the base score moved to base_score.
        return signatures_lib.purpose(name, "the personal score (the head `vila-tf fit` learned from your labels)")
    return signatures_lib.purpose(name, scorer)


# --- rendering -----------------------------------------------------------------------------------

def _tensors_cell(tensors) -> str:
    return "<br>".join(f"`{t.name}`: {t.dtype} {t.shape}" for t in tensors)


def signature_table(facts: ModelFacts) -> str:
    rows = ["| signature | inputs | outputs | returns |", "|---|---|---|---|"]
    for s in facts.signatures:
        rows.append(f"| `{s.name}` | {_tensors_cell(s.inputs)} | {_tensors_cell(s.outputs)} | "
                    f"{signature_purpose(s.name, facts.metadata)} |")
    return "\n".join(rows)


def handle(pkg: PackageInfo) -> str:
    base = pkg.base_url.rstrip("/") if pkg.base_url else "https://<your-host>/<path>"
    return f"{base}/{pkg.archive}"


def _megabytes(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


def _details(facts: ModelFacts, pkg: PackageInfo) -> str:
    m, cfg = facts.metadata, facts.metadata["config"]
    versions = m.get("versions", {})
    source = m.get("source_checkpoint") or "unknown"
    if m.get("source_step") is not None:
        source += f" (step {m['source_step']})"
    rows = [
        ("Package", f"`{pkg.archive}`, {_megabytes(pkg.size)} ({_megabytes(facts.unpacked_size)} unpacked)"),
        ("sha256", f"`{pkg.sha256}`"),
        ("Model", f"{m.get('model_kind', m['model_type'])}, `model_type` {m['model_type']}"),
        ("Demo weights", "**yes: random weights, meaningless outputs**" if m["demo_weights"] else "no"),
        ("Architecture", f"{cfg.get('num_encoder_layers')} image encoder layers, "
                         f"{cfg.get('num_unimodal_layers')}+{cfg.get('num_crossmodal_layers')} text decoder layers, "
                         f"width {cfg.get('model_dims')}, {cfg.get('num_heads')} heads, "
                         f"patch {cfg.get('patch_size')}, vocabulary {cfg.get('vocab_size')}, "
                         f"captions of up to {cfg.get('decoding_max_len')} tokens"),
        ("Weights dtype", m.get("dtype", "float32")),
        ("Compute dtype", compute_dtype_text(m)),
        ("Source checkpoint", source),
        ("Source sha256", f"`{m['source_sha256']}`" if m.get("source_sha256") else "not recorded"),
        ("Platforms", ", ".join(m.get("platforms", [])) + " (StableHLO serialized for each; one artifact)"),
        ("TensorFlow / TF Serving", _tensorflow_range(m)),
        ("Built with", ", ".join(f"{k} {v}" for k, v in versions.items())
         + (f"; calling convention {m['calling_convention_version']}" if "calling_convention_version" in m else "")),
        ("Paper", PAPER),
        ("Original code", RELEASE_URL),
        ("License", license_text(m)),
    ]
    return "\n".join(["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows])


def compute_dtype_text(m: dict) -> str:
    """What the matrix units compute in, as the export recorded it (exports made before the record
    existed computed in float32)."""
    compute = m.get("compute_dtype", "float32")
    if compute == "float32":
        return "float32"
    return (f"{compute}: matrix multiplications take {compute} operands and accumulate in float32; "
            "layer norms, softmax, activations, the decode loop and the scores are float32")


def _tensorflow_range(m: dict) -> str:
    support = m.get("tensorflow_support")
    if not support:
        return "not recorded (exported before vila-tf recorded it)"
    target = f"exported with `--target-tensorflow {support['target_tensorflow']}`" \
        if support.get("target_tensorflow") else "default export"
    webp = "" if support.get("webp_in_graph") else "; no WebP decoding in the graph"
    return (f"**{releases_in_words(support)}** ({target}: XlaCallModule calling convention "
            f"{support['calling_convention_version']}, StableHLO {support['stablehlo_version']}{webp}); "
            "older releases fail at load time with a message naming the versions")


def _preprocessing(facts: ModelFacts) -> str:
    from vila_tf.savedmodel.preprocessing import PRE_CROP_SIZE
    m = facts.metadata
    size = m["config"].get("image_size", 224)
    webp = "WebP" in m.get("image_formats", ())
    lines = [
        "- Images arrive as encoded bytes and are decoded in the graph with `tf.io.decode_image`: JPEG, "
        "PNG (8/16-bit, gray, RGBA), GIF (first frame), BMP" + (", WebP (first frame)" if webp else "")
        + "; always 3 channels (alpha dropped). EXIF orientation is not applied: turn photos upright before "
        "sending them, or use the `vila_tf` runtime, which does.",
        f"- Resized with TF1 `resize_bilinear` (no half-pixel centers) to {PRE_CROP_SIZE}×{PRE_CROP_SIZE}, "
        f"aspect ratio not kept, then center-cropped to {size}×{size} and scaled to [0, 1], exactly as the "
        "release's `run_vila_predict.py`. The `*_pixels` signatures take that tensor directly.",
    ]
    if m.get("max_pixels"):
        lines.append(f"- An image whose header declares more than {m['max_pixels'] / 1e6:g} megapixels is "
                     "rejected before decoding; a bad image fails the call with an `InvalidArgumentError` "
                     "naming its position in the batch.")
    if m.get("text_length"):
        lines.append(f"- Text is tokenized in the graph with the SentencePiece model in `assets/spm.model` "
                     f"(lingvo conventions) to {m['text_length']} tokens; longer texts are truncated.")
    prompts = m.get("zero_shot_prompts")
    if prompts:
        attributes = m.get("zero_shot_attributes")
        if attributes:  # each pair's score is its own output of the zero-shot signatures
            pairs = "; ".join(f"`zero_shot_{a}`: “{good}” vs “{bad}”" for a, (good, bad) in zip(attributes, prompts))
        else:
            pairs = "; ".join(f"“{good}” vs “{bad}”" for good, bad in prompts)
        lines.append(f"- Zero-shot prompt pairs (embedded at export time): {pairs}.")
    return "\n".join(lines)


def _usage(facts: ModelFacts, pkg: PackageInfo) -> str:
    url = handle(pkg)
    warmup_flag = " \\\n  --enable_model_warmup=true" if facts.has_warmup else ""
    warmup_note = (" The package carries TF Serving warmup requests "
                   "(`assets.extra/tf_serving_warmup_requests`), so compilation happens at load."
                   if facts.has_warmup else "")
    return f"""Check the download: `sha256sum -c {pkg.archive}.sha256`.

### `hub.load`

```python
import tensorflow as tf
import tensorflow_hub as hub
import tensorflow_text  # noqa: F401 - registers the SentencePiece ops the graph uses

model = hub.load("{url}")  # downloaded once, then read from $TFHUB_CACHE_DIR
predict_fn = model.signatures["serving_default"]
print(predict_fn(tf.io.read_file("photo.jpg"))["predictions"])
```

A local folder works as the handle too: `mkdir {pkg.name} && tar -xzf {pkg.archive} -C {pkg.name}`, then
`hub.load("{pkg.name}")`.

### Keras layer

`hub.KerasLayer` is a Keras 2 layer: with TensorFlow ≥ 2.16 (Keras 3) set `TF_USE_LEGACY_KERAS=1` *before*
TensorFlow is imported (and have `tf-keras` installed); with Keras 3 calling the layer on a Keras input fails.

```python
import os
os.environ["TF_USE_LEGACY_KERAS"] = "1"  # before importing tensorflow
import numpy as np
import tensorflow as tf
import tensorflow_hub as hub
import tensorflow_text  # noqa: F401

image_bytes = tf.keras.Input(shape=(), dtype=tf.string, name="image_bytes")
scorer = hub.KerasLayer("{url}",
                        signature="serving_default", output_key="predictions")
score = scorer(image_bytes)
model = tf.keras.Model(image_bytes, score)
batch = np.array([open(p, "rb").read() for p in ["a.jpg", "b.png"]], dtype=object)
print(model.predict(batch))  # [B, 1]
```

### TF Serving

```sh
mkdir -p models/{pkg.name}/{pkg.version} && tar -xzf {pkg.archive} -C models/{pkg.name}/{pkg.version}
tensorflow_model_server --rest_api_port=8501 --model_name={pkg.name} \\
  --model_base_path="$PWD/models/{pkg.name}" --xla_cpu_compilation_enabled=true{warmup_flag}
curl -d "{{\\"instances\\": [{{\\"b64\\": \\"$(base64 -w0 photo.jpg)\\"}}]}}" \\
  http://localhost:8501/v1/models/{pkg.name}:predict
```

The model is lowered with jax2tf, so the server needs XLA compilation enabled
(`--xla_gpu_compilation_enabled=true` on GPU).{warmup_note}

### `vila_tf`

```python
import vila_tf  # vila-tf's runtime: TensorFlow only, no JAX

model = vila_tf.load("models/{pkg.name}")  # a SavedModel folder or a TF Serving base folder
print(model.score(["a.jpg", "b.png"]))
print(model.caption(["a.jpg"]))
```"""


def render(facts: ModelFacts, pkg: PackageInfo, on_device: str = "") -> str:
    """The card; `on_device`: the "On device" section of a package published with its LiteRT
    models (export.publish.on_device.card_section)."""
    m = facts.metadata
    parts = [f"# {pkg.name} (version {pkg.version}): {model_title(pkg.name, m)}", ""]
    if m["demo_weights"]:
        parts += [_DEMO_WARNING, ""]
    parts += [model_summary(pkg.name, m), "", f"Handle: `{handle(pkg)}`", "",
              _details(facts, pkg), "",
              "## Signatures", "",
              "Read from the SavedModel. B is the batch size: every signature takes any batch size.", "",
              signature_table(facts), ""]
    if m.get(personal.METADATA_KEY):
        parts += ["## Personal head", "", personal.card_section(m[personal.METADATA_KEY]), ""]
    parts += ["## Preprocessing", "", _preprocessing(facts), "",
              "## Use", "", _usage(facts, pkg), ""]
    if on_device:
        parts += ["## On device", "", on_device, ""]
    parts += ["## Limitations", "", limitations(pkg.name, m), ""]
    return "\n".join(parts)


def limitations(name: str, metadata: dict) -> str:
    if metadata["demo_weights"]:
        return "- Demo weights: every output is meaningless. For pipeline and load tests only."
    if _is_laion(name, metadata):
        trained_on = ("- Trained on LAION web image–text pairs, not on aesthetics data: its zero-shot aesthetic "
                      "score only reflects how well an image matches the good/bad prompts.")
    else:
        trained_on = ("- Aesthetics are subjective: the outputs reflect the ratings and comments of the AVA "
                      "photography community VILA was trained on, not an absolute measure of quality.")
    lines = [trained_on, "- Scores compare images scored by the same model; they are not comparable across models."]
    if not _is_laion(name, metadata):
        lines.append("- Captions are short greedy-decoded comments on the photograph, not descriptions of its content.")
    return "\n".join(lines)
