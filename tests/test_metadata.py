"""The export metadata record (`vila_tf.core.metadata`): what the exporter writes is what every reader
gets back, and an export whose record is missing, damaged or from a newer vila-tf is refused at
`vila_tf.load`, by `vila-tf` and by the serving check with one line naming the file and what to do."""
import contextlib
import io
import json
import os
import shutil

import pytest

import vila_tf
from conftest import vila_tf_command
from vila_tf.core import metadata
from vila_tf.serving.__main__ import main as serving_main
from vila_tf.core.signatures import ALL_SIGNATURES, METADATA_RELATIVE


def test_exported_record_reads_back(exported):
    for name, path in exported.items():
        meta = metadata.read(path)
        with open(os.path.join(path, METADATA_RELATIVE)) as f:
            raw = json.load(f)
        assert meta.format == raw["format"] == metadata.FORMAT
        assert meta.model_type == raw["model_type"] == ("vila_r" if name == "vila_r_tiny" else "vila_p")
        assert meta.has_quality_head == (name == "vila_r_tiny")
        assert meta.config == raw["config"] and meta.model_dims == 64
        assert meta.signatures == ALL_SIGNATURES
        assert meta.tensorflow_support["minimum"] == raw["tensorflow_support"]["minimum"]
        assert meta.to_json() == raw  # nothing lost or added by a read/write round trip


def _broken(exported, tmp_path, content):
    """The tiny export's graph file beside a metadata file with `content` (None: no file)."""
    path = tmp_path / "model"
    (path / "assets.extra").mkdir(parents=True)
    shutil.copy(os.path.join(exported["vila_r_tiny"], "saved_model.pb"), path / "saved_model.pb")
    if content is not None:
        (path / METADATA_RELATIVE).write_text(content)
    return str(path)


def _record(exported, **changes) -> str:
    with open(os.path.join(exported["vila_r_tiny"], METADATA_RELATIVE)) as f:
        raw = json.load(f)
    raw.update(changes)
    return json.dumps({k: v for k, v in raw.items() if v is not None})


CASES = {
    "missing": (None, "vila_tf.json is missing", "re-export"),
    "not json": ('{"format": "vila-tf/1", "model_', "not valid JSON", "line 1"),
    "not an object": ("[1, 2]", "not a JSON object", "re-export"),
    "newer format": ("FUTURE", "written by a newer vila-tf (format vila-tf/2", "pip install -U vila-tf"),
    "foreign format": ("FOREIGN", "is not a vila-tf metadata format", "re-export"),
    "no model type": ("NO_TYPE", "no model_type", "re-export"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_load_refuses_a_missing_or_damaged_record(exported, tmp_path, case):
    content, message, advice = CASES[case]
    content = {"FUTURE": _record(exported, format="vila-tf/2"), "FOREIGN": _record(exported, format="acme/1"),
               "NO_TYPE": _record(exported, model_type=None)}.get(content, content)
    path = _broken(exported, tmp_path, content)
    with pytest.raises(metadata.MetadataError) as e:
        vila_tf.load(path)
    assert os.path.join(path, METADATA_RELATIVE) in str(e.value)
    assert message in str(e.value) and advice in str(e.value)
    # The command line: one line, exit 2.
    r = vila_tf_command("score", path, tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and message in r.stderr
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert serving_main(["check", path]) == 2
    assert err.getvalue().count("\n") == 1 and message in err.getvalue()
