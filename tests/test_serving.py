"""TF Serving readiness, checked the way tensorflow_model_server loads and runs a SavedModel."""
import base64
import json
import os
import re

import numpy as np
import pytest
import tensorflow as tf

from conftest import env_without_jax, golden
from vila_tf import serving
from vila_tf.core.buckets import BUCKETS
from vila_tf.core.signatures import ALL_SIGNATURES, SIGNATURE_INPUTS

README = os.path.join(os.path.dirname(__file__), "..", "docs", "serving.md")  # its curl example


def _check_cli(path):
    import subprocess
    import sys
    # Where `import jax` fails, as on a serving host (and TensorFlow then does not import it).
    r = subprocess.run([sys.executable, "-m", "vila_tf.serving", "check", path], capture_output=True, text=True,
                       env=env_without_jax())
    assert r.returncode == 0, r.stderr[-2000:]
    assert "OK: serves under tensorflow_model_server" in r.stderr
    return json.loads(r.stdout)


@pytest.mark.long
@pytest.mark.parametrize("name", ["vila_r_tiny", pytest.param("vila_p_tiny", marks=pytest.mark.slow)])
def test_model_server_equivalent_check(exported, name):
    # One model through the command line, the other through the function. The check compiles every
    # signature at every bucket (about 40 s of CPU per tiny model): the default suite runs it on
    # VILA-R; VILA-P's, whose signatures the Session tests below also run, is in `make test-slow`.
    r = _check_cli(exported[name]) if name == "vila_r_tiny" else serving.check(exported[name])
    assert r["unregistered_ops"] == []
    # XLA on: every warmup record (each signature at each bucket) ran with finite outputs.
    assert r["xla_enabled"]["signatures"] == {s: "ok" for s in ALL_SIGNATURES}
    assert r["xla_enabled"]["batch_sizes"] == {s: list(BUCKETS) for s in ALL_SIGNATURES}
    assert r["xla_enabled"]["failures"] == []
    # XLA off (the server's default): every jax2tf signature fails, the TF-only preprocess runs.
    for sig, outcome in r["xla_disabled"].items():
        if sig == "preprocess":
            assert outcome == "ok"
        else:
            assert "XLA compilation disabled" in outcome, (sig, outcome)
    assert r["xla_flag_necessary"] and r["xla_flag_sufficient"] and r["ok"]


def test_warmup_file(exported):
    for path in exported.values():
        records = serving.read_warmup(path)
        assert len(records) == len(ALL_SIGNATURES) * len(BUCKETS) <= 1000
        seen = {}
        for rec in records:
            sig, inputs = serving.request_to_inputs(rec.predict_log.request)
            seen.setdefault(sig, []).append(len(next(iter(inputs.values()))))
        assert seen == {s: list(BUCKETS) for s in ALL_SIGNATURES}


@pytest.fixture(scope="module")
def session_models(exported):
    models = {name: serving.SessionModel(path) for name, path in exported.items()}
    yield models
    for m in models.values():
        m.close()


def _png(seed, h=120, w=90):
    rng = np.random.default_rng(seed)
    return tf.io.encode_png(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).numpy()


def _tf2(path):
    """The export as TensorFlow 2 code loads it, `tf.saved_model.load` (which `hub.load` calls for a
    local path): this process's loaded object, whose functions other tests have already run
    (`reuse_loaded_savedmodels` in conftest.py)."""
    import tensorflow_text  # noqa: F401
    return tf.saved_model.load(path)


# Batches of 1 and 4, sizes the warmup requests also use: the run's compilation cache then serves
# the Session kernels of these tests and of the model-server check alike (docs/testing.md).
CASES = [
    ("serving_default", lambda: [_png(1), _png(2), _png(8), _png(9)]),
    ("caption", lambda: [_png(3)]),
    ("zero_shot", lambda: [_png(4), _png(5), _png(6), _png(10)]),
    ("image_embedding", lambda: [_png(7)]),
    ("text_embedding", lambda: ["good image", "a photo of a dog", "", "lovely bokeh"]),
    # One 224x224 image: a REST body of pixels is 150k numbers written and parsed as JSON per image
    # and direction (several seconds of Python for four); the rows code is the bytes cases'.
    ("score_pixels", lambda: golden("vila_r_tiny")["input/image"][:1]),
]


