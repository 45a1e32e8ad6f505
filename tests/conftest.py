import os

import numpy as np
import pytest

DATA = os.path.join(os.path.dirname(__file__), "data")
FIXTURES = ("vila_r_tiny", "vila_p_tiny")
# The fixtures were made with decoding_max_len 16 (their config.json); nothing else is overridden.
FIXTURE_OVERRIDES = {"decoding_max_len": 16}


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
    from export import checkpoint
    return {n: checkpoint.load(os.path.join(DATA, n, "ckpt"), **FIXTURE_OVERRIDES) for n in FIXTURES}


# --- SentencePiece models and exports shared by the export tests ------------------------------

SPM_SENTENCES = [
    "good image", "bad image", "good lighting", "bad lighting", "good content", "bad content",
    "good background", "bad background", "good foreground", "bad foreground", "good composition",
    "bad composition", "a photo of a dog on the beach at sunset", "the colors are vivid and the focus is sharp",
    "nice composition but the horizon is tilted", "too dark, underexposed shadows", "beautiful portrait",
    "great use of negative space", "the subject is out of focus", "lovely bokeh in the background",
]


@pytest.fixture(scope="session")
def spm_model(tmp_path_factory):
    """A SentencePiece model trained by the test itself (vocab within the fixtures' 1000)."""
    from export import spm
    path = tmp_path_factory.mktemp("spm") / "spm.model"
    rng = np.random.default_rng(0)
    words = " ".join(SPM_SENTENCES).split()
    extra = [" ".join(rng.choice(words, size=8)) for _ in range(300)]
    letters = list("abcdefghijklmnopqrstuvwxyz")
    made_up = [" ".join("".join(rng.choice(letters, size=rng.integers(3, 9))) for _ in range(10))
               for _ in range(3000)]
    return spm.train(SPM_SENTENCES * 5 + extra + made_up, str(path), 1000)


@pytest.fixture(scope="session")
def exported(tmp_path_factory, spm_model):
    """Both fixtures exported once per session: {fixture name: SavedModel dir}."""
    from export import cli_export
    root = tmp_path_factory.mktemp("exported")
    return {n: cli_export.export_checkpoint(os.path.join(DATA, n, "ckpt"), spm_model, str(root / n / "1"),
                                            overrides=FIXTURE_OVERRIDES) for n in FIXTURES}


def run_without_jax(script: str, *args, timeout=900):
    """Runs a Python script in a fresh process in which `import jax` / `import flax` fail."""
    import subprocess
    import sys
    code = ("import sys\n"
            "class _Block:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] in ('jax', 'jaxlib', 'flax'):\n"
            "            raise ImportError(f'{name} is blocked: the runtime must not need it')\n"
            "sys.meta_path.insert(0, _Block())\n"
            f"sys.argv = [{script!r}] + {list(map(str, args))!r}\n"
            f"exec(compile(open({script!r}).read(), {script!r}, 'exec'))\n")
    env = dict(os.environ, PYTHONPATH=os.path.dirname(DATA) + os.pathsep + os.path.dirname(os.path.dirname(DATA)),
               TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=env)
