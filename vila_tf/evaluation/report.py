"""What `vila-tf evaluate` writes into its output folder: `metrics.json` (for programs),
`summary.md` (for people) and two plots drawn with matplotlib's Agg canvas (no display, no global
pyplot state): `scatter.png` (model score against MOS, with the least-squares line; a log-density
hexbin once there are too many points to see) and `histograms.png` (the MOS and the scores, with
the two thresholds). Every file appears whole or not at all (`vila_tf.core.atomic`)."""
from __future__ import annotations

import json
import math
import os
from typing import Optional

import numpy as np

from vila_tf.evaluation import metrics as evaluation
from vila_tf.core.atomic import atomic_file

HEXBIN_ABOVE = 2000  # points: beyond this a scatter is an ink blot, a density shows the shape
LISTED_IN_SUMMARY = 20  # missing or failed images named in summary.md (metrics.json lists all)
NAMES = {"srcc": "SRCC (Spearman)", "plcc": "PLCC (Pearson, raw scores)", "krcc": "KRCC (Kendall tau-b)",
         "accuracy": "binary accuracy", "auc": "AUC (high vs low quality)"}
DEFINITIONS = {
    "srcc": "Spearman rank correlation, scipy.stats.spearmanr",
    "plcc": "Pearson correlation of the raw model scores with the MOS, no logistic fit (scipy.stats.pearsonr; "
            "IQA-PyTorch's calculate_plcc default)",
    "krcc": "Kendall tau-b, scipy.stats.kendalltau",
    "accuracy": "fraction of images where (score >= score_threshold) == (MOS >= threshold)",
    "auc": "P(score of a random image with MOS >= threshold > score of a random one below it), ties half; "
           "scipy.stats.mannwhitneyu U / (n_high * n_low)",
    "mos": "AVA.txt: sum(k * votes_k) / sum(votes_k) over k = 1..10; CSV: the score column",
    "ci95": "percentile bootstrap (scipy.stats.bootstrap), images resampled in pairs",
}


