"""Fault suite: hostile images and texts, corrupt checkpoints, kills mid-write, concurrent load,
no unsafe deserialization. The long runs (fuzzing, soak) are `make fuzz` / `make soak`."""
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import image_mutations as im
from reference import Reference, release_pixels
import tiny_models
from conftest import (DATA, FIXTURE_OVERRIDES, env_without_jax, export_command, kill_after_rows, params_flat, vila_tf_command,
                      xla_call_modules)
from vila_tf.savedmodel import preprocessing
from export.model.tree import flatten, unflatten

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(DATA)))
mutated_images = st.builds(
    im.mutate, st.sampled_from(sorted(im.seeds().values())), st.sampled_from(im.MUTATIONS),
    st.integers(0, 10 ** 6), st.integers(0, 10 ** 6))

_preprocess_one = tf.function(lambda b: preprocessing.preprocess_batch(b[None]),
                              input_signature=[tf.TensorSpec([], tf.string)], autograph=False)


def _outcome(run, data):
    """'ok' with finite output, or the InvalidArgumentError message; anything else fails the test."""
    try:
        out = run(data)
    except tf.errors.InvalidArgumentError as e:
        assert e.message.strip(), "an error without a message"
        return "error"
    assert np.all(np.isfinite(out)), "non-finite output"
    return "ok"


# --- 1. images ---------------------------------------------------------------------------------

@settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(mutated_images)
def test_preprocess_never_crashes(data):
    _outcome(lambda d: _preprocess_one(tf.constant(d)).numpy(), data)


@pytest.fixture(scope="module")
def loaded_r(exported):
    return tf.saved_model.load(exported["vila_r_tiny"])


def test_serving_default_on_mutations(loaded_r):
    rng = np.random.default_rng(1)
    fn = loaded_r.signatures["serving_default"]
    outcomes = []
    for name, data in sorted(im.seeds().items()):
        for kind in im.MUTATIONS:
            a, b = (int(x) for x in rng.integers(0, 10 ** 6, 2))
            outcomes.append(_outcome(lambda d: fn(tf.constant(d))["predictions"].numpy(), im.mutate(data, kind, a, b)))
    assert outcomes.count("ok") >= len(im.seeds())  # every unmutated seed scores
    assert "error" in outcomes


def test_every_seed_kind_decodes_like_the_release():
    for name, data in im.seeds().items():
        if name == "jpeg_cmyk":
            continue  # the release pipeline would fail/succeed identically; checked below
        got = _preprocess_one(tf.constant(data)).numpy()[0]
        if name.startswith("webp"):  # not in the release: the first frame's pixels as libwebp gives them (Pillow)
            data = im.as_png(data)
        np.testing.assert_allclose(got, release_pixels(data), atol=1e-6, err_msg=name)
    _outcome(lambda d: _preprocess_one(tf.constant(d)).numpy(), im.seeds()["jpeg_cmyk"])


@pytest.mark.parametrize("name", sorted(im.seeds()))
def test_decompression_bomb_guard_holds_for_every_header(name):
    bomb = im.with_declared_size(im.seeds()[name], im.GIANT, im.GIANT)
    with pytest.raises(tf.errors.InvalidArgumentError, match="more than the allowed 50000000"):
        _preprocess_one(tf.constant(bomb))


def test_vila_tf_reports_each_bad_input(exported, references):
    import vila_tf
    model = vila_tf.load(exported["vila_r_tiny"])
    rng = np.random.default_rng(2)
    inputs = [im.mutate(d, k, *map(int, rng.integers(0, 10 ** 6, 2)))
              for d in im.seeds().values() for k in im.MUTATIONS]
    scores, errors = model.score(inputs, return_errors=True)
    failed = {e.index for e in errors}
    assert len(scores) == len(inputs)
    for i, s in enumerate(scores):
        assert (np.isnan(s) and i in failed) or (np.isfinite(s) and i not in failed)
    assert all(e.reason and "Traceback" not in e.reason for e in errors)
    # the good ones score as the reference path scores them alone (release pixels, golden-checked model)
    good = [i for i in range(len(inputs)) if i not in failed]
    np.testing.assert_allclose(scores[good[:5]], references["vila_r_tiny"].score([inputs[i] for i in good[:5]]),
                               atol=1e-5)


