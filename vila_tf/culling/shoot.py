"""A shoot culled from the rows the model wrote (the scores file of `vila-tf cull`, JSON Lines: input,
captured, score, attributes, caption, embedding, or input and error), in bounded memory.

The rows are read three times from the file, never held: once for the numbers (where each row
starts, its capture time and score, the attributes' running statistics: about 40 bytes a photo),
once in time order for the grouping (each row's embedding read when the grouping reaches it),
and once more as the decisions are written (`decisions`, in input order; `groups`, group by group).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from typing import Iterator, Optional

import numpy as np

from vila_tf.culling import grouping, ratings, reasons
from vila_tf.inputs import capture_time
from vila_tf.core import zero_shot


@dataclasses.dataclass(frozen=True)
class Decision:
    index: int  # the row's place in the scores file (input order)
    input: str  # the name as results files write it
    group: int  # from 1; 0 for a photo that failed
    score: float
    rating: Optional[int]  # -1 (reject) or 1-5; None for a photo that failed
    pick: bool
    reason: str
    captured: Optional[str]  # ISO 8601, or None
    group_size: int = 0
    error: Optional[str] = None


class Shoot:
    def __init__(self, path: str, thresholds: grouping.Thresholds = grouping.Thresholds(),
                 reject_below: float = ratings.REJECT_BELOW):
        self.path, self.thresholds, self.reject_below = path, thresholds, reject_below
        offsets, times, scores = [], [], []
        self.stats = reasons.AttributeStats(zero_shot.release_task().names)
        with open(path, "rb") as f:
            offset = 0
            for line in f:
                row = json.loads(line)
                offsets.append(offset)
                offset += len(line)
                ok = "error" not in row and row.get("score") is not None
                times.append(capture_time.seconds(row.get("captured")) if ok else math.nan)
                scores.append(float(row["score"]) if ok else math.nan)
                if ok and row.get("attributes"):
                    self.stats.add([row["attributes"].get(n, math.nan) for n in self.stats.names])
        self.offsets = np.asarray(offsets, np.int64)
        self.times = np.asarray(times, np.float64)
        self.scores = np.asarray(scores, np.float64)
        self.size = len(offsets)
        self._f = open(path, "rb")
        self._decide()

    def close(self) -> None:
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def row(self, i: int) -> dict:
        self._f.seek(int(self.offsets[i]))
        return json.loads(self._f.readline())

    def _decide(self) -> None:
        ok = np.isfinite(self.scores)
        timed = ok & np.isfinite(self.times)
        idx = np.arange(self.size)
        order_timed = idx[timed][np.lexsort((idx[timed], self.times[timed]))]  # by time, then input order
        order_timeless = idx[ok & ~timed]
        self.rank = np.full(self.size, self.size, np.int64)
        self.rank[np.concatenate([order_timed, order_timeless]).astype(np.int64)] = np.arange(int(ok.sum()))
        self.groups = grouping.group(order_timed, self.times, order_timeless,
                                     lambda i: self.row(i).get("embedding"), self.thresholds, self.size)
        self.q = ratings.percentiles(self.scores)
        self.picks = ratings.picks(self.groups, self.scores, self.rank)
        self.group_count = int(self.groups.max()) if self.size else 0
        self.group_size = np.bincount(self.groups, minlength=self.group_count + 1)
        self.pick_of = np.full(self.group_count + 1, -1, np.int64)
        self.pick_of[self.groups[self.picks]] = np.flatnonzero(self.picks)
        runner_up = np.full(self.group_count + 1, -np.inf)
        for i in np.flatnonzero(ok & ~self.picks):
            g = self.groups[i]
            runner_up[g] = max(runner_up[g], self.scores[i])
        self.runner_up = runner_up

    @functools.lru_cache(maxsize=1024)  # the picks' names, asked for by every other frame of their group
    def _name(self, i: int) -> str:
        return os.path.basename(self.row(i)["input"])

    def rating(self, i: int) -> Optional[int]:
        if not math.isfinite(self.scores[i]):
            return None
        return ratings.rating(float(self.q[i]), bool(self.picks[i]), self.reject_below)

    def decision(self, i: int, row: Optional[dict] = None) -> Decision:
        row = self.row(i) if row is None else row
        if "error" in row or not math.isfinite(self.scores[i]):
            return Decision(i, row["input"], 0, math.nan, None, False, "", row.get("captured"),
                            error=row.get("error") or "no score")
        g = int(self.groups[i])
        size, pick = int(self.group_size[g]), bool(self.picks[i])
        rating = self.rating(i)
        pick_i = int(self.pick_of[g])
        margin = float(self.scores[i] - self.runner_up[g]) if pick and size > 1 else None
        pick_name = below = None
        if not pick:
            pick_name = self._name(pick_i)
            below = float(self.scores[pick_i] - self.scores[i])
        text = reasons.reason(pick=pick, group_size=size, q=float(self.q[i]), rejected=rating == ratings.REJECTED,
                              margin=margin, pick_name=pick_name, below_pick=below, attributes=row.get("attributes"),
                              stats=self.stats, caption=row.get("caption"))
        return Decision(i, row["input"], g, float(self.scores[i]), rating, pick, text, row.get("captured"), size)

    def decisions(self) -> Iterator[Decision]:
        """Every row's decision, in input order."""
        for i in range(self.size):
            yield self.decision(i)

    def groups_in_order(self) -> Iterator[list[Decision]]:
        """Group by group (by number), each group's photos in time order (the pick among them)."""
        members = np.flatnonzero(self.groups > 0)
        order = members[np.lexsort((self.rank[members], self.groups[members]))]
        start = 0
        while start < len(order):
            g = self.groups[order[start]]
            end = start + int(self.group_size[g])
            yield [self.decision(int(i)) for i in order[start:end]]
            start = end
