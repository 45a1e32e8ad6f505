"""TensorFlow version support (docs/compatibility.md): the bounds an export records, the versions it
was really lowered with, and the load-time refusal of an older TensorFlow.

The cross-version run (an export for the oldest target, run in that TensorFlow) is slow: it creates
a virtual environment per release (`make compat` runs every release).
"""
import dataclasses
import io
import json
import os
import re
import shutil
from contextlib import redirect_stderr

import numpy as np
import pytest
import tensorflow as tf

from conftest import xla_call_modules
from export.savedmodel import tf_targets
from vila_tf import serving
from vila_tf.serving.__main__ import main as serving_main
from vila_tf.core import metadata
from vila_tf.savedmodel import tf_compat
from vila_tf.core.signatures import METADATA_RELATIVE


def _metadata(path):
    with open(os.path.join(path, METADATA_RELATIVE)) as f:
        return json.load(f)


def test_default_export_records_the_versions_it_was_lowered_with(exported):
    path = exported["vila_r_tiny"]
    support = _metadata(path)[tf_compat.METADATA_KEY]
    nodes = xla_call_modules(path)
    assert nodes
    for n in nodes:  # the artifact's own header names the StableHLO version it was written for
        assert n.attr["version"].i == support["calling_convention_version"]
        produced = re.search(rb"StableHLO_v([0-9.]+)", n.attr["module"].s).group(1).decode()
        assert produced == support["stablehlo_version"]
    # The newest calling convention this TensorFlow runs, and jax's own StableHLO choice: the oldest
    # release that reads both is the recorded minimum.
    from tensorflow.compiler.tf2xla.python import xla as tfxla
    assert support["calling_convention_version"] == tfxla.call_module_maximum_supported_version()
    assert support["target_tensorflow"] is None and support["webp_in_graph"] is True  # the newest reads WebP
    readers = [t.release for t in tf_targets.TARGETS.values()
               if t.calling_convention >= support["calling_convention_version"]
               and tf_targets.version_key(t.reads_stablehlo) >= tf_targets.version_key(support["stablehlo_version"])]
    assert support["minimum"] == min(readers, key=tf_targets.release_key)
    # It runs here, so the recorded minimum is not newer than this TensorFlow.
    assert tf_compat.release_key(support["minimum"]) <= tf_compat.release_key(tf.__version__)


def test_target_bounds():
    oldest = min(tf_targets.TARGETS, key=tf_targets.release_key)
    assert oldest == "2.16"
    with pytest.raises(ValueError, match=r"TensorFlow 2\.15 cannot be reached.*up to 8.*writes 9 and newer"):
        tf_targets.target("2.15")
    with pytest.raises(ValueError, match="not a measured release"):
        tf_targets.target("3.1")
    with pytest.raises(ValueError, match="not a TensorFlow version"):
        tf_targets.target("latest")
    assert tf_targets.target("2.16.2").release == "2.16"
    for t in tf_targets.TARGETS.values():
        # A target's own export is read by the target and by every newer release.
        assert tf_targets.release_key(tf_targets.oldest_release_for(t.calling_convention, t.stablehlo)) \
            <= tf_targets.release_key(t.release)
    # The XlaCallModule of 2.19 and older refuses calling convention 10 (measured).
    assert tf_targets.oldest_release_for(10, "0.17.7") == "2.20"
    assert tf_targets.oldest_release_for(9, "1.9.1") == "2.19"
    assert tf_targets.oldest_release_for(9, "0.17.7", {"DecodeWebP"}) == "2.20"


def test_webp_decoder_is_refused_for_older_targets():
    with pytest.raises(ValueError, match=r"DecodeWebP, which TensorFlow 2\.19 lacks"):
        tf_targets.check_ops({"DecodeWebP", "DecodeImage"}, tf_targets.target("2.19"))
    tf_targets.check_ops({"DecodeWebP"}, tf_targets.target("2.20"))
    with pytest.raises(ValueError, match="DecodeWebP"):
        tf_targets.support(9, "0.17.7", {"DecodeWebP"}, "2.16")
    assert tf_targets.support(10, "1.12.1", {"DecodeWebP"}, "2.20")["webp_in_graph"] is True


def test_version_check_names_both_versions(exported):
    path = exported["vila_r_tiny"]
    meta = metadata.read(path)
    minimum = meta.tensorflow_support["minimum"]
    with pytest.raises(tf_compat.IncompatibleTensorFlowError) as e:
        tf_compat.check(meta, path, "2.16.2")
    assert f"{minimum} and newer" in str(e.value) and "TensorFlow 2.16.2" in str(e.value)
    assert "--target-tensorflow 2.16" in str(e.value)
    tf_compat.check(meta, path, minimum)  # the minimum itself and newer pass
    tf_compat.check(meta, path, "3.0.0")
    # An export from before the record: its calling convention against this TensorFlow's XlaCallModule.
    legacy = dataclasses.replace(meta, tensorflow_support=None, calling_convention_version=99)
    with pytest.raises(tf_compat.IncompatibleTensorFlowError, match="calling convention 99"):
        tf_compat.check(legacy, path)


