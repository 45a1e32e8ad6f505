"""TF Hub packages: deterministic tar.gz, model card read from the SavedModel, loading by URL and as
a Keras layer. Everything network-like stays on 127.0.0.1 (a server thread inside the test)."""
import contextlib
import functools
import hashlib
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import threading

import numpy as np
import pytest
import tensorflow as tf

from conftest import run_without_jax
from export.publish import model_card, package
from export.__main__ import main as export_main

LOOPBACK = "127.0.0.1"
SUBPROCESS_TIMEOUT = 600


@pytest.fixture(scope="module")
def dist(exported, tmp_path_factory):
    """Both fixture exports packaged once: {fixture name: package.Package}."""
    out = tmp_path_factory.mktemp("dist")
    return {n: package.package_savedmodel(path, str(out)) for n, path in exported.items()}


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
    """Four small photos-to-be (PNG and JPEG, different sizes) as files, for this and other processes:
    a batch of a bucket size, so the run's compilation cache serves it (docs/testing.md)."""
    rng = np.random.default_rng(20230618)
    folder = tmp_path_factory.mktemp("images")
    encoded = [tf.io.encode_png(rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)),
               tf.io.encode_jpeg(rng.integers(0, 256, (90, 40, 3), dtype=np.uint8)),
               tf.io.encode_png(rng.integers(0, 256, (300, 300, 3), dtype=np.uint8)),
               tf.io.encode_jpeg(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8))]
    paths = []
    for i, data in enumerate(encoded):
        path = folder / f"image_{i}"
        path.write_bytes(data.numpy())
        paths.append(str(path))
    return paths


def _image_batch(paths):
    return tf.constant([open(p, "rb").read() for p in paths])


def _predictions(savedmodel_dir, paths):
    import tensorflow_hub as hub
    import tensorflow_text  # noqa: F401 - SentencePiece ops
    return hub.load(savedmodel_dir).signatures["serving_default"](_image_batch(paths))["predictions"].numpy()


@pytest.fixture(scope="module")
def reference(exported, image_files):
    """serving_default predictions of each unpackaged export: {fixture name: [4, 1]}."""
    return {n: _predictions(path, image_files) for n, path in exported.items()}


# --- the archive ---------------------------------------------------------------------------------

def _expected_entries(savedmodel_dir):
    rel = []
    for parent, dirs, files in os.walk(savedmodel_dir):
        for name in dirs + files:
            rel.append(os.path.relpath(os.path.join(parent, name), savedmodel_dir).split(os.sep))
    return ["/".join(parts) for parts in sorted(rel)]


@pytest.mark.parametrize("name", ["vila_r_tiny", "vila_p_tiny"])
def test_archive_holds_the_savedmodel_at_its_root_with_fixed_metadata(dist, exported, name):
    pkg, src = dist[name], exported[name]
    assert os.path.basename(pkg.archive) == f"{name}_1.tar.gz" and pkg.version == 1
    raw = open(pkg.archive, "rb").read()
    assert raw[:3] == b"\x1f\x8b\x08"                 # gzip, deflate
    assert raw[3] & 0x08 == 0                          # no FNAME: no file name in the header
    assert raw[4:8] == b"\0\0\0\0"                     # header mtime 0
    assert pkg.size == len(raw) and pkg.sha256 == hashlib.sha256(raw).hexdigest()
    assert open(pkg.checksum_file).read() == f"{pkg.sha256}  {name}_1.tar.gz\n"
    assert os.stat(pkg.archive).st_mode & 0o777 == 0o644
    from vila_tf.core.atomic import umask
    for small in (pkg.checksum_file, pkg.card):  # as `open` makes files (0644 under umask 022), not 0600
        assert os.stat(small).st_mode & 0o777 == 0o666 & ~umask(), small

    with tarfile.open(pkg.archive, "r:gz") as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == _expected_entries(src)
        assert "saved_model.pb" in tar.getnames() and "variables/variables.index" in tar.getnames()
        for m in members:
            assert (m.mtime, m.uid, m.gid, m.uname, m.gname) == (0, 0, 0, "", ""), m.name
            assert m.isdir() or m.isfile(), m.name
            assert m.mode == (0o755 if m.isdir() else 0o644), m.name
            if m.isfile():
                assert tar.extractfile(m).read() == open(os.path.join(src, m.name), "rb").read(), m.name


