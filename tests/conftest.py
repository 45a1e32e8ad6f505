import contextlib
import fcntl
import os
import shutil
import tempfile

import numpy as np
import pytest

import tiny_models
from tiny_models import DATA, FIXTURE_OVERRIDES, FIXTURES  # noqa: F401  (re-exported for the tests)


def pytest_configure(config):
    """One XLA compilation cache for the whole run, shared by the xdist workers and every
    subprocess they start (the variable is inherited): each signature is compiled once per shape
    instead of once per process, which was most of the suite's time. A fresh folder per run, so a
    cache written on another machine (other CPU features) is never read. (This process, the xdist
    controller, runs no test: nothing here imports TensorFlow, which would hold back the workers'
    start by its 4-5 s import.)"""
    if hasattr(config, "workerinput") or "--tf_xla_persistent_cache_directory" in os.environ.get("TF_XLA_FLAGS", ""):
        return  # an xdist worker: the controller has set it up
    cache = tempfile.mkdtemp(prefix="vila-tf-xla-cache-")
    config._vila_xla_cache = cache
    os.environ["TF_XLA_FLAGS"] = (os.environ.get("TF_XLA_FLAGS", "") + f" --tf_xla_persistent_cache_directory={cache}").strip()
    # jax's own cache likewise, for the JAX side (exports in several processes embed the same
    # prompts; both workers may build the same module fixtures). Tiny compilations are not worth
    # an entry.
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(cache, "jax"))
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.1")


def pytest_collection_modifyitems(config, items):
    """Tests marked `long` go first, dealt alternately to the two halves of the collection: xdist's
    worksteal scheduler gives each worker one contiguous half and lets an idle worker take from
    the tail of the other's queue, so with the long tests at the front the run ends on short ones
    instead of one worker finishing a 40 s test alone. (Only tests without module-scoped fixtures
    are marked: moving one away from its module would set those fixtures up twice.) The order is
    the same in every worker, as xdist requires."""
    long = [item for item in items if item.get_closest_marker("long")]
    if not long:
        return
    rest = [item for item in items if not item.get_closest_marker("long")]
    cut = len(items) // 2 - len(long[0::2])
    items[:] = long[0::2] + rest[:cut] + long[1::2] + rest[cut:]


def pytest_unconfigure(config):
    cache = getattr(config, "_vila_xla_cache", None)
    if cache:
        shutil.rmtree(cache, ignore_errors=True)


def fixture_dir(name):
    return os.path.join(DATA, name)


def golden(name):
    return np.load(os.path.join(DATA, name, "golden.npz"), allow_pickle=False)


def params_flat(name):
    return np.load(os.path.join(DATA, name, "params_flat.npz"), allow_pickle=False)


@pytest.fixture(scope="session", params=FIXTURES)
def fixture_name(request):
    return request.param


@pytest.fixture(scope="session")
def loaded_fixtures():
    from export.checkpoints import paxml as checkpoint
    return {n: checkpoint.load(os.path.join(DATA, n, "ckpt"), **FIXTURE_OVERRIDES) for n in FIXTURES}


# --- SentencePiece models and exports shared by the export tests ------------------------------


def shared_dir(tmp_path_factory, worker_id) -> "os.PathLike":
    """A folder every test process of this run sees: the run's own base temp folder, or under
    pytest-xdist the parent of the workers' folders (fresh for each run, so never stale)."""
    base = tmp_path_factory.getbasetemp()
    return base if worker_id == "master" else base.parent


@contextlib.contextmanager
def _locked(path):
    """An exclusive lock between test processes (xdist workers) on `path`."""
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def build_once(folder, build):
    """Runs `build(folder)` in exactly one test process; the others wait and reuse its output.
    The folder appears complete or not at all (`done` is written last)."""
    os.makedirs(os.path.dirname(folder), exist_ok=True)
    with _locked(folder + ".lock"):
        if not os.path.exists(folder + ".done"):
            shutil.rmtree(folder, ignore_errors=True)
            build(folder)
            open(folder + ".done", "w").close()
    return folder


@pytest.fixture(scope="session")
def worker_id(request):
    """xdist's worker name ("gw0", ...) or "master" without xdist (also when xdist is absent)."""
    return getattr(request.config, "workerinput", {}).get("workerid", "master")


@pytest.fixture(scope="session")
def spm_model(tmp_path_factory, worker_id):
    """A SentencePiece model trained by the test itself (once per run, shared by xdist workers)."""
    folder = str(shared_dir(tmp_path_factory, worker_id) / "spm")
    build_once(folder, lambda d: tiny_models.train_spm(os.path.join(d, "spm.model")))
    return os.path.join(folder, "spm.model")


