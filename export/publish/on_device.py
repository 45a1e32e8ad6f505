"""The LiteRT models in a release: `python -m export package SAVEDMODEL --litert LITERT_DIR`.

Next to the TF Hub package, DIST_DIR gets each variant as the file an app downloads, with its
checksum, and the LiteRT metadata:

  <name>_<version>_<variant>.tflite          e.g. vila_r_1_float32.tflite
  <name>_<version>_<variant>.tflite.sha256   `sha256sum -c` format
  <name>_<version>_mediapipe_<variant>.tflite (and .sha256) the MediaPipe-ready copies, if the export has them
  <name>_<version>_litert.json               the export's vila_litert.json

and the model card an "On device" section (`card_section`): the signature, the input format,
the accuracy of each variant, the GPU-delegate analysis and Android / iOS usage sketches. Reads
only the LiteRT export's files and metadata (no jax, no TensorFlow).
"""
from __future__ import annotations

import dataclasses
import os
import shutil

from vila_tf.core.atomic import atomic_file
from vila_tf.litert import format as litert_format
from vila_tf.core.digest import file_sha256


class OnDeviceError(ValueError):
    """The LiteRT folder given does not belong with the SavedModel, or is incomplete."""


@dataclasses.dataclass(frozen=True)
class PublishedModel:
    variant: str
    file: str  # file name in DIST_DIR
    sha256: str
    size: int
    mediapipe: bool = False  # the MediaPipe-ready copy of the variant


def read_litert(litert_dir: str, savedmodel_metadata: dict) -> dict:
    """The LiteRT export's metadata, checked against the SavedModel it is published with."""
    try:
        meta = litert_format.read_metadata(litert_dir)
    except litert_format.LiteRTExportError as e:
        raise OnDeviceError(str(e)) from None
    if meta.get("config") != savedmodel_metadata.get("config") or \
            bool(meta.get("demo_weights")) != bool(savedmodel_metadata.get("demo_weights")):
        raise OnDeviceError(f"{litert_dir}: its model (config, demo flag) is not the SavedModel's; convert this "
                            "SavedModel with `python -m export litert SAVEDMODEL --out DIR`")
    files = [(litert_format.variant_path(litert_dir, meta, v), rec) for v, rec in meta["variants"].items()]
    files += [(os.path.join(litert_dir, rec["file"]), rec) for rec in litert_format.mediapipe_variants(meta).values()]
    for path, rec in files:
        if not os.path.isfile(path) or os.path.getsize(path) != rec["bytes"] or file_sha256(path) != rec["sha256"]:
            raise OnDeviceError(f"{path}: missing, or its sha256 is not the one vila_litert.json records: copy the "
                                "export again")
    return meta