def test_cli_repackages_byte_identical_archives_and_cards_without_jax(dist, exported, tmp_path):
    """`python -m export package exported --out DIST` on the TF Serving base folder, in a fresh process
    where jax cannot be imported: every model, and the same bytes as the first packaging (archive,
    checksum and card)."""
    root = os.path.dirname(os.path.dirname(exported["vila_r_tiny"]))
    out = tmp_path / "dist_again"
    script = tmp_path / "export_main.py"
    script.write_text("import sys\nfrom export.__main__ import main\nsys.exit(main(sys.argv[1:]))\n")
    r = run_without_jax(str(script), "package", root, "--out", out)
    assert r.returncode == 0, r.stderr[-4000:]
    for name, pkg in dist.items():
        again = out / os.path.basename(pkg.archive)
        assert again.read_bytes() == open(pkg.archive, "rb").read()
        assert (out / f"{name}_1.tar.gz.sha256").read_text() == open(pkg.checksum_file).read()
        assert (out / f"{name}.md").read_text() == open(pkg.card).read()
        assert pkg.sha256 in r.stdout
    assert sorted(os.listdir(out)) == sorted(os.path.basename(p) for pkg in dist.values()
                                             for p in (pkg.archive, pkg.checksum_file, pkg.card))


@pytest.mark.parametrize("name", ["vila_r_tiny", "vila_p_tiny"])
def test_extracted_archive_scores_like_the_export(dist, reference, image_files, tmp_path, name):
    unpacked = tmp_path / name
    with tarfile.open(dist[name].archive, "r:gz") as tar:
        tar.extractall(unpacked, filter="data")  # the strict filter: it would reject links or odd modes
    np.testing.assert_array_equal(_predictions(str(unpacked), image_files), reference[name])
    assert reference[name].shape == (4, 1) and np.all(np.isfinite(reference[name]))


def test_cli_errors_name_the_problem(exported, tmp_path, capsys):
    root = os.path.dirname(os.path.dirname(exported["vila_r_tiny"]))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert export_main(["package", str(empty), "--out", str(tmp_path / "d")]) == 2
    assert "saved_model.pb" in capsys.readouterr().err

    assert export_main(["package", root, "--out", str(tmp_path / "d"), "--name", "x"]) == 2
    assert "--name/--version apply to one SavedModel, but 2 were found" in capsys.readouterr().err

    assert export_main(["package", exported["vila_r_tiny"], "--out", str(tmp_path / "d"), "--name", "a/b"]) == 2
    assert "package name 'a/b'" in capsys.readouterr().err

    inside = os.path.join(exported["vila_r_tiny"], "dist")
    assert export_main(["package", exported["vila_r_tiny"], "--out", inside]) == 2
    assert "the archive would contain itself" in capsys.readouterr().err and not os.path.exists(inside)

    no_metadata = tmp_path / "no_metadata"
    shutil.copytree(exported["vila_r_tiny"], no_metadata, ignore=shutil.ignore_patterns("assets.extra"))
    assert export_main(["package", str(no_metadata), "--out", str(tmp_path / "d")]) == 2
    assert os.path.join("assets.extra", "vila_tf.json") + " is missing" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()  # every check runs before anything is written


def test_find_savedmodels_reads_all_three_layouts(exported):
    model_dir = os.path.dirname(exported["vila_p_tiny"])
    root = os.path.dirname(model_dir)
    assert package.find_savedmodels(exported["vila_r_tiny"]) == [(exported["vila_r_tiny"], "vila_r_tiny", 1)]
    assert package.find_savedmodels(model_dir) == [(exported["vila_p_tiny"], "vila_p_tiny", 1)]
    assert package.find_savedmodels(root) == [(exported["vila_p_tiny"], "vila_p_tiny", 1),
                                              (exported["vila_r_tiny"], "vila_r_tiny", 1)]


