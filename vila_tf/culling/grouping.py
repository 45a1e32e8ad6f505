"""Bursts and near-duplicates as groups, from capture times and image embeddings (docs/culling.md).

Photos with a capture time are taken in time order. Each joins the most similar open group (by
the cosine similarity of its embedding to the group's latest frame, so a burst that pans slowly
stays one group) when

- it was taken at most `burst_gap` seconds after that frame and is at least `burst_similarity`
  alike (a burst), or
- it was taken at most `duplicate_window` seconds after it and is at least `duplicate_similarity`
  alike (the same picture taken again);

otherwise it starts a group. Groups whose latest frame is more than `duplicate_window` seconds old
are closed: memory holds the open groups' latest embeddings, never the shoot's.

Photos without a capture time are grouped by similarity alone, in input order (file names: a
camera's numbering): each joins the most similar of the last `TIMELESS_OPEN` groups formed that way
when it is at least `duplicate_similarity` alike. They never join a group of timed photos (when
they were taken is unknown).

Groups are numbered from 1 in the order they start: timed groups by time, then the others.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Optional, Sequence

import numpy as np

TIMELESS_OPEN = 64  # groups of photos without a capture time a photo is compared with


@dataclasses.dataclass(frozen=True)
class Thresholds:
    burst_gap: float = 2.0  # seconds between frames of one burst
    burst_similarity: float = 0.85  # cosine similarity of a frame to the burst's latest frame
    duplicate_window: float = 60.0  # seconds within which the same picture taken again is grouped
    duplicate_similarity: float = 0.95  # cosine similarity of such a near-duplicate (and of photos without a time)

    def check(self) -> Optional[str]:
        """Why these thresholds cannot be used, or None."""
        if not (self.burst_gap >= 0 and self.duplicate_window >= 0):
            return "--burst-gap and --duplicate-window are seconds: give 0 or more"
        for name, value in (("burst-similarity", self.burst_similarity),
                            ("duplicate-similarity", self.duplicate_similarity)):
            if not -1.0 <= value <= 1.0:
                return f"--{name} {value}: a cosine similarity, from -1 to 1"
        return None


class _Open:
    __slots__ = ("group", "time", "embedding")

    def __init__(self, group: int, time: float, embedding: np.ndarray):
        self.group, self.time, self.embedding = group, time, embedding


def _unit(v) -> Optional[np.ndarray]:
    if v is None:
        return None
    v = np.asarray(v, np.float64).reshape(-1)
    n = float(np.linalg.norm(v))
    return v / n if n > 0 and math.isfinite(n) else None


def group(order_timed: Sequence[int], times: np.ndarray, order_timeless: Sequence[int],
          embedding: Callable[[int], Optional[Sequence[float]]], thresholds: Thresholds,
          size: int) -> np.ndarray:
    """The group number (from 1) of each of `size` photos; 0 for those in neither order (failed).

    `order_timed`: photos with a capture time, sorted by it (`times[i]`, seconds); `order_timeless`:
    the others, in input order. `embedding(i)`: photo i's embedding (read when it is needed), or
    None when it has none (it then forms its own group)."""
    groups = np.zeros(size, np.int64)
    count = 0
    t = thresholds
    open_: list[_Open] = []
    for i in order_timed:
        now = float(times[i])
        open_ = [g for g in open_ if now - g.time <= t.duplicate_window]
        e = _unit(embedding(i))
        best, best_sim = None, -math.inf
        if e is not None:
            for g in open_:
                sim = float(e @ g.embedding)
                joins = (now - g.time <= t.burst_gap and sim >= t.burst_similarity) or sim >= t.duplicate_similarity
                if joins and sim > best_sim:
                    best, best_sim = g, sim
        if best is None:
            count += 1
            groups[i] = count
            if e is not None:
                open_.append(_Open(count, now, e))
        else:
            groups[i] = best.group
            best.time, best.embedding = now, e
    recent: list[_Open] = []
    for i in order_timeless:
        e = _unit(embedding(i))
        best, best_sim = None, -math.inf
        if e is not None:
            for g in recent:
                sim = float(e @ g.embedding)
                if sim >= t.duplicate_similarity and sim > best_sim:
                    best, best_sim = g, sim
        if best is None:
            count += 1
            groups[i] = count
            if e is not None:
                recent.append(_Open(count, 0.0, e))
                del recent[:-TIMELESS_OPEN]
        else:
            groups[i] = best.group
            best.embedding = e
            recent.remove(best)
            recent.append(best)  # the most recently joined stays open longest
    return groups