def publish(litert_dir: str, meta: dict, dist_dir: str, name: str, version: int) -> list[PublishedModel]:
    """Copies each variant (and the metadata) into `dist_dir` atomically, with checksum files."""
    out = []
    models = [(v, rec, False) for v, rec in meta["variants"].items()]
    models += [(v, rec, True) for v, rec in litert_format.mediapipe_variants(meta).items()]
    for variant, rec, mediapipe in models:
        file = f"{name}_{version}_{'mediapipe_' if mediapipe else ''}{variant}.tflite"
        target = os.path.join(dist_dir, file)
        with open(os.path.join(litert_dir, rec["file"]), "rb") as src, atomic_file(target, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
            os.fchmod(dst.fileno(), 0o644)
        with atomic_file(target + ".sha256", "w", encoding="utf-8", newline="\n") as f:
            f.write(f"{rec['sha256']}  {file}\n")
        out.append(PublishedModel(variant, file, rec["sha256"], rec["bytes"], mediapipe))
    with open(os.path.join(litert_dir, litert_format.METADATA_FILE), "rb") as src, \
            atomic_file(os.path.join(dist_dir, f"{name}_{version}_litert.json"), "wb") as dst:
        shutil.copyfileobj(src, dst)
    return out


def _url(base_url, file: str) -> str:
    return f"{base_url.rstrip('/') if base_url else 'https://<your-host>/<path>'}/{file}"


def card_section(meta: dict, published: list[PublishedModel], base_url=None) -> str:
    """The model card's "On device" section (markdown, without its heading)."""
    sig = meta["signatures"][litert_format.IMAGE_SIGNATURE]
    dims = sig["outputs"]["image_embedding"]["shape"][-1]
    pretrain = meta.get("model_type") != "vila_r"
    accuracy = meta.get("accuracy", {})
    acc = accuracy.get("variants", {})
    rows = ["| variant | file | size | sha256 | weights | score error | zero-shot error | embedding cosine |",
            "|---|---|---|---|---|---|---|---|"]
    plain = [p for p in published if not p.mediapipe]
    for p in plain:
        a = acc.get(p.variant)
        measured = (f"{a['score_max_abs_error']:.1e} | {a['zero_shot_max_abs_error']:.1e} | "
                    f"{a['embedding_min_cosine']:.6f}") if a else "not measured | | "
        rows.append(f"| {p.variant} | `{p.file}` | {p.size / 1e6:,.1f} MB | `{p.sha256[:16]}…` | "
                    f"{meta['variants'][p.variant]['quantization']} | {measured} |")
    gpu = meta.get("gpu_delegate", {})
    gpu_lines = []
    for variant, g in gpu.items():
        verdict = "every op is supported by the GPU delegate" if g.get("compatible") else \
            "ops the GPU delegate does not take: " + "; ".join(l for l in g.get("analyzer", []) if "compatible" not in l)
        gpu_lines.append(f"- {variant}: {verdict} (TFLite model analyzer with `gpu_compatibility=True`, "
                         f"TensorFlow {g.get('tensorflow', '?')}).")
    n_images = accuracy.get("images", [])
    first = plain[0].file if plain else "vila_image_float32.tflite"
    copies = [p for p in published if p.mediapipe]
    heads = ", ".join(f"`{h}`" for h in (meta.get(litert_format.MEDIAPIPE_KEY) or {}).get("heads", []))
    mediapipe = f"""

MediaPipe Tasks (`ImageEmbedder`, `ImageClassifier` on Android, iOS, the web and Python): use
{", ".join(f"`{p.file}`" for p in copies)}, the same models with their input fixed at 272×272 RGB,
which MediaPipe resizes each photo to (the release's preprocessing resizes to that size first; the
center crop and /255 run inside). Their TFLite metadata names the heads, in this order: {heads}.
The files above refuse MediaPipe (their input takes any size). Code for Kotlin, Swift and
JavaScript: docs/on_device.md.""" if copies else ""
    score_note = " (for this pretrain model, the zero-shot score)" if pretrain else " (the VILA-R score)"
    return f"""The image heads are also published as LiteRT (TensorFlow Lite) models for phones and edge devices,
lowered for one image at a time with static shapes (no shape-computation ops), builtin ops only.
The text tower (captions, text embeddings) is not: it needs SentencePiece, which LiteRT has no
builtin op for, and a decode loop (docs/on_device.md).

Signature `{litert_format.IMAGE_SIGNATURE}`:

| | name | dtype | shape |
|---|---|---|---|
| input | `{litert_format.IMAGE_INPUT}` | uint8 | [1, H, W, 3], any H and W: decoded RGB pixels |
| output | `predictions` | float32 | [1, 1]{score_note} |
| output | `image_embedding` | float32 | [1, {dims}], l2-normalized |
| output | `zero_shot_score` | float32 | [1] |

Input: the photo decoded to RGB (alpha dropped, gray repeated to 3 channels), turned upright by its
EXIF orientation if you want what a viewer shows, at its own size. The release's preprocessing is
inside the model: TF1 bilinear resize to 272×272 without half-pixel centers, center crop 224, /255.

Accuracy of each variant against the float32 image heads (the SavedModel's numbers) on
{len(n_images)} photo-like test images of different sizes ({accuracy.get('reference', '')}):

{chr(10).join(rows)}

GPU delegate:

{chr(10).join(gpu_lines)}

Download and check: `curl -O {_url(base_url, first)} && sha256sum -c {first}.sha256`.

Python, without TensorFlow (`pip install ai-edge-litert numpy pillow`, then `pip install --no-deps vila-tf`):
the runtime reads the LiteRT export's own layout, so put the files back under their export names,

```sh
mkdir litert && cp {published[0].file.rsplit('_', 1)[0] if published else 'NAME_VERSION'}_litert.json litert/{litert_format.METADATA_FILE}
{chr(10).join(f"cp {p.file} litert/{litert_format.mediapipe_file(p.variant) if p.mediapipe else litert_format.model_file(p.variant)}" for p in published)}
```

then `vila_tf.load("litert").score(["photo.jpg"])` (docs/on_device.md).

Android (Kotlin, LiteRT `org.tensorflow:tensorflow-lite` Interpreter API):

```kotlin
val interpreter = Interpreter(FileUtil.loadMappedFile(context, "{first}"),
                              Interpreter.Options().apply {{ numThreads = 4 }})
val runner = interpreter.getSignatureRunner("{litert_format.IMAGE_SIGNATURE}")
// pixels: a ByteBuffer of height * width * 3 bytes, RGB, row-major (e.g. from a Bitmap's pixels)
runner.resizeInput("{litert_format.IMAGE_INPUT}", intArrayOf(1, height, width, 3))
runner.allocateTensors()
val score = FloatBuffer.allocate(1)
runner.run(mapOf("{litert_format.IMAGE_INPUT}" to pixels), mapOf("predictions" to score))
```

iOS (Swift, `TensorFlowLiteSwift` pod):

```swift
let interpreter = try Interpreter(modelPath: Bundle.main.path(forResource: "{first.rsplit('.', 1)[0]}", ofType: "tflite")!)
let runner = try interpreter.signatureRunner(with: "{litert_format.IMAGE_SIGNATURE}")
try runner.resizeInput(named: "{litert_format.IMAGE_INPUT}", toShape: Tensor.Shape([1, height, width, 3]))
try runner.allocateTensors()
try runner.invoke(with: ["{litert_format.IMAGE_INPUT}": rgbBytes])  // Data of height * width * 3 bytes, RGB
let score = try runner.output(named: "predictions").data.withUnsafeBytes {{ $0.load(as: Float32.self) }}
```

The float16 model suits the GPU delegate; int8 is the smallest and fastest on CPUs.{mediapipe}"""