# --- the model card ------------------------------------------------------------------------------

CELL_TENSOR = re.compile(r"`(\w+)`: (\w+) (`\[[^\]]*\]`|\(any shape\))")


def card_signatures(card_text):
    """{signature: (inputs, outputs)} parsed from the card's signature table, each a set of
    (name, dtype, shape text)."""
    section = card_text.split("## Signatures", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0].startswith("`"):
            rows[cells[0].strip("`")] = (set(CELL_TENSOR.findall(cells[1])), set(CELL_TENSOR.findall(cells[2])))
    return rows


def _spec_text(spec):
    if spec.shape.rank is None:
        return "(any shape)"
    return "`[" + ", ".join("B" if i == 0 and d is None else str(d) for i, d in enumerate(spec.shape.as_list())) + "]`"


@pytest.mark.parametrize("name", ["vila_r_tiny", "vila_p_tiny"])
def test_card_signature_table_matches_the_savedmodel(dist, exported, name):
    import tensorflow_text  # noqa: F401
    loaded = tf.saved_model.load(exported[name])
    table = card_signatures(open(dist[name].card).read())
    assert set(table) == set(loaded.signatures) and len(table) == 10
    for sig, (inputs, outputs) in table.items():
        fn = loaded.signatures[sig]
        want_in = {(k, s.dtype.name, _spec_text(s)) for k, s in fn.structured_input_signature[1].items()}
        want_out = {(k, s.dtype.name, _spec_text(s)) for k, s in fn.structured_outputs.items()}
        assert (inputs, outputs) == (want_in, want_out), sig
    # The contract of the README, on the fixtures' sizes (width 64, captions of 16 tokens).
    assert table["serving_default"] == ({("image_bytes", "string", "(any shape)")},
                                        {("predictions", "float32", "`[B, 1]`")})
    assert table["score_pixels"][0] == {("image", "float32", "`[B, 224, 224, 3]`")}
    assert table["text_embedding"] == ({("text", "string", "`[B]`")}, {("text_embedding", "float32", "`[B, 64]`")})
    assert table["caption"][1] == {("caption", "string", "`[B]`"), ("caption_ids", "int32", "`[B, 16]`"),
                                   ("caption_length", "int32", "`[B]`")}
    attributes = ("image", "lighting", "content", "background", "foreground", "composition")
    assert table["zero_shot"][1] == table["zero_shot_pixels"][1] == {
        (k, "float32", "`[B]`") for k in ["zero_shot_score"] + [f"zero_shot_{a}" for a in attributes]}
    card = open(dist[name].card).read()
    assert "each pair's own softmax as `zero_shot_<attribute>`" in card
    assert "`zero_shot_lighting`: “good lighting” vs “bad lighting”" in card


def test_card_says_what_the_model_is_and_how_to_load_it(dist, exported):
    r, p = open(dist["vila_r_tiny"].card).read(), open(dist["vila_p_tiny"].card).read()
    meta = json.load(open(os.path.join(exported["vila_r_tiny"], "assets.extra", "vila_tf.json")))
    assert r.startswith("# vila_r_tiny (version 1): VILA-R image aesthetics scorer\n")
    assert p.startswith("# vila_p_tiny (version 1): VILA-P")
    assert "the zero-shot aesthetic score (no VILA-R head" in p
    for card, pkg in ((r, dist["vila_r_tiny"]), (p, dist["vila_p_tiny"])):
        assert f"`{pkg.sha256}`" in card
        assert "| Demo weights | no |" in card and "> **Demo weights.**" not in card
        assert "arXiv:2303.14302" in card and "License" in card
        assert f'hub.load("https://<your-host>/<path>/{pkg.name}_1.tar.gz")' in card
        assert 'os.environ["TF_USE_LEGACY_KERAS"] = "1"' in card
        assert "--xla_cpu_compilation_enabled=true" in card and "--enable_model_warmup=true" in card
        assert "vila_tf.load(" in card and "272×272" in card and "center-cropped to 224×224" in card
    assert meta["source_sha256"] in r
    # The dtypes the export recorded (its metadata): float32 weights, float32 compute.
    assert meta["dtype"] == meta["compute_dtype"] == "float32"
    assert "| Weights dtype | float32 |" in r and "| Compute dtype | float32 |" in r