def json_safe(value):
    """`value` as JSON can hold it: NaN and infinity as null (JSON has neither), numpy scalars as
    Python numbers, through dicts, lists and tuples. `vila-tf fit`'s records use it too."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.floating):
        return json_safe(float(value))
    if isinstance(value, np.integer):
        return int(value)
    return value


def write_metrics(path: str, record: dict) -> None:
    with atomic_file(path, "w", encoding="utf-8") as f:
        json.dump(json_safe(record), f, indent=2, ensure_ascii=False)
        f.write("\n")


def _fmt(value: Optional[float], digits: int = 3) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def write_summary(path: str, record: dict, plots: list[str]) -> None:
    lines = [f"# Evaluation of {record['scores']['source']}", "",
             f"{record['n']} images with a label and a score (labels: `{record['labels']['file']}`, "
             f"{record['labels']['format']}).", "",
             "| metric | value | 95% interval |", "|---|---|---|"]
    for k in evaluation.METRICS:
        ci = record.get("ci95", {}).get(k)
        interval = f"{_fmt(ci[0])} – {_fmt(ci[1])}" if ci else "–"
        lines.append(f"| {NAMES[k]} | {_fmt(record[k])} | {interval} |")
    b = record["bootstrap"]
    lines += ["",
              f"High quality: MOS >= {record['threshold']:g}; the model calls an image high quality when its score "
              f">= {_fmt(record['score_threshold'], 4)} ({record['score_threshold_rule']}"
              + (": as many images called high quality as the labels hold" if record["score_threshold_rule"] == "matched"
                 else "") + ").",
              "PLCC is Pearson's correlation on the raw scores, with no logistic fit; KRCC is Kendall's tau-b.",
              (f"Intervals: {b['resamples']} bootstrap resamples (percentile method, seed {b['seed']})."
               if b["resamples"] else "No bootstrap intervals (--bootstrap 0).")]
    if b.get("undefined"):
        lines.append("Resamples where a metric was undefined, left out of its interval: "
                     + ", ".join(f"{k} {v} of {b['resamples']}" for k, v in b["undefined"].items()) + ".")
    if any(record.get(k) is None or not math.isfinite(record[k]) for k in ("srcc", "plcc", "krcc")):
        lines.append("Correlations marked n/a are undefined: fewer than two images, or constant scores or labels.")
    for kind in ("missing", "failed"):
        entry = record[kind]
        if entry["count"]:
            n = entry["count"]
            if kind == "failed":
                what = "could not be scored"
            elif record["scores"].get("model"):  # MODEL scored every labelled image on disk
                what = "has no image file" if n == 1 else "have no image file"
            else:  # --scores: the file is someone else's run; the image may well exist
                what = f"{'has' if n == 1 else 'have'} no row in {record['scores']['file']}"
            lines += ["", f"{n} labelled image{'' if n == 1 else 's'} {what} (all listed in metrics.json):", ""]
            lines += listed(entry["images"], entry["count"], "image")
    if plots:
        lines += [""] + [f"![{os.path.splitext(p)[0]}]({p})" for p in plots]
    with atomic_file(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def listed(items: list, count: int, key: str) -> list[str]:
    """summary.md's Markdown list of missing or failed entries: a name, or a name and its error
    (`{key: name, "error": why}`), the first LISTED_IN_SUMMARY of `count` (metrics.json has all)."""
    lines = [f"- `{item}`" if isinstance(item, str) else f"- `{item[key]}`: {item['error']}"
             for item in items[:LISTED_IN_SUMMARY]]
    if count > LISTED_IN_SUMMARY:
        lines.append(f"- ... and {count - LISTED_IN_SUMMARY} more")
    return lines


def save_png(fig, path: str) -> None:
    """A matplotlib figure as a PNG, written atomically."""
    with atomic_file(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)


def plot_scatter(path: str, pred: np.ndarray, mos: np.ndarray, record: dict) -> None:
    from matplotlib.figure import Figure
    from scipy import stats
    fig = Figure(figsize=(6.4, 5.2), layout="constrained")
    ax = fig.add_subplot()
    if len(pred) > HEXBIN_ABOVE:
        hb = ax.hexbin(mos, pred, gridsize=60, bins="log", mincnt=1, cmap="viridis")
        fig.colorbar(hb, ax=ax, label="images per cell")
    else:
        ax.scatter(mos, pred, s=14, alpha=0.6, edgecolors="none")
    if len(pred) >= 2 and np.ptp(mos) > 0:
        fit = stats.linregress(mos, pred)
        xs = np.array([mos.min(), mos.max()])
        ax.plot(xs, fit.intercept + fit.slope * xs, color="tab:red", lw=1.5, label="least-squares line")
    ax.axvline(record["threshold"], color="gray", ls="--", lw=1, label=f"MOS threshold {record['threshold']:g}")
    if record["score_threshold"] is not None and math.isfinite(record["score_threshold"]):
        ax.axhline(record["score_threshold"], color="gray", ls=":", lw=1,
                   label=f"score threshold {record['score_threshold']:.3g}")
    ax.set_xlabel("mean opinion score (labels)")
    ax.set_ylabel("model score")
    ax.set_title(f"SRCC {_fmt(record['srcc'])}   PLCC {_fmt(record['plcc'])}   KRCC {_fmt(record['krcc'])}"
                 f"   (n = {len(pred)})", fontsize=10)
    ax.legend(loc="best", fontsize=8)
    save_png(fig, path)


def plot_histograms(path: str, pred: np.ndarray, mos: np.ndarray, record: dict) -> None:
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator
    fig = Figure(figsize=(10, 4), layout="constrained")
    left, right = fig.subplots(1, 2)
    left.hist(mos, bins=min(50, max(5, len(mos) // 5)), color="tab:blue", alpha=0.8)
    left.axvline(record["threshold"], color="gray", ls="--", lw=1)
    left.set_title(f"labels: MOS (mean {_fmt(float(np.mean(mos)) if len(mos) else None, 2)})", fontsize=10)
    left.set_xlabel("mean opinion score")
    left.set_ylabel("images")
    for ax in (left, right):
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    right.hist(pred, bins=min(50, max(5, len(pred) // 5)), color="tab:orange", alpha=0.8)
    if record["score_threshold"] is not None and math.isfinite(record["score_threshold"]):
        right.axvline(record["score_threshold"], color="gray", ls=":", lw=1)
    right.set_title(f"model scores (mean {_fmt(float(np.mean(pred)) if len(pred) else None, 3)})", fontsize=10)
    right.set_xlabel("model score")
    save_png(fig, path)


def write_all(out: str, pred: np.ndarray, mos: np.ndarray, record: dict) -> list[str]:
    """metrics.json, the plots and summary.md in `out`; returns the files written."""
    os.makedirs(out, exist_ok=True)
    plots = []
    if len(pred):
        plot_scatter(os.path.join(out, "scatter.png"), pred, mos, record)
        plot_histograms(os.path.join(out, "histograms.png"), pred, mos, record)
        plots = ["scatter.png", "histograms.png"]
    write_metrics(os.path.join(out, "metrics.json"), record)
    write_summary(os.path.join(out, "summary.md"), record, plots)
    return ["metrics.json", "summary.md"] + plots
