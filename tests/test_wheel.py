"""The installed distribution: its top-level names, and the build-time toolkit runnable from the wheel."""
import os
import subprocess
import sys
import zipfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), REPO],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    (path,) = [out / f for f in os.listdir(out) if f.endswith(".whl")]
    return path


def test_top_level_names(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert top == {"vila_tf", "vila_tf_export", "vila_tf-0.1.0.dist-info"}, top
    # Every module of the checkout is in the wheel (setup.cfg lists the sub-packages one by one).
    for folder, wheel_name in (("export", "vila_tf_export"), ("vila_tf", "vila_tf")):
        for dirpath, _, files in os.walk(os.path.join(REPO, folder)):
            rel = os.path.relpath(dirpath, os.path.join(REPO, folder))
            for f in files:
                if f.endswith(".py"):
                    assert os.path.normpath(os.path.join(wheel_name, rel, f)) in names, (folder, rel, f)
    info = [n for n in names if n.endswith("top_level.txt")]
    if info:  # older setuptools write it; it must agree
        assert set(zipfile.ZipFile(wheel).read(info[0]).decode().split()) == {"vila_tf", "vila_tf_export"}


def test_toolkit_runs_from_the_wheel(wheel, tmp_path):
    """`python -m vila_tf_export` from the unpacked wheel, away from the checkout: the relative
    imports resolve inside the installed package, and the package subcommand (no jax) answers."""
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    env = dict(os.environ, PYTHONPATH=str(site), TF_CPP_MIN_LOG_LEVEL="2")
    r = subprocess.run([sys.executable, "-m", "vila_tf_export", "all", "--help"], cwd=tmp_path,
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "gs://gresearch/vila" in r.stdout
    r = subprocess.run([sys.executable, "-m", "vila_tf_export", "package", str(tmp_path / "nothing"),
                        "--out", str(tmp_path / "dist")], cwd=tmp_path, capture_output=True, text=True,
                       env=env, timeout=300)
    assert r.returncode == 2 and "no such folder" in r.stderr, r.stderr[-3000:]
    r = subprocess.run([sys.executable, "-c", "import export"], cwd=tmp_path, capture_output=True,
                       text=True, env=env, timeout=60)
    assert r.returncode != 0  # the wheel does not claim the top-level name `export`
