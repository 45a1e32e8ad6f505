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
