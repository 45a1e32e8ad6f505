import os

import numpy as np
import pytest

import tiny_models
from tiny_models import DATA, FIXTURE_OVERRIDES, FIXTURES  # noqa: F401  (re-exported for the tests)


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


@pytest.fixture(scope="session")
def spm_model(tmp_path_factory):
    """A SentencePiece model trained by the test itself."""
    return tiny_models.train_spm(str(tmp_path_factory.mktemp("spm") / "spm.model"))


@pytest.fixture(scope="session")
def exported(tmp_path_factory, spm_model):
    """Both fixtures exported once per session: {fixture name: SavedModel dir}."""
    root = tmp_path_factory.mktemp("exported")
    return {n: tiny_models.export_fixture(n, spm_model, str(root / n / "1")) for n in FIXTURES}


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
