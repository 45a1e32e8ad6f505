"""`vila-tf evaluate`: a model's scores against human labels (SRCC, PLCC, KRCC, binary accuracy,
AUC, bootstrap intervals), written as OUT/metrics.json, OUT/summary.md and PNG plots.

  vila-tf evaluate MODEL --labels AVA.txt --images ava/images --output eval/ [--subset generic_test.jpgl]
  vila-tf evaluate MODEL --labels labels.csv --output eval/            # path,score rows
  vila-tf evaluate --scores scores.csv --labels AVA.txt --output eval/  # scores of an earlier `vila-tf score`

With MODEL, the labelled images are scored through the same streaming core as `vila-tf score`
(`VilaModel.stream`, `vila_tf.output.results_file`): rows go to OUT/scores.jsonl as they come, a
progress bar shows the rate, and `--resume` continues an interrupted run. Labelled images that
are missing or cannot be scored are counted and listed, not fatal. docs/evaluation.md.
"""
from __future__ import annotations

import argparse
import math
import os
import sys

from vila_tf.cli import options
from vila_tf.core.exits import EXIT_OK, UsageError

SCORES_FILE = "scores.jsonl"
HELP = "compare a model's scores with human labels (AVA.txt or path,score CSV): SRCC, PLCC, KRCC, accuracy"


def _score_threshold(text: str):
    if text in ("matched", "median"):
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("'matched', 'median' or a number") from None


def add_parser(sub) -> None:
    from vila_tf.evaluation import metrics as evaluation
    c = sub.add_parser("evaluate", help=HELP, description=HELP + ". See docs/evaluation.md.")
    options.add_model(c, optional=True)
    c.add_argument("--labels", required=True, help="AVA.txt (vote counts per image) or a CSV of path,score rows")
    c.add_argument("--images", metavar="DIR", help="the images: DIR/<image id>.jpg for AVA.txt; for a CSV, relative "
                   "paths are relative to DIR (default: the CSV's folder)")
    c.add_argument("--output", "-o", required=True, metavar="OUT",
                   help="folder for metrics.json, summary.md, scatter.png, histograms.png (and scores.jsonl)")
    c.add_argument("--scores", metavar="RESULTS", help="take the scores from a `vila-tf score` (or zero-shot) results "
                   "file, CSV or JSON Lines, instead of running MODEL")
    c.add_argument("--score-column", default="score", help="the results file's column to evaluate (default: score)")
    c.add_argument("--subset", metavar="FILE", help="evaluate only the images listed in FILE, one image id (AVA) or "
                   "path as written in the CSV per line: e.g. AVA's aesthetics_image_lists/generic_test.jpgl")
    c.add_argument("--threshold", type=float, default=evaluation.DEFAULT_THRESHOLD,
                   help="MOS at or above which an image is high quality (default %(default)s, AVA's)")
    c.add_argument("--score-threshold", type=_score_threshold, default="matched", metavar="RULE",
                   help="model score at or above which the model calls an image high quality: 'matched' (default: "
                        "the threshold that calls as many images high quality as the labels do), 'median', "
                        "or a number")
    c.add_argument("--bootstrap", type=int, default=evaluation.DEFAULT_BOOTSTRAP, metavar="N",
                   help="bootstrap resamples for the 95%% intervals (default %(default)s; 0: none)")
    c.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resampling (default 0)")
    c.add_argument("--resume", action="store_true", help="continue an interrupted run: images with a row in "
                   "OUT/scores.jsonl are not scored again")
    options.add_run_options(c)
    c.set_defaults(run=run)


def run(args) -> int:
    return _evaluate(args)


def _check_args(args) -> None:
    try:
        import matplotlib  # noqa: F401
        import scipy  # noqa: F401
    except ImportError as e:
        raise UsageError(f"needs scipy and matplotlib ({e.name} is missing): pip install 'vila-tf[eval]'") from None
    if args.model and args.scores:
        raise UsageError("give MODEL (to score the images) or --scores RESULTS (scores from an earlier run), not both")
    if not args.model and not args.scores:
        raise UsageError("give MODEL to score the labelled images, or --scores RESULTS with the scores of an earlier run")
    if args.model and args.score_column != "score":
        raise UsageError("--score-column picks a column of --scores RESULTS; MODEL's own scores are 'score'")
    if args.scores and args.resume:
        raise UsageError("--resume continues the scoring of MODEL; with --scores nothing is scored")
    options.check(args)
    if args.scores:
        given = [f for f, v in (("--variant", args.variant), ("--device", args.device),
                                ("--decode-threads", args.decode_threads), ("--decode-budget", args.decode_budget),
                                ("--max-file-size", args.max_file_size)) if v is not None]
        if given:
            raise UsageError(f"{given[0]} sets how MODEL runs; with --scores nothing is run: leave it out")
    if args.bootstrap < 0:
        raise UsageError("--bootstrap must be >= 0")
    for flag, path in (("--labels", args.labels), ("--scores", args.scores), ("--subset", args.subset)):
        if path and not os.path.isfile(path):
            raise UsageError(f"{flag} {path}: no such file")
    if args.images and not os.path.isdir(args.images):
        raise UsageError(f"--images {args.images}: no such folder")
    if os.path.exists(args.output) and not os.path.isdir(args.output):
        raise UsageError(f"--output {args.output}: exists and is not a folder")


