"""`vila-tf rank` and `vila_tf.core.ranking`: text -> the best-matching photos, equal to a brute-force
cosine ranking from the SavedModel's own embedding signatures, in bounded memory."""
import csv
import io

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_text  # noqa: F401  (the SentencePiece ops of text_embedding)
from PIL import Image

from conftest import vila_tf_command
from reference import in_buckets
from vila_tf.core import ranking

QUERIES = ["a misty forest at dawn", "a red car"]


def _photo(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:120, 0:160]
    base = np.stack([np.sin(yy / (4 + seed)), np.cos(xx / (3 + 2 * seed)), np.sin((xx - yy) / 9.0)], -1)
    return (base * rng.uniform(30, 110, 3) + rng.uniform(50, 200, 3)).clip(0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    """Twelve photos, three of them in a sub-folder (walked after the folder's own files)."""
    d = tmp_path_factory.mktemp("library")
    (d / "sub").mkdir()
    for i in range(12):
        Image.fromarray(_photo(i)).save(d / ("sub" if i > 8 else "") / f"p{i:02d}.png")
    return d


def _brute_force(exported, files, queries):
    """Cosine similarities [files, queries] from the SavedModel's image_embedding (on the files'
    bytes) and text_embedding signatures, normalized here."""
    m = tf.saved_model.load(exported["vila_r_tiny"])
    images = in_buckets(lambda b: m.signatures["image_embedding"](image_bytes=tf.constant(b))["image_embedding"].numpy(),
                        [open(f, "rb").read() for f in files])
    texts = in_buckets(lambda t: m.signatures["text_embedding"](text=tf.constant(t))["text_embedding"].numpy(),
                       list(queries))
    images /= np.linalg.norm(images, axis=1, keepdims=True)
    texts /= np.linalg.norm(texts, axis=1, keepdims=True)
    return images @ texts.T


def _check_against(matches, files, sims, top):
    """`matches` is the top of a brute-force ranking: the same similarities, best first, and the
    same photos (where two similarities are too close to order, either)."""
    order = np.argsort(-sims, kind="stable")
    assert [m.rank for m in matches] == list(range(1, top + 1))
    np.testing.assert_allclose([m.similarity for m in matches], sims[order[:top]], atol=1e-5)
    for k, m in enumerate(matches):
        if abs(sims[order[k]] - sims[order[min(k + 1, len(order) - 1)]]) > 1e-4 and \
                (k == 0 or abs(sims[order[k]] - sims[order[k - 1]]) > 1e-4):
            assert m.source == files[order[k]], k


def test_ranking_equals_brute_force_cosine(model, exported, library):
    files = [str(library / f"p{i:02d}.png") for i in range(9)] + [str(library / "sub" / f"p{i:02d}.png")
                                                                   for i in range(9, 12)]
    result = ranking.rank(model, QUERIES, [str(library)], top=5)
    assert result.seen == 12 and result.failed == 0 and list(result.matches) == QUERIES
    sims = _brute_force(exported, files, QUERIES)
    assert np.ptp(sims) > 1e-3  # the photos are told apart
    for q, query in enumerate(QUERIES):
        _check_against(result.matches[query], files, sims[:, q], 5)


def test_memory_does_not_grow_with_the_number_of_photos(model, monkeypatch):
    """160 photos from a generator: each query's heap never holds more than --top entries, and the
    generator is only ever a few batches ahead of the results (nothing collects the photos)."""
    peaks, pulled, ahead = [], [0], []

    class CountingTopK(ranking.TopK):
        def __init__(self, k):
            super().__init__(k)
            peaks.append(self)

    def photos():
        rng = np.random.default_rng(0)
        for _ in range(160):
            pulled[0] += 1
            yield rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)

    def on_result(r):
        ahead.append(pulled[0] - (r.index + 1))

    monkeypatch.setattr(ranking, "TopK", CountingTopK)
    result = ranking.rank(model, QUERIES, photos(), top=3, batch_size=8, batches_ahead=2, on_result=on_result)
    assert result.seen == 160 and pulled[0] == 160
    assert len(peaks) == 2 and all(h.peak == 3 and len(h.heap) == 3 for h in peaks)
    assert max(ahead) <= (2 + 1) * 8  # the decode window: batches_ahead batches plus the one in hand
    assert [m.rank for m in result.matches[QUERIES[0]]] == [1, 2, 3]


def test_top_k_keeps_the_best_and_the_earlier_of_ties():
    top = ranking.TopK(3)
    for i, s in enumerate([0.1, 0.5, 0.3, 0.5, 0.9, float("nan"), 0.2, 0.5]):
        top.add(s, i, f"p{i}")
    assert [(m.similarity, m.source) for m in top.best()] == [(0.9, "p4"), (0.5, "p1"), (0.5, "p3")]
    assert top.peak == 3
    with pytest.raises(ValueError):
        ranking.TopK(0)


def test_rank_command(model, exported, library, tmp_path):
    out = tmp_path / "ranked.csv"
    r = vila_tf_command("rank", exported["vila_r_tiny"], QUERIES[0], library, "--query", QUERIES[1], "--top", "3",
                        "--output", out)
    assert r.returncode == 0, r.stderr
    want = ranking.rank(model, QUERIES, [str(library)], top=3)
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert [(row["query"], int(row["rank"])) for row in rows] == [(q, k) for q in QUERIES for k in (1, 2, 3)]
    for row in rows:
        m = want.matches[row["query"]][int(row["rank"]) - 1]
        assert row["input"] == m.source and abs(float(row["similarity"]) - m.similarity) < 1e-5
    assert f"{QUERIES[0]!r}: the best 3 of 12 photos" in r.stdout
    first = want.matches[QUERIES[0]][0]
    assert f"   1  {first.similarity:+.4f}  {first.source}" in r.stdout
    bad = vila_tf_command("rank", exported["vila_r_tiny"], " ", library)
    assert bad.returncode == 2 and "query is empty" in bad.stderr
