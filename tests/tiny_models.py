"""Tiny exports of the genuine fixtures with a SentencePiece model trained here: used by the test
session (conftest) and by the long-running `make fuzz` / `make soak` scripts."""
import os

import numpy as np

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
FIXTURES = ("vila_r_tiny", "vila_p_tiny")
# The fixtures were made with decoding_max_len 16 (their config.json); nothing else is overridden.
FIXTURE_OVERRIDES = {"decoding_max_len": 16}

SPM_SENTENCES = [
    "good image", "bad image", "good lighting", "bad lighting", "good content", "bad content",
    "good background", "bad background", "good foreground", "bad foreground", "good composition",
    "bad composition", "a photo of a dog on the beach at sunset", "the colors are vivid and the focus is sharp",
    "nice composition but the horizon is tilted", "too dark, underexposed shadows", "beautiful portrait",
    "great use of negative space", "the subject is out of focus", "lovely bokeh in the background",
]


def train_spm(path: str) -> str:
    """A SentencePiece model trained on made-up text (vocab within the fixtures' 1000)."""
    from export.savedmodel import spm
    rng = np.random.default_rng(0)
    words = " ".join(SPM_SENTENCES).split()
    extra = [" ".join(rng.choice(words, size=8)) for _ in range(300)]
    letters = list("abcdefghijklmnopqrstuvwxyz")
    made_up = [" ".join("".join(rng.choice(letters, size=rng.integers(3, 9))) for _ in range(10))
               for _ in range(3000)]
    return spm.train(SPM_SENTENCES * 5 + extra + made_up, path, 1000)


def export_fixture(name: str, spm_path: str, out: str) -> str:
    from export import exporter
    return exporter.export_checkpoint(os.path.join(DATA, name, "ckpt"), spm_path, out, overrides=FIXTURE_OVERRIDES)