# --- 2. texts ----------------------------------------------------------------------------------

HOSTILE_TEXTS = [b"", b"x" * 100_000, b"\xff\xfe\xfd invalid utf-8 \xc3\x28", b"nul \x00 inside \x00",
                 "مرحبا بالعالم right-to-left".encode(), "e\u0301\u0301\u0301 combining".encode(),
                 "\u202e override \u202c".encode(), "🏳️‍🌈 zwj".encode(), b" " * 5000]


def test_text_embedding_survives_hostile_text(loaded_r):
    fn = loaded_r.signatures["text_embedding"]
    for t in HOSTILE_TEXTS:
        out = fn(text=tf.constant([t]))["text_embedding"].numpy()
        assert out.shape == (1, 64) and np.all(np.isfinite(out)), t[:20]
        assert abs(np.linalg.norm(out) - 1) < 1e-4
    out = fn(text=tf.constant(HOSTILE_TEXTS))["text_embedding"].numpy()
    assert np.all(np.isfinite(out))


# --- 3. corrupt checkpoints --------------------------------------------------------------------

def _fixture_file():
    return os.path.join(DATA, "vila_r_tiny", "ckpt", "checkpoint_0", "state", "checkpoint")


def _ckpt_with_bytes(tmp_path, data: bytes):
    d = tmp_path / "ck" / "checkpoint_0"
    shutil.rmtree(tmp_path / "ck", ignore_errors=True)
    d.mkdir(parents=True)
    (d / "checkpoint").write_bytes(data)
    return str(tmp_path / "ck")


def test_truncated_checkpoints(tmp_path):
    from export.checkpoints import paxml as checkpoint
    data = open(_fixture_file(), "rb").read()
    offsets = sorted(set(np.linspace(0, len(data) - 1, 60).astype(int)) | {1, 2, 17, 18, 19, 20, 40, 41})
    for off in offsets:
        path = _ckpt_with_bytes(tmp_path, data[:off])
        with pytest.raises(checkpoint.CheckpointError, match=r"checkpoint_0/checkpoint.*(truncated|empty)"):
            checkpoint.load(path)


def test_flipped_bytes_give_a_clear_error_or_the_right_shapes(tmp_path):
    """flax msgpack has no checksums: a flip inside an array's data cannot be detected (the export
    records the source's sha256 instead); a flip in the structure must be a CheckpointError."""
    from export.checkpoints import paxml as checkpoint
    data = open(_fixture_file(), "rb").read()
    rng = np.random.default_rng(3)
    structural = [0, 1, 2, 3, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26]
    for pos in structural + list(rng.integers(0, len(data), 40)):
        flipped = im.bit_flips(data, [int(pos)], [int(rng.integers(0, 8))])
        path = _ckpt_with_bytes(tmp_path, flipped)
        try:
            ck = checkpoint.load(path, **FIXTURE_OVERRIDES)
        except checkpoint.CheckpointError as e:
            assert "checkpoint_0/checkpoint" in str(e)
            continue
        shapes = {k: v.shape for k, v in flatten(ck.params).items()}
        assert shapes == {k: v.shape for k, v in ((k, params_flat("vila_r_tiny")[k]) for k in shapes)}


def test_swapped_shapes(tmp_path):
    from export.checkpoints import paxml as checkpoint
    flat = {k: params_flat("vila_r_tiny")[k] for k in params_flat("vila_r_tiny").files}
    a, b = "decoder/cls_emb", "decoder/crossmodal_ln/bias"
    flat[a], flat[b] = flat[b], flat[a]
    checkpoint.write_paxml(unflatten(flat), str(tmp_path))
    with pytest.raises(checkpoint.CheckpointError, match=r"decoder/cls_emb\): expected shape \[1, 1, 64\], found \[64\]"):
        checkpoint.load(str(tmp_path))


