"""What a photo's outputs must be, computed without vila_tf: the ground truth of the runtime, CLI and
Beam tests.

- Pixels: the release's preprocessing composed from TF ops (run_vila_predict.preprocess_image:
  `tf.io.decode_image`, TF1 `resize_bilinear` to 272, center crop 224, /255, clip), not vila_tf's
  host decoder nor the graph's own preprocessing.
- Model outputs: the export's pixel signatures, which `Reference` first checks against the praxis
  goldens of the fixture the export was made from (score, image embedding, greedy caption ids).
  The zero-shot pixel signature is checked against the release's formula in test_export.py.
- Captions: the ids detokenized with the Python SentencePiece library.
"""
from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
GOLDEN_TOL = 1e-4  # as test_export.py: the SavedModel against praxis
ZERO_SHOT_ATTRIBUTES = ("image", "lighting", "content", "background", "foreground", "composition")  # the release's


def release_pixels(encoded: bytes) -> np.ndarray:
    """run_vila_predict.preprocess_image, op for op: float32 [224, 224, 3] in [0, 1]."""
    image = tf.io.decode_image(encoded, 3, expand_animations=False)
    image = tf.compat.v1.image.resize_bilinear(tf.expand_dims(image, 0), [272, 272])
    image = tf.image.resize_with_crop_or_pad(image, 224, 224)
    image = tf.cast(image, tf.float32) / 255.0
    return tf.clip_by_value(image, 0.0, 1.0)[0].numpy()


def in_buckets(fn, items: list) -> np.ndarray:
    """fn over `items` in pieces of the runtime's bucket sizes (the last one padded with copies of
    its first item, and those rows dropped): every shape a test compiles is one that vila_tf and
    the warmup requests compile too, so the run's compilation cache serves them all once."""
    from vila_tf.core import buckets
    out = []
    for start, stop, size in buckets.chunks(len(items)):
        piece = items[start:stop]
        out.append(fn(piece + [piece[0]] * (size - len(piece)))[: len(piece)])
    return np.concatenate(out)


class Reference:
    """One tiny export's outputs on encoded images, by the reference path above."""

    def __init__(self, savedmodel_dir: str, fixture: str, spm_model: str):
        import sentencepiece as spm
        import tensorflow_text  # noqa: F401  (the SentencePiece ops of the graph)
        self.model = tf.saved_model.load(savedmodel_dir)
        self.fixture = fixture
        self.sp = spm.SentencePieceProcessor(model_file=spm_model)
        self.check_goldens()

    def _call(self, signature: str, output: str, pixels: list) -> np.ndarray:
        fn = self.model.signatures[signature]
        return in_buckets(lambda batch: fn(image=tf.constant(np.stack(batch)))[output].numpy(), pixels)

    def check_goldens(self) -> None:
        """The pixel signatures reproduce praxis on the fixture's golden inputs."""
        g = np.load(os.path.join(DATA, self.fixture, "golden.npz"), allow_pickle=False)
        images = list(g["input/image"])
        np.testing.assert_allclose(self._call("image_embedding_pixels", "image_embedding", images),
                                   g["pred/contrastive_img_embed_norm"], atol=GOLDEN_TOL)
        ids, lengths = self.caption_ids_of_pixels(images)
        np.testing.assert_array_equal(ids, g["decode/hyp"][:, 0])
        np.testing.assert_array_equal(lengths, g["decode/hyplen"][:, 0])
        if "pred/quality_scores" in g.files:
            np.testing.assert_allclose(self._call("score_pixels", "predictions", images),
                                       g["pred/quality_scores"], atol=GOLDEN_TOL)

    def caption_ids_of_pixels(self, pixels: list) -> tuple[np.ndarray, np.ndarray]:
        """Greedy caption ids [N, T] and lengths [N], one signature call per bucket."""
        fn = self.model.signatures["caption_pixels"]

        def both(batch):  # ids and lengths side by side, so in_buckets pads and cuts them together
            out = fn(image=tf.constant(np.stack(batch)))
            return np.concatenate([out["caption_ids"].numpy(), out["caption_length"].numpy()[:, None]], 1)
        joined = in_buckets(both, pixels)
        return joined[:, :-1], joined[:, -1]

    # -- on encoded images ------------------------------------------------------------------------

    def score(self, encoded: list) -> np.ndarray:
        """float32 [N]: VILA-R's score (a pretrain model's serving score is its zero-shot score)."""
        return self._call("score_pixels", "predictions", [release_pixels(e) for e in encoded])[:, 0]

    def zero_shot(self, encoded: list) -> np.ndarray:
        return self._call("zero_shot_pixels", "zero_shot_score", [release_pixels(e) for e in encoded])

    def zero_shot_attributes(self, encoded: list) -> np.ndarray:
        """float32 [N, 6]: the zero-shot signature's per-attribute outputs, in the release's order
        (checked against the release's per-pair softmax in test_export.py)."""
        pixels = [release_pixels(e) for e in encoded]
        return np.stack([self._call("zero_shot_pixels", f"zero_shot_{a}", pixels) for a in ZERO_SHOT_ATTRIBUTES], 1)

    def pair_scores(self, encoded: list, pairs: list) -> np.ndarray:
        """float64 [N, K]: your (good, bad) pairs scored by scipy's softmax over (image·good,
        image·bad), from the image_embedding signature (golden-checked above) and the text_embedding
        signature (checked against the Python SentencePiece library in test_export.py)."""
        from scipy.special import softmax
        image = self.image_embedding(encoded).astype(np.float64)
        texts = tf.constant([p for pair in pairs for p in pair])
        text = self.model.signatures["text_embedding"](text=texts)["text_embedding"].numpy().astype(np.float64)
        return softmax((image @ text.T).reshape(len(image), -1, 2), axis=-1)[..., 0]

    def image_embedding(self, encoded: list) -> np.ndarray:
        return self._call("image_embedding_pixels", "image_embedding", [release_pixels(e) for e in encoded])

    def caption(self, encoded: list) -> list[str]:
        ids, lengths = self.caption_ids_of_pixels([release_pixels(e) for e in encoded])
        return [self.sp.decode([int(i) for i in row[:n]]) for row, n in zip(ids, lengths)]
