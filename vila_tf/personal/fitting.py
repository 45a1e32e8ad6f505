"""From labels and the photos' features to the personal export and its report: what `vila-tf fit`
does once the photos are scored (docs/personal.md).

The labels are joined with the features rows; photos without a file are `missing`, photos that
could not be scored `failed` (both listed, neither fatal while enough labels remain). Then the
head is learned (vila_tf.personal.learn), measured against the labels next to the base model's own
score, its learning curve drawn, and the export (`OUT/<next version>/`, vila_tf.personal.writer)
and the report (`OUT/report/`, vila_tf.personal.report) written, each atomically.
"""
from __future__ import annotations

import math
import os
from typing import Callable

import numpy as np

from vila_tf.core import personal, versions
from vila_tf.evaluation import metrics as evaluation
from vila_tf.evaluation.labels import LabelsError
from vila_tf.personal import labels as labels_lib
from vila_tf.evaluation import report as evaluation_report
from vila_tf.personal import learn, report, writer

REPORT = "report"
DEFINITIONS_PERSONAL = "the personal head's cross-validated predictions (each photo by a head fitted without it)"
DEFINITIONS_BASE = "the base model's own score"


def _definitions() -> dict:
    return {
        "personal": "the personal head's cross-validated predictions: each photo scored by a head fitted without it",
        "base": "the base model's own score (its serving_default before the head) on the same photos",
        "label": "the label of each photo; for comparisons, the share of its comparisons it won",
        "threshold": "accuracy and AUC call a photo high when its label is at least the labels' median "
                     "(comparisons: 0.5)",
        "pairs": "held-out comparisons (both photos in one test fold): the share where the better photo scored "
                 "higher, ties half",
        "learning_curve": "the same cross-validation on seeded random subsets of the labels (comparisons for pairs)",
        **{k: v for k, v in evaluation_report.DEFINITIONS.items() if k not in ("mos",)},
    }


def next_version(out: str) -> int:
    """TF Serving's next version number under the base folder `out` (1 for a new one)."""
    found = versions.local_versions(out)
    taken = versions.numbered(os.listdir(out)) if os.path.isdir(out) else {}
    return max(found + list(taken) + [0]) + 1


def _bootstrap_mean(values: np.ndarray, resamples: int, seed: int) -> list:
    if resamples < 1 or len(values) < 2:
        return []
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (resamples, len(values)))].mean(axis=1)
    return [float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))]


class Outcome:
    """What the command prints: the record of metrics.json and where everything went."""

    def __init__(self, record: dict, version_dir: str, report_dir: str, files: list):
        self.record, self.version_dir, self.report_dir, self.files = record, version_dir, report_dir, files


def join(labels: labels_lib.Labels, rows: dict, folds: int):
    """(usable labels, features-row fields per photo, missing photos, failed photos): the labels whose
    photo has features; LabelsError when too few remain to cross-validate."""
    missing = [p for p in labels.photos if p not in rows]
    failed = [{"photo": p, "error": rows[p]} for p in labels.photos if isinstance(rows.get(p), str)]
    good = np.array([isinstance(rows.get(p), dict) for p in labels.photos])
    usable = labels.subset(good)
    try:
        labels_lib.check(usable, folds, "photos with features")
    except LabelsError as e:
        lost = len(missing) + len(failed)
        if not lost:
            raise
        raise LabelsError(f"{e}: {len(missing)} labelled photos have no file and {len(failed)} could not be "
                          "scored") from None
    return usable, [rows[p] for p in usable.photos], missing, failed


def fit(labels: labels_lib.Labels, fields: list, layout: personal.Layout, folds: int, seed: int):
    """(learn.Fit, per-photo label, base score, learning curve) of usable labels."""
    x = np.stack([layout.row(f) for f in fields])
    base = np.array([f["score"] for f in fields], np.float64)
    smallest = labels_lib.minimum(folds)
    if labels.kind == labels_lib.SCORES:
        y = labels.scores
        result = learn.fit_scores(x, y, folds, seed)

        def measure(chosen, s):
            if np.ptp(y[chosen]) == 0:
                return None
            cv = result.cv if len(chosen) == len(y) else learn.fit_scores(x[chosen], y[chosen], folds, s).cv
            return evaluation.metrics(cv, y[chosen])["srcc"]
        curve = {"metric": "srcc", "points": learn.learning_curve(measure, len(y), smallest, seed)}
    else:
        pairs = labels.pairs
        y = learn.win_rate(len(x), pairs)
        result = learn.fit_pairs(x, pairs, folds, seed)

        def measure(chosen, s):
            if len(chosen) == len(pairs):
                f = result
                sub, used = pairs, np.arange(len(x))
            else:
                used, sub = np.unique(pairs[chosen], return_inverse=True)
                sub = sub.reshape(-1, 2)
                if len(used) < smallest:
                    return None
                f = learn.fit_pairs(x[used], sub, folds, s)
            return float(learn.pair_accuracy(f.cv, sub[f.held_out]).mean()) if len(f.held_out) else None
        # Each pairwise fit costs far more than a ridge one: one subset per size.
        curve = {"metric": "pair_accuracy",
                 "points": learn.learning_curve(measure, len(pairs), smallest, seed, repeats=1)}
    curve["next"] = report.next_labels(curve)
    return result, y, base, curve


