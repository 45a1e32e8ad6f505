"""Training small SentencePiece models (tests, the demo export) with lingvo's id conventions."""
from __future__ import annotations

import io
import os
from typing import Iterable

# lingvo/VILA ids: <unk>=0 (also the pad value), <s>=1 (BOS), </s>=2 (EOS); no separate pad piece.
TRAINER_IDS = dict(unk_id=0, bos_id=1, eos_id=2, pad_id=-1)


def train(sentences: Iterable[str], model_path: str, vocab_size: int) -> str:
    """Trains a unigram model on `sentences`, writing `model_path` (a `.model` file).

    The vocabulary may come out smaller than `vocab_size` when the text is short (it must not be
    larger than the model's embedding table, and never is).
    """
    import sentencepiece as spm
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(list(sentences)), model_writer=model, vocab_size=vocab_size,
        model_type="unigram", hard_vocab_limit=False, character_coverage=1.0, byte_fallback=False,
        num_threads=1, minloglevel=2, **TRAINER_IDS)
    os.makedirs(os.path.dirname(os.path.abspath(model_path)), exist_ok=True)
    with open(model_path, "wb") as f:
        f.write(model.getvalue())
    return model_path


def repo_sentences(root: str) -> list[str]:
    """Lines of the project's own text and code: the demo tokenizer's training text."""
    lines = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and d not in ("exported", "data", "__pycache__")]
        for name in sorted(filenames):
            if name.endswith((".md", ".py", ".cfg", ".txt")):
                with open(os.path.join(dirpath, name), encoding="utf-8", errors="ignore") as f:
                    lines += [ln.strip() for ln in f if ln.strip()]
    return lines
