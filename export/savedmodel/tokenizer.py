"""In-graph SentencePiece tokenization with lingvo's StringsToIds semantics (docs/model.md §10).

lingvo SentencePieceTokenizer defaults: the pieces of each string, EOS appended (no BOS);
labels = pieces padded with 0 / truncated to L (a long string loses its EOS); ids = [BOS] +
labels[:-1]; paddings = 0.0 for the first min(len(pieces) + 1, L) positions, 1.0 after.
So "good image" at L=4 -> ids [1, g, i, 2], paddings [0, 0, 0, 1].
"""
from __future__ import annotations

import tensorflow as tf
import tensorflow_text as tf_text

from ..model.config import BOS_ID, EOS_ID, PAD_ID


class LingvoTokenizer(tf.Module):
    """Wraps a `.model` file; the file travels as a SavedModel asset (`assets/spm.model`)."""

    def __init__(self, spm_model_path: str, name: str = "tokenizer"):
        super().__init__(name=name)
        with tf.io.gfile.GFile(spm_model_path, "rb") as f:
            model = f.read()
        # Kept as an asset so users and the runtime can read the exact tokenizer of the export
        # (the SentencepieceOp itself holds a copy of the model in its attributes).
        self.spm_model = tf.saved_model.Asset(spm_model_path)
        self._sp = tf_text.SentencepieceTokenizer(model=model, out_type=tf.int32, add_bos=False, add_eos=False)

    def vocab_size(self) -> tf.Tensor:
        return self._sp.vocab_size()

    def strings_to_ids(self, strings: tf.Tensor, max_length: int):
        """strings [B] -> ids int32 [B, L], labels int32 [B, L], paddings float32 [B, L]."""
        strings = tf.reshape(strings, [-1])
        pieces = self._sp.tokenize(strings)
        batch = tf.shape(strings)[0]
        eos = tf.RaggedTensor.from_tensor(tf.fill([batch, 1], tf.constant(EOS_ID, tf.int32)))
        tokens = tf.concat([pieces, eos], axis=1)
        labels = tokens.to_tensor(default_value=PAD_ID, shape=[None, max_length])
        labels = tf.ensure_shape(labels, [None, max_length])
        ids = tf.concat([tf.fill([batch, 1], tf.constant(BOS_ID, tf.int32)), labels[:, :-1]], axis=1)
        lengths = tf.minimum(tf.cast(tokens.row_lengths(), tf.int32), max_length)
        paddings = 1.0 - tf.sequence_mask(lengths, max_length, dtype=tf.float32)
        return ids, labels, paddings

    def ids_to_strings(self, ids: tf.Tensor, lengths: tf.Tensor) -> tf.Tensor:
        """lingvo IdsToStrings(ids, lengths): detokenize the first `lengths` ids of each row.

        SentencePiece drops the control pieces (BOS/EOS) itself. Ids the tokenizer does not know
        (a model whose vocabulary is larger than its tokenizer's, e.g. the demo) become <unk>.
        """
        ids = tf.where((ids >= 0) & (ids < self._sp.vocab_size()), ids, tf.zeros_like(ids))
        ragged = tf.RaggedTensor.from_tensor(ids, lengths=lengths)
        return self._sp.detokenize(ragged)
