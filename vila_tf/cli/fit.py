"""`vila-tf fit`: your own taste, learned from your labels and exported like the base model
(docs/personal.md).

  vila-tf fit MODEL --labels ratings.csv --output my_taste/          # path,score rows (or AVA.txt)
  vila-tf fit MODEL --labels choices.csv --output my_taste/          # better,worse rows
  vila-tf fit MODEL --labels ~/Pictures/rated/ --output my_taste/    # XMP star ratings of the photos

The labelled photos are scored through the same streaming core as `vila-tf score` (one pass of
the image tower gives every feature: vila_tf.core.personal.FeatureTask); each row goes to
OUT/features.jsonl as it comes, so `--resume` continues an interrupted run and a later fit with
more labels scores only the new photos. Then vila_tf.personal fits the head with nested
cross-validation and writes OUT/<next version>/ (a SavedModel whose serving_default is the
personal score) and OUT/report/.
"""
from __future__ import annotations

import argparse
import os
import sys

from vila_tf.cli import options
from vila_tf.core.exits import EXIT_OK, UsageError

FEATURES_FILE = "features.jsonl"
HELP = ("learn your own taste from your labels (path,score CSV, AVA.txt, better,worse CSV, or XMP star ratings) "
        "and export it as a SavedModel served like the base model")
DEFAULT_FOLDS = 5


def add_parser(sub) -> None:
    from vila_tf.evaluation import metrics as evaluation
    c = sub.add_parser("fit", help=HELP, description=HELP + ". See docs/personal.md.")
    c.add_argument("model", help="the base model: an exported SavedModel folder or TF Serving base folder (newest "
                                 "version); a LiteRT export is refused (the personal model is a SavedModel)")
    c.add_argument("--variant", help=argparse.SUPPRESS)  # refused in one line: a LiteRT export's option
    c.add_argument("--labels", required=True, metavar="LABELS",
                   help="a CSV of path,score rows, AVA.txt, a CSV of better,worse rows (that header first), or a "
                        "folder of photos whose XMP star ratings (sidecars or embedded) are the labels")
    c.add_argument("--images", metavar="DIR", help="where the photos are: DIR/<image id>.jpg for AVA.txt; for a "
                   "CSV, relative paths are relative to DIR (default: the CSV's folder)")
    c.add_argument("--output", "-o", required=True, metavar="OUT",
                   help="a TF Serving base folder: the personal SavedModel goes to OUT/<next version>/, the report "
                        "to OUT/report/, the photos' features to OUT/features.jsonl")
    c.add_argument("--folds", type=int, default=DEFAULT_FOLDS, metavar="K",
                   help="cross-validation folds (default %(default)s)")
    c.add_argument("--seed", type=int, default=0, help="seed of the folds, subsets and bootstrap (default 0)")
    c.add_argument("--bootstrap", type=int, default=evaluation.DEFAULT_BOOTSTRAP, metavar="N",
                   help="bootstrap resamples for the 95%% intervals (default %(default)s; 0: none)")
    c.add_argument("--resume", action="store_true",
                   help="use the features of OUT/features.jsonl (an interrupted run, or an earlier fit into OUT): "
                        "photos with a row there are not scored again")
    options.add_run_options(c)
    c.set_defaults(run=run)


def _check_args(args) -> None:
    missing = []
    for module, dist in (("sklearn", "scikit-learn"), ("scipy", "scipy"), ("matplotlib", "matplotlib")):
        try:
            __import__(module)
        except ImportError:
            missing.append(dist)
    if missing:
        raise UsageError(f"needs {', '.join(missing)}: pip install 'vila-tf[fit]'")
    from vila_tf.litert import format as litert_format
    if litert_format.is_litert_dir(args.model):
        raise UsageError(f"{args.model} is a LiteRT export: fit needs the SavedModel it was converted from (the "
                         "personal model is a SavedModel; `python -m export litert OUT/1` converts it afterwards)")
    if args.variant is not None:
        raise UsageError("--variant picks a model of a LiteRT export; fit needs the SavedModel: leave it out")
    options.check(args)
    if args.folds < 2:
        raise UsageError(f"--folds {args.folds}: give 2 or more")
    if args.bootstrap < 0:
        raise UsageError("--bootstrap must be >= 0")
    if not os.path.exists(args.labels):
        raise UsageError(f"--labels {args.labels}: no such file or folder")
    if os.path.isdir(args.labels):
        if args.images:
            raise UsageError(f"--images: with a folder of rated photos as --labels the photos are that folder "
                             f"({args.labels}): leave --images out")
        try:
            import pyexiv2  # noqa: F401
        except ImportError:
            raise UsageError("reading XMP star ratings needs pyexiv2: pip install 'vila-tf[fit]'") from None
    if args.images and not os.path.isdir(args.images):
        raise UsageError(f"--images {args.images}: no such folder")
    if os.path.exists(args.output) and not os.path.isdir(args.output):
        raise UsageError(f"--output {args.output}: exists and is not a folder")
    if os.path.isfile(os.path.join(args.output, "saved_model.pb")):
        raise UsageError(f"--output {args.output} is a SavedModel folder: give the base folder it belongs to "
                         f"({os.path.dirname(os.path.abspath(args.output))}); the new version goes beside it")
    _check_versions(args.output)


