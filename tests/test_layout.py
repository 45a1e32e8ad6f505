"""The architecture as checks: the import-linter contracts of setup.cfg (layers, the jax-free
runtime, the runtime's layers over packages, no cycles, function-level imports included), every
runtime module in a package of a layer, and a docstring saying each sub-package's job."""
import ast
import configparser
import contextlib
import io
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_import_contracts():
    lint = os.path.join(os.path.dirname(sys.executable), "lint-imports")
    r = subprocess.run([lint, "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "BROKEN" not in r.stdout and r.stdout.count("KEPT") >= 7


def test_vila_tf_is_packages_each_in_a_layer():
    """Every vila_tf module lives in a package the layers contract names (no flat modules beside
    __init__), so each is covered by the rules over packages."""
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(REPO, "setup.cfg"))
    layers = {name.strip() for line in cfg["importlinter:contract:runtime-layers"]["layers"].split("\n")
              for name in line.split("|") if name.strip()}
    root = os.path.join(REPO, "vila_tf")
    for entry in os.listdir(root):
        if entry in ("__init__.py", "__pycache__"):
            continue
        assert os.path.isdir(os.path.join(root, entry)), f"vila_tf/{entry}: put it in the package of its layer"
        assert entry in layers, f"vila_tf/{entry}/: add the package to the runtime-layers contract in setup.cfg"


def test_sub_packages_say_their_job():
    for top in ("export", "vila_tf"):
        for dirpath, _, files in os.walk(os.path.join(REPO, top)):
            if "__init__.py" in files:
                with open(os.path.join(dirpath, "__init__.py")) as f:
                    doc = ast.get_docstring(ast.parse(f.read()))
                assert doc and len(doc.split()) >= 12, f"{dirpath}/__init__.py: a docstring saying its job"


def test_export_help_lists_every_subcommand():
    from export.__main__ import SUBCOMMANDS
    r = subprocess.run([sys.executable, "-m", "export", "--help"], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    listed = [line.split()[0] for line in r.stdout.splitlines() if line.startswith("  ")]
    assert listed == list(SUBCOMMANDS) and {"export", "all", "convert", "package", "stablehlo"} <= set(listed)
    from export.__main__ import main
    for name in SUBCOMMANDS:  # and each one answers --help itself, named as the user runs it
        out = io.StringIO()
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as e:
            main([name, "--help"])
        assert e.value.code == 0 and out.getvalue().startswith("usage: python -m export"), (name, out.getvalue())
        assert out.getvalue().startswith(f"usage: python -m export {name}") or name == "export"


def test_serving_check_names_the_extra_when_tensorflow_serving_is_missing(tmp_path):
    # A process where `tensorflow_serving` is not installed (a plain `pip install vila-tf`).
    script = ("import importlib.util, sys\n"
              "find = importlib.util.find_spec\n"
              "importlib.util.find_spec = lambda n, *a: None if n == 'tensorflow_serving' else find(n, *a)\n"
              "from vila_tf.serving.__main__ import main\n"
              "sys.exit(main(['check', sys.argv[1]]))\n")
    r = subprocess.run([sys.executable, "-c", script, str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and "pip install 'vila-tf[serving]'" in r.stderr
