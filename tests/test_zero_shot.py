"""Zero-shot scores by prompt pair: the host formula against scipy on praxis' own embeddings, the
prompt-pair rules, and the contact sheet's attribute bars."""
import numpy as np
import pytest
from scipy.special import softmax

from conftest import golden
from vila_tf import contact_sheet, zero_shot

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