def _check_versions(out: str) -> None:
    """OUT's versions must be personal exports: a new version beside a base export would replace
    it in TF Serving (which serves the newest)."""
    from vila_tf.core import metadata, personal, versions
    for version in versions.local_versions(out):
        path = os.path.join(out, versions.numbered(os.listdir(out))[version])
        try:
            personal_head = metadata.read(path).extra.get(personal.METADATA_KEY)
        except metadata.MetadataError:
            personal_head = None
        if not personal_head:
            raise UsageError(f"--output {out} holds {path}, which is not a personal export: fit into another "
                             "folder (TF Serving would serve the new version instead of it)")


def _base(args) -> tuple[str, dict, object]:
    """(the base SavedModel folder, its record, its metadata), refused when it is a personal export."""
    from vila_tf.core import metadata, personal
    from vila_tf.core.versions import resolve_savedmodel
    record = options.check_model(args)
    path = resolve_savedmodel(args.model)
    meta = metadata.read(path)
    head = meta.extra.get(personal.METADATA_KEY)
    if head:
        raise UsageError(f"{args.model} is a personal export (vila-tf fit wrote it): fit from the base model it was "
                         f"made from ({(head.get('base') or {}).get('path')})")
    return path, record, meta


def _read_labels(args):
    from vila_tf.evaluation import labels as evaluation_labels
    from vila_tf.personal import labels as labels_lib
    try:
        if not os.path.isdir(args.labels) and evaluation_labels.detect_format(args.labels) == "ava" \
                and not args.images:
            raise UsageError(f"{args.labels} is an AVA.txt: it names photos by id, so pass --images DIR "
                             "(the folder of <image id>.jpg)")
        labels = labels_lib.read(args.labels, args.images)
        labels_lib.check(labels, args.folds)
    except labels_lib.LabelsError as e:
        raise UsageError(str(e)) from None
    on_disk = [os.path.isfile(p) for p in labels.photos]
    if not any(on_disk):
        raise UsageError(f"none of the {len(labels.photos)} labelled photos of {args.labels} exists (looked for "
                         f"{labels.photos[0]}" + (", ..." if len(labels.photos) > 1 else "") + "): check --images")
    try:
        labels_lib.check(labels.subset(on_disk), args.folds, "labelled photos with a file")
    except labels_lib.LabelsError as e:
        raise UsageError(f"{e} ({on_disk.count(False)} labelled photos have no file)") from None
    return labels, on_disk


def run(args) -> int:
    from vila_tf.core import personal
    from vila_tf.personal import fitting, learn
    _check_args(args)
    base_dir, base_record, meta = _base(args)
    labels, on_disk = _read_labels(args)
    for note in labels.notes:
        print(f"vila-tf fit: {note}", file=sys.stderr)
    features_path = os.path.join(args.output, FEATURES_FILE)
    todo = [p for p, ok in zip(labels.photos, on_disk) if ok]
    rows = _features(args, todo, features_path, base_record)
    layout = personal.Layout.for_model(meta.model_type, meta.model_dims)
    try:
        outcome = fitting.run(labels, rows, layout, args.folds, args.seed, args.bootstrap, base_dir, base_record,
                              args.output, log=lambda msg: print(f"vila-tf fit: {msg}", file=sys.stderr))
    except (fitting.LabelsError, learn.LearnError) as e:
        raise UsageError(str(e)) from None
    rec = outcome.record
    _print_summary(rec)
    lost = rec["missing"]["count"] + rec["failed"]["count"]
    if lost:
        print(f"vila-tf fit: {rec['missing']['count']} labelled photos without a file, {rec['failed']['count']} "
              f"failed: left out, listed in {os.path.join(outcome.report_dir, 'metrics.json')}", file=sys.stderr)
    print(f"vila-tf fit: wrote {outcome.version_dir} (serving_default: the personal score; base_score: the base "
          f"model's) and " + ", ".join(os.path.join(outcome.report_dir, f) for f in outcome.files), file=sys.stderr)
    return EXIT_OK


