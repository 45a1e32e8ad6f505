"""Zero-shot scores by prompt pair: the host formula against scipy on praxis' own embeddings, the
prompt-pair rules, and the contact sheet's attribute bars."""
import numpy as np
import pytest
from scipy.special import softmax

from conftest import golden
from test_tokenizer import flax_text_embeddings
from vila_tf.cli import contact_sheet
from vila_tf.core import zero_shot

ATTRIBUTES = ("image", "lighting", "content", "background", "foreground", "composition")


def _scipy_pairs(image, text):
    """softmax over (image·good, image·bad) per pair, good column (scipy's softmax)."""
    sims = (image.astype(np.float64) @ text.astype(np.float64).T).reshape(len(image), -1, 2)
    return softmax(sims, axis=-1)[..., 0]


@pytest.mark.parametrize("name", ["vila_r_tiny", "vila_p_tiny"])
def test_pair_scores_on_praxis_embeddings(name):
    """praxis' image embeddings of the golden images against praxis' text embeddings of the golden
    texts, as a pair each way round."""
    g = golden(name)
    image, text = g["pred/contrastive_img_embed_norm"], g["text_only/contrastive_txt_embed_norm"]
    prompts = np.stack([text[0], text[1], text[1], text[0]])  # pairs (0, 1) and (1, 0)
    got = zero_shot.pair_scores(image, prompts)
    assert got.dtype == np.float32 and got.shape == (2, 2)
    np.testing.assert_allclose(got, _scipy_pairs(image, prompts), atol=1e-6)
    np.testing.assert_allclose(got[:, 0] + got[:, 1], 1, atol=1e-6)


def test_pair_scores_keep_failed_rows_nan():
    g = golden("vila_r_tiny")
    image = np.concatenate([g["pred/contrastive_img_embed_norm"], np.full((1, 64), np.nan, np.float32)])
    got = zero_shot.pair_scores(image, g["text_only/contrastive_txt_embed_norm"])
    assert np.isfinite(got[:2]).all() and np.isnan(got[2]).all()


def test_release_pairs_are_the_releases():
    assert zero_shot.RELEASE_PAIRS == (("good image", "bad image"), ("good lighting", "bad lighting"),
                                       ("good content", "bad content"), ("good background", "bad background"),
                                       ("good foreground", "bad foreground"),
                                       ("good composition", "bad composition"))


def test_prompt_pairs_parse_and_name():
    assert zero_shot.parse_pair(" sharp photo | blurry photo ") == ("sharp photo", "blurry photo")
    pairs = zero_shot.pairs_from(["sharp photo|blurry photo", ("warm light", "cold light")])
    assert pairs == (("sharp photo", "blurry photo"), ("warm light", "cold light"))
    assert [zero_shot.pair_name(p) for p in pairs] == ["sharp photo|blurry photo", "warm light|cold light"]
    assert zero_shot.pairs_from("a|b") == (("a", "b"),)


@pytest.mark.parametrize("bad, message", [
    (["sharp photo"], "expected 'GOOD PROMPT|BAD PROMPT'"),
    (["a|b|c"], "expected 'GOOD PROMPT|BAD PROMPT'"),
    (["|blurry"], "two non-empty prompts"),
    ([("a|x", "b")], "may not contain '|'"),
    ([("a", "b", "c")], "expected two strings"),
    (["a|b", ("a", "b")], "'a|b' is given twice"),
    ([], "no prompt pairs given"),
])
def test_bad_prompt_pairs_are_named(bad, message):
    with pytest.raises(zero_shot.PromptError, match=message.replace("|", r"\|").replace("(", r"\(")):
        zero_shot.pairs_from(bad)


def test_scores_by_column_name():
    pairs = np.array([[0.6, 0.4], [0.2, 0.3]], np.float32)
    s = zero_shot.ZeroShotScores(pairs.mean(1), pairs, ("a|b", "c|d"), (("a", "b"), ("c", "d")))
    np.testing.assert_array_equal(s["c|d"], pairs[:, 1])
    np.testing.assert_array_equal(s["score"], pairs.mean(1))
    assert list(s.columns()) == ["score", "a|b", "c|d"] and len(s) == 2
    with pytest.raises(KeyError, match="the columns are score, a|b, c|d"):
        s["lighting"]


