"""What `vila-tf fit` writes into `OUT/report/` (docs/personal.md): whether the personal head
worked, and what more labels would buy.

- `metrics.json`: `personal` (the cross-validated predictions against the labels) and `base` (the
  base model's own score against the same labels), each shaped like `vila-tf evaluate`'s
  metrics.json (vila_tf.evaluation.metrics.record); for comparisons also `pairs` (held-out pair
  accuracy); `learning_curve`; the fit, the labels and what was missing or failed.
- `summary.md`: the same for a person; `scatter.png`: both scores against the labels;
  `learning_curve.png`: the cross-validated quality against the number of labels.

The folder is written whole or not at all (vila_tf.core.atomic).
"""
from __future__ import annotations

import math
import os
from typing import Optional

import numpy as np

from vila_tf.core.atomic import atomic_dir
from vila_tf.evaluation import report as evaluation_report

NEXT = 50  # "what 50 more labels would buy"


def _fmt(value: Optional[float], digits: int = 3) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _with_interval(rec: dict, key: str) -> str:
    ci = (rec.get("ci95") or {}).get(key)
    text = _fmt(rec.get(key))
    if ci and all(v is not None and math.isfinite(v) for v in ci):
        text += f" [{_fmt(ci[0])}, {_fmt(ci[1])}]"
    return text


def next_labels(curve: dict) -> Optional[dict]:
    """What NEXT more labels would add: a straight line through the curve's last three points
    against log(labels) (one step alone is mostly the subsets' noise), carried NEXT labels on. A
    learning curve flattens as it goes, so this is at most what they add."""
    points = (curve.get("points") or [])[-3:]
    if len(points) < 2:
        return None
    n = np.log([p["labels"] for p in points])
    slope = float(np.polyfit(n, [p["mean"] for p in points], 1)[0])
    last = points[-1]["labels"]
    return {"labels": NEXT, "gain": slope * float(np.log((last + NEXT) / last)), "from": points[0]["labels"],
            "to": last, "step": points[-1]["mean"] - points[0]["mean"]}


def curve_text(curve: dict) -> list[str]:
    what = "SRCC" if curve["metric"] == "srcc" else "held-out pair accuracy"
    lines = [f"| labels | cross-validated {what} (mean) | lowest | highest | subsets |", "|---|---|---|---|---|"]
    for p in curve["points"]:
        lines.append(f"| {p['labels']} | {_fmt(p['mean'])} | {_fmt(p['min'])} | {_fmt(p['max'])} | {p['repeats']} |")
    step = curve.get("next")
    lines.append("")
    if step is None:
        lines.append("Too few labels for a curve: rate more photos and fit again.")
    elif step["gain"] > 0.005:
        lines.append(f"From {step['from']} to {step['to']} labels the {what} changed by {step['step']:+.3f}; "
                     f"carried on at that rate (against the log of the labels), {NEXT} more labels would add "
                     f"about {step['gain']:.3f}. Learning curves flatten, so take this as the most they would add.")
    else:
        lines.append(f"From {step['from']} to {step['to']} labels the {what} changed by {step['step']:+.3f}: the "
                     f"curve has flattened, and {NEXT} more labels of the same kind are unlikely to change it much.")
    return lines