@pytest.fixture
def future_export(exported, tmp_path):
    """The tiny export, its metadata claiming a TensorFlow newer than any."""
    path = str(tmp_path / "future")
    shutil.copytree(exported["vila_p_tiny"], path)
    meta = _metadata(path)
    meta[tf_compat.METADATA_KEY]["minimum"] = "99.0"
    with open(os.path.join(path, METADATA_RELATIVE), "w") as f:
        json.dump(meta, f)
    return path


def test_vila_tf_load_refuses_before_loading(future_export, monkeypatch):
    import vila_tf
    loaded = []
    monkeypatch.setattr(tf.saved_model, "load", lambda *a, **k: loaded.append(a))
    with pytest.raises(vila_tf.IncompatibleTensorFlowError) as e:
        vila_tf.load(future_export)
    assert "99.0 and newer" in str(e.value) and f"TensorFlow {tf.__version__}" in str(e.value)
    assert not loaded  # refused before the SavedModel was read


def test_serving_check_refuses(future_export, exported):
    err = io.StringIO()
    with redirect_stderr(err):
        assert serving_main(["check", future_export]) == 1
    assert "99.0 and newer" in err.getvalue() and tf.__version__ in err.getvalue()
    # A TF Serving release older than the export's minimum, named on the command line.
    with pytest.raises(tf_compat.IncompatibleTensorFlowError, match="TensorFlow 2.18"):
        serving.check_tensorflow_version(exported["vila_r_tiny"], "2.18")


@pytest.mark.slow
def test_oldest_target_runs_in_oldest_tensorflow(tmp_path):
    """Exports for the oldest reachable release and runs every signature in that TensorFlow (a
    virtual environment of its own): equal to this TensorFlow's outputs within 1e-5, while the
    default export is refused there at load time."""
    import sys
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
    import compat
    oldest = min(tf_targets.TARGETS, key=tf_targets.release_key)
    report = compat.matrix(compat.DEFAULT_VENVS, [oldest], [oldest], str(tmp_path))
    cell = report["results"][oldest][f"target {oldest}"]
    assert cell["loads"] and cell["runs"], cell
    assert isinstance(cell["max_abs_diff"], float) and cell["max_abs_diff"] <= 1e-5, cell
    assert cell["vila_tf_load"] == "ok"
    assert cell["metadata_minimum"] == oldest
    default = report["results"][oldest]["default"]
    assert default["vila_tf_load"].startswith("refused") and not default["runs"]
    for n in xla_call_modules(os.path.join(str(tmp_path), "exports", f"target_{oldest}")):
        assert n.attr["version"].i == tf_targets.TARGETS[oldest].calling_convention
        assert re.search(rb"StableHLO_v([0-9.]+)", n.attr["module"].s).group(1).decode() == \
            tf_targets.TARGETS[oldest].stablehlo
    np.testing.assert_equal(report["releases"][oldest]["calling_convention"],
                            tf_targets.TARGETS[oldest].calling_convention)


# -- TensorFlow 2.17: runs a 2.16-target export with other numbers (benchmarks/compat.json), refused ----------

def _compat_json():
    with open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks",
                           "compat.json")) as f:
        return json.load(f)


def test_known_bad_releases_are_the_measured_ones():
    """A release is refused exactly when `make compat` measured that it runs the 2.16-target export
    but does not match the reference."""
    results = _compat_json()["results"]
    measured_bad = {r for r, cells in results.items()
                    if cells["target 2.16"]["runs"] and not cells["target 2.16"]["matches"]}
    assert set(tf_compat.KNOWN_BAD) == measured_bad == {"2.17"}
    assert results["2.17"]["target 2.16"]["max_abs_diff"] == "caption/caption: differs"
    assert "other captions" in tf_compat.KNOWN_BAD["2.17"]


