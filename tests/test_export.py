"""SavedModel export of the genuine fixtures, checked against praxis goldens in a jax-free process."""
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from conftest import DATA, export_command, golden, xla_call_module_functions, xla_call_modules
from export.model.tree import flatten

TOL = 1e-4


def _tile(x, b):
    return np.concatenate([x] * 4)[:b]


@pytest.mark.parametrize("name", ["vila_r_tiny", "vila_p_tiny"])
@pytest.mark.parametrize("b", [1, 3, 8])
def test_goldens_from_savedmodel_without_jax(jaxless, spm_model, name, b):
    import sentencepiece as spm
    g, o = golden(name), jaxless[name]
    np.testing.assert_allclose(o[f"{b}/image_embedding"], _tile(g["pred/contrastive_img_embed_norm"], b), atol=TOL)
    np.testing.assert_array_equal(o[f"{b}/caption_ids"], _tile(g["decode/hyp"][:, 0], b))
    np.testing.assert_array_equal(o[f"{b}/caption_length"], _tile(g["decode/hyplen"][:, 0], b))
    if name == "vila_r_tiny":
        np.testing.assert_allclose(o[f"{b}/predictions"], _tile(g["pred/quality_scores"], b), atol=TOL)
    else:  # a pretrain model's score is its zero-shot score
        np.testing.assert_allclose(o[f"{b}/predictions"][:, 0], o[f"{b}/zero_shot_score"], atol=1e-6)
    # the caption strings: praxis' greedy ids, detokenized by the Python SentencePiece library
    sp = spm.SentencePieceProcessor(model_file=spm_model)
    want = [sp.decode([int(i) for i in ids[:n]]) for ids, n in zip(g["decode/hyp"][:, 0], g["decode/hyplen"][:, 0])]
    assert list(o[f"{b}/caption"]) == _tile(np.array(want), b).tolist()


def test_captions_are_detokenized_ids(jaxless, spm_model):
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=spm_model)
    o = jaxless["vila_r_tiny"]
    for ids, n, text in zip(o["8/caption_ids"], o["8/caption_length"], o["8/caption"]):
        assert text == sp.decode([int(i) for i in ids[:n]])


def test_text_embedding_matches_golden_prompt_and_python_tokenizer(jaxless, spm_model, loaded_fixtures):
    """text_embedding(text) == the Flax text tower on ids from the Python SentencePiece library."""
    from test_tokenizer import flax_text_embeddings
    texts = ["good image", "a photo of a dog", "", "lovely bokeh in the background " * 10]
    want = flax_text_embeddings(loaded_fixtures["vila_r_tiny"], spm_model, texts, 64)
    for b in (1, 3, 4):
        np.testing.assert_allclose(jaxless["vila_r_tiny"][f"{b}/text_embedding"], want[:b], atol=TOL)


RELEASE_ATTRIBUTES = ("image", "lighting", "content", "background", "foreground", "composition")


def _release_pair_softmax(image_embedding_norm, text_embedding_norm):
    """The release's ZSL formula before its mean: [B, 6], softmax within each good/bad pair."""
    sims = (image_embedding_norm @ text_embedding_norm.T).reshape(-1, 6, 2)
    e = np.exp(sims - sims.max(-1, keepdims=True))
    return (e / e.sum(-1, keepdims=True))[:, :, 0]


@pytest.mark.parametrize("name", ["vila_r_tiny", "vila_p_tiny"])
def test_zero_shot_and_attributes_match_release_formula(jaxless, spm_model, loaded_fixtures, name):
    """The per-attribute outputs are praxis' per-pair softmax, and the score is their mean: praxis'
    own image embeddings (golden.npz) against the six pairs' text embeddings (the Flax text tower,
    golden-checked in test_model_golden, on ids from the Python SentencePiece library, 4 tokens as
    the release tokenizes them; the goldens hold no praxis embedding of these prompts)."""
    from export.model import heads
    from test_tokenizer import flax_text_embeddings
    prompts = [p for a in RELEASE_ATTRIBUTES for p in (f"good {a}", f"bad {a}")]
    assert list(heads.ZERO_SHOT_PROMPTS) == prompts  # run_vila_predict._ZSL_QUALITY_PROMPTS, in order
    g = golden(name)
    txt = flax_text_embeddings(loaded_fixtures[name], spm_model, prompts, 4)
    want = _release_pair_softmax(g["pred/contrastive_img_embed_norm"], txt)
    for b in (1, 3, 8):
        np.testing.assert_allclose(jaxless[name][f"{b}/zero_shot_attributes"], _tile(want, b), atol=1e-5)
        np.testing.assert_allclose(jaxless[name][f"{b}/zero_shot_score"], _tile(want.mean(1), b), atol=1e-5)


