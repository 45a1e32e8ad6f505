"""The Flax model, fed by the checkpoint reader, reproduces praxis 1.0.0's outputs (golden.npz)."""
import jax
import numpy as np
import pytest

from conftest import golden
from export.model import heads
from export.model.modules import VilaModule, abstract_params
from export.model.tree import flatten, unflatten

ATOL = 1e-5


@pytest.fixture(scope="module")
def outputs(loaded_fixtures):
    out = {}
    for name, ck in loaded_fixtures.items():
        g = golden(name)
        ids, pad = g["input/ids"][:, 0], g["input/paddings"][:, 0]
        model = VilaModule(ck.config)
        v = {"params": ck.params}
        # Jitted: one compilation per function instead of one per operation (most of the time).
        pred = jax.jit(model.apply)(v, g["input/image"], ids, pad)
        text_only = jax.jit(lambda v, ids, pad: model.apply(v, ids, pad, method=VilaModule.encode_text))(v, ids, pad)
        out[name] = (ck, g, pred, text_only)
    return out


def _close(actual, expected, what):
    actual = np.asarray(actual)
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    err = np.abs(actual - expected).max()
    assert err <= ATOL, f"{what}: max abs error {err:.3g} > {ATOL}"


@pytest.mark.parametrize("name", ["vila_r_tiny", "vila_p_tiny"])
def test_image_tower(outputs, name):
    ck, g, pred, _ = outputs[name]
    _close(pred["encoder_out"], g["encoder_out"], "encoder_out")
    for k in ("generative_img_embed", "contrastive_img_embed", "contrastive_img_embed_norm"):
        _close(pred[k], g[f"pred/{k}"], k)


@pytest.mark.parametrize("name", ["vila_r_tiny", "vila_p_tiny"])
def test_text_with_image_features(outputs, name):
    ck, g, pred, _ = outputs[name]
    valid = g["input/paddings"][:, 0] == 0  # padded positions are praxis-version specific
    for k in ("contrastive_txt_embed", "contrastive_txt_embed_norm"):
        _close(pred[k], g[f"pred/{k}"], k)
    _close(np.asarray(pred["multimodal_txt_embed"])[valid], g["pred/multimodal_txt_embed"][valid], "multimodal")
    _close(np.asarray(pred["logits"])[valid], g["teacher_forced_logits"][valid], "teacher-forced logits")


@pytest.mark.parametrize("name", ["vila_r_tiny", "vila_p_tiny"])
def test_text_only(outputs, name):
    ck, g, _, text_only = outputs[name]
    valid = g["input/paddings"][:, 0] == 0
    for k in ("contrastive_txt_embed", "contrastive_txt_embed_norm"):
        _close(text_only[k], g[f"text_only/{k}"], k)
    _close(np.asarray(text_only["multimodal_txt_embed"])[valid],
           g["text_only/multimodal_txt_embed"][valid], "text-only multimodal")


def test_quality_scores(outputs):
    ck, g, pred, _ = outputs["vila_r_tiny"]
    _close(pred["quality_scores"], g["pred/quality_scores"], "quality_scores (model)")
    score = jax.jit(lambda p, x: heads.score(p, ck.config, x))(ck.params, g["input/image"])
    _close(score, g["pred/quality_scores"], "heads.score")


def test_pretrain_has_no_quality_head(outputs):
    ck, g, pred, _ = outputs["vila_p_tiny"]
    assert "quality_scores" not in pred and "residual_ffn" not in ck.params
    with pytest.raises(ValueError, match="residual_ffn"):
        jax.jit(lambda p, x: heads.score(p, ck.config, x))(ck.params, g["input/image"])  # refused while tracing


@pytest.mark.parametrize("name", ["vila_r_tiny", "vila_p_tiny"])
def test_greedy_decode(outputs, name):
    ck, g, _, _ = outputs[name]
    ids, lengths, logprobs = jax.jit(lambda p, x: heads.caption(p, ck.config, x))(ck.params, g["input/image"])
    np.testing.assert_array_equal(np.asarray(ids), g["decode/hyp"][:, 0])
    np.testing.assert_array_equal(np.asarray(lengths), g["decode/hyplen"][:, 0])
    _close(logprobs, g["decode/logprobs"][:, 0], "decode logprobs")


def test_decode_cache_equals_full_recompute(outputs):
    """Each cached step's argmax equals the full decoder's on the generated prefix (docs/model.md §8)."""
    ck, g, _, _ = outputs["vila_r_tiny"]
    ids, _, _ = jax.jit(lambda p, x: heads.caption(p, ck.config, x))(ck.params, g["input/image"])
    ids = np.asarray(ids)
    logits = jax.jit(lambda p, x, ids, pad: heads.teacher_forced_logits(p, ck.config, x, ids, pad))(
        ck.params, g["input/image"], ids, np.zeros(ids.shape, np.float32))
    np.testing.assert_array_equal(np.argmax(np.asarray(logits), -1)[:, :-1], ids[:, 1:])


def test_decode_stops_at_eos():
    """A row that emits EOS is done: lengths count BOS and EOS, later slots are 0 / log-prob 1."""
    import jax.numpy as jnp
    from export.model.config import VilaConfig
    cfg = VilaConfig(model_dims=16, num_heads=2, dim_per_head=8, encoder_ff_dims=16, decoder_ff_dims=16,
                     pooler_num_heads=2, pooler_dim_per_head=8, num_encoder_layers=1, num_unimodal_layers=1,
                     num_crossmodal_layers=1, vocab_size=8, image_size=32, patch_size=16,
                     num_generative_queries=4, decoding_max_len=10)
    # Any weights will do (the EOS bias below decides every step); numpy draws them at once, where
    # the demo initializer compiles per array shape (seconds).
    rng = np.random.default_rng(3)
    params = unflatten({path: rng.normal(0, 0.1, leaf.shape).astype(np.float32)
                        for path, leaf in flatten(abstract_params(cfg)).items()})
    # Make EOS (id 2) the argmax after the 3rd generated token of every row via the softmax bias.
    images = np.random.default_rng(0).uniform(size=(2, 32, 32, 3)).astype(np.float32)
    bias = np.zeros(8, np.float32)
    params["decoder"]["softmax"]["logits_ffn"]["bias"]["b"] = jnp.asarray(bias).at[2].set(1e4)
    ids, lengths, logprobs = jax.jit(lambda p, x: heads.caption(p, cfg, x))(params, images)
    np.testing.assert_array_equal(np.asarray(ids), [[1, 2] + [0] * 8] * 2)
    np.testing.assert_array_equal(np.asarray(lengths), [2, 2])
    assert np.all(np.asarray(logprobs)[:, 2:] == 1.0) and np.all(np.asarray(logprobs)[:, 0] == 1.0)