@pytest.fixture(scope="session")
def exported(tmp_path_factory, spm_model, worker_id):
    """Both fixtures exported once per run: {fixture name: SavedModel dir}. Under xdist each worker
    starts with a different fixture, so two workers build the two exports side by side."""
    root = shared_dir(tmp_path_factory, worker_id) / "exported"
    start = 0 if worker_id == "master" else int(worker_id[2:]) % len(FIXTURES)
    order = FIXTURES[start:] + FIXTURES[:start]
    for n in order:
        build_once(str(root / n), lambda d, n=n: tiny_models.export_fixture(n, spm_model, os.path.join(d, "1")))
    return {n: str(root / n / "1") for n in FIXTURES}


@pytest.fixture(scope="session")
def jaxless(exported, tmp_path_factory, worker_id):
    """Both exports' outputs from one process where jax and Beam cannot be imported
    (tests/jaxless_outputs.py: hub.load's signatures, the runtime, the command line), once per run:
    the workers share them (`build_once`), as they share the exports."""
    folder = str(shared_dir(tmp_path_factory, worker_id) / "jaxless")

    def build(d):
        os.makedirs(d)
        args = [a for name, path in exported.items()
                for a in (path, os.path.join(DATA, name, "golden.npz"), os.path.join(d, f"{name}.npz"))]
        r = run_without_jax(os.path.join(os.path.dirname(DATA), "jaxless_outputs.py"), *args)
        assert r.returncode == 0, r.stderr[-4000:]

    build_once(folder, build)
    return {name: np.load(os.path.join(folder, f"{name}.npz"), allow_pickle=False) for name in exported}


def xla_call_module_functions(savedmodel) -> list:
    """(FunctionDef, XlaCallModule NodeDef) of every lowered head in the SavedModel's graph."""
    from tensorflow.core.protobuf import saved_model_pb2
    sm = saved_model_pb2.SavedModel()
    with open(os.path.join(savedmodel, "saved_model.pb"), "rb") as f:
        sm.ParseFromString(f.read())
    return [(fn, node) for graph in sm.meta_graphs for fn in graph.graph_def.library.function for node in fn.node_def
            if node.op == "XlaCallModule"]


def xla_call_modules(savedmodel) -> list:
    """The XlaCallModule NodeDefs (the lowered heads) of every function in the SavedModel's graph."""
    return [node for _, node in xla_call_module_functions(savedmodel)]


def _folder_stamp(path: str) -> tuple:
    """Every file under `path` with its size and modification time: changes when the folder does."""
    stamp = []
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames.sort()
        for name in sorted(filenames):
            st = os.stat(os.path.join(dirpath, name))
            stamp.append((os.path.relpath(os.path.join(dirpath, name), path), st.st_size, st.st_mtime_ns))
    return tuple(stamp)


@pytest.fixture(scope="session", autouse=True)
def reuse_loaded_savedmodels():
    """In a test process, `tf.saved_model.load` of a folder already loaded, unchanged since, under
    the same device, returns that same loaded object (the 16 most recent are kept). Restoring a tiny
    export's 76 graph functions costs 1-2 s, and its first call per signature and batch size another
    0.3-1.5 s, while the reference loaders and the TF Serving request checks load the same two
    session exports: each paid both again. (The runtime loads with its own loader,
    vila_tf.savedmodel.saved_functions, in a fraction of a second.) The loaded objects are read
    only (the runtime copies what it keeps). A folder that changed (any file's size or time) loads
    afresh; loads with tags or options, `hub.load`, the TF1 loader and every fresh process load for
    real, so the loader itself stays under test."""
    import collections

    import tensorflow as tf
    from tensorflow.python.eager import context

    original = tf.saved_model.load
    loaded = collections.OrderedDict()

    def load(export_dir, tags=None, options=None):
        if tags is not None or options is not None:
            return original(export_dir, tags, options)
        path = os.path.realpath(os.fspath(export_dir))
        key = (path, _folder_stamp(path), context.context().device_name)
        if key not in loaded:
            loaded[key] = original(export_dir)
            while len(loaded) > 16:
                loaded.popitem(last=False)
        loaded.move_to_end(key)
        return loaded[key]

    tf.saved_model.load = load
    yield
    tf.saved_model.load = original


@pytest.fixture(scope="session")
def model(exported):
    """`vila_tf.load` of the tiny VILA-R export, once per test process: its kernels compile once for
    every test file that uses it. A test that changes one of its settings puts it back (`finally`);
    a module's own `model` fixture may override it."""
    import vila_tf
    m = vila_tf.load(exported["vila_r_tiny"])
    yield m
    m.close()


@pytest.fixture(scope="session")
def references(exported, spm_model):
    """{fixture name: reference.Reference}: each export's outputs on encoded images by the release's
    TF-op preprocessing and the export's golden-checked pixel signatures, never by vila_tf. Built on
    first use in each test process."""
    import reference as ref

    class Lazy(dict):
        def __missing__(self, name):
            self[name] = ref.Reference(exported[name], name, spm_model)
            return self[name]
    return Lazy()


