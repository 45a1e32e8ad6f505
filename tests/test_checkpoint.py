"""The paxml checkpoint reader: genuine fixtures, all layouts, real-depth ordering, clear errors."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import DATA, FIXTURE_OVERRIDES, export_command, fixture_dir, params_flat
from export.model.tree import flatten, unflatten
from export.checkpoints import paxml as checkpoint
from export.checkpoints.paxml import CheckpointError
from export.model.config import VilaConfig


def _flat(tree):
    return flatten(tree)


def test_genuine_fixtures_read_every_array(fixture_name):
    ck = checkpoint.load(os.path.join(fixture_dir(fixture_name), "ckpt"), **FIXTURE_OVERRIDES)
    expected = params_flat(fixture_name)
    got = _flat(ck.params)
    assert sorted(got) == sorted(expected.files)
    for k in expected.files:
        np.testing.assert_array_equal(got[k], expected[k], err_msg=k)
    assert ck.step == 0
    assert ck.config.model_type == ("vila_r" if fixture_name == "vila_r_tiny" else "vila_p")
    with open(os.path.join(fixture_dir(fixture_name), "config.json")) as f:
        cfg = json.load(f)
    assert ck.config.model_dims == cfg["model_dims"]
    assert ck.config.num_heads == cfg["num_heads"]
    assert ck.config.encoder_ff_dims == cfg["ff_hidden_dims"]
    assert ck.config.num_encoder_layers == cfg["num_encoder_layers"]
    assert ck.config.num_unimodal_layers == cfg["num_unimodal_layers"]
    assert ck.config.num_unimodal_layers + ck.config.num_crossmodal_layers == cfg["num_decoder_layers"]
    assert ck.config.vocab_size == cfg["text_vocab_size"]


@pytest.mark.parametrize("layout", ["paxml", "flax", "file"])
def test_three_layouts(tmp_path, layout):
    expected = params_flat("vila_r_tiny")
    params = unflatten({k: expected[k] for k in expected.files})
    checkpoint.write_paxml(params, str(tmp_path), step=7, layout=layout,
                           extra_leaves=[np.zeros((), np.int32), np.ones((3, 2), np.float32)])
    ck = checkpoint.load(str(tmp_path))
    assert ck.step == 7
    got = _flat(ck.params)
    for k in expected.files:
        np.testing.assert_array_equal(got[k], expected[k], err_msg=k)


def test_latest_step_is_picked(tmp_path):
    expected = params_flat("vila_p_tiny")
    params = unflatten({k: expected[k] for k in expected.files})
    checkpoint.write_paxml(params, str(tmp_path), step=2)
    params2 = unflatten({k: expected[k] + 1 for k in expected.files})
    checkpoint.write_paxml(params2, str(tmp_path), step=10)
    ck = checkpoint.load(str(tmp_path))
    assert ck.step == 10  # numeric, not string order ("checkpoint_10" < "checkpoint_2")
    np.testing.assert_array_equal(ck.params["decoder"]["cls_emb"], expected["decoder/cls_emb"] + 1)
    assert checkpoint.load(str(tmp_path), step=2).step == 2
    with pytest.raises(CheckpointError, match=r"no checkpoint for step 5 \(found steps \[2, 10\]\)"):
        checkpoint.load(str(tmp_path), step=5)


def _deep_config(**kw):
    # The released depths (12 encoder layers, 11 unimodal here) with tiny widths.
    return VilaConfig(model_dims=8, num_heads=2, dim_per_head=4, encoder_ff_dims=12, decoder_ff_dims=16,
                      pooler_num_heads=2, pooler_dim_per_head=6, num_encoder_layers=12,
                      num_unimodal_layers=11, num_crossmodal_layers=3, vocab_size=50, image_size=32,
                      patch_size=8, num_generative_queries=16, **kw)


def _known_params(cfg):
    """Every array filled with a value derived from its path, so a misplaced one is caught."""
    rng = np.random.default_rng(0)
    shapes = checkpoint.expected_shapes(cfg)
    return {p: rng.standard_normal(s).astype(np.float32) for p, s in shapes.items()}


@pytest.mark.parametrize("model_type", ["vila_r", "vila_p"])
def test_real_depth_string_order(tmp_path, model_type):
    cfg = _deep_config(model_type=model_type)
    flat = _known_params(cfg)
    target = checkpoint.write_paxml(unflatten(flat), str(tmp_path), extra_leaves=[np.int32(0)])
    # The file really is in string-sorted order: x_layers_10 right after x_layers_1.
    order = checkpoint.sort_paths(flat)
    i1 = order.index("encoder/transformers_stack/x_layers_1/ff_layer/ffn_layer1/bias/b")
    assert order[i1 + 16].startswith("encoder/transformers_stack/x_layers_10/")
    ck = checkpoint.load(str(tmp_path))
    assert ck.config == cfg
    got = _flat(ck.params)
    assert sorted(got) == sorted(flat)
    for k, v in flat.items():
        np.testing.assert_array_equal(got[k], v, err_msg=k)
    assert ck.source == target


def test_full_size_abstract_tree_matches_praxis():
    for variant, model_type in (("vila_r", "vila_r"), ("vila_p", "vila_p")):
        expected = {}
        with open(os.path.join(DATA, f"param_tree_{variant}.txt")) as f:
            for line in f:
                if line.startswith("#") or not line.strip():
                    continue
                path, shape, dtype = line.split("\t")[:3]
                assert dtype == "float32"
                expected[path.removeprefix("params/")] = tuple(json.loads(shape))
        shapes = checkpoint.expected_shapes(VilaConfig(model_type=model_type))
        assert shapes == expected
        assert sum(int(np.prod(s)) for s in shapes.values()) == (303046657 if variant == "vila_r" else 302456065)
        # And every size is recovered from the shapes alone.
        from export.model.config import config_from_shapes
        assert config_from_shapes(expected) == VilaConfig(model_type=model_type)


# --- errors ---------------------------------------------------------------------------------


def _tiny_params():
    expected = params_flat("vila_r_tiny")
    return {k: expected[k] for k in expected.files}


def test_missing_path(tmp_path):
    with pytest.raises(CheckpointError, match=r"nope: no such file or directory"):
        checkpoint.load(str(tmp_path / "nope"))
    with pytest.raises(CheckpointError, match=r"no checkpoint_<step> entry found"):
        checkpoint.load(str(tmp_path))
    (tmp_path / "checkpoint_3").mkdir()
    with pytest.raises(CheckpointError, match=r"checkpoint_3: holds neither state/checkpoint"):
        checkpoint.load(str(tmp_path))


def test_truncated_file(tmp_path):
    target = checkpoint.write_paxml(unflatten(_tiny_params()), str(tmp_path))
    size = os.path.getsize(target)
    with open(target, "r+b") as f:
        f.truncate(size // 2)
    with pytest.raises(CheckpointError, match=r"state/checkpoint.*truncated"):
        checkpoint.load(str(tmp_path))


@pytest.mark.parametrize("content", [b"", b"\x00\x01garbage", json.dumps({"a": 1}).encode(), b"\xc1\xc1"])
def test_not_msgpack(tmp_path, content):
    d = tmp_path / "checkpoint_0"
    d.mkdir()
    (d / "checkpoint").write_bytes(content)
    with pytest.raises(CheckpointError, match=r"checkpoint_0/checkpoint"):
        checkpoint.load(str(tmp_path))


def test_missing_leaf(tmp_path):
    flat = _tiny_params()
    del flat["decoder/unimodal_ln/scale"]
    checkpoint.write_paxml(unflatten(flat), str(tmp_path))
    with pytest.raises(CheckpointError, match=r"do not form a VILA"):
        checkpoint.load(str(tmp_path))


def test_mis_shaped_leaf(tmp_path):
    flat = _tiny_params()
    flat["decoder/unimodal_ln/scale"] = np.zeros((65,), np.float32)
    checkpoint.write_paxml(unflatten(flat), str(tmp_path))
    with pytest.raises(CheckpointError,
                       match=r"decoder/unimodal_ln/scale\): expected shape \[64\], found \[65\]"):
        checkpoint.load(str(tmp_path))


def test_missing_params_subtree(tmp_path):
    import msgpack
    from export.checkpoints.msgpack_index import pack_array
    d = tmp_path / "checkpoint_0"
    d.mkdir()
    body = b"\x81" + msgpack.packb("opt_states") + b"\x81" + msgpack.packb("count") + pack_array(np.int32(1))
    (d / "checkpoint").write_bytes(body)
    with pytest.raises(CheckpointError, match=r"has no `params` subtree"):
        checkpoint.load(str(tmp_path))


def test_named_state_dict_layout(tmp_path):
    """A flax state-dict checkpoint ({'mdl_vars': {'params': ...}}) is read by names."""
    import flax.serialization
    flat = _tiny_params()
    d = tmp_path / "checkpoint_0"
    d.mkdir()
    (d / "checkpoint").write_bytes(flax.serialization.msgpack_serialize(
        {"step": np.uint32(0), "mdl_vars": {"params": unflatten(flat)}}))
    ck = checkpoint.load(str(tmp_path))
    for k, v in flat.items():
        np.testing.assert_array_equal(_flat(ck.params)[k], v)
    flat["encoder/exit_stack/ln/bias"] = np.zeros((3,), np.float32)
    (d / "checkpoint").write_bytes(flax.serialization.msgpack_serialize({"mdl_vars": {"params": unflatten(flat)}}))
    with pytest.raises(CheckpointError, match=r"params/encoder/exit_stack/ln/bias: expected shape \[64\], found \[3\]"):
        checkpoint.load(str(tmp_path))


def test_convert_cli_orbax_round_trip(tmp_path):
    out = tmp_path / "converted"
    r = export_command("convert", "--checkpoint", os.path.join(fixture_dir("vila_r_tiny"), "ckpt"), "--out", out,
                       "--decoding-max-len", "16")
    assert r.returncode == 0, r.stderr
    assert (out / "vila_config.json").is_file() and (out / "params").is_dir()
    ck = checkpoint.load(str(out))
    assert ck.config.decoding_max_len == 16 and ck.config.model_type == "vila_r"
    expected = params_flat("vila_r_tiny")
    for k in expected.files:
        np.testing.assert_array_equal(_flat(ck.params)[k], expected[k])
    meta = json.loads((out / "vila_config.json").read_text())
    assert len(meta["sha256"]) == 64
    # A failed conversion leaves nothing behind.
    bad = tmp_path / "bad_out"
    r = export_command("convert", "--checkpoint", tmp_path / "missing", "--out", bad)
    assert r.returncode == 2 and "no such file or directory" in r.stderr
    assert not bad.exists() and not [p for p in os.listdir(tmp_path) if p.startswith(".bad_out")]


@pytest.mark.slow
def test_full_size_read_peak_memory(tmp_path):
    """Reading a full-size 1.25 GB VILA-R checkpoint with optimizer state stays under 2.5x its size."""
    script = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "checkpoint_memory.py")
    r = subprocess.run([sys.executable, script, "--dir", str(tmp_path), "--json"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["file_bytes"] > 1.2e9
    assert result["peak_rss_bytes"] < 2.5 * result["file_bytes"], result
