"""`vila-tf rank MODEL 'a misty forest at dawn' library/ [--top K] [--output FILE]`: the photos
that best match a text, best first, with their cosine similarity (`vila_tf.core.ranking`).

Any number of photos, in bounded memory: they stream through the model and only the K best per
query are kept. `--query TEXT` (repeatable) ranks for more texts in the same pass. The table goes
to stdout; `--output FILE` (checked and locked before the model loads, like every file a command
writes: vila_tf.output) gets CSV or JSON Lines rows (query, rank, similarity, input) once the pass
is done. Needs the text tower: a LiteRT export is refused in one line.
"""
from __future__ import annotations

import os
import sys

from vila_tf.cli import options
from vila_tf.core.exits import EXIT_OK, EXIT_SOME_FAILED, UsageError
from vila_tf.inputs import names

HELP = "the photos that best match a text, best first (cosine similarity of the embeddings)"


def add_parser(sub) -> None:
    from vila_tf.core.ranking import DEFAULT_TOP
    c = sub.add_parser("rank", help=HELP, description=HELP + ".")
    options.add_model(c)
    c.add_argument("query", help="what to look for, e.g. 'a misty forest at dawn'")
    c.add_argument("inputs", nargs="+", help="image files, folders (walked recursively) or glob patterns")
    c.add_argument("--query", dest="more_queries", action="append", default=[], metavar="TEXT",
                   help="another text to rank the same photos for (repeatable; one pass over the photos)")
    c.add_argument("--top", type=int, default=DEFAULT_TOP, metavar="K", help="photos per query (default %(default)s)")
    c.add_argument("--output", "-o", help="also write the rankings here: CSV, or JSON Lines for .jsonl/.json")
    c.add_argument("--format", choices=["csv", "jsonl"], default=None, help="format of --output (default: by name)")
    options.add_run_options(c)
    c.set_defaults(run=run)


def run(args) -> int:
    from vila_tf.output import output_file
    options.check(args)
    if args.top < 1:
        raise UsageError("--top must be >= 1")
    queries = list(dict.fromkeys([args.query] + args.more_queries))
    if any(not q.strip() for q in queries):
        raise UsageError("a query is empty: give the text to look for")
    model_record = options.check_model(args)
    missing = options.check_inputs(args.inputs)
    output = None
    if args.output:
        fmt = options.output_format(args.output, args.format, "csv")
        record = output_file.run_record("rank", fmt, output_file.RANK_COLUMNS, model_record,
                                        exif_orientation=not args.release_exact_orientation)
        try:
            output = output_file.ResultsOutput(args.output, fmt, output_file.RANK_COLUMNS, record, False,
                                               args.inputs).prepare()
        except output_file.OutputError as e:
            raise UsageError(str(e)) from None
    try:
        model = options.load(args, ("image_embedding", "text_embedding"), model_record)
        for path in missing:
            print(f"vila-tf: {names.written(path)}: no such file or folder", file=sys.stderr)
        try:
            return _rank(args, model, queries, output, set(missing))
        finally:
            model.close()
    finally:
        if output is not None:
            output.abandon()  # nothing once the rankings are written (closed already)


def _rank(args, model, queries: list, output, reported: set) -> int:
    from vila_tf.cli.progress import Progress
    from vila_tf.core import ranking
    from vila_tf.inputs import image_formats
    progress = Progress("rank", args.progress or sys.stderr.isatty())
    progress.count_in_background(args.inputs)
    skipped_files = image_formats.SkipReport()
    done = [0]

    def on_result(r):
        done[0] += 1
        if r.error is not None and r.source not in reported:
            progress.message(f"vila-tf: {names.written(r.source)}: {r.error}")
        progress.update(done[0])

    result = ranking.rank(model, queries, args.inputs, top=args.top, batch_size=args.batch_size,
                          batches_ahead=args.batches_ahead, on_result=on_result, skipped=skipped_files)
    progress.update(done[0], final=True)
    for line in skipped_files.lines():
        print(f"vila-tf: {line}", file=sys.stderr)
    _print(result)
    if output is not None:
        _write(result, output)
    if result.failed:
        print(f"vila-tf: {result.failed} of {result.seen + result.failed} photos failed", file=sys.stderr)
    return EXIT_SOME_FAILED if result.failed else EXIT_OK


def _print(result) -> None:
    for query, matches in result.matches.items():
        print(f"{query!r}: the best {len(matches)} of {result.seen} photo{'s' if result.seen != 1 else ''}")
        for m in matches:
            print(f"{m.rank:4d}  {m.similarity:+.4f}  {names.written(m.source)}")


def _write(result, output) -> None:
    """The rankings through the output layer: names written losslessly, CSV cells formula-guarded."""
    from vila_tf.output import results_file
    out = output.begin()
    writer = results_file.RowWriter(out, output.fmt, output.cols, header=True)
    for q, matches in result.matches.items():
        for m in matches:
            writer.write({"query": q, "rank": m.rank, "similarity": round(m.similarity, 6),
                          "input": names.written(m.source)})
    out.flush()
    output.close()
    print(f"vila-tf: rankings -> {os.path.abspath(output.path)}", file=sys.stderr)