def test_dropped_metadata_still_reads_the_state(tmp_path):
    """paxml writes metadata/metadata beside state/checkpoint; without it the state is still the
    same arrays, so the reader takes it (the metadata holds only a version number)."""
    from export.checkpoints import paxml as checkpoint
    shutil.copytree(os.path.join(DATA, "vila_r_tiny", "ckpt"), tmp_path / "ck")
    shutil.rmtree(tmp_path / "ck" / "checkpoint_0" / "metadata")
    ck = checkpoint.load(str(tmp_path / "ck"), **FIXTURE_OVERRIDES)
    np.testing.assert_array_equal(ck.params["decoder"]["cls_emb"], params_flat("vila_r_tiny")["decoder/cls_emb"])
    bad = tmp_path / "ck2"
    shutil.copytree(os.path.join(DATA, "vila_r_tiny", "ckpt"), bad)
    (bad / "checkpoint_0" / "metadata" / "metadata").write_text("{not json")
    with pytest.raises(checkpoint.CheckpointError, match=r"metadata/metadata: unreadable paxml metadata"):
        checkpoint.load(str(bad))


@pytest.mark.parametrize("make", ["empty_dir", "random_file", "text_file", "dir_of_junk"])
def test_wrong_paths_and_no_partial_output(tmp_path, make):
    from export.checkpoints import paxml as checkpoint
    target = tmp_path / "input"
    if make == "empty_dir":
        target.mkdir()
    elif make == "random_file":
        target.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    elif make == "text_file":
        target.write_text("model_dims: 768\n")
    else:
        (target / "checkpoint_0").mkdir(parents=True)
        (target / "checkpoint_0" / "readme.txt").write_text("x")
    with pytest.raises(checkpoint.CheckpointError) as e:
        checkpoint.load(str(target))
    assert str(target) in str(e.value)
    out = tmp_path / "out"
    r = export_command("convert", "--checkpoint", target, "--out", out)
    assert r.returncode == 2 and "error:" in r.stderr and "Traceback" not in r.stderr
    assert sorted(os.listdir(tmp_path)) == ["input"]  # nothing written, not even a temporary


# --- 4. crash safety ---------------------------------------------------------------------------

def _tree_digest(path):
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in sorted(os.walk(path)):
        dirnames.sort()
        for f in sorted(filenames):
            p = os.path.join(dirpath, f)
            h.update(os.path.relpath(p, path).encode())
            h.update(open(p, "rb").read())
    return h.hexdigest()


def _wait_for(lines, marker) -> bool:
    """Reads `lines` (a process's stderr) up to the first one holding `marker`; False at its end."""
    return any(marker in line for line in lines)


# Each stage of the export that writes into the output's temporary folder, in turn: the graph, the
# weights (written after the graph: the lean export) and the warmup records. (Before "lowering",
# the temporary folder is only created, empty: a kill there leaves a subset of what these leave;
# before "building", the checkpoint is only indexed and nothing is on disk yet.)
KILL_POINTS = [("lowering the heads", 1.0), ("writing the weights", 0.0), ("writing TF Serving warmup", 0.0)]


