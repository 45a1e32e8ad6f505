"""The runtime's SavedModel loader (vila_tf.savedmodel.saved_functions) against TensorFlow's own:
every signature and the image heads' function give tf.saved_model.load's numbers on the same
inputs; loads are independent and clean up after themselves; what the loader does not take falls
back to tf.saved_model.load; and `vila-tf` runs without Keras, JAX or the tensorflow_text package."""
import gc
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_text  # noqa: F401  (the reference loader needs the SentencePiece ops)
from PIL import Image

from tiny_models import FIXTURES
from vila_tf.savedmodel import saved_functions


def _png(seed: int, size=(40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _inputs(spec: tf.TensorSpec, batch: int = 2):
    """A batch for one input of a signature: pixels, encoded photos or texts."""
    if spec.dtype == tf.string:
        if "text" in (spec.name or ""):
            return tf.constant(["a misty forest at dawn", "blurry"][:batch])
        return tf.constant([_png(i) for i in range(batch)])
    shape = [batch] + [d for d in spec.shape[1:]]
    return tf.constant(np.random.default_rng(1).random(shape, np.float32))


@pytest.mark.long
@pytest.mark.parametrize("name", FIXTURES)
def test_every_signature_equals_tf_saved_model_load(exported, name):
    ours = saved_functions.SavedFunctions(exported[name])
    theirs = tf.saved_model.load(exported[name])
    assert set(ours.signatures) == set(theirs.signatures) and len(ours.signatures) >= 10
    # Grappler's pass is skipped where it cannot change a number (variable reads around the XLA
    # program) and kept on the decoding signatures, where it rounds differently.
    assert ours.signatures["score_pixels"]._plumbing and not ours.signatures["serving_default"]._plumbing
    for sig, fn in ours.signatures.items():
        ref = theirs.signatures[sig]
        assert fn.structured_input_signature == ref.structured_input_signature, sig
        assert set(fn.structured_outputs) == set(ref.structured_outputs), sig
        kwargs = {k: _inputs(s) for k, s in fn.structured_input_signature[1].items()}
        got, want = fn(**kwargs), ref(**kwargs)
        for key in want:
            np.testing.assert_array_equal(got[key].numpy(), want[key].numpy(), err_msg=f"{sig}/{key}")
    # The function the image signatures share (vila-tf fit's features), called positionally.
    (image_outputs,) = [f for f in ours.functions["image_outputs_fn"] if f.structured_input_signature[0]]
    pixels = _inputs(image_outputs.structured_input_signature[0][0], 3)
    got, want = image_outputs(pixels), theirs.image_outputs_fn(pixels)
    assert set(got) == set(want) and len(got) >= 3
    for key in want:
        np.testing.assert_array_equal(got[key].numpy(), want[key].numpy(), err_msg=key)


def test_calls_are_checked_like_a_concrete_function(exported):
    fn = saved_functions.SavedFunctions(exported["vila_r_tiny"]).signatures["score_pixels"]
    x = _inputs(fn.structured_input_signature[1]["image"], 1)
    np.testing.assert_array_equal(fn(x)["predictions"].numpy(), fn(image=x)["predictions"].numpy())
    with pytest.raises(TypeError, match="image"):
        fn(pixels=x)
    with pytest.raises(ValueError, match="shape"):
        fn(image=tf.zeros([1, 10, 10, 3]))


def test_loads_are_independent_and_give_their_functions_back(exported):
    from tensorflow.python.eager import context
    first = saved_functions.SavedFunctions(exported["vila_r_tiny"])
    second = saved_functions.SavedFunctions(exported["vila_r_tiny"])
    other = saved_functions.SavedFunctions(exported["vila_p_tiny"])
    names = {first.signatures[s].name for s in first.signatures}
    assert not names & {second.signatures[s].name for s in second.signatures}
    x = _inputs(first.signatures["score_pixels"].structured_input_signature[1]["image"], 1)
    want = first.signatures["score_pixels"](image=x)["predictions"].numpy()
    texts = tf.constant(["sharp photo"])
    want_text = first.signatures["text_embedding"](text=texts)["text_embedding"].numpy()
    other.signatures["text_embedding"](text=texts)  # the other export's tokenizer resource
    del first
    gc.collect()
    ctx = context.context()
    assert not any(ctx.has_function(n) for n in names)
    np.testing.assert_array_equal(second.signatures["score_pixels"](image=x)["predictions"].numpy(), want)
    np.testing.assert_array_equal(second.signatures["text_embedding"](text=texts)["text_embedding"].numpy(),
                                  want_text)


def test_loads_of_one_unchanged_export_share_its_weights(exported, tmp_path):
    import shutil

    import vila_tf
    copy = tmp_path / "export"
    shutil.copytree(exported["vila_r_tiny"], copy)
    first, second = vila_tf.load(str(copy)), vila_tf.load(str(copy))
    try:
        assert first._module is second._module  # one set of weights for both
        os.utime(copy / "saved_model.pb", ns=(1, 1))  # the folder changed: loaded afresh
        third = vila_tf.load(str(copy))
        assert third._module is not first._module
        x = np.random.default_rng(2).random((1, 224, 224, 3), np.float32)
        np.testing.assert_array_equal(first.image_embedding(x), third.image_embedding(x))
        third.close()
    finally:
        first.close()
        second.close()


def test_the_runtime_uses_it_and_a_strategy_scope_gets_tensorflows_loader(exported, reference):
    import vila_tf
    photos = [_png(7), _png(8, (64, 48))]
    model = vila_tf.load(exported["vila_r_tiny"])
    try:
        assert isinstance(model._module, saved_functions.SavedFunctions)
        np.testing.assert_allclose(model.score(photos), reference(photos), rtol=1e-6, atol=1e-6)
    finally:
        model.close()
    with tf.distribute.OneDeviceStrategy("/cpu:0").scope():
        scoped = vila_tf.load(exported["vila_r_tiny"])
    try:
        assert not isinstance(scoped._module, saved_functions.SavedFunctions)
        np.testing.assert_allclose(scoped.score(photos), reference(photos), rtol=1e-6, atol=1e-6)
    finally:
        scoped.close()


def test_an_export_it_does_not_take_is_refused_whole(tmp_path):
    """A table whose contents live in the checkpoint: the loader makes no such object, so it says
    NotLoadable (and the runtime uses tf.saved_model.load) rather than run without the contents."""
    class M(tf.Module):
        def __init__(self):
            self.table = tf.lookup.experimental.MutableHashTable(tf.string, tf.int64, -1)
            self.table.insert(tf.constant(["a"]), tf.constant([1], tf.int64))

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def lookup(self, keys):
            return {"ids": self.table.lookup(keys)}
    m = M()
    tf.saved_model.save(m, str(tmp_path / "m"), signatures={"lookup": m.lookup})
    with pytest.raises(saved_functions.NotLoadable, match="checkpoint"):
        saved_functions.SavedFunctions(str(tmp_path / "m"))


def test_the_command_imports_neither_keras_jax_nor_the_tensorflow_text_package(exported, tmp_path):
    """`vila-tf score` through the console script's own `main`, in a fresh process: TensorFlow
    without Keras, the SentencePiece ops without tensorflow_text's Python package, and the exit
    code of the run (1: one input failed) through the quick exit."""
    good, bad = tmp_path / "good.png", tmp_path / "bad.jpg"
    good.write_bytes(_png(3))
    bad.write_bytes(b"not a photo")
    script = (
        "import json, sys\n"
        "from vila_tf.cli import main\n"
        "sys.argv = ['vila-tf', 'score', sys.argv[1], sys.argv[2], sys.argv[3], '--format', 'jsonl']\n"
        "import atexit\n"
        "atexit.register(lambda: print(json.dumps(sorted(m for m in ('keras', 'jax', 'tensorflow_text', 'sklearn') "
        "if m in sys.modules)), file=sys.stderr))\n"
        "sys.exit(main.main())\n")
    env = dict(os.environ, VILA_TF_CACHE_DIR="off")
    r = subprocess.run([sys.executable, "-c", script, exported["vila_r_tiny"], str(good), str(bad)],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 1, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [row["input"] for row in rows] == [str(good), str(bad)]
    assert rows[0]["score"] is not None and rows[1]["error"]
    assert json.loads(r.stderr.strip().splitlines()[-1]) == [], r.stderr
