"""Agreement between model scores and human mean opinion scores (MOS), with scipy, and seeded
bootstrap intervals: what `vila-tf evaluate` reports (docs/evaluation.md).

- SRCC: Spearman's rank correlation, `scipy.stats.spearmanr`.
- PLCC: Pearson's correlation of the raw predictions with the MOS, `scipy.stats.pearsonr`; no
  logistic fit first (IQA-PyTorch's `calculate_plcc` without `fit_scale`, its default).
- KRCC: Kendall's tau-b (ties corrected), `scipy.stats.kendalltau`'s default variant.
- accuracy: the binary task of the AVA literature: an image is "high quality" when its MOS is
  >= `threshold` (5.0 on AVA's 1-10 scale). The model's class: score >= `score_threshold`. A VILA
  score is not on the MOS scale, so by default ("matched") the score threshold is the one that
  predicts as many high-quality images as the labels hold: the k-th highest score, k the number
  of labels >= threshold (the only thing taken from the labels is that count). "median" uses the
  median score; a number is used as given (a model that predicts MOS itself: e.g. 5.0).
- auc: the threshold-free view of the same task: the probability that a random high-quality
  image scores above a random low-quality one (ties count half), i.e. the Mann-Whitney U of
  `scipy.stats.mannwhitneyu` divided by (high count * low count).

Intervals: `scipy.stats.bootstrap`, images resampled in pairs (prediction, MOS), percentile
method (BCa's jackknife would cost n recomputations: minutes on AVA's 20k test images), seeded.
"""
from __future__ import annotations

import math
import warnings
from typing import NamedTuple, Optional, Union

import numpy as np

METRICS = ("srcc", "plcc", "krcc", "accuracy", "auc")
DEFAULT_THRESHOLD = 5.0  # AVA: MOS >= 5 is a high-quality image
DEFAULT_BOOTSTRAP = 1000
CONFIDENCE = 0.95
_RESAMPLED_VALUES = 2_000_000  # per array, per bootstrap batch: bounds its memory


def score_threshold(pred: np.ndarray, mos: np.ndarray, threshold: float,
                    rule: Union[str, float] = "matched") -> float:
    """The threshold a score must reach for the model to call an image high quality."""
    if not isinstance(rule, str):
        return float(rule)
    if rule == "median":
        return float(np.median(pred))
    if rule != "matched":
        raise ValueError(f"score threshold rule {rule!r}: 'matched', 'median' or a number")
    k = int(np.count_nonzero(mos >= threshold))
    if k == 0:
        return math.inf  # no image is high quality: the model should call none so
    return float(np.partition(pred, len(pred) - k)[len(pred) - k])  # the k-th highest score


def metrics(pred, mos, threshold: float = DEFAULT_THRESHOLD, rule: Union[str, float] = "matched") -> dict:
    """{srcc, plcc, krcc, accuracy, auc, score_threshold} of predictions against MOS (NaN where a
    metric is undefined: fewer than two images, or constant values)."""
    from scipy import stats
    pred, mos = np.asarray(pred, np.float64), np.asarray(mos, np.float64)
    if pred.shape != mos.shape or pred.ndim != 1:
        raise ValueError(f"pred and mos must be two 1-D arrays of one length, got {pred.shape} and {mos.shape}")
    out = dict.fromkeys(METRICS, math.nan)
    out["score_threshold"] = score_threshold(pred, mos, threshold, rule) if len(pred) else math.nan
    if len(pred) == 0:
        return out
    high = mos >= threshold
    out["accuracy"] = float(np.mean((pred >= out["score_threshold"]) == high))
    with warnings.catch_warnings():  # constant input: NaN, said once in the summary instead
        warnings.simplefilter("ignore")
        if len(pred) >= 2:
            out["srcc"] = float(stats.spearmanr(pred, mos).statistic)
            out["plcc"] = float(stats.pearsonr(pred, mos).statistic)
            out["krcc"] = float(stats.kendalltau(pred, mos).statistic)
        n_high, n_low = int(high.sum()), int((~high).sum())
        if n_high and n_low:
            u = stats.mannwhitneyu(pred[high], pred[~high], alternative="two-sided").statistic
            out["auc"] = float(u) / (n_high * n_low)
    return out


class Bootstrap(NamedTuple):
    intervals: dict  # metric -> [low, high]
    undefined: dict  # metric -> resamples where it was undefined (left out of its interval)


def bootstrap_intervals(pred, mos, threshold: float = DEFAULT_THRESHOLD, rule: Union[str, float] = "matched",
                        n_resamples: int = DEFAULT_BOOTSTRAP, seed: Optional[int] = 0,
                        confidence: float = CONFIDENCE) -> Bootstrap:
    """Percentile bootstrap intervals of every metric from the same resamples of (prediction, MOS)
    pairs; the "matched" score threshold is re-chosen in each resample. A resample where a metric
    is undefined (a small set drawn without any low-quality image has no AUC) is left out of that
    metric's interval and counted in `undefined`; without such resamples the interval is scipy's."""
    from scipy import stats
    pred, mos = np.asarray(pred, np.float64), np.asarray(mos, np.float64)
    if n_resamples < 1 or len(pred) < 2:
        return Bootstrap({}, {})

    def statistic(p, m):
        values = metrics(p, m, threshold, rule)
        return np.array([values[k] for k in METRICS])

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # undefined resamples: handled below
        res = stats.bootstrap((pred, mos), statistic, paired=True, vectorized=False, n_resamples=n_resamples,
                              batch=max(1, _RESAMPLED_VALUES // len(pred)), method="percentile",
                              confidence_level=confidence, rng=np.random.default_rng(seed))
    intervals, undefined = {}, {}
    alpha = (1 - confidence) / 2
    for k, dist, low, high in zip(METRICS, res.bootstrap_distribution, res.confidence_interval.low,
                                  res.confidence_interval.high):
        bad = int(np.count_nonzero(~np.isfinite(dist)))
        if bad:
            undefined[k] = bad
            good = dist[np.isfinite(dist)]
            low, high = (np.quantile(good, [alpha, 1 - alpha]) if len(good) else (math.nan, math.nan))
        intervals[k] = [float(low), float(high)]
    return Bootstrap(intervals, undefined)


def record(pred, mos, threshold: float = DEFAULT_THRESHOLD, rule: Union[str, float] = "matched",
           n_resamples: int = DEFAULT_BOOTSTRAP, seed: Optional[int] = 0) -> dict:
    """The numbers of a `metrics.json` (docs/evaluation.md): n, each metric, its 95% interval, the
    thresholds and the bootstrap settings. `vila-tf evaluate` writes it, and `vila-tf fit` one per
    score it reports (docs/personal.md), so the two read alike."""
    pred, mos = np.asarray(pred, np.float64), np.asarray(mos, np.float64)
    now = metrics(pred, mos, threshold, rule)
    boot = bootstrap_intervals(pred, mos, threshold, rule, n_resamples, seed)
    return {"n": int(len(pred)), **{k: now[k] for k in METRICS}, "ci95": boot.intervals, "threshold": threshold,
            "score_threshold": now["score_threshold"],
            "score_threshold_rule": rule if isinstance(rule, str) else "fixed",
            "bootstrap": {"resamples": n_resamples, "seed": seed, "method": "percentile", "confidence": CONFIDENCE,
                          "undefined": boot.undefined}}