def write_summary(path: str, record: dict, plots: list) -> None:
    fit, labels = record["fit"], record["labels"]
    personal, base = record["personal"], record["base"]
    reg = ", ".join(f"{k} = {v:g}" for k, v in fit["regularization"].items())
    lines = [f"# Personal model `{record['model']['personal']}`", "",
             f"Fitted to {labels['count']} {labels['format']} labels of {labels['photos']} photos (`{labels['file']}`) "
             f"with {fit['learner']} ({reg}, chosen by nested cross-validation) over {fit['feature_count']} features "
             f"of `{record['model']['base']}`. Scale: {fit['scale_text']}.", "",
             f"Cross-validated with {fit['folds']} folds (seed {fit['seed']}): each photo's personal score below "
             "comes from a head fitted without it. " + (
                 "The labels the correlations are computed against are each photo's share of the comparisons it won."
                 if labels["kind"] == "pairs" else ""), "",
             "| score | n | SRCC | PLCC | KRCC |", "|---|---|---|---|---|"]
    for name, rec in (("personal (cross-validated)", personal), ("base model's own score", base)):
        lines.append(f"| {name} | {rec['n']} | " + " | ".join(_with_interval(rec, k) for k in ("srcc", "plcc", "krcc"))
                     + " |")
    pairs = record.get("pairs")
    if pairs:
        lines += ["", f"Held-out comparisons (both photos in one test fold): {pairs['n']}; the better photo scored "
                      f"higher in {_with_interval(pairs['personal'], 'accuracy')} of them with the personal head, "
                      f"{_with_interval(pairs['base'], 'accuracy')} with the base score."]
    b = personal["bootstrap"]
    lines += ["", f"Intervals: 95%, {b['resamples']} bootstrap resamples (percentile method, seed {b['seed']})."
              if b["resamples"] else "No bootstrap intervals (--bootstrap 0)."]
    lines += ["", "## How many labels", ""] + curve_text(record["learning_curve"])
    for kind, what in (("missing", "have no photo file"), ("failed", "could not be scored")):
        entry = record[kind]
        if entry["count"]:
            lines += ["", f"{entry['count']} labelled photo{'s' if entry['count'] != 1 else ''} {what} "
                          "(left out; all listed in metrics.json):", ""]
            lines += evaluation_report.listed(entry["photos"], entry["count"], "photo")
    if plots:
        lines += [""] + [f"![{os.path.splitext(p)[0]}]({p})" for p in plots]
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def plot_scatter(path: str, label: np.ndarray, personal: np.ndarray, base: np.ndarray, record: dict) -> None:
    from matplotlib.figure import Figure
    fig = Figure(figsize=(10, 4.4), layout="constrained")
    what = "share of comparisons won" if record["labels"]["kind"] == "pairs" else "label"
    for ax, values, rec, title in zip(fig.subplots(1, 2), (personal, base), (record["personal"], record["base"]),
                                      ("personal score (cross-validated)", "base model's own score")):
        ax.scatter(label, values, s=14, alpha=0.6, edgecolors="none")
        if len(values) >= 2 and np.ptp(label) > 0:
            slope, intercept = np.polyfit(label, values, 1)
            xs = np.array([label.min(), label.max()])
            ax.plot(xs, intercept + slope * xs, color="tab:red", lw=1.5)
        ax.set_xlabel(what)
        ax.set_ylabel(title)
        ax.set_title(f"SRCC {_fmt(rec['srcc'])}   PLCC {_fmt(rec['plcc'])}   (n = {rec['n']})", fontsize=10)
    evaluation_report.save_png(fig, path)


def plot_curve(path: str, curve: dict) -> None:
    from matplotlib.figure import Figure
    fig = Figure(figsize=(6.4, 4.4), layout="constrained")
    ax = fig.add_subplot()
    pts = curve["points"]
    n = [p["labels"] for p in pts]
    ax.fill_between(n, [p["min"] for p in pts], [p["max"] for p in pts], alpha=0.25, label="lowest to highest subset")
    ax.plot(n, [p["mean"] for p in pts], marker="o", label="mean")
    ax.set_xlabel("labels")
    ax.set_ylabel("cross-validated " + ("SRCC" if curve["metric"] == "srcc" else "held-out pair accuracy"))
    ax.set_title("What more labels buy", fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    evaluation_report.save_png(fig, path)


def write(out: str, record: dict, label: np.ndarray, personal: np.ndarray, base: np.ndarray) -> list[str]:
    """OUT/report/ (atomically): metrics.json, summary.md and the plots; returns the files."""
    with atomic_dir(out) as tmp:
        plot_scatter(os.path.join(tmp, "scatter.png"), label, personal, base, record)
        plots = ["scatter.png"]
        if record["learning_curve"]["points"]:
            plot_curve(os.path.join(tmp, "learning_curve.png"), record["learning_curve"])
            plots.append("learning_curve.png")
        evaluation_report.write_metrics(os.path.join(tmp, "metrics.json"), record)
        write_summary(os.path.join(tmp, "summary.md"), record, plots)
    return ["metrics.json", "summary.md"] + plots