def _read_labels(args):
    from vila_tf.evaluation import labels as labels_lib
    try:
        fmt = labels_lib.detect_format(args.labels)
        if fmt == "ava" and args.model and not args.images:
            raise UsageError(f"{args.labels} is an AVA.txt: it names images by id, so pass --images DIR "
                             "(the folder of <image id>.jpg)")
        _, labels = labels_lib.read_labels(args.labels, args.images)
        total = len(labels)
        if args.subset:
            keep = labels_lib.read_subset(args.subset)
            labels = [label for label in labels if label.key in keep]
            if not labels:
                raise UsageError(f"none of the {total} labelled images of {args.labels} is listed in {args.subset} "
                                 f"(it should hold one {'image id' if fmt == 'ava' else 'path'} per line)")
    except labels_lib.LabelsError as e:
        raise UsageError(str(e)) from None
    if not labels:
        raise UsageError(f"{args.labels} holds no labelled image")
    return fmt, labels


def _evaluate(args) -> int:
    import numpy as np
    from vila_tf.evaluation import report as eval_report
    from vila_tf.evaluation import metrics as evaluation
    from vila_tf.evaluation import labels as labels_lib
    _check_args(args)
    fmt, labels = _read_labels(args)
    if args.model:
        scores_path = os.path.join(args.output, SCORES_FILE)
        _score(args, labels, scores_path)
    else:
        scores_path = args.scores
    matcher = labels_lib.Matcher(labels, fmt)
    values: list = [None] * len(labels)  # per label: a float, or the error string
    unlabelled = 0
    for row in _result_rows(scores_path, args.score_column):
        i = matcher.find(row["input"])
        if i is None:
            unlabelled += 1
        elif values[i] is None:  # the first row of an image counts
            values[i] = _value(row, args.score_column)
    if not args.model and all(v is None for v in values):
        raise UsageError(f"no row of {scores_path} is a labelled image of {args.labels} "
                         + ("(rows match an AVA label by file name <image id>.jpg)" if fmt == "ava" else
                            "(rows match a label by path, or by file name)"))
    # With MODEL every image on disk now has a row: the labels without one are the missing files.
    missing_keys = [label.key for label, v in zip(labels, values) if v is None]
    failed = [{"image": label.key, "error": v} for label, v in zip(labels, values) if isinstance(v, str)]
    good = [(v, label.mos) for label, v in zip(labels, values) if isinstance(v, float)]
    if not good:
        raise UsageError(f"no labelled image has a score: {len(missing_keys)} missing, {len(failed)} failed "
                         f"(see {scores_path})")
    pred = np.array([p for p, _ in good], np.float64)
    mos = np.array([m for _, m in good], np.float64)
    if args.bootstrap:
        print(f"vila-tf: {len(good)} images: computing the metrics on {args.bootstrap} bootstrap resamples",
              file=sys.stderr)
    record = {
        **evaluation.record(pred, mos, args.threshold, args.score_threshold, args.bootstrap, args.seed),
        "definitions": eval_report.DEFINITIONS,
        "labels": {"file": args.labels, "format": fmt, "count": len(labels), "subset": args.subset},
        "scores": {"source": args.model or args.scores, "model": args.model, "file": scores_path,
                   "column": args.score_column},
        "missing": {"count": len(missing_keys), "images": missing_keys},
        "failed": {"count": len(failed), "images": failed},
        "rows_without_label": unlabelled,
    }
    written = eval_report.write_all(args.output, pred, mos, record)
    _print_summary(record)
    if missing_keys or failed:
        gone = "without an image file" if args.model else f"without a row in {scores_path}"
        print(f"vila-tf: {len(missing_keys)} labelled images {gone}, {len(failed)} failed: listed in "
              f"{os.path.join(args.output, 'metrics.json')}", file=sys.stderr)
    print("vila-tf: wrote " + ", ".join(os.path.join(args.output, f) for f in written), file=sys.stderr)
    return EXIT_OK


def _print_summary(record: dict) -> None:
    def one(k):
        v, ci = record[k], record["ci95"].get(k)
        text = "n/a" if not math.isfinite(v) else f"{v:.4f}"
        if ci and all(math.isfinite(x) for x in ci):
            text += f" [{ci[0]:.4f}, {ci[1]:.4f}]"
        return f"{k.upper() if k in ('srcc', 'plcc', 'krcc', 'auc') else k} {text}"
    print(f"n {record['n']}  " + "  ".join(one(k) for k in ("srcc", "plcc", "krcc", "accuracy", "auc")))