def test_2_17_is_refused_saying_which_releases_to_use(exported):
    path = exported["vila_r_tiny"]
    default = metadata.read(path)
    target_2_16 = dataclasses.replace(default, tensorflow_support=tf_targets.support(9, "0.17.7", (), "2.16"))
    assert target_2_16.tensorflow_support["known_bad"] == {"2.17": tf_compat.KNOWN_BAD["2.17"]}
    assert tf_compat.supported_releases(target_2_16) == "2.16, or 2.18 and newer"
    for version in ("2.17.0", "2.17.1", "2.17"):
        with pytest.raises(tf_compat.IncompatibleTensorFlowError) as e:
            tf_compat.check(target_2_16, path, version)
        message = str(e.value)
        assert f"refused on TensorFlow {version}" in message and "computes other numbers" in message
        assert "use TensorFlow / TF Serving 2.16, or 2.18 and newer" in message and "\n" not in message
    for version in ("2.16.2", "2.18.1", "2.21.0"):
        tf_compat.check(target_2_16, path, version)
    # An export made before the record is refused there too (the runtime's own table).
    legacy = dataclasses.replace(default, tensorflow_support={"minimum": "2.16"})
    with pytest.raises(tf_compat.IncompatibleTensorFlowError, match="2.16, or 2.18 and newer"):
        tf_compat.check(legacy, path, "2.17.1")
    with pytest.raises(tf_compat.IncompatibleTensorFlowError, match="another release than 2.17"):
        tf_compat.check(dataclasses.replace(default, tensorflow_support=None), path, "2.17.1")
    # A default export (2.20 and newer): the refusal names its own range, not a re-export for 2.17.
    with pytest.raises(tf_compat.IncompatibleTensorFlowError) as e:
        tf_compat.check(default, path, "2.17.1")
    assert "use TensorFlow / TF Serving 2.20 and newer" in str(e.value) and "--target-tensorflow" not in str(e.value)
    assert default.tensorflow_support["known_bad"] == {}  # nothing at or above its minimum
    # Ranges in words, for any table of bad releases (the runtime's own, 2.17, always counts).
    words = tf_compat.releases_in_words
    assert words({"minimum": "2.16", "known_bad": {"2.19": "x", "2.20": "y"}}) == "2.16, 2.18, or 2.21 and newer"
    assert words({"minimum": "2.18", "known_bad": {"2.21": "x"}}) == "2.18 to 2.20, or 2.22 and newer"
    assert words({"minimum": "2.17"}) == "2.18 and newer" and words(None) is None


def test_2_17_is_no_target_and_no_minimum():
    with pytest.raises(ValueError, match=r"--target-tensorflow 2\.17: TensorFlow 2\.17 runs this model but computes "
                                          r"other numbers.*target one of 2\.16, 2\.18, 2\.19, 2\.20, 2\.21"):
        tf_targets.target("2.17")
    # What only 2.17 and newer would read starts at 2.18.
    assert tf_targets.oldest_release_for(9, "1.1.1") == "2.16"
    assert tf_targets.oldest_release_for(9, "1.2.0") == "2.18"


def _target_2_16_copy(exported, tmp_path):
    """The tiny export, its metadata as a `--target-tensorflow 2.16` export records it."""
    path = str(tmp_path / "target_2_16")
    shutil.copytree(exported["vila_r_tiny"], path)
    meta = _metadata(path)
    meta[tf_compat.METADATA_KEY] = tf_targets.support(9, "0.17.7", (), "2.16")
    with open(os.path.join(path, METADATA_RELATIVE), "w") as f:
        json.dump(meta, f)
    return path


def test_vila_tf_load_refuses_2_17(exported, tmp_path, monkeypatch):
    import vila_tf
    path = _target_2_16_copy(exported, tmp_path)
    loaded = []
    monkeypatch.setattr(tf.saved_model, "load", lambda *a, **k: loaded.append(a))
    monkeypatch.setattr(tf, "__version__", "2.17.1")
    with pytest.raises(vila_tf.IncompatibleTensorFlowError, match="refused on TensorFlow 2.17.1"):
        vila_tf.load(path)
    assert not loaded


def test_serving_check_refuses_2_17(exported, tmp_path):
    path = _target_2_16_copy(exported, tmp_path)
    err = io.StringIO()
    with redirect_stderr(err):
        assert serving_main(["check", path, "--server-version", "2.17"]) == 1
    assert err.getvalue().startswith("FAILED: ") and "use TensorFlow / TF Serving 2.16, or 2.18 and newer" in err.getvalue()
    assert err.getvalue().count("\n") == 1
    with pytest.raises(tf_compat.IncompatibleTensorFlowError, match="refused on TensorFlow 2.17"):
        serving.check_tensorflow_version(path, "2.17")


def test_model_card_prints_the_range(exported):
    from export.publish import model_card
    facts = model_card.read_facts(exported["vila_p_tiny"])
    card = model_card.render(facts, model_card.PackageInfo("vila_p", 1, "vila_p_1.tar.gz", "0" * 64, 1))
    minimum = _metadata(exported["vila_p_tiny"])[tf_compat.METADATA_KEY]["minimum"]
    assert f"| TensorFlow / TF Serving | **{minimum} and newer** (default export" in card


def test_old_targets_leave_webp_out_of_the_graph():
    from export.savedmodel import writer as savedmodel
    for release, webp in (("2.16", False), ("2.19", False), ("2.20", True), ("2.21", True)):
        opts = savedmodel.options_for_target(savedmodel.ExportOptions(target_tensorflow=release), log=lambda m: None)
        assert opts.webp is webp, release
    assert savedmodel.options_for_target(savedmodel.ExportOptions(), log=lambda m: None).webp is True
