"""`vila-tf cull MODEL PHOTOS... [--output CSV] [--sidecars darktable|lightroom|none] [--dry-run]`: a
shoot culled. Bursts and near-duplicates grouped (capture time and embeddings), each group's best
frame picked, every photo rated 1-5 (or rejected, -1) from its score within the shoot, with a
reason in words; ratings written to XMP sidecars photo tools read; a report to look at
(docs/culling.md).

Three stages, in bounded memory:

1. The model scores every photo (score, the six attributes, the caption where the export has
   them, the embedding unless `--embeddings` gives it) and each row is appended, flushed per
   batch, to the scores file beside --output (`CULL.scores.jsonl`, recorded and locked like any
   results file): what `--resume` continues. Without --output it lives in a temporary folder.
2. The shoot is decided from that file (vila_tf.culling.shoot).
3. The CSV (atomically), the sidecars (each atomically, merged: vila_tf.output.sidecars) and the
   report are written. The photos themselves are only ever read.

Everything a run will write is checked before the model loads (exit 2, one line): the CSV and
report names, the scores file, and every folder a sidecar goes to (a read-only folder: use
--sidecar-dir, or --dry-run).
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
from typing import Optional

from vila_tf.cli import options
from vila_tf.core import tasks
from vila_tf.core.atomic import atomic_file
from vila_tf.core.exits import EXIT_ERROR, EXIT_OK, EXIT_SOME_FAILED, UsageError
from vila_tf.culling import grouping, ratings
from vila_tf.inputs import capture_time, image_formats
from vila_tf.inputs import items as inputs_lib
from vila_tf.inputs import names
from vila_tf.output import cull_files, output_file, results_file, sidecars

HELP = ("group bursts, pick the best frame of each, rate every photo (XMP sidecars photo tools read), with a "
        "reason for each")


def add_parser(sub) -> None:
    c = sub.add_parser("cull", help=HELP, description=HELP + " (docs/culling.md).")
    options.add_model(c)
    c.add_argument("inputs", nargs="+", help="the shoot: image files (RAW too), folders (walked recursively) or "
                                             "glob patterns")
    c.add_argument("--output", "-o", metavar="CSV",
                   help="write the decisions here (a row per photo: input, group, score, rating, pick, reason, "
                        "captured, sidecar, error) instead of stdout; the scores are kept beside it in "
                        "NAME.scores.jsonl for --resume")
    c.add_argument("--sidecars", choices=sidecars.STYLES, default="darktable",
                   help="XMP sidecars: darktable (default; NAME.EXT.xmp, also read by digiKam), lightroom "
                        "(NAME.xmp, as Lightroom and Capture One name them beside RAW files) or none")
    c.add_argument("--sidecar-dir", metavar="DIR",
                   help="write the sidecars under DIR (at each photo's path) instead of beside the photos "
                        "(photos on a read-only card or share)")
    c.add_argument("--dry-run", action="store_true",
                   help="write no sidecar: only the CSV (its sidecar column says where each would go) and the report")
    c.add_argument("--report", metavar="FILE",
                   help="a page to look at: FILE.html (every group) or FILE.png (a picture of the first "
                        "groups): a row per group, the pick marked, stars and reasons under each thumbnail")
    c.add_argument("--embeddings", metavar="JSONL",
                   help="the output of `vila-tf embed` on these photos with this model: its embeddings are "
                        "used instead of computing them again")
    c.add_argument("--resume", action="store_true",
                   help="continue an interrupted run with the same --output: photos scored already are not "
                        "scored again")
    t = grouping.Thresholds()
    c.add_argument("--burst-gap", type=float, default=t.burst_gap, metavar="SECONDS",
                   help="the most seconds between two frames of a burst (default %(default)s)")
    c.add_argument("--burst-similarity", type=float, default=t.burst_similarity, metavar="COSINE",
                   help="how alike (embedding cosine similarity) a frame is to its burst's latest frame, at "
                        "least (default %(default)s)")
    c.add_argument("--duplicate-window", type=float, default=t.duplicate_window, metavar="SECONDS",
                   help="the same picture taken again within this many seconds is grouped with it (default "
                        "%(default)s)")
    c.add_argument("--duplicate-similarity", type=float, default=t.duplicate_similarity, metavar="COSINE",
                   help="how alike such a near-duplicate is, at least; photos without a capture time are grouped "
                        "by this alone (default %(default)s)")
    c.add_argument("--reject-below", type=float, default=ratings.REJECT_BELOW, metavar="SHARE",
                   help="reject (rating -1) the photos that are not their group's pick and score in this bottom "
                        "share of the shoot (default %(default)s; 0: no rejects)")
    options.add_run_options(c)
    c.set_defaults(run=run)


def _thresholds(args) -> grouping.Thresholds:
    t = grouping.Thresholds(args.burst_gap, args.burst_similarity, args.duplicate_window, args.duplicate_similarity)
    why = t.check()
    if why:
        raise UsageError(why)
    if not 0.0 <= args.reject_below <= 1.0:
        raise UsageError(f"--reject-below {args.reject_below}: a share of the shoot, from 0 to 1")
    return t


def _sidecar_folder_checks(args, index) -> None:
    """Before the model loads: every folder a sidecar will be written to can be written (a file made
    and removed there), and with --embeddings every photo has a row there. One walk of the names."""
    writing = args.sidecars != "none" and not args.dry_run
    if not writing and index is None:
        return
    if writing and args.sidecar_dir:
        why = sidecars.writable(args.sidecar_dir)
        if why:
            raise UsageError(f"cannot write sidecars under --sidecar-dir {args.sidecar_dir}: {why}: choose a folder "
                             "you can write to")
        writing = False
    checked: set = set()
    missing, count = [], 0
    for item in inputs_lib.iter_items(args.inputs, image_formats.SkipReport()):
        if item.path is None:
            continue
        count += 1
        if index is not None and names.written(item.source) not in index:
            missing.append(item.source)
        folder = os.path.dirname(os.path.abspath(sidecars.path_for(item.path, args.sidecars)))
        if writing and folder not in checked:
            checked.add(folder)
            why = sidecars.writable(folder)
            if why:
                raise UsageError(f"cannot write sidecars in {names.written(folder)} ({why}), beside "
                                 f"{names.written(item.source)}: give --sidecar-dir DIR (a folder you can write "
                                 "to), or --dry-run")
    if missing:
        raise UsageError(f"--embeddings {args.embeddings} has no row for {len(missing)} of the {count} photos "
                         f"(e.g. {names.written(missing[0])}): run `vila-tf embed` on them into it (with --resume), "
                         "or leave --embeddings out")


def run(args) -> int:
    options.check(args)
    thresholds = _thresholds(args)
    if args.resume and not args.output:
        raise UsageError("--resume needs --output FILE.csv (the scores it continues are kept beside it)")
    try:
        capture_time.pyexiv2()
    except ImportError as e:
        raise UsageError(str(e)) from None
    model_record = options.check_model(args)
    missing = options.check_inputs(args.inputs)
    index = None
    if args.embeddings:
        from vila_tf.culling import embeddings_file
        try:
            index = embeddings_file.EmbeddingsFile(args.embeddings, model_record)
        except embeddings_file.EmbeddingsFileError as e:
            raise UsageError(str(e)) from None
    try:
        return _checked_run(args, thresholds, model_record, missing, index)
    finally:
        if index is not None:
            index.close()


def _checked_run(args, thresholds, model_record, missing, index) -> int:
    _sidecar_folder_checks(args, index)
    scores = cull_files.scores_path(args.output) if args.output else None
    try:
        if args.output:
            cull_files.check(args.output, "--output", args.inputs, [args.report, scores, args.embeddings])
        if args.report:
            cull_files.check(args.report, "--report", args.inputs, [args.output, scores, args.embeddings])
    except output_file.OutputError as e:
        raise UsageError(str(e)) from None
    workdir = None if args.output else tempfile.mkdtemp(prefix="vila-tf-cull-")
    try:
        scores = scores or os.path.join(workdir, "cull.scores.jsonl")
        record = output_file.run_record("cull", "jsonl", cull_files.SCORES_COLUMNS, model_record,
                                        exif_orientation=not args.release_exact_orientation)
        try:
            out = output_file.ResultsOutput(scores, "jsonl", cull_files.SCORES_COLUMNS, record, args.resume,
                                            args.inputs).prepare()
        except output_file.OutputError as e:
            raise UsageError(str(e)) from None
        try:
            needs = ("score",) + (() if index is not None else ("image_embedding",))
            model = options.load(args, needs, model_record)
            for path in missing:
                print(f"vila-tf: {names.written(path)}: no such file or folder", file=sys.stderr)
            try:
                failed = _score(args, model, out, index, set(missing))
            finally:
                model.close()
        finally:
            out.abandon()  # nothing once the rows are written (closed already)
        if failed is None:
            return EXIT_ERROR
        return _decide_and_write(args, scores, thresholds)
    finally:
        if workdir:
            shutil.rmtree(workdir, ignore_errors=True)


def _skip_scored(path: str, items, counts: dict):
    """--resume: the inputs without a row in the scores file. While the inputs match the rows one
    by one they are passed over in constant memory; once they differ, the rows' names are looked
    up in a set."""
    rows = results_file.read_rows(path, "jsonl", cull_files.SCORES_COLUMNS)
    done: Optional[set] = None
    for item in items:
        name = names.written(item.source)
        if done is None:
            row = next(rows, None)
            if row is not None and row.get("input") == name:
                counts["kept"] += 1
                continue
            done = set()
            if row is not None:
                done = {r.get("input") for r in results_file.read_rows(path, "jsonl", cull_files.SCORES_COLUMNS)}
        if name in done:
            done.discard(name)
            counts["kept"] += 1
            continue
        yield item


def _score(args, model, output, index, reported: set) -> Optional[int]:
    """Stage 1: a row per photo in the scores file. Returns how many photos failed (None: the
    file could not be written, said on stderr)."""
    from vila_tf.cli.progress import Progress
    attributes = model.zero_shot_task() if model.supports("zero_shot_attributes") else None
    run_tasks = ["score"] + ([attributes] if attributes is not None else []) \
        + (["caption"] if model.supports("caption") else []) + (["image_embedding"] if index is None else [])
    kinds = ["score"] + (["attributes"] if attributes is not None else []) \
        + (["caption"] if model.supports("caption") else []) + (["embedding"] if index is None else [])
    skipped_files = image_formats.SkipReport()
    exclude = [output.identity] if output.identity else []
    for path in (args.output, args.report):  # this run's own files are never photos of the shoot
        if path and os.path.isfile(path):
            st = os.stat(path)
            exclude.append((st.st_dev, st.st_ino))
    items = inputs_lib.iter_items(args.inputs, skipped_files, exclude=exclude)
    counts = {"kept": 0}
    if args.resume:
        items = _skip_scored(output.path, items, counts)
        print(f"vila-tf: resuming {output.path}: {output.kept} photos scored already", file=sys.stderr)
    for note in output.notes:
        print(f"vila-tf: {note}", file=sys.stderr)
    if index is not None:
        for note in index.notes:
            print(f"vila-tf: {note}", file=sys.stderr)
    progress = Progress("cull", args.progress or sys.stderr.isatty())
    progress.count_in_background(args.inputs)
    f = output.begin()
    writer = results_file.RowWriter(f, "jsonl", cull_files.SCORES_COLUMNS, header=False)
    failed = processed = 0
    try:
        for r in model.stream(tuple(run_tasks), items, batch_size=args.batch_size, batches_ahead=args.batches_ahead):
            name = names.written(r.source)
            if r.error is not None:
                row = {"input": name, "error": r.error}
                failed += 1
                if r.source not in reported:
                    progress.message(f"vila-tf: {name}: {r.error}")
            else:
                values = dict(zip(kinds, r.value))
                embedding = values.get("embedding")
                if embedding is None and index is not None:
                    embedding = index.find(name)
                attrs = values.get("attributes")
                row = {"input": name, "captured": capture_time.read(r.source),
                       "score": tasks.json_value("score", values["score"]),
                       "attributes": {k: tasks.json_value("score", v) for k, v in attrs.items() if k != "score"}
                       if attrs else None,
                       "caption": values.get("caption"),
                       "embedding": tasks.json_value("embedding", embedding) if embedding is not None else None}
            writer.write(row)
            processed += 1
            if processed % args.batch_size == 0:
                f.flush()  # one batch on disk: a SIGKILL loses at most what is in flight
            progress.update(processed, counts["kept"])
        f.flush()
        output.close()
    except OSError as e:
        output_file.close_quietly(f)
        print(f"vila-tf: cannot write {output.path}: {e.strerror or e}; the rows written before it are kept: "
              "rerun the same command with --resume to continue", file=sys.stderr)
        return None
    progress.update(processed, counts["kept"], final=True)
    for line in skipped_files.lines():
        print(f"vila-tf: {line}", file=sys.stderr)
    return failed


def _sidecar_owners(shoot, style: str, folder: Optional[str]) -> dict:
    """sidecar path -> the row that owns it, in Lightroom's naming, where two photos named alike
    (IMG_1.CR2 and IMG_1.JPG) share IMG_1.xmp: the RAW file gets it, else the first photo. (A name
    per photo in memory; darktable's naming gives every photo its own.)"""
    owners: dict = {}
    for i in range(shoot.size):
        name = shoot.row(i)["input"]
        source = names.source_of(name)
        path = os.path.abspath(sidecars.path_for(source, style, folder))
        raw = image_formats.format_of(b"", source) == "raw"
        if path not in owners or (raw and not owners[path][1]):
            owners[path] = (i, raw)
    return {p: i for p, (i, _) in owners.items()}


def _decide_and_write(args, scores: str, thresholds) -> int:
    """Stages 2 and 3: the shoot decided; the CSV, the sidecars and the report written."""
    from vila_tf.culling import shoot as shoot_lib
    style = args.sidecars
    writing = style != "none" and not args.dry_run
    stats = {"written": 0, "unchanged": 0, "untouched": 0, "shared": 0, "picks": 0, "rejects": 0, "failed": 0}
    with shoot_lib.Shoot(scores, thresholds, args.reject_below) as shoot:
        owners = _sidecar_owners(shoot, style, args.sidecar_dir) if style == "lightroom" else None
        target = atomic_file(args.output, "w", encoding="utf-8", newline="") if args.output else None
        f = target.__enter__() if target is not None else sys.stdout
        try:
            f.write(",".join(cull_files.COLUMNS) + "\n")
            for d in shoot.decisions():
                sidecar = ""
                if d.error is None and style != "none":
                    source = names.source_of(d.input)
                    path = sidecars.path_for(source, style, args.sidecar_dir)
                    sidecar = names.written(path)
                    owner = d.index if owners is None else owners.get(os.path.abspath(path))
                    if owner != d.index:  # RAW+JPEG pairs in Lightroom's naming: the RAW's (not a failure)
                        sidecar = f"{sidecar} (not written: the sidecar of {shoot.row(owner)['input']}, named alike)"
                        stats["shared"] += 1
                    elif writing:
                        try:
                            changed = sidecars.write(path, sidecars.fields(d.rating, d.pick, d.score, d.group, d.reason))
                            stats["written" if changed else "unchanged"] += 1
                        except sidecars.SidecarError as e:
                            print(f"vila-tf: {sidecar} {e}", file=sys.stderr)
                            sidecar, stats["untouched"] = f"not written: {e}", stats["untouched"] + 1
                stats["failed"] += d.error is not None
                stats["picks"] += d.pick
                stats["rejects"] += d.rating is not None and d.rating < 0
                row = {"input": d.input, "group": d.group or None,
                       "score": tasks.json_value("score", d.score) if d.error is None else None,
                       "rating": d.rating, "pick": ("yes" if d.pick else "no") if d.error is None else None,
                       "reason": d.reason or None, "captured": d.captured, "sidecar": sidecar or None,
                       "error": d.error}
                f.write(results_file.csv_line(row.get(c) for c in cull_files.COLUMNS))
            f.flush()
        except BaseException:
            if target is not None:
                target.__exit__(*sys.exc_info())
            raise
        if target is not None:
            target.__exit__(None, None, None)
        if args.report:
            _write_report(args.report, shoot)
        groups = shoot.group_count
    failed = stats["failed"]  # a resumed run's failed rows too
    ok = shoot.size - failed
    where = f" -> {args.output}" if args.output else ""
    side = ("no sidecars (--sidecars none)" if style == "none" else
            "no sidecar written (--dry-run)" if args.dry_run else
            f"sidecars: {stats['written']} written, {stats['unchanged']} unchanged"
            + (f", {stats['untouched']} left untouched" if stats["untouched"] else "")
            + (f"; {stats['shared']} photos share their sidecar with a RAW file named alike (theirs is the RAW's)"
               if stats["shared"] else ""))
    print(f"vila-tf: {ok} photo{'s' if ok != 1 else ''} in {groups} group{'s' if groups != 1 else ''}: "
          f"{stats['picks']} picks, {stats['rejects']} rejects; {side}{where}", file=sys.stderr)
    if failed:
        print(f"vila-tf: {failed} of {shoot.size} photos failed", file=sys.stderr)
    return EXIT_SOME_FAILED if failed or stats["untouched"] else EXIT_OK


def _write_report(path: str, shoot) -> None:
    from vila_tf.culling import report
    if path.lower().endswith(".html"):
        with atomic_file(path, "w", encoding="utf-8") as f:
            n = report.write_html(f, shoot.groups_in_order(), f"vila-tf cull: {shoot.size} photos")
        print(f"vila-tf: report of {n} groups -> {path}", file=sys.stderr)
        return
    from PIL import PngImagePlugin
    sheet = report.render_png(shoot.groups_in_order(), shoot.group_count)
    info = PngImagePlugin.PngInfo()
    info.add_text("Software", cull_files.REPORT_SOFTWARE)  # so a later run knows it may replace it
    with atomic_file(path, "wb") as f:
        sheet.save(f, format="PNG", pnginfo=info)
    shown = min(shoot.group_count, report.PNG_GROUPS)
    print(f"vila-tf: report of {shown} group{'s' if shown != 1 else ''}"
          + (f" (the first of {shoot.group_count}: a .html report shows them all)" if shown < shoot.group_count else "")
          + f" -> {path}", file=sys.stderr)
