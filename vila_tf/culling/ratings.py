"""Picks, star ratings and rejects: the rules of docs/culling.md.

- **Pick**: the best-scored photo of each group (ties: the earlier frame, then the earlier input).
- **Stars 1-5** from where a photo's score stands in the shoot: its percentile `q`, the share of
  the shoot's other scored photos scoring below it (ties count half), from 0 (the worst) to 1
  (the best). 5 stars from q >= 0.9 (the top tenth), 4 from 0.7, 3 from 0.3, 2 from 0.1, else 1.
  A shoot of one photo gives it 3.
- **Reject (rating -1)**: a photo that is not its group's pick and scores in the shoot's bottom
  `reject_below` (default 0.1, the photos that would get 1 star). A pick is never rejected: the
  best frame of a moment is kept however it scores.

The picks' stars are therefore at least those of every other frame of their group. Only the order
of the scores counts, so the same shoot scored by another model release rates alike where the
scores rank alike.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

STAR_CUTS = (0.1, 0.3, 0.7, 0.9)  # q from which 2, 3, 4 and 5 stars are given
REJECT_BELOW = 0.1
REJECTED = -1


def percentiles(scores: np.ndarray) -> np.ndarray:
    """Each finite score's share of the other finite scores below it (ties count half), 0..1;
    0.5 for a lone score, NaN where the score is NaN."""
    scores = np.asarray(scores, np.float64)
    q = np.full(scores.shape, np.nan)
    ok = np.isfinite(scores)
    n = int(ok.sum())
    if n == 1:
        q[ok] = 0.5
    elif n > 1:
        s = np.sort(scores[ok])
        below = np.searchsorted(s, scores[ok], "left")
        equal = np.searchsorted(s, scores[ok], "right") - below - 1  # the others with the same score
        q[ok] = (below + 0.5 * equal) / (n - 1)
    return q


def stars(q: float, cuts: Sequence[float] = STAR_CUTS) -> int:
    return 1 + sum(q >= c for c in cuts)


def picks(groups: np.ndarray, scores: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """True for each group's best-scored photo. `rank`: each photo's place in time order (ties of
    the score go to the smaller rank)."""
    best: dict = {}
    for i in np.flatnonzero(groups > 0):
        g, key = int(groups[i]), (-float(scores[i]), int(rank[i]))
        if g not in best or key < best[g][0]:
            best[g] = (key, i)
    out = np.zeros(len(groups), bool)
    out[[i for _, i in best.values()]] = True
    return out


def rating(q: float, pick: bool, reject_below: float = REJECT_BELOW) -> int:
    """The rating written for a photo: REJECTED (-1) or 1-5 stars."""
    if not pick and q < reject_below:
        return REJECTED
    return stars(q)