def test_card_states_the_recorded_compute_dtype(exported, tmp_path):
    """The card's compute dtype is the one in the export's metadata, never a fixed "float32"; a
    genuine bfloat16-compute export's card is checked in test_accelerators.py (`make test-slow`)."""
    model = tmp_path / "vila_r_bf16" / "1"
    shutil.copytree(exported["vila_r_tiny"], model)
    meta_path = model / "assets.extra" / "vila_tf.json"
    meta = json.loads(meta_path.read_text())
    meta.update(dtype="bfloat16", compute_dtype="bfloat16")
    meta_path.write_text(json.dumps(meta))
    card = model_card.render(model_card.read_facts(str(model)),
                             model_card.PackageInfo("vila_r_bf16", 1, "vila_r_bf16_1.tar.gz", "0" * 64, 1))
    assert "| Weights dtype | bfloat16 |" in card
    assert ("| Compute dtype | bfloat16: matrix multiplications take bfloat16 operands and accumulate in "
            "float32;") in card
    assert "computation in float32" not in card


def test_card_of_demo_weights_warns_and_laion_is_named(exported, tmp_path):
    """Cards follow the metadata: a demo export says so at the top; a model without a warmup file
    gets no --enable_model_warmup flag; a LAION checkpoint is called LAION CoCa."""
    demo = tmp_path / "vila_demo" / "1"
    shutil.copytree(exported["vila_r_tiny"], demo, ignore=shutil.ignore_patterns("tf_serving_warmup_requests"))
    meta_path = demo / "assets.extra" / "vila_tf.json"
    meta = json.loads(meta_path.read_text())
    meta["demo_weights"] = True
    meta_path.write_text(json.dumps(meta))
    pkg = package.package_savedmodel(str(demo), str(tmp_path / "dist"), base_url="http://models.example/vila/")
    card = open(pkg.card).read()
    assert pkg.card.endswith("vila_demo.md") and pkg.archive.endswith("vila_demo_1.tar.gz")
    assert card.startswith("# vila_demo (version 1): VILA demo export (random weights)\n\n> **Demo weights.**")
    assert "| Demo weights | **yes" in card and "nothing from the VILA release is included" in card
    assert 'hub.load("http://models.example/vila/vila_demo_1.tar.gz")' in card
    assert "--enable_model_warmup" not in card

    facts = model_card.read_facts(exported["vila_p_tiny"])
    laion = model_card.render(facts, model_card.PackageInfo("laion_coca", 1, "laion_coca_1.tar.gz", "0" * 64, 1))
    assert laion.startswith("# laion_coca (version 1): LAION CoCa") and "LAION image–text pairs" in laion


# --- loading by URL and as a Keras layer ---------------------------------------------------------

# Runs in a fresh process: loads HANDLE with hub.load and as a hub.KerasLayer in a tf.keras model, and
# saves serving_default's predictions for the images as .npy files.
CLIENT = r"""
import os, sys
handle, out_dir, *images = sys.argv[1:]
import numpy as np
import tensorflow as tf
import tensorflow_hub as hub
import tensorflow_text  # noqa: F401
batch = np.array([open(p, "rb").read() for p in images], dtype=object)
model = hub.load(handle)
np.save(os.path.join(out_dir, "hub_load.npy"),
        model.signatures["serving_default"](tf.constant(batch))["predictions"].numpy())
assert tf.keras.__name__.startswith("tf_keras"), tf.keras.__name__  # TF_USE_LEGACY_KERAS took effect
image_bytes = tf.keras.Input(shape=(), dtype=tf.string, name="image_bytes")
layer = hub.KerasLayer(handle, signature="serving_default", output_key="predictions")
keras_model = tf.keras.Model(image_bytes, layer(image_bytes))
np.save(os.path.join(out_dir, "keras_predict.npy"), keras_model.predict(batch, verbose=0))
np.save(os.path.join(out_dir, "keras_call.npy"), keras_model(tf.constant(batch)).numpy())
"""