@pytest.mark.long
def test_sigkill_mid_export_leaves_previous_or_complete_model(exported, spm_model, tmp_path):
    """An export over a previous model, frozen at each stage in turn and SIGKILLed at the last: at
    every stage the previous model (or a complete new one) is there and nothing partial; then a
    rerun succeeds and clears the temporary the killed run left.

    What a SIGKILL leaves on disk is what was there at that instant, and a process frozen by SIGSTOP
    shows that same state while it stays frozen: so one export is checked at every stage, instead
    of one export per stage, each starting TensorFlow and jax and lowering the heads again."""
    out = tmp_path / "vila_r" / "1"
    shutil.copytree(exported["vila_p_tiny"], out)  # a previous complete model at the path
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    cmd = [sys.executable, "-m", "export", "--checkpoint", os.path.join(DATA, "vila_r_tiny", "ckpt"),
           "--spm", spm_model, "--out", str(out), "--decoding-max-len", "16"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env, cwd=ROOT, text=True)
    try:
        for k, (marker, delay) in enumerate(KILL_POINTS):
            before = _tree_digest(out)
            assert _wait_for(proc.stderr, marker), marker
            time.sleep(delay)
            proc.send_signal(signal.SIGSTOP)
            status = os.waitpid(proc.pid, os.WUNTRACED)[1]
            if not os.WIFSTOPPED(status):  # finished first: only the last stage is that short
                proc.returncode = os.waitstatus_to_exitcode(status)
                assert k + 1 == len(KILL_POINTS) and proc.returncode == 0, (marker, proc.returncode)
            # Either the previous model, untouched, or a complete new one; never a partial folder.
            if _tree_digest(out) != before:
                Reference(str(out), "vila_r_tiny", spm_model)  # loads and reproduces the praxis goldens
            # Only the model and dot-prefixed temporaries (which TF Serving ignores) are there.
            assert out.is_dir() and all(n == "1" or n.startswith(".") for n in os.listdir(out.parent)), marker
            if proc.returncode is None:
                proc.send_signal(signal.SIGCONT if k + 1 < len(KILL_POINTS) else signal.SIGKILL)
    finally:
        if proc.returncode is None:
            proc.kill()
        proc.wait()
        proc.stderr.close()
    # A rerun succeeds and clears the killed run's temporaries (the same export, in this process:
    # what is under test here is the output path, and this process has imported jax already).
    tiny_models.export_fixture("vila_r_tiny", spm_model, str(out))
    assert os.listdir(out.parent) == ["1"]
    # Reproducible: the same weights and StableHLO modules, byte for byte, as the session's export
    # of the same checkpoint, made by another call path after other work (so with other TensorFlow
    # function names in saved_model.pb; docs/export.md).
    fixture = exported["vila_r_tiny"]
    assert _tree_digest(out / "variables") == _tree_digest(os.path.join(fixture, "variables"))
    modules = sorted(node.attr["module"].s for node in xla_call_modules(out))
    assert len(modules) == 3  # image heads, caption, text
    assert modules == sorted(node.attr["module"].s for node in xla_call_modules(fixture))
    # The rerun's model is the fixture's: score, embedding and greedy caption equal praxis' goldens.
    Reference(str(out), "vila_r_tiny", spm_model)


def test_sigkill_mid_cli_run_leaves_complete_rows_then_resumes(exported, tmp_path):
    """Rows are appended as they are scored (docs/streaming.md): a SIGKILL leaves complete rows,
    at most a torn last one, and --resume finishes the file."""
    from PIL import Image
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(120):
        Image.fromarray(im._photo(60, 80, i)).save(photos / f"{i:03d}.png")
    out = tmp_path / "scores.csv"
    out.write_text("input,score,error\nprevious.jpg,0.5,\n")  # an earlier run's results: started over
    vila_tf_bin = os.path.join(os.path.dirname(sys.executable), "vila-tf")
    env = env_without_jax()
    cmd = [vila_tf_bin, "score", exported["vila_r_tiny"], str(photos), "--output", str(out), "--progress",
           "--batch-size", "4"]
    assert kill_after_rows(cmd, out, 8, env)
    *complete, torn = out.read_text().split("\n")
    assert complete[0] == "input,score,error" and len(complete) < 121
    for k, line in enumerate(complete[1:]):
        name, score, error = line.split(",")
        assert name == str(photos / f"{k:03d}.png") and np.isfinite(float(score)) and error == ""
    assert torn == "" or str(photos).startswith(torn[: len(str(photos))])  # at most a cut-short row
    r = vila_tf_command(*cmd[1:], "--resume")
    assert r.returncode == 0, r.stderr[-2000:]
    lines = out.read_text().splitlines()
    assert len(lines) == 121 and [line.split(",")[0] for line in lines[1:]] == \
        [str(photos / f"{i:03d}.png") for i in range(120)]
    assert [p for p in os.listdir(tmp_path) if p.startswith(".")] == []


# --- 5. concurrent load ------------------------------------------------------------------------

def _mixed_calls(model, photos, texts):
    return [
        lambda i: model.score([photos[i % len(photos)]]),
        lambda i: model.zero_shot([photos[(i + 1) % len(photos)]]),
        lambda i: model.image_embedding([photos[(i + 2) % len(photos)]]),
        lambda i: model.text_embedding([texts[i % len(texts)]]),
        lambda i: np.array(model.caption([photos[(i + 3) % len(photos)]]), dtype=object),
    ]