def _print_summary(rec: dict) -> None:
    import math

    def one(r, k):
        v, ci = r.get(k), (r.get("ci95") or {}).get(k)
        text = "n/a" if v is None or not math.isfinite(v) else f"{v:.4f}"
        if ci and all(x is not None for x in ci):
            text += f" [{ci[0]:.4f}, {ci[1]:.4f}]"
        return f"{k.upper()} {text}"
    p, b = rec["personal"], rec["base"]
    line = f"n {p['n']}  personal (cross-validated): " + "  ".join(one(p, k) for k in ("srcc", "plcc", "krcc"))
    line += "  base: " + "  ".join(one(b, k) for k in ("srcc", "plcc"))
    if rec.get("pairs"):
        pr = rec["pairs"]
        acc = [one(pr[k], "accuracy").split(" ", 1)[1] for k in ("personal", "base")]
        line += f"  held-out pairs {pr['n']}: accuracy {acc[0]} (base {acc[1]})"
    print(line)


def _features(args, photos: list, path: str, model_record: dict) -> dict:
    """{photo: features-row fields, or the error of a photo that failed} for `photos`, scoring those
    without a row in OUT/features.jsonl (appended as they come, flushed per batch)."""
    from vila_tf.core import personal
    from vila_tf.inputs import names
    from vila_tf.output import output_file, results_file
    if os.path.isfile(path) and os.path.getsize(path) and not args.resume:
        raise UsageError(f"{path} holds the features of an earlier run: add --resume to use them (and score only "
                         "the photos it lacks), or choose another --output")
    os.makedirs(args.output, exist_ok=True)
    cols = personal.COLUMNS
    record = output_file.run_record("fit", "jsonl", cols, model_record, not args.release_exact_orientation)
    out = output_file.ResultsOutput(path, "jsonl", cols, record, args.resume, inputs=photos)
    try:
        out.prepare()
    except output_file.OutputError as e:
        raise UsageError(str(e)) from None
    try:
        for note in out.notes:
            print(f"vila-tf fit: {note}", file=sys.stderr)
        wanted = set(photos)
        rows: dict = {}
        for row in results_file.read_rows(path, "jsonl", cols):
            source = names.source_of(row["input"])
            if source in wanted and source not in rows:
                rows[source] = row.get("error") or {k: v for k, v in row.items() if k not in ("input", "error")}
        if out.kept:
            print(f"vila-tf fit: resuming {path}: {out.kept} rows already there, {len(rows)} of them labelled "
                  "photos", file=sys.stderr)
        todo = [p for p in photos if p not in rows]
        if todo:
            _score(args, todo, len(rows), out, rows, model_record)
    finally:
        if out.file is None:
            out.abandon()  # nothing written: a file this run created goes again
        else:
            out.close()
    return rows


def _score(args, todo: list, skipped: int, out, rows: dict, model_record: dict) -> None:
    from vila_tf.cli.progress import Progress
    from vila_tf.core import personal
    from vila_tf.inputs import items as inputs_lib
    from vila_tf.inputs import names
    from vila_tf.output import results_file
    model = options.load(args, personal.FeatureTask.requires, model_record)
    try:
        progress = Progress("fit", args.progress or sys.stderr.isatty())
        progress.total = skipped + len(todo)
        f = out.begin()
        writer = results_file.RowWriter(f, "jsonl", personal.COLUMNS, header=False)
        items = (inputs_lib.Item(p, path=p) for p in todo)  # items, not strings: a name with '*' is one file
        processed = 0
        for r in model.stream(personal.FeatureTask(), items, batch_size=args.batch_size,
                              batches_ahead=args.batches_ahead):
            row = {"input": names.written(r.source)}
            if r.error is None:
                fields = personal.row_fields(r.value)
                row.update(fields)
                rows[r.source] = fields
            else:
                row["error"] = r.error
                rows[r.source] = r.error
                progress.message(f"vila-tf fit: {names.written(r.source)}: {r.error}")
            writer.write(row)
            processed += 1
            if processed % args.batch_size == 0:  # one batch on disk: a kill loses at most what is in flight
                f.flush()
            progress.update(processed, skipped)
        f.flush()
        progress.update(processed, skipped, final=True)
    finally:
        model.close()