@pytest.mark.parametrize("columnar", [False, True])
@pytest.mark.parametrize("signature,make_items", CASES)
def test_rest_bodies_through_session_equal_tf2_calls(exported, session_models, signature, make_items, columnar):
    items = make_items()
    for name, path in exported.items():
        body = json.loads(json.dumps(serving.rest_request(signature, items, columnar=columnar)))  # over the wire
        sig, inputs = serving.rest_body_to_inputs(body)
        assert sig == signature
        session_out = session_models[name].run(sig, inputs)
        response = json.loads(json.dumps(serving.rest_response(session_out, columnar=columnar)))
        parsed = serving.parse_rest_response(response, signature)
        key, _ = SIGNATURE_INPUTS[signature]
        tf2_out = _tf2(path).signatures[signature](**{key: tf.constant(inputs[key])})
        for k, v in tf2_out.items():
            if v.dtype == tf.string:
                assert parsed[k] == [s.decode() for s in v.numpy()]
            else:
                np.testing.assert_allclose(parsed[k], v.numpy(), atol=1e-5, err_msg=f"{name}/{signature}/{k}")


@pytest.mark.parametrize("signature,make_items", CASES)
def test_grpc_requests_through_session_equal_tf2_calls(exported, session_models, signature, make_items):
    from tensorflow_serving.apis import predict_pb2
    items = make_items()
    path = exported["vila_r_tiny"]
    req = predict_pb2.PredictRequest.FromString(
        serving.grpc_request(signature, items, model_name="vila_r").SerializeToString())
    assert req.model_spec.name == "vila_r" and req.model_spec.signature_name == signature
    sig, inputs = serving.request_to_inputs(req)
    out = session_models["vila_r_tiny"].run(sig, inputs)
    key, _ = SIGNATURE_INPUTS[signature]
    tf2_out = _tf2(path).signatures[signature](**{key: tf.constant(inputs[key])})
    for k, v in tf2_out.items():
        if v.dtype == tf.string:
            np.testing.assert_array_equal(out[k], v.numpy())
        else:
            np.testing.assert_allclose(out[k], v.numpy(), atol=1e-5)


def test_readme_curl_body_is_a_tested_body(exported, session_models):
    text = open(README).read()
    m = re.search(r"curl -s http://localhost:8501/v1/models/(\w+):predict -d '(\{.*?\})'", text)
    assert m, "README curl example not found"
    body = json.loads(m.group(2))
    image = base64.b64decode(body["instances"][0]["b64"])
    assert body == serving.rest_request("serving_default", [image])
    sig, inputs = serving.rest_body_to_inputs(body)
    out = session_models["vila_r_tiny"].run(sig, inputs)
    assert out["predictions"].shape == (1, 1) and np.isfinite(out["predictions"]).all()
    assert m.group(1) == "vila_demo"  # the model `make export` writes without VILA_DIR


def test_request_cli_prints_the_body(tmp_path):
    import subprocess
    import sys
    img = tmp_path / "a.png"
    img.write_bytes(_png(9))
    r = subprocess.run([sys.executable, "-m", "vila_tf.serving", "request", "zero_shot", str(img), "--columnar"],
                       capture_output=True, text=True, env=env_without_jax())
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == serving.rest_request("zero_shot", [str(img)], columnar=True)


def test_unknown_signature_is_named():
    with pytest.raises(KeyError, match="unknown signature 'scores'"):
        serving.rest_request("scores", [b"x"])


def test_models_config_and_batching(tmp_path):
    from export.publish import serving_layout
    for name in ("vila_r", "vila_p"):
        d = tmp_path / name / "1"
        d.mkdir(parents=True)
        (d / "saved_model.pb").write_bytes(b"")
    (tmp_path / "vila_r" / "2.tmp-partial").mkdir()  # not a version: ignored
    cfg = open(serving_layout.write_models_config(str(tmp_path))).read()
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2
    parsed = text_format.Parse(cfg, model_server_config_pb2.ModelServerConfig())
    assert [c.name for c in parsed.model_config_list.config] == ["vila_p", "vila_r"]
    assert all(os.path.isabs(c.base_path) and c.model_platform == "tensorflow" for c in parsed.model_config_list.config)
    # BatchingParameters' proto is not in tensorflow-serving-api; check its text fields directly.
    batching = open(serving_layout.write_batching_parameters(str(tmp_path))).read()
    assert [int(x) for x in re.findall(r"^allowed_batch_sizes: (\d+)$", batching, re.M)] == list(BUCKETS)
    assert re.search(r"^max_batch_size \{ value: (\d+) \}$", batching, re.M).group(1) == str(BUCKETS[-1])
