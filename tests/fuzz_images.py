"""Coverage-guided fuzzing of image inputs (atheris): `make fuzz FUZZ_RUNS=20000`.

Each input is either raw fuzzer bytes or a mutation of a valid seed image (tests/image_mutations.py),
pushed through the in-graph preprocessing (the code of every bytes signature and of vila_tf) and,
every `--model-every` inputs, through a tiny export's serving_default. Every input must end in
finite pixels/scores or an InvalidArgumentError with a message; anything else (another exception,
NaN, a crash, a hang) stops the run with the input saved by libFuzzer.
  python tests/fuzz_images.py -runs=20000 [-max_len=20000]
"""
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import atheris  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import image_mutations as im  # noqa: E402
from vila_tf.savedmodel import preprocessing  # noqa: E402

STATS = {"inputs": 0, "ok": 0, "rejected": 0, "model_calls": 0, "started": time.time()}
SEEDS = sorted(im.seeds().values())
_preprocess = tf.function(lambda b: preprocessing.preprocess_batch(b[None]),
                          input_signature=[tf.TensorSpec([], tf.string)], autograph=False)
_MODEL = {}


def _model_fn():
    if "fn" not in _MODEL:
        import tiny_models
        tmp = tempfile.mkdtemp(prefix="vila-fuzz-")
        spm = tiny_models.train_spm(os.path.join(tmp, "spm.model"))
        path = tiny_models.export_fixture("vila_r_tiny", spm, os.path.join(tmp, "vila_r", "1"))
        _MODEL["fn"] = tf.saved_model.load(path).signatures["serving_default"]
    return _MODEL["fn"]


def _check(run, data):
    try:
        out = run(data)
    except tf.errors.InvalidArgumentError as e:
        assert e.message.strip()
        return False
    assert np.all(np.isfinite(out)), "non-finite output"
    return True


def test_one_input(raw: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(raw)
    if fdp.ConsumeBool():
        data = fdp.ConsumeBytes(fdp.remaining_bytes())
    else:
        seed = SEEDS[fdp.ConsumeIntInRange(0, len(SEEDS) - 1)]
        kind = im.MUTATIONS[fdp.ConsumeIntInRange(0, len(im.MUTATIONS) - 1)]
        data = im.mutate(seed, kind, fdp.ConsumeIntInRange(0, 10 ** 6), fdp.ConsumeIntInRange(0, 10 ** 6))
    ok = _check(lambda d: _preprocess(tf.constant(d)).numpy(), data)
    STATS["inputs"] += 1
    STATS["ok" if ok else "rejected"] += 1
    every = int(os.environ.get("FUZZ_MODEL_EVERY", "25"))
    if every and STATS["inputs"] % every == 0:
        _check(lambda d: _model_fn()(tf.constant(d))["predictions"].numpy(), data)
        STATS["model_calls"] += 1


def _report():
    """libFuzzer ends the process without Python's atexit: the figures go to a file as we go."""
    stats = dict(STATS, seconds=round(time.time() - STATS["started"], 1))
    stats.pop("started")
    with open(os.environ.get("FUZZ_STATS", "fuzz_stats.json"), "w") as f:
        json.dump(stats, f)


if __name__ == "__main__":
    atheris.Setup(sys.argv, lambda raw: (test_one_input(raw), _report()))
    atheris.Fuzz()