def test_zero_shot_outputs_are_named_by_attribute(jaxless, exported):
    """Both zero-shot signatures return the score and one output per attribute, and the export
    metadata lists the attributes in the release's order."""
    from vila_tf.core.signatures import SIGNATURE_OUTPUTS, ZERO_SHOT_ATTRIBUTES
    from export.model import heads
    keys = sorted(["zero_shot_score"] + [f"zero_shot_{a}" for a in RELEASE_ATTRIBUTES])
    assert list(jaxless["vila_r_tiny"]["bytes_zero_shot_keys"]) == keys
    assert sorted(SIGNATURE_OUTPUTS["zero_shot"]) == sorted(SIGNATURE_OUTPUTS["zero_shot_pixels"]) == keys
    assert ZERO_SHOT_ATTRIBUTES == heads.ZERO_SHOT_ATTRIBUTES == RELEASE_ATTRIBUTES
    for path in exported.values():
        meta = json.load(open(os.path.join(path, "assets.extra", "vila_tf.json")))
        assert meta["zero_shot_attributes"] == list(RELEASE_ATTRIBUTES)
        assert meta["zero_shot_prompts"] == [[f"good {a}", f"bad {a}"] for a in RELEASE_ATTRIBUTES]


def test_bytes_signatures(jaxless):
    o = jaxless["vila_r_tiny"]
    assert o["scalar_predictions"].shape == (1, 1)  # TF Hub's predict_fn(tf.constant(image_bytes))
    assert o["batch_predictions"].shape == (2, 1)
    np.testing.assert_allclose(o["batch_predictions"], np.repeat(o["scalar_predictions"], 2, 0), atol=1e-6)
    assert o["preprocessed"].shape == (1, 224, 224, 3)
    msg = str(o["bad_image_error"])
    assert "image 0 of the batch" in msg and "not a JPEG, PNG, GIF, BMP or WebP image" in msg, msg


def test_variables_shared_and_not_constants(exported, jaxless):
    from export.checkpoints import paxml as checkpoint
    path = exported["vila_r_tiny"]
    ck = checkpoint.load(os.path.join(DATA, "vila_r_tiny", "ckpt"), decoding_max_len=16)
    n_params = len(flatten(ck.params))
    # every parameter once, plus the stored quality and zero-shot prompt embeddings
    assert int(jaxless["vila_r_tiny"]["n_vars"]) == n_params + 2
    param_bytes = sum(v.nbytes for v in flatten(ck.params).values())
    var_bytes = sum(os.path.getsize(os.path.join(path, "variables", f)) for f in os.listdir(os.path.join(path, "variables")))
    assert var_bytes >= param_bytes
    # The graph holds StableHLO and the tokenizer, not the weights (which would then be duplicated
    # per signature): the bytes of the largest arrays appear nowhere in saved_model.pb.
    with open(os.path.join(path, "saved_model.pb"), "rb") as f:
        graph = f.read()
    flat = flatten(ck.params)
    for name in ("decoder/token_emb/emb_var", "decoder/softmax/logits_ffn/linear/w",
                 "encoder/entry_stack/patch_projection/linear/w"):
        assert flat[name][:4].tobytes() not in graph, name


def test_platforms_and_calling_convention(exported):
    nodes = xla_call_modules(exported["vila_r_tiny"])
    assert nodes
    meta = json.load(open(os.path.join(exported["vila_r_tiny"], "assets.extra", "vila_tf.json")))
    for n in nodes:
        assert [p.decode() for p in n.attr["platforms"].list.s] == ["CPU", "CUDA", "TPU"]
        assert n.attr["version"].i == meta["calling_convention_version"]
    assert meta["platforms"] == ["cpu", "cuda", "tpu"]


