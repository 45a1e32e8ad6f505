"""In-graph tokenization == lingvo StringsToIds semantics on the Python SentencePiece library."""
import numpy as np
import pytest
import tensorflow as tf

STRINGS = [
    "", " ", "   ", "\t\n", "good image", "bad image", "Good Image", "GOOD IMAGE", "good  image",
    " good image ", "good composition", "a photo of a dog on the beach at sunset",
    "the colors are vivid and the focus is sharp", "nice composition but the horizon is tilted",
    "café crème brûlée", "naïve façade", "日本語のテキスト", "中文", "Ελληνικά", "русский текст",
    "emoji 😀🎉📷", "👍🏽", "mixed CASE and 123 numbers", "punctuation!?.,;:'\"()[]{}",
    "tabs\tand\nnewlines", "x" * 300, "lovely bokeh in the background " * 20, "a", "ab cd ef gh ij",
    "\u200b zero width", "ﬁ ligature", "１２３ fullwidth",
]


def lingvo_strings_to_ids(sp, strings, max_length):
    """Independent lingvo StringsToIds (docs/model.md §10) on the Python sentencepiece library."""
    ids = np.zeros((len(strings), max_length), np.int32)
    paddings = np.ones((len(strings), max_length), np.float32)
    for r, s in enumerate(strings):
        tokens = sp.encode(s) + [2]
        labels = (tokens + [0] * max_length)[:max_length]
        ids[r] = [1] + labels[:-1]
        paddings[r, :min(len(tokens), max_length)] = 0.0
    return ids, paddings


def flax_text_embeddings(checkpoint, spm_model, texts, max_length):
    """The Flax text tower's embeddings (golden-checked in test_model_golden) of `texts`, on ids from
    the Python SentencePiece library with lingvo's conventions: the reference for texts the goldens
    hold no praxis embedding of. Jitted: one compilation, not one per operation."""
    import jax
    import sentencepiece as spm
    from export.model import heads
    ids, paddings = lingvo_strings_to_ids(spm.SentencePieceProcessor(model_file=spm_model), list(texts), max_length)
    cfg = checkpoint.config
    return np.asarray(jax.jit(lambda p, i, m: heads.text_embedding(p, cfg, i, m))(checkpoint.params, ids, paddings))


@pytest.fixture(scope="module")
def tokenizers(spm_model):
    import sentencepiece as spm
    from export.savedmodel.tokenizer import LingvoTokenizer
    return LingvoTokenizer(spm_model), spm.SentencePieceProcessor(model_file=spm_model)


@pytest.mark.parametrize("max_length", [4, 16, 64])
def test_strings_to_ids_matches_lingvo(tokenizers, max_length):
    tok, sp = tokenizers
    assert len(STRINGS) >= 30
    ids, labels, paddings = tok.strings_to_ids(tf.constant(STRINGS), max_length)
    want_ids, want_pad = lingvo_strings_to_ids(sp, STRINGS, max_length)
    np.testing.assert_array_equal(ids.numpy(), want_ids)
    np.testing.assert_array_equal(paddings.numpy(), want_pad)
    np.testing.assert_array_equal(labels.numpy()[:, :-1], want_ids[:, 1:])


def test_spec_examples(tokenizers):
    tok, sp = tokenizers
    ids, _, pad = tok.strings_to_ids(tf.constant(["good image", ""]), 4)
    g, i = sp.encode("good image")  # two pieces in this vocabulary
    np.testing.assert_array_equal(ids.numpy(), [[1, g, i, 2], [1, 2, 0, 0]])
    np.testing.assert_array_equal(pad.numpy(), [[0, 0, 0, 1], [0, 1, 1, 1]])
    ids, _, pad = tok.strings_to_ids(tf.constant(["good image " * 10]), 4)
    assert 2 not in ids.numpy()[0, 1:] and pad.numpy().sum() == 0  # too long: no EOS, no padding


def test_ids_to_strings_drops_control_ids(tokenizers):
    tok, sp = tokenizers
    pieces = sp.encode("good composition")
    ids = np.array([[1] + pieces + [2, 0, 0], [1] + pieces + [2, 0, 0]], np.int32)
    n = len(pieces) + 2
    out = tok.ids_to_strings(tf.constant(ids), tf.constant([n, 2], tf.int32)).numpy()
    assert out[0].decode() == "good composition" == sp.decode(ids[0, :n].tolist())
    assert out[1].decode() == sp.decode(ids[1, :2].tolist())
