"""The personal head, learned with scikit-learn (docs/personal.md): a linear function of the
features (vila_tf.core.personal) whose regularisation is chosen by nested cross-validation.

- Scores (a CSV, AVA.txt, star ratings): ridge regression on standardized features, its alpha
  chosen by `RidgeCV`'s efficient leave-one-out cross-validation inside each training fold.
- Pairwise preferences: a Bradley-Terry model, i.e. logistic regression without intercept on the
  feature differences of the two photos of each comparison (both orders, so the classes balance),
  its C chosen by `LogisticRegressionCV` over three inner folds of the training photos.

The outer cross-validation is k-fold over photos (`KFold`, shuffled with the seed): each photo's
cross-validated prediction comes from a head fitted without it. For pairs a comparison is trained
on only when both its photos are in the training folds, and held out when both are in the test
fold, so no photo is ever both. The head that is exported is fitted on every label the same way,
and folded back to the raw features (`score = features · weights + bias`), so the export runs one
matrix product, no scaler.

Everything is seeded: the same labels, features, folds and seed give the same head.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Optional

import numpy as np

RIDGE, PAIRWISE = "ridge", "pairwise-logistic"
ALPHAS = np.logspace(-3, 6, 19)  # ridge penalties tried, on standardized features (half-decade steps)
CS = np.logspace(-4, 1, 11)  # inverse penalties tried for the pairwise model
PAIR_INNER_FOLDS = 3  # the pairwise model's inner folds (its fits cost far more than ridge's)
SOLVER = "newton-cg"  # measured fastest here at both a few dozen and a few hundred photos
CURVE_POINTS, CURVE_REPEATS = 6, 3


class LearnError(ValueError):
    """The labels cannot be cross-validated as given (one line, says what to change)."""


@dataclasses.dataclass
class Fit:
    learner: str
    weights: np.ndarray  # float64 [F]: the exported head, on the raw features
    bias: float
    regularization: dict  # {"alpha": ...} or {"C": ...}, chosen on all labels
    cv: np.ndarray  # float64 [photos]: each photo's cross-validated prediction
    fold_regularization: list  # the value chosen in each outer fold
    held_out: Optional[np.ndarray] = None  # pairs: the comparisons held out together (indices)


def _scaler(x: np.ndarray):
    from sklearn.preprocessing import StandardScaler
    return StandardScaler().fit(x)


def _folded(scaler, coef: np.ndarray, intercept: float) -> tuple[np.ndarray, float]:
    """A head on standardized features -> the same head on the raw ones."""
    weights = np.asarray(coef, np.float64) / scaler.scale_
    return weights, float(intercept - scaler.mean_ @ weights)


# -- scores: ridge -------------------------------------------------------------------------------

def _ridge(x: np.ndarray, y: np.ndarray):
    import warnings
    from sklearn.linear_model import RidgeCV
    scaler = _scaler(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ill-conditioned solves at the smallest alphas: LOO ranks them anyway
        ridge = RidgeCV(alphas=ALPHAS).fit(scaler.transform(x), y)
    return scaler, ridge


def fit_scores(x: np.ndarray, y: np.ndarray, folds: int, seed: int) -> Fit:
    """Ridge with nested cross-validation: x [N, F] features, y [N] labels."""
    from sklearn.model_selection import KFold
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    cv, chosen = np.empty(len(y)), []
    for train, test in KFold(folds, shuffle=True, random_state=seed).split(x):
        scaler, ridge = _ridge(x[train], y[train])
        cv[test] = ridge.predict(scaler.transform(x[test]))
        chosen.append(float(ridge.alpha_))
    scaler, ridge = _ridge(x, y)
    weights, bias = _folded(scaler, ridge.coef_, float(ridge.intercept_))
    return Fit(RIDGE, weights, bias, {"alpha": float(ridge.alpha_)}, cv, chosen)


# -- pairs: Bradley-Terry logistic ------------------------------------------------------------------

def photo_folds(photos: int, folds: int, seed: int) -> np.ndarray:
    """A fold number per photo, as even as they go, shuffled with the seed."""
    order = np.random.default_rng(seed).permutation(photos)
    fold = np.empty(photos, np.int64)
    fold[order] = np.arange(photos) % folds
    return fold


def _pair_rows(z: np.ndarray, pairs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    d = z[pairs[:, 0]] - z[pairs[:, 1]]
    return np.vstack([d, -d]), np.r_[np.ones(len(d)), np.zeros(len(d))]


def _inner_splits(pairs: np.ndarray, photos: int, folds: int, seed: int) -> list:
    """Cross-validation splits of the rows `_pair_rows` makes: photo-grouped where the comparisons
    allow (a fold holding pairs on both sides), else by comparison."""
    n = len(pairs)
    fold = photo_folds(photos, folds, seed)
    a, b = fold[pairs[:, 0]], fold[pairs[:, 1]]
    splits = []
    for f in range(folds):
        test, train = np.flatnonzero((a == f) & (b == f)), np.flatnonzero((a != f) & (b != f))
        if len(test) and len(train):
            splits.append((np.r_[train, train + n], np.r_[test, test + n]))
    if len(splits) >= 2:
        return splits
    from sklearn.model_selection import KFold
    k = min(folds, n)
    if k < 2:
        raise LearnError(f"{n} comparison{'s' if n != 1 else ''} in a training fold: too few to choose the "
                         "regularisation; give more comparisons")
    return [(np.r_[tr, tr + n], np.r_[te, te + n])
            for tr, te in KFold(k, shuffle=True, random_state=seed).split(np.arange(n))]


def _bradley_terry(x: np.ndarray, pairs: np.ndarray, seed: int):
    """(scaler, coef [F], C) fitted on `pairs` (indices into x); the scaler is fitted on the
    photos they name.

    Fitted in the span of those photos' standardized features (an SVD, rank <= photos): every
    comparison is a difference of two of them, so the L2-penalised optimum lies in that span and
    the fit there is the same model with far fewer columns (768 + 7 features, a few hundred
    photos: about 4x faster)."""
    import warnings
    from sklearn.linear_model import LogisticRegressionCV
    named = np.unique(pairs)
    scaler = _scaler(x[named])
    z = scaler.transform(x)
    _, s, vt = np.linalg.svd(z[named], full_matrices=False)
    basis = vt[: int(np.count_nonzero(s > s[0] * 1e-10))] if len(s) and s[0] > 0 else vt[:1]
    rows, target = _pair_rows(z @ basis.T, pairs)
    model = LogisticRegressionCV(Cs=CS, l1_ratios=(0.0,), cv=_inner_splits(pairs, len(x), PAIR_INNER_FOLDS, seed),
                                 fit_intercept=False, scoring="neg_log_loss", max_iter=1000, solver=SOLVER,
                                 use_legacy_attributes=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence notes at the weakest penalties (separable comparisons)
        model.fit(rows, target)
    return scaler, basis.T @ model.coef_[0], float(np.asarray(model.C_).reshape(-1)[0])


def fit_pairs(x: np.ndarray, pairs: np.ndarray, folds: int, seed: int) -> Fit:
    """Bradley-Terry with nested cross-validation: x [N, F] photo features, pairs [P, 2] (better,
    worse) photo indices. A photo's score is its utility; the average labelled photo is 0."""
    x, pairs = np.asarray(x, np.float64), np.asarray(pairs, np.int64)
    fold = photo_folds(len(x), folds, seed)
    cv, chosen, held = np.empty(len(x)), [], []
    a, b = fold[pairs[:, 0]], fold[pairs[:, 1]]
    for f in range(folds):
        train = pairs[(a != f) & (b != f)]
        if len(train) < 2:
            raise LearnError(f"{len(pairs)} comparisons: with {folds} folds one training fold keeps only "
                             f"{len(train)} (a comparison is trained on when both its photos are in the fold); "
                             "give more comparisons, or fewer --folds")
        scaler, coef, c = _bradley_terry(x, train, seed)
        test = fold == f
        cv[test] = scaler.transform(x[test]) @ coef
        chosen.append(c)
        held.extend(np.flatnonzero((a == f) & (b == f)))
    scaler, coef, c = _bradley_terry(x, pairs, seed)
    weights, bias = _folded(scaler, coef, 0.0)
    return Fit(PAIRWISE, weights, bias, {"C": c}, cv, chosen, np.array(sorted(held), np.int64))