# -- the contact sheet's bars ---------------------------------------------------------------------

def test_bar_geometry():
    # the track's middle is 0.5; `scale` away from 0.5 fills half the track, either way
    assert contact_sheet.bar_extent(0.5, 0.02, 100) == (50, 50)
    assert contact_sheet.bar_extent(0.52, 0.02, 100) == (50, 100)
    assert contact_sheet.bar_extent(0.49, 0.02, 100) == (25, 50)
    assert contact_sheet.bar_extent(0.9, 0.02, 100) == (50, 100)  # clipped to the track
    assert contact_sheet.bar_label("sharp photo|blurry photo") == "sharp photo"
    assert contact_sheet.bar_label("a very long prompt|b") == "a very lon…"


def test_sheet_draws_a_bar_per_attribute():
    """Green right of the middle for a value over 0.5, red left of it under 0.5, nothing for an
    image without attributes; the sheet grows by the bar rows."""
    rng = np.random.default_rng(0)
    images = [(rng.uniform(0, 1, (60, 80, 3)) * 255).astype(np.uint8) for _ in range(2)]
    values = [[0.52, 0.48, 0.5, 0.5, 0.5, 0.5], None]
    sheet = contact_sheet.render(images, [0.7, 0.3], attributes=values, attribute_names=ATTRIBUTES)
    assert sheet.size == contact_sheet.sheet_size(2, False, attribute_rows=6)
    assert sheet.size[1] == contact_sheet.sheet_size(2, False)[1] + 6 * contact_sheet.BAR_HEIGHT + 4
    arr = np.asarray(sheet)
    track = contact_sheet.THUMB - contact_sheet.BAR_LABEL - contact_sheet.BAR_VALUE
    x0 = contact_sheet.PAD + contact_sheet.BAR_LABEL  # first cell: the best score
    y0 = contact_sheet.PAD + contact_sheet.THUMB + contact_sheet.SCORE_HEIGHT + contact_sheet.BAR_HEIGHT // 2

    def pixel(cell, row, dx):
        return tuple(arr[y0 + row * contact_sheet.BAR_HEIGHT, x0 + cell * (contact_sheet.THUMB + contact_sheet.PAD) + dx])

    assert pixel(0, 0, track * 3 // 4) == contact_sheet.GOOD  # 0.52: the sheet's largest distance
    assert pixel(0, 0, track // 4) == contact_sheet.TRACK
    assert pixel(0, 1, track // 4) == contact_sheet.BAD
    assert pixel(0, 2, track * 3 // 4) == pixel(0, 2, track // 4) == contact_sheet.TRACK  # 0.5: no bar
    assert pixel(1, 0, track * 3 // 4) == (255, 255, 255)  # no attributes: no track either


# -- the runtime on the tiny exports, against praxis ----------------------------------------------

def _praxis_inputs(name):
    """The golden images as the runtime takes them: each 224x224 praxis input inside a 272x272
    canvas, which the release's preprocessing (resize to 272: the identity here, center crop 224)
    turns back into exactly praxis' input (within float32 rounding)."""
    x = golden(name)["input/image"]
    canvas = np.zeros((len(x), 272, 272, 3), np.float32)
    canvas[:, 24:248, 24:248] = x
    return list(canvas)


@pytest.fixture(scope="module")
def models(exported):
    import vila_tf
    loaded = {name: vila_tf.load(path) for name, path in exported.items()}
    yield loaded
    for m in loaded.values():
        m.close()


@pytest.mark.parametrize("name", ["vila_r_tiny", "vila_p_tiny"])
def test_attributes_equal_praxis_pair_softmax(models, loaded_fixtures, spm_model, name):
    """model.zero_shot(attributes=True): the six per-pair softmaxes of praxis' image embeddings
    against the release's prompts tokenized to 4 tokens, in the release's order, within 1e-5."""
    image = golden(name)["pred/contrastive_img_embed_norm"]
    prompts = [p for pair in zero_shot.RELEASE_PAIRS for p in pair]
    want = _scipy_pairs(image, flax_text_embeddings(loaded_fixtures[name], spm_model, prompts, 4))
    got = models[name].zero_shot(_praxis_inputs(name), attributes=True)
    assert got.names == ATTRIBUTES and got.prompts == zero_shot.RELEASE_PAIRS
    np.testing.assert_allclose(got.pairs, want, atol=1e-5)
    np.testing.assert_allclose(got.score, want.mean(1), atol=1e-5)
    np.testing.assert_allclose(got["lighting"], want[:, 1], atol=1e-5)
    np.testing.assert_allclose(models[name].zero_shot(_praxis_inputs(name)), want.mean(1), atol=1e-5)


@pytest.mark.parametrize("name", ["vila_r_tiny", "vila_p_tiny"])
def test_own_prompt_pairs_equal_praxis_pair_softmax(models, loaded_fixtures, spm_model, name):
    """Your pairs: softmax over (image·good, image·bad) with praxis' image embeddings and the pairs'
    text embeddings at the text_embedding signature's 64 tokens, within 1e-4."""
    pairs = [("sharp photo", "blurry photo"), ("the colors are vivid and the focus is sharp", "too dark, underexposed shadows")]
    image = golden(name)["pred/contrastive_img_embed_norm"]
    want = _scipy_pairs(image, flax_text_embeddings(loaded_fixtures[name], spm_model, [p for q in pairs for p in q], 64))
    got = models[name].zero_shot(_praxis_inputs(name), prompts=[pairs[0], "|".join(pairs[1])])
    assert got.names == ("sharp photo|blurry photo",
                         "the colors are vivid and the focus is sharp|too dark, underexposed shadows")
    np.testing.assert_allclose(got.pairs, want, atol=1e-4)
    np.testing.assert_allclose(got.score, want.mean(1), atol=1e-4)


def test_release_pairs_as_own_prompts_give_the_attributes(models):
    """The release's six pairs at 64 tokens (the text_embedding signature) give what the graph
    computes from them at 4: trailing padding never changes a text embedding (docs/model.md §6)."""
    m = models["vila_r_tiny"]
    images = _praxis_inputs("vila_r_tiny")
    own = m.zero_shot(images, prompts=zero_shot.RELEASE_PAIRS)
    graph = m.zero_shot(images, attributes=True)
    np.testing.assert_allclose(own.pairs, graph.pairs, atol=1e-6)
    np.testing.assert_allclose(own.score, graph.score, atol=1e-6)


def test_prompt_embeddings_computed_once_per_set(models, monkeypatch):
    m = models["vila_r_tiny"]
    calls = []
    original = m.text_embedding
    monkeypatch.setattr(m, "text_embedding", lambda texts, *a, **k: calls.append(list(texts)) or original(texts, *a, **k))
    images = _praxis_inputs("vila_r_tiny")
    first = m.zero_shot(images, prompts=["warm light|cold light"])
    again = m.zero_shot(images + images, prompts=[("warm light", "cold light")])
    m.zero_shot(images, prompts=["warm light|cold light", "sharp photo|blurry photo"])
    assert calls == [["warm light", "cold light"], ["warm light", "cold light", "sharp photo", "blurry photo"]]
    np.testing.assert_array_equal(again.pairs[:2], first.pairs)


def test_stream_and_failed_images(models):
    m = models["vila_r_tiny"]
    images = _praxis_inputs("vila_r_tiny") + [b"not an image"]
    task = m.zero_shot_task(["sharp photo|blurry photo"])
    results = list(m.stream((task, "score"), images))
    scores, errors = m.zero_shot(images, prompts=["sharp photo|blurry photo"], return_errors=True)
    for r in results[:2]:
        pairs, score = r.value
        assert list(pairs) == ["score", "sharp photo|blurry photo"]
        assert pairs["sharp photo|blurry photo"] == pytest.approx(float(scores.pairs[r.index, 0]), abs=1e-6)
    assert results[2].value is None and "not a JPEG" in results[2].error
    assert np.isnan(scores.pairs[2]).all() and np.isnan(scores.score[2]) and [e.index for e in errors] == [2]
    with pytest.raises(zero_shot.PromptError, match="expected 'GOOD PROMPT"):
        m.zero_shot(images, prompts=["sharp photo"])