def _value(row: dict, column: str):
    """A results row's score (float), or why it has none (str)."""
    if row.get("error"):
        return str(row["error"])
    value = row.get(column)
    if value is None or value == "":
        return f"no {column!r} value in the results row"
    try:
        value = float(value)
    except (TypeError, ValueError):
        return f"{column} {value!r} is not a number"
    return value if math.isfinite(value) else f"{column} is {value}"


def _result_rows(path: str, column: str):
    """The rows of a results file (CSV or JSON Lines, by name or else by content), lazily."""
    import csv
    from vila_tf.output import results_file
    fmt = "jsonl" if path.lower().endswith((".jsonl", ".json")) else "csv"
    if not path.lower().endswith((".jsonl", ".json", ".csv")):
        with open(path, "rb") as f:
            fmt = "jsonl" if f.read(1) == b"{" else "csv"
    cols: list = []
    if fmt == "csv":
        with open(path, encoding="utf-8", newline="") as f:
            cols = next(csv.reader(f), [])
        if "input" not in cols or column not in cols:
            raise UsageError(f"{path}: a results CSV needs the columns 'input' and {column!r}, it has {cols}: "
                             "pass a `vila-tf score` or `zero-shot` results file (or --score-column)")
    seen_column = False
    for n, row in enumerate(results_file.read_rows(path, fmt, cols), 1):
        if not isinstance(row, dict) or not isinstance(row.get("input"), str):
            raise UsageError(f"{path}: line {n + (fmt == 'csv')} is not a results row with an 'input'")
        seen_column = seen_column or column in row
        yield row
    if fmt == "jsonl" and not seen_column:
        raise UsageError(f"{path}: no row has a {column!r} value: pass a `vila-tf score` or `zero-shot` results file "
                         "(or --score-column)")


def _score(args, labels, scores_path: str) -> None:
    """Scores the labelled images that have no row in OUT/scores.jsonl yet, appending rows as they
    come (labels whose image file does not exist are left for the report)."""
    from vila_tf.inputs import names
    from vila_tf.output import results_file
    from vila_tf.cli.progress import Progress
    cols = results_file.columns("score")
    exists = [os.path.isfile(label.path) for label in labels]
    if not any(exists):
        raise UsageError(f"none of the {len(labels)} labelled images exists (looked for {labels[0].path}"
                         + (", ..." if len(labels) > 1 else "") + "): check --images")
    done: set = set()
    if os.path.isfile(scores_path) and os.path.getsize(scores_path) > 0:
        if not args.resume:
            raise UsageError(f"{scores_path} holds scores of an earlier run: add --resume to continue it, "
                             "or choose another --output")
        try:
            kept = results_file.repair(scores_path, "jsonl", cols)
        except results_file.ResumeError as e:
            raise UsageError(f"--resume: {e}") from None
        done = {names.source_of(row["input"]) for row in results_file.read_rows(scores_path, "jsonl", cols)}
        print(f"vila-tf: resuming {scores_path}: {kept} rows already there", file=sys.stderr)
    todo = list(dict.fromkeys(label.path for label, ok in zip(labels, exists) if ok and label.path not in done))
    if not todo:
        return
    skipped = sum(1 for label, ok in zip(labels, exists) if ok and label.path in done)
    model = options.load(args, ("score",))
    try:
        _stream_scores(args, model, todo, skipped, scores_path, cols, Progress)
    finally:
        model.close()


def _stream_scores(args, model, todo: list, skipped: int, scores_path: str, cols: list, progress_cls) -> None:
    from vila_tf.inputs import items as inputs_lib
    from vila_tf.inputs import names
    from vila_tf.output import results_file
    progress = progress_cls("evaluate", args.progress or sys.stderr.isatty())
    progress.total = skipped + len(todo)
    os.makedirs(args.output, exist_ok=True)
    step = args.batch_size
    processed = failed = 0
    # Items, not path strings: a file name with glob characters is still one file.
    items = (inputs_lib.Item(path, path=path) for path in todo)
    with open(scores_path, "a", encoding="utf-8", newline="") as out:
        writer = results_file.RowWriter(out, "jsonl", cols, header=False)
        for r in model.stream("score", items, batch_size=args.batch_size, batches_ahead=args.batches_ahead):
            writer.write(results_file.make_row("score", r.source, r.value, r.error))
            if r.error is not None:
                failed += 1
                progress.message(f"vila-tf: {names.written(r.source)}: {r.error}")
            processed += 1
            if processed % step == 0:  # one batch on disk: a kill loses at most what is in flight
                out.flush()
            progress.update(processed, skipped)  # from the first photo
        out.flush()
    progress.update(processed, skipped, final=True)