def pair_accuracy(score: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Per comparison: 1 when the better photo scores higher, 0.5 for a tie, else 0."""
    s = np.asarray(score, np.float64)
    diff = s[pairs[:, 0]] - s[pairs[:, 1]]
    return np.where(diff > 0, 1.0, np.where(diff == 0, 0.5, 0.0))


def win_rate(photos: int, pairs: np.ndarray) -> np.ndarray:
    """Each photo's share of the comparisons it won: the per-photo label the correlations of a
    pairs fit are computed against."""
    wins = np.bincount(pairs[:, 0], minlength=photos).astype(np.float64)
    games = wins + np.bincount(pairs[:, 1], minlength=photos)
    return np.divide(wins, games, out=np.full(photos, np.nan), where=games > 0)


# -- how many labels -------------------------------------------------------------------------------

def curve_sizes(total: int, smallest: int, points: int = CURVE_POINTS) -> list[int]:
    """Label counts the learning curve is measured at: `points` steps from `smallest` to all."""
    if total <= smallest:
        return [total]
    return sorted({int(round(v)) for v in np.linspace(smallest, total, points)})


def learning_curve(measure: Callable[[np.ndarray, int], Optional[float]], total: int, smallest: int, seed: int,
                   repeats: int = CURVE_REPEATS) -> list[dict]:
    """The cross-validated quality at fewer labels: `measure(chosen label indices, seed)` -> a
    number (None when that subset cannot be cross-validated), on `repeats` seeded random subsets
    of each size (all labels: once)."""
    rng = np.random.default_rng(seed)
    points = []
    for size in curve_sizes(total, smallest):
        values = []
        for r in range(1 if size == total else repeats):
            chosen = np.arange(total) if size == total else np.sort(rng.choice(total, size, replace=False))
            try:
                value = measure(chosen, seed + r)
            except (LearnError, ValueError):
                value = None
            if value is not None and math.isfinite(value):
                values.append(float(value))
        if values:
            points.append({"labels": size, "mean": float(np.mean(values)), "min": float(np.min(values)),
                           "max": float(np.max(values)), "repeats": len(values)})
    return points
