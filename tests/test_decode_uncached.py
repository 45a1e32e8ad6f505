"""The benchmarks' uncached greedy decode is the same decode as the KV-cached one."""
import jax
import numpy as np
import pytest

from conftest import golden
from export.model import decode, heads
from export.model.config import EOS_ID


def _both_decodes(params, cfg, images):
    # Jitted: one compilation per function instead of one per operation outside the loops.
    gen = jax.jit(lambda p, x: heads.encode_image(p, cfg, x)["generative_img_embed"])(params, images)
    uncached = tuple(map(np.asarray, jax.jit(lambda p, g: decode.greedy_decode_uncached(p, cfg, g))(params, gen)))
    cached = tuple(map(np.asarray, jax.jit(lambda p, g: decode.greedy_decode(p, cfg, g))(params, gen)))
    return uncached, cached


def _assert_same_decode(uncached, cached):
    np.testing.assert_array_equal(uncached[0], cached[0])  # ids
    np.testing.assert_array_equal(uncached[1], cached[1])  # lengths
    np.testing.assert_allclose(uncached[2], cached[2], atol=1e-5)  # log-probs


@pytest.mark.parametrize("name", ["vila_r_tiny", "vila_p_tiny"])
def test_uncached_decode_matches_cached(loaded_fixtures, name):
    ck, g = loaded_fixtures[name], golden(name)
    uncached, cached = _both_decodes(ck.params, ck.config, g["input/image"])
    _assert_same_decode(uncached, cached)
    np.testing.assert_array_equal(uncached[0], g["decode/hyp"][:, 0])  # and both are praxis' captions


def test_uncached_decode_stops_rows_like_cached(loaded_fixtures):
    """The golden captions never emit EOS; favouring EOS makes the rows stop at different steps."""
    ck, g = loaded_fixtures["vila_r_tiny"], golden("vila_r_tiny")
    params = jax.tree_util.tree_map(np.array, ck.params)
    params["decoder"]["softmax"]["logits_ffn"]["bias"]["b"][EOS_ID] += 4.0
    uncached, cached = _both_decodes(params, ck.config, g["input/image"])
    lengths = uncached[1]
    assert len(set(lengths)) > 1 and lengths.max() < ck.config.decoding_max_len, lengths
    _assert_same_decode(uncached, cached)
