"""MediaPipe Tasks and TFLite Model Metadata on the LiteRT export (docs/on_device.md): MediaPipe's
own Python client (`mediapipe` 1.2, ImageEmbedder and ImageClassifier) on the MediaPipe-ready
copies of the tiny exports gives vila_tf's embedding and score on the same photos, within what
MediaPipe's resize (not the release's) changes; every model names its heads in its metadata."""
import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from conftest import LITERT_PROMPTS

VARIANTS = ("float32", "float16", "int8")
ATTRIBUTES = ("zero_shot_image", "zero_shot_lighting", "zero_shot_content", "zero_shot_background",
              "zero_shot_foreground", "zero_shot_composition")

# MediaPipe's Tasks against vila_tf on the same pixels, the largest score (and zero-shot) difference
# and the smallest embedding cosine, by variant. Both run the same weights; what differs is the
# resize to 272x272: MediaPipe's bilinear with half-pixel centers, on uint8, against the release's
# TF1 bilinear without them, in float. Measured on these photos: score 7.7e-5 / cosine 1 - 1.9e-7
# (float32 and float16) and 2.6e-3 / 1 - 1.5e-5 (int8, whose activations are quantized per call
# and so magnify the difference); the bounds leave 2.6x or more (docs/on_device.md has more photos).
BOUNDS = {"float32": (2e-4, 1 - 1e-6), "float16": (2e-4, 1 - 1e-6), "int8": (1e-2, 1 - 1e-4)}