def run_concurrent(model, threads, calls_per_thread, seconds=None):
    photos = [im._photo(50 + 5 * k, 70, k) for k in range(6)]
    texts = ["good image", "bad lighting", "a cat on a sofa", ""]
    calls = _mixed_calls(model, photos, texts)
    expected = {(c, i): calls[c](i) for c in range(len(calls)) for i in range(12)}
    mismatches, failures, count = [], [], [0]
    lock = threading.Lock()
    deadline = time.time() + seconds if seconds else None

    def worker(t):
        n = 0
        while (n < calls_per_thread) if deadline is None else (time.time() < deadline):
            c, i = (t + n) % len(calls), (t * 7 + n) % 12
            try:
                got = calls[c](i)
                if not np.array_equal(got, expected[(c, i)]):
                    mismatches.append((c, i))
            except Exception as e:  # noqa: BLE001
                failures.append(repr(e))
            n += 1
        with lock:
            count[0] += n

    ts = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return count[0], mismatches, failures


@pytest.mark.long
def test_sixteen_threads_mixing_signatures(exported):
    import vila_tf
    model = vila_tf.load(exported["vila_r_tiny"])
    calls, mismatches, failures = run_concurrent(model, threads=16, calls_per_thread=100)
    assert calls == 1600 and not failures and not mismatches


@pytest.mark.long
def test_short_soak_memory_flat(exported):
    import psutil
    import vila_tf
    model = vila_tf.load(exported["vila_r_tiny"])
    # A short soak (`make soak` runs the long one): a leak per call or a retrace shows within seconds.
    run_concurrent(model, threads=4, calls_per_thread=0, seconds=3)  # warm up allocator and caches
    rss0 = psutil.Process().memory_info().rss
    calls, mismatches, failures = run_concurrent(model, threads=4, calls_per_thread=0, seconds=8)
    growth = psutil.Process().memory_info().rss - rss0
    assert calls > 100 and not failures and not mismatches
    assert growth < 64 * 2 ** 20, f"RSS grew {growth / 2 ** 20:.1f} MiB over {calls} calls"


# --- 6. no unsafe deserialization --------------------------------------------------------------

PICKLE_FAMILY = {"pickle", "cPickle", "dill", "cloudpickle", "marshal", "shelve", "joblib"}
UNSAFE_CALLS = {("yaml", "load"), ("torch", "load"), ("pickle", "load"), ("pickle", "loads"),
                ("marshal", "loads"), ("", "eval")}


def _sources():
    for top in ("export", "vila_tf", "tests", "benchmarks"):
        for dirpath, _, files in os.walk(os.path.join(ROOT, top)):
            for f in files:
                if f.endswith(".py"):
                    yield os.path.join(dirpath, f)


def _unsafe_uses(path):
    """AST scan: pickle-family imports, unsafe loader calls, np.load without allow_pickle=False."""
    import ast
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] in PICKLE_FAMILY:
                    yield f"imports {a.name}"
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in PICKLE_FAMILY:
            yield f"imports from {node.module}"
        elif isinstance(node, ast.Call):
            f = node.func
            owner = f.value.id if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) else ""
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            if (owner, name) in UNSAFE_CALLS:
                yield f"calls {owner + '.' if owner else ''}{name}"
            if name == "exec" and not path.endswith("conftest.py"):  # conftest runs our own test scripts
                yield "calls exec"
            if owner in ("np", "numpy") and name == "load":
                kw = {k.arg: k.value for k in node.keywords}
                if not (isinstance(kw.get("allow_pickle"), ast.Constant) and kw["allow_pickle"].value is False):
                    yield f"np.load without allow_pickle=False (line {node.lineno})"


def test_no_unsafe_deserialization_in_the_source():
    found = [f"{os.path.relpath(p, ROOT)}: {what}" for p in _sources() for what in _unsafe_uses(p)]
    assert not found, "\n".join(found)


def test_readers_never_execute_input():
    """The msgpack reader accepts only array extension types; anything else is refused."""
    import msgpack
    from export.checkpoints import paxml as checkpoint
    from export.checkpoints.msgpack_index import pack_array
    evil = msgpack.packb({"flattened_state": [msgpack.ExtType(42, b"os.system('rm -rf /')")]}, use_bin_type=True)
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        os.makedirs(os.path.join(tmp, "checkpoint_0"))
        with open(os.path.join(tmp, "checkpoint_0", "checkpoint"), "wb") as f:
            f.write(evil)
        with pytest.raises(checkpoint.CheckpointError, match="unsupported msgpack extension type 42"):
            checkpoint.load(tmp)
    assert pack_array(np.zeros(2, np.float32))  # the writer side stays plain data too
