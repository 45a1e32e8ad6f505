"""The reason given for each photo's decision: short, in words, from what the model said about it.

`pick of 4 frames, 0.031 above the next; better than 85% of the shoot; strongest: composition,
weakest: lighting; "a dog running on the beach"`. The parts:

1. the decision: the pick of its group (and by how much it beats the runner-up), a single frame,
   or how far below its group's pick it scores (naming the pick), `rejected:` in front of a reject;
2. where its score stands in the shoot;
3. its strongest and weakest of the six zero-shot attributes (image, lighting, content,
   background, foreground, composition), each measured against the same attribute over the
   whole shoot (how many standard deviations above or below the shoot's mean), since the raw
   attribute scores sit at different levels; where the export has them (every SavedModel and
   LiteRT export of VILA-R);
4. the model's caption, where the export has the caption head (a SavedModel; a LiteRT export has none).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

CAPTION_CHARS = 100


class AttributeStats:
    """Running mean and variance of each attribute over the shoot (Welford): a few numbers, whatever the shoot's size."""

    def __init__(self, names: Sequence[str]):
        self.names = tuple(names)
        self.n = 0
        self.mean = np.zeros(len(self.names))
        self.m2 = np.zeros(len(self.names))

    def add(self, values: Sequence[float]) -> None:
        v = np.asarray(values, np.float64)
        if v.shape != self.mean.shape or not np.all(np.isfinite(v)):
            return
        self.n += 1
        delta = v - self.mean
        self.mean += delta / self.n
        self.m2 += delta * (v - self.mean)

    def standing(self, values: Sequence[float]) -> np.ndarray:
        """How far each value is from the shoot's mean, in standard deviations (from 0.5, the
        undecided pair, where the shoot does not vary)."""
        v = np.asarray(values, np.float64)
        std = np.sqrt(self.m2 / self.n) if self.n > 1 else np.zeros_like(self.mean)
        return np.where(std > 1e-12, (v - self.mean) / np.where(std > 1e-12, std, 1.0), v - 0.5)


def _gap(x: float) -> str:
    """A score difference: 3 decimals, or 2 significant digits when smaller (the pretrain models'
    scores sit close to 0.5)."""
    return f"{x:.3f}" if abs(x) >= 0.001 or x == 0 else f"{x:.1e}"


def _decision(pick: bool, group_size: int, margin: Optional[float], pick_name: Optional[str],
              below_pick: Optional[float], rejected: bool) -> str:
    if pick and group_size > 1:
        return f"pick of {group_size} frames, {_gap(margin)} above the next" if margin is not None \
            else f"pick of {group_size} frames"
    if pick:
        return "single frame"
    text = f"{_gap(below_pick)} below its group's pick {pick_name}" if pick_name else "not its group's pick"
    return f"rejected: {text}" if rejected else text


def reason(*, pick: bool, group_size: int, q: float, rejected: bool = False, margin: Optional[float] = None,
           pick_name: Optional[str] = None, below_pick: Optional[float] = None,
           attributes: Optional[dict] = None, stats: Optional[AttributeStats] = None,
           caption: Optional[str] = None) -> str:
    parts = [_decision(pick, group_size, margin, pick_name, below_pick, rejected)]
    if math.isfinite(q):
        parts.append("the shoot's best" if q >= 1 else "the shoot's lowest" if q <= 0 else
                     f"better than {round(100 * q)}% of the shoot")
    if attributes and stats is not None and all(n in attributes for n in stats.names):
        standing = stats.standing([attributes[n] for n in stats.names])
        if np.all(np.isfinite(standing)):
            order = np.argsort(-standing, kind="stable")
            parts.append(f"strongest: {stats.names[order[0]]}, weakest: {stats.names[order[-1]]}")
    if caption:
        text = " ".join(caption.split())
        if len(text) > CAPTION_CHARS:
            text = text[:CAPTION_CHARS - 1].rstrip() + "…"
        parts.append(f'"{text}"')
    return "; ".join(parts)