def test_each_head_is_a_function_never_inlined(exported):
    """Each lowered head is the one XlaCallModule of a function of its own marked `_noinline`, which
    every signature calls: its XLA program keeps one name whichever signature (or TF1 SignatureDef)
    runs it, so a persistent compilation cache holds one program per head and batch size, not one
    per signature (export/savedmodel/writer.py `_head`)."""
    for path in exported.values():
        found = xla_call_module_functions(path)
        assert len(found) == 3, path  # image outputs, caption, text embedding
        assert len({fn.signature.name for fn, _ in found}) == 3
        for fn, node in found:
            assert fn.attr["_noinline"].b, fn.signature.name
            assert [n.op for n in fn.node_def].count("XlaCallModule") == 1


def test_metadata(exported):
    meta = json.load(open(os.path.join(exported["vila_p_tiny"], "assets.extra", "vila_tf.json")))
    assert meta["model_type"] == "vila_p" and meta["demo_weights"] is False
    assert meta["config"]["model_dims"] == 64 and meta["dtype"] == "float32"
    assert len(meta["source_sha256"]) == 64 and meta["source_checkpoint"].endswith("state/checkpoint")
    assert set(meta["versions"]) >= {"jax", "flax", "tensorflow"}
    assert os.path.isfile(os.path.join(exported["vila_p_tiny"], "assets", "spm.model"))


def test_bfloat16_export_written_in_shards(tmp_path, spm_model, monkeypatch):
    """Weights stored in bfloat16 (half the variable bytes, scores within bfloat16 precision),
    streamed from the checkpoint file in many small groups (the lean export's weights pass): every
    stored variable is exactly the checkpoint's array rounded to bfloat16."""
    from export.checkpoints import paxml as checkpoint
    from export import exporter
    from export.savedmodel import variables_file
    monkeypatch.setattr(variables_file, "GROUP_BYTES", 64 << 10)
    ckpt = os.path.join(DATA, "vila_r_tiny", "ckpt")
    out = exporter.export_checkpoint(ckpt, spm_model, str(tmp_path / "bf16"), dtype="bfloat16",
                                       overrides={"decoding_max_len": 16})
    data_files = [f for f in os.listdir(os.path.join(out, "variables")) if f.startswith("variables.data-")]
    assert len(data_files) > 5, data_files
    stored = tf.train.load_checkpoint(os.path.join(out, "variables", "variables"))
    params = flatten(checkpoint.load(ckpt, decoding_max_len=16).params)
    for path, array in params.items():
        got = stored.get_tensor(variables_file.param_key(path))
        np.testing.assert_array_equal(got, tf.cast(array, tf.bfloat16).numpy(), err_msg=path)
    m = tf.saved_model.load(out)
    g = golden("vila_r_tiny")
    got = m.signatures["score_pixels"](image=tf.constant(g["input/image"]))["predictions"].numpy()
    assert np.abs(got - g["pred/quality_scores"]).max() < 0.02
    assert all(v.dtype == tf.bfloat16 for v in m.variables if "prompt" not in v.name)


def test_export_is_atomic(tmp_path, spm_model, monkeypatch):
    """A failure mid-export leaves neither the output folder nor a temporary sibling."""
    from export.checkpoints import paxml as checkpoint
    from export.savedmodel import writer as savedmodel
    ck = checkpoint.load(os.path.join(DATA, "vila_r_tiny", "ckpt"), decoding_max_len=16)

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(tf.saved_model, "save", boom)
    with pytest.raises(KeyboardInterrupt):
        savedmodel.write_savedmodel(ck.params, ck.config, spm_model, str(tmp_path / "out" / "1"), log=lambda m: None)
    assert os.listdir(tmp_path / "out") == []


def test_cli_export_and_errors(tmp_path, spm_model):
    r = export_command("--checkpoint", tmp_path / "missing", "--spm", spm_model, "--out", tmp_path / "sm")
    assert r.returncode == 2 and "missing: no such file or directory" in r.stderr
    assert not (tmp_path / "sm").exists()