class _QuietRecordingHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, fmt, *args):  # keep pytest's output clean; record instead
        self.server.requests.append(self.path)


@contextlib.contextmanager
def serve_folder(folder):
    """Serves `folder` over HTTP on 127.0.0.1 (an ephemeral port) from a thread, for the block only."""
    server = http.server.ThreadingHTTPServer((LOOPBACK, 0), functools.partial(_QuietRecordingHandler,
                                                                              directory=str(folder)))
    server.requests = []
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _hub_environment(cache_dir) -> dict:
    """TF Hub's cache in `cache_dir`, and loopback never proxied (used without the proxy variables)."""
    return dict(TFHUB_CACHE_DIR=str(cache_dir), NO_PROXY=LOOPBACK, no_proxy=LOOPBACK)


def _run_client(handle, out_dir, images, cache_dir):
    """CLIENT in a fresh process with Keras 2 (TF_USE_LEGACY_KERAS, read when tensorflow is imported)."""
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}  # never leave loopback
    env.update(_hub_environment(cache_dir), TF_CPP_MIN_LOG_LEVEL="2", TF_USE_LEGACY_KERAS="1")
    os.makedirs(out_dir, exist_ok=True)
    r = subprocess.run([sys.executable, "-c", CLIENT, handle, str(out_dir), *images],
                       capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT, env=env)
    assert r.returncode == 0, r.stderr[-4000:]
    return {f[:-4]: np.load(os.path.join(out_dir, f), allow_pickle=False) for f in os.listdir(out_dir)}


def test_hub_load_by_url_then_from_cache_and_as_keras_layer(dist, exported, reference, image_files, tmp_path,
                                                             monkeypatch):
    pkg = dist["vila_r_tiny"]
    cache = tmp_path / "tfhub_cache"
    with serve_folder(os.path.dirname(pkg.archive)) as server:
        host, port = server.server_address[:2]
        assert host == LOOPBACK
        url = f"http://{LOOPBACK}:{port}/{os.path.basename(pkg.archive)}"
        # By URL in this process, in a client's environment; a fresh process reads the cache below.
        for k in [k for k in os.environ if "proxy" in k.lower()]:  # never leave loopback
            monkeypatch.delenv(k)
        for k, v in _hub_environment(cache).items():
            monkeypatch.setenv(k, v)
        first = _predictions(url, image_files)
        # hub asks for the compressed format; the one download is the only request.
        assert server.requests == [f"/{os.path.basename(pkg.archive)}?tf-hub-format=compressed"]
    np.testing.assert_array_equal(first, reference["vila_r_tiny"])

    # hub unpacked it into the cache under the sha1 of the handle: exactly the SavedModel's files.
    cached = cache / hashlib.sha1(url.encode()).hexdigest()
    assert _expected_entries(str(cached)) == _expected_entries(exported["vila_r_tiny"])
    assert (cached / "saved_model.pb").read_bytes() == open(os.path.join(exported["vila_r_tiny"], "saved_model.pb"),
                                                            "rb").read()

    # The server is gone: a new process loads the same URL from the cache, by hub.load and as a layer.
    second = _run_client(url, tmp_path / "second", image_files, cache)
    np.testing.assert_array_equal(second["hub_load"], reference["vila_r_tiny"])
    np.testing.assert_array_equal(second["keras_call"], reference["vila_r_tiny"])
    np.testing.assert_array_equal(second["keras_predict"], reference["vila_r_tiny"])