@pytest.fixture(scope="session")
def reference(exported):
    """Scores straight from the tiny VILA-R export's serving_default on encoded bytes: the ground
    truth the runtime is checked against, loaded once per test process (a module's own `reference`
    fixture may override it)."""
    import tensorflow as tf
    import tensorflow_text  # noqa: F401
    from reference import in_buckets
    m = tf.saved_model.load(exported["vila_r_tiny"])

    def score(encoded):
        return in_buckets(lambda b: m.signatures["serving_default"](image_bytes=tf.constant(b))["predictions"].numpy(),
                          list(encoded))[:, 0]
    return score


def kill_after_rows(cmd, out, rows, env) -> bool:
    """Starts cmd and SIGKILLs it as soon as the CSV file `out` holds its header and `rows` rows;
    False when the run ended first. (Keyed to the output, not to a delay: a warm compile cache
    makes a whole tiny run finish in well under a second.)"""
    import signal
    import subprocess
    import time
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    while proc.poll() is None:
        text = out.read_text() if out.exists() else ""
        if text.startswith("input,") and text.count("\n") > rows:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.005)
    return False


def env_without_jax() -> dict:
    """The environment of a test's subprocess in which `import jax` / `import flax` fail
    (tests/without_jax/sitecustomize.py), with the tests and the repository importable."""
    tests = os.path.dirname(DATA)
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=os.pathsep.join(
        [os.path.join(tests, "without_jax"), tests, os.path.dirname(tests)]))


def run_without_jax(script: str, *args, timeout=900):
    """Runs a Python script in a fresh process in which `import jax` / `import flax` fail."""
    import subprocess
    import sys
    return subprocess.run([sys.executable, script, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env_without_jax())


# The prompt pairs the tiny VILA-R's LiteRT export bakes in (`python -m export litert --prompt`):
# its `image` signature has `zero_shot_prompt_scores` [1, 2]; the pretrain one's has none.
LITERT_PROMPTS = {"vila_r_tiny": ("sharp photo|blurry photo", "a calm lake at dawn|a cluttered desk"),
                  "vila_p_tiny": ()}


@pytest.fixture(scope="session")
def litert_exported(tmp_path_factory, exported, worker_id):
    """`python -m export litert` of both tiny exports (float32, float16, int8), once per run, the
    VILA-R one with LITERT_PROMPTS: {fixture name: LiteRT folder}."""
    from export.tools import litert, litert_source
    root = shared_dir(tmp_path_factory, worker_id) / "litert"
    for n in FIXTURES:
        build_once(str(root / n), lambda d, n=n: litert.write_litert(
            litert_source.from_savedmodel(exported[n], LITERT_PROMPTS[n]), d, log=lambda msg: None))
    return {n: str(root / n) for n in FIXTURES}


def env_without_tensorflow() -> dict:
    """A subprocess environment in which `import tensorflow` (and jax) fail
    (tests/without_tensorflow/sitecustomize.py): the LiteRT runtime's install."""
    tests = os.path.dirname(DATA)
    return dict(os.environ, PYTHONPATH=os.pathsep.join(
        [os.path.join(tests, "without_tensorflow"), tests, os.path.dirname(tests)]))


def vila_tf_command(*args, cwd=None):
    """`vila-tf ARGS` through the console script's own entry point, `vila_tf.cli.main.main`, in this
    process: a subprocess.CompletedProcess (returncode, stdout, stderr as text with universal
    newlines, as `subprocess.run(..., text=True)` gives them). A fresh process would spend 4-5 s
    importing TensorFlow before the command starts; the tests that are about the process itself
    (the installed script, a run without jax, SIGKILL, Ctrl-C) still start one."""
    from vila_tf.cli import main as cli
    return _command_in_process(cli.main, "vila-tf", args, cwd)


def export_command(*args, cwd=None):
    """`python -m export ARGS` through the module's own `main`, in this process, as
    `vila_tf_command` runs `vila-tf`: a fresh process would spend 5-6 s importing TensorFlow and
    jax to print a one-line error. The process-level runs stay where the process is under test
    (`python -m export --help`, the SIGKILLed exports, `make export`)."""
    from export import __main__ as export_main
    return _command_in_process(export_main.main, "python -m export", args, cwd)


def _command_in_process(main, prog, args, cwd):
    """main(argv) with stdout and stderr captured: a subprocess.CompletedProcess. The warning
    filters and format the command sets are undone afterwards."""
    import io
    import subprocess
    import sys
    import warnings

    def stream():
        return io.TextIOWrapper(io.BytesIO(), encoding="utf-8", write_through=True)

    def text(s):
        return s.buffer.getvalue().decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")

    argv = [os.fspath(a) if isinstance(a, os.PathLike) else str(a) for a in args]
    out, err = stream(), stream()
    fmt, saved = warnings.formatwarning, (sys.stdout, sys.stderr)
    with warnings.catch_warnings(), contextlib.chdir(cwd or os.getcwd()):
        sys.stdout, sys.stderr = out, err
        try:
            code = main(argv)
        except SystemExit as e:  # argparse: --help, usage errors
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
        finally:
            sys.stdout, sys.stderr = saved
            warnings.formatwarning = fmt
    return subprocess.CompletedProcess([prog, *argv], code, text(out), text(err))