def _photo(seed, h, w):
    """A photo-like RGB image: smooth structure at the photo's scale, and grain."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    f = rng.uniform(5, 40, 3) * max(h, w) / 500
    base = np.stack([np.sin(yy / f[0]), np.cos(xx / f[1]), np.sin((xx + yy) / f[2])], -1)
    return ((base + 1) * 110 + rng.uniform(0, 30, (h, w, 3))).clip(0, 255).astype(np.uint8)


# Landscape, portrait, a camera's 4:3 (downscaled 4x), a thumbnail (upscaled), square.
PHOTOS = [_photo(i, h, w) for i, (h, w) in enumerate([(375, 500), (640, 480), (1080, 1440), (100, 80), (230, 230)])]


@pytest.fixture(scope="module")
def mediapipe_tasks():
    """`create(kind, model_path)`: a MediaPipe ImageEmbedder or ImageClassifier, closed at the end."""
    from mediapipe.tasks.python import core, vision
    made = []

    def create(kind, path):
        options = dict(base_options=core.base_options.BaseOptions(model_asset_path=path))
        task = vision.ImageEmbedder.create_from_options(vision.ImageEmbedderOptions(**options)) if kind == "embedder" \
            else vision.ImageClassifier.create_from_options(vision.ImageClassifierOptions(**options))
        made.append(task)
        return task
    yield create
    for task in made:
        task.close()


def _mp_image(pixels):
    import mediapipe as mp
    return mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(pixels))


def _heads(folder):
    return ["score", "image_embedding", "zero_shot_score", *ATTRIBUTES] + \
        (["zero_shot_prompt_scores"] if LITERT_PROMPTS[os.path.basename(folder)] else [])


@pytest.mark.parametrize("variant", VARIANTS)
def test_mediapipe_tasks_give_vila_tfs_embedding_and_score(litert_exported, fixture_name, variant, mediapipe_tasks):
    """ImageEmbedder and ImageClassifier on `vila_image_mediapipe_<variant>.tflite`, each photo as
    MediaPipe takes it (its own resize to the model's 272x272 input), against vila_tf's LiteRT
    runtime of the same variant on the same pixels (the release's resize inside the model)."""
    import vila_tf
    from vila_tf.core.zero_shot import pair_name, pairs_from
    folder = litert_exported[fixture_name]
    path = os.path.join(folder, f"vila_image_mediapipe_{variant}.tflite")
    embedder, classifier = mediapipe_tasks("embedder", path), mediapipe_tasks("classifier", path)
    model = vila_tf.load(folder, variant=variant)
    pairs = pairs_from(LITERT_PROMPTS[fixture_name]) if LITERT_PROMPTS[fixture_name] else ()
    want = {"score": model.score(PHOTOS), "image_embedding": model.image_embedding(PHOTOS),
            "zero_shot": model.zero_shot(PHOTOS, attributes=True),
            "prompts": model.zero_shot(PHOTOS, prompts=pairs) if pairs else None}
    max_score_error, min_cosine = BOUNDS[variant]
    for i, photo in enumerate(PHOTOS):
        embedded = embedder.embed(_mp_image(photo)).embeddings
        classified = classifier.classify(_mp_image(photo)).classifications
        # every head, named as the metadata names them, in the contract's order
        assert [e.head_name for e in embedded] == [c.head_name for c in classified] == _heads(folder)
        heads = {e.head_name: e.embedding for e in embedded}
        classes = {c.head_name: c.categories for c in classified}
        emb = heads["image_embedding"]
        assert emb.shape == want["image_embedding"][i].shape
        cosine = emb @ want["image_embedding"][i] / np.linalg.norm(emb) / np.linalg.norm(want["image_embedding"][i])
        assert cosine >= min_cosine, (i, cosine)
        assert abs(classes["score"][0].score - want["score"][i]) <= max_score_error, i
        assert heads["score"][0] == pytest.approx(classes["score"][0].score, abs=1e-7)  # one model, two tasks
        zsl = want["zero_shot"]
        assert abs(heads["zero_shot_score"][0] - zsl.score[i]) <= max_score_error
        np.testing.assert_allclose([heads[a][0] for a in ATTRIBUTES], zsl.pairs[i], atol=max_score_error)
        if pairs:  # the classifier labels each column with its pair, from the label file in the model
            by_name = {c.category_name: c.score for c in classes["zero_shot_prompt_scores"]}
            assert sorted(by_name) == sorted(pair_name(p) for p in pairs)
            np.testing.assert_allclose([by_name[pair_name(p)] for p in pairs], want["prompts"].pairs[i],
                                       atol=max_score_error)
    # A 272x272 photo is not resized by either: MediaPipe gives the plain model's numbers exactly.
    square = _photo(9, 272, 272)
    got = {e.head_name: e.embedding for e in embedder.embed(_mp_image(square)).embeddings}
    np.testing.assert_allclose(got["image_embedding"], model.image_embedding([square])[0], atol=1e-6)
    np.testing.assert_allclose(got["score"][0], model.score([square])[0], atol=1e-6)
    model.close()


def _model_metadata(path):
    """The TFLite Model Metadata of a `.tflite` as mediapipe's displayer reads it (JSON), and its
    packed files."""
    from export.tools import metadata_parser_version
    metadata_parser_version.install()  # mediapipe's metadata module imports what its wheel lacks
    from mediapipe.tasks.python.metadata import metadata
    shown = metadata.MetadataDisplayer.with_model_file(path)
    return json.loads(shown.get_metadata_json()), {f: shown.get_associated_file_buffer(f).decode()
                                                   for f in shown.get_packed_associated_file_list()}


def test_every_model_carries_its_metadata(litert_exported, fixture_name, mediapipe_tasks):
    """Each of the six files: name, version, description, author and license; the input's meaning
    (an RGB image of fixed size for MediaPipe, any size otherwise); every head named with its
    range. The plain models still run in LiteRT's interpreter by signature, and MediaPipe refuses
    them in one line instead of shrinking the photo to their stored 1x1 input."""
    from ai_edge_litert.interpreter import Interpreter
    from vila_tf.litert import format as litert_format
    folder = litert_exported[fixture_name]
    meta = litert_format.read_metadata(folder)
    pretrain = meta["model_type"] != "vila_r"
    heads = _heads(folder)
    record = meta["mediapipe"]
    assert record["heads"] == heads and record["input"] == {"image": {"dtype": "uint8", "shape": [1, 272, 272, 3]}}
    assert litert_format.mediapipe_variants(meta) == record["variants"] and list(record["variants"]) == list(VARIANTS)
    ranges = {"score": [0.0, 1.0] if pretrain else [-1.0, 1.0], "image_embedding": [-1.0, 1.0]}
    import hashlib
    for variant in VARIANTS:
        for mediapipe, rec in ((False, meta["variants"][variant]), (True, record["variants"][variant])):
            path = os.path.join(folder, rec["file"])
            assert hashlib.sha256(open(path, "rb").read()).hexdigest() == rec["sha256"]
            md, files = _model_metadata(path)
            assert md["min_parser_version"] == "1.0.0"
            assert variant in md["name"] and ("MediaPipe" in md["name"]) == mediapipe
            assert md["version"].startswith(meta["model_type"]) and variant in md["version"]
            assert "Apache-2.0" in md["license"] and md["author"] and variant in md["description"]
            assert ("VILA-R aesthetic score" in md["description"]) != pretrain
            (sg,) = md["subgraph_metadata"]
            (inp,) = sg["input_tensor_metadata"]
            assert inp["name"] == "image" and inp["stats"] == {"max": [255.0], "min": [0.0]}
            if mediapipe:  # what MediaPipe's image tasks read: an RGB image, raw levels (the /255 is inside)
                assert inp["content"]["content_properties"] == {"color_space": "RGB"}
                assert inp["process_units"][0]["options"] == {"mean": [0.0], "std": [1.0]}
                assert [o["name"] for o in sg["output_tensor_metadata"]] == heads
            else:
                assert inp["content"]["content_properties_type"] == "FeatureProperties"
                assert f"vila_image_mediapipe_{variant}.tflite" in inp["description"]
                # the plain graph's outputs come in the converter's order; each record names its tensor
                assert sorted(o["name"] for o in sg["output_tensor_metadata"]) == sorted(heads)
            for o in sg["output_tensor_metadata"]:
                assert [o["stats"]["min"][0], o["stats"]["max"][0]] == ranges.get(o["name"], [0.0, 1.0]), o["name"]
                assert o["description"]
            if LITERT_PROMPTS[fixture_name]:
                assert files == {"zero_shot_prompt_scores_labels.txt": "\n".join(LITERT_PROMPTS[fixture_name])}
            else:
                assert files == {}
            # LiteRT's interpreter runs both by signature, as vila_tf does (test_litert.py runs the plain ones)
            runner = Interpreter(model_path=path).get_signature_runner("image")
            image = _photo(3, 272, 272)[None] if mediapipe else _photo(3, 90, 120)[None]
            assert set(runner(image=image)) == set(meta["signatures"]["image"]["outputs"])
    with pytest.raises(ValueError, match="Expected ImageProperties for tensor image"):
        mediapipe_tasks("embedder", os.path.join(folder, meta["variants"]["float32"]["file"]))


def test_minimum_parser_version_follows_mediapipes_rules():
    """The stand-in for the compiled module mediapipe's metadata writer imports: the newest schema
    member used sets the version (mediapipe's metadata_version.cc)."""
    import flatbuffers
    from export.tools.metadata_parser_version import minimum_parser_version
    from mediapipe.tasks.metadata import metadata_schema_py_generated as fb

    def version(**subgraph):
        sg = fb.SubGraphMetadataT()
        sg.inputTensorMetadata, sg.outputTensorMetadata = [fb.TensorMetadataT()], [fb.TensorMetadataT()]
        for k, v in subgraph.items():
            setattr(sg, k, v)
        model = fb.ModelMetadataT()
        model.subgraphMetadata = [sg]
        b = flatbuffers.Builder(0)
        b.Finish(model.Pack(b), b"M001")
        return minimum_parser_version(bytes(b.Output()))

    vocabulary, tokenizer, regex = fb.AssociatedFileT(), fb.ProcessUnitT(), fb.ProcessUnitT()
    vocabulary.name, vocabulary.type = "vocab.txt", fb.AssociatedFileType.VOCABULARY
    tokenizer.optionsType, tokenizer.options = fb.ProcessUnitOptions.BertTokenizerOptions, fb.BertTokenizerOptionsT()
    regex.optionsType, regex.options = fb.ProcessUnitOptions.RegexTokenizerOptions, fb.RegexTokenizerOptionsT()
    assert version() == "1.0.0"
    assert version(associatedFiles=[vocabulary]) == "1.0.1"
    assert version(inputProcessUnits=[]) == "1.1.0"  # present, even empty
    assert version(inputProcessUnits=[tokenizer]) == "1.1.0"
    assert version(outputTensorGroups=[]) == "1.2.0"
    assert version(inputProcessUnits=[regex], associatedFiles=[vocabulary]) == "1.2.1"
    assert version(customMetadata=[]) == "1.5.0"


def test_conversion_without_mediapipe_stops_first_in_one_line(exported, tmp_path, monkeypatch):
    """`python -m export litert` needs mediapipe's metadata writer: without it, one line naming the
    package, exit 2, before the export is read and nothing written."""
    import sys
    import export.tools
    from conftest import export_command
    for name in [m for m in sys.modules if m == "mediapipe" or m.startswith("mediapipe.")
                 or m == "export.tools.litert_metadata"]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "mediapipe", None)  # `import mediapipe` raises ImportError
    monkeypatch.delattr(export.tools, "litert_metadata", raising=False)
    before = set(sys.modules)
    r = export_command("litert", exported["vila_r_tiny"], "--out", tmp_path / "out")
    for name in set(sys.modules) - before:  # the stand-in's stub packages (metadata_parser_version)
        if name.startswith("mediapipe."):
            del sys.modules[name]
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "pip install 'mediapipe" in r.stderr
    assert not (tmp_path / "out").exists()
