"""Text -> the best-matching photos: `rank(model, "a misty forest at dawn", "library/", top=10)`.

Each query's text embedding is computed once; the photos stream through
`model.stream("image_embedding", ...)` (any number of them, bounded memory) and each one's cosine
similarity to every query goes into that query's `TopK`, a min-heap that never holds more than
`top` entries. Both embeddings are l2-normalized by the model, so the cosine is their dot product.
Several queries cost one pass over the photos: each photo is decoded and embedded once.
"""
from __future__ import annotations

import heapq
import math
from typing import Callable, NamedTuple, Optional, Sequence

DEFAULT_TOP = 10


class Match(NamedTuple):
    rank: int  # 1 = best
    similarity: float  # cosine similarity of the photo and the query, in [-1, 1]
    source: str  # the photo's path (or <bytes i>, <array i>, ...)
    index: int  # its position in the inputs


class TopK:
    """The `k` most similar photos seen so far, in O(k) memory whatever the number seen. Ties keep
    the earlier photo. `peak` is the most entries the heap ever held (never more than k)."""

    def __init__(self, k: int):
        if k < 1:
            raise ValueError(f"top must be >= 1, got {k}")
        self.k, self.heap, self.peak = k, [], 0

    def add(self, similarity: float, index: int, source: str) -> None:
        if not math.isfinite(similarity):
            return
        entry = (similarity, -index, source)
        if len(self.heap) < self.k:
            heapq.heappush(self.heap, entry)
            self.peak = max(self.peak, len(self.heap))
        elif entry > self.heap[0]:
            heapq.heapreplace(self.heap, entry)

    def best(self) -> list[Match]:
        """Best first."""
        ordered = sorted(self.heap, reverse=True)
        return [Match(r, float(s), src, -i) for r, (s, i, src) in enumerate(ordered, 1)]


class Ranking(NamedTuple):
    matches: dict  # query -> [Match], best first
    seen: int  # photos embedded
    failed: int  # photos that could not be read or decoded


def rank(model, queries: Sequence[str] | str, inputs, top: int = DEFAULT_TOP, batch_size: int = 32,
         batches_ahead: int = 2, on_result: Optional[Callable] = None, skipped=None) -> Ranking:
    """The `top` photos of `inputs` most similar to each query, best first. `inputs`: anything
    `model.stream` takes (paths, folders, globs, bytes, arrays, generators). `on_result(result)` is
    called for every photo's `Result` (a progress bar, error reports)."""
    queries = list(dict.fromkeys([queries] if isinstance(queries, str) else queries))
    if not queries or any(not q.strip() for q in queries):
        raise ValueError("every query must be a non-empty text")
    texts = model.text_embedding(queries)  # [Q, D], once
    heaps = [TopK(top) for _ in queries]
    seen = failed = 0
    for r in model.stream("image_embedding", inputs, batch_size=batch_size, batches_ahead=batches_ahead,
                          skipped=skipped):
        if r.error is None:
            seen += 1
            for heap, similarity in zip(heaps, texts @ r.value):
                heap.add(float(similarity), r.index, r.source)
        else:
            failed += 1
        if on_result is not None:
            on_result(r)
    return Ranking({q: h.best() for q, h in zip(queries, heaps)}, seen, failed)