def run(labels: labels_lib.Labels, rows: dict, layout: personal.Layout, folds: int, seed: int, bootstrap: int,
        base_dir: str, base_record: dict, out: str, log: Callable[[str], None] = lambda msg: None) -> Outcome:
    """The head, the export OUT/<next version>/ and OUT/report/ from labels and features rows
    ({photo: fields dict, or the error string of a photo that could not be scored})."""
    usable, fields, missing, failed = join(labels, rows, folds)
    log(f"fitting {learn.RIDGE if usable.kind == labels_lib.SCORES else learn.PAIRWISE} to {usable.count} labels "
        f"of {len(usable.photos)} photos ({folds}-fold cross-validation, and its learning curve)")
    result, y, base, curve = fit(usable, fields, layout, folds, seed)
    threshold = 0.5 if usable.kind == labels_lib.PAIRS else float(np.median(y))
    personal_rec = evaluation.record(result.cv, y, threshold, "matched", bootstrap, seed)
    base_rec = evaluation.record(base, y, threshold, "matched", bootstrap, seed)
    pairs_rec = None
    if usable.kind == labels_lib.PAIRS:
        held = usable.pairs[result.held_out]
        mine, theirs = learn.pair_accuracy(result.cv, held), learn.pair_accuracy(base, held)
        pairs_rec = {"n": int(len(held)), "comparisons": usable.count,
                     "personal": {"accuracy": float(mine.mean()) if len(held) else math.nan,
                                  "ci95": {"accuracy": _bootstrap_mean(mine, bootstrap, seed)}},
                     "base": {"accuracy": float(theirs.mean()) if len(held) else math.nan,
                              "ci95": {"accuracy": _bootstrap_mean(theirs, bootstrap, seed)}}}
    if usable.kind == labels_lib.SCORES:
        scale = {"kind": "labels", "unit": usable.unit, "min": float(np.min(y)), "max": float(np.max(y))}
    else:
        scale = {"kind": "log-odds", "unit": "preference log-odds"}
    version = next_version(out)
    version_dir = os.path.join(out, str(version))
    short = {k: personal_rec[k] for k in ("n", "srcc", "plcc", "krcc", "ci95")}
    head = evaluation_report.json_safe({
        "format": personal.FORMAT,
        "learner": result.learner,
        "regularization": result.regularization,
        "fold_regularization": result.fold_regularization,
        "features": layout.record(),
        "feature_count": layout.size,
        "variables": {"weights": personal.WEIGHTS_VARIABLE, "bias": personal.BIAS_VARIABLE},
        "scale": scale,
        "labels": {"file": os.path.abspath(usable.file), "format": usable.format, "kind": usable.kind,
                   "count": usable.count, "photos": len(usable.photos), "sha256": usable.sha256, "unit": usable.unit},
        "cross_validation": {"folds": folds, "seed": seed, **short,
                             **({"pair_accuracy": pairs_rec["personal"]["accuracy"]} if pairs_rec else {})},
        "base": {**base_record, "metrics": {k: base_rec[k] for k in ("n", "srcc", "plcc", "krcc", "ci95")}},
        "signatures": {"personal": "serving_default", "personal_pixels": "score_pixels", "base": "base_score",
                       "base_pixels": "base_score_pixels"},
        "report": os.path.join(os.path.abspath(out), REPORT, "metrics.json"),
    })
    log(f"writing {version_dir}")
    writer.write(base_dir, version_dir, layout, result.weights, result.bias, head, log)
    record = evaluation_report.json_safe({
        "personal": {**personal_rec, "score": DEFINITIONS_PERSONAL},
        "base": {**base_rec, "score": DEFINITIONS_BASE},
        **({"pairs": pairs_rec} if pairs_rec else {}),
        "learning_curve": curve,
        "fit": {"learner": result.learner, "regularization": result.regularization,
                "fold_regularization": result.fold_regularization, "folds": folds, "seed": seed,
                "features": layout.record(), "feature_count": layout.size, "scale": scale,
                "scale_text": personal.scale_text(scale)},
        "labels": {**head["labels"], "kind": usable.kind, "given": labels.count, "notes": labels.notes},
        "missing": {"count": len(missing), "photos": missing},
        "failed": {"count": len(failed), "photos": failed},
        "model": {"base": base_record.get("path"), "identity": base_record.get("identity"),
                  "personal": version_dir, "version": version},
        "definitions": _definitions(),
    })
    report_dir = os.path.join(out, REPORT)
    files = report.write(report_dir, record, y, result.cv, base)
    return Outcome(record, version_dir, report_dir, files)
