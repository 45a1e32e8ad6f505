"""`vila-tf rank MODEL 'a misty forest at dawn' library/ [--top K] [--output FILE]`: the photos
that best match a text, best first, with their cosine similarity (`vila_tf.core.ranking`).

Any number of photos, in bounded memory: they stream through the model and only the K best per
query are kept. `--query TEXT` (repeatable) ranks for more texts in the same pass. The table goes
to stdout; `--output FILE` writes CSV or JSON Lines rows (query, rank, similarity, input) once
the pass is done. Exit codes as `vila-tf score`: 0, 1 some photos failed, 2 usage or model error.
"""
from __future__ import annotations

import csv
import json
import os
import sys

EXIT_OK, EXIT_SOME_FAILED, EXIT_ERROR = 0, 1, 2  # as vila_tf.cli.main
HELP = "the photos that best match a text, best first (cosine similarity of the embeddings)"
COLUMNS = ["query", "rank", "similarity", "input"]


def add_parser(sub) -> None:
    from vila_tf.core.ranking import DEFAULT_TOP
    c = sub.add_parser("rank", help=HELP, description=HELP + ".")
    c.add_argument("model", help="exported SavedModel folder, or a TF Serving base folder (newest version)")
    c.add_argument("query", help="what to look for, e.g. 'a misty forest at dawn'")
    c.add_argument("inputs", nargs="+", help="image files, folders (walked recursively) or glob patterns")
    c.add_argument("--query", dest="more_queries", action="append", default=[], metavar="TEXT",
                   help="another text to rank the same photos for (repeatable; one pass over the photos)")
    c.add_argument("--top", type=int, default=DEFAULT_TOP, metavar="K", help="photos per query (default %(default)s)")
    c.add_argument("--output", "-o", help="also write the rankings here: CSV, or JSON Lines for .jsonl/.json")
    c.add_argument("--format", choices=["csv", "jsonl"], default=None, help="format of --output (default: by name)")
    c.add_argument("--batch-size", type=int, default=32, help="images per model call (at most 32)")
    c.add_argument("--device", help="e.g. GPU:0 or CPU:0 (default: TensorFlow's placement: "
                   "its first GPU when it sees one, else the CPU)")
    c.add_argument("--decode-threads", type=int, default=None, metavar="N",
                   help="threads reading and decoding images (default: min(8, CPU count))")
    c.add_argument("--progress", action="store_true", help="show the progress bar even when not on a terminal")
    c.set_defaults(run=run)


def run(args) -> int:
    if args.top < 1 or args.batch_size < 1 or (args.decode_threads is not None and args.decode_threads < 1):
        print("vila-tf rank: --top, --batch-size and --decode-threads must be >= 1", file=sys.stderr)
        return EXIT_ERROR
    queries = list(dict.fromkeys([args.query] + args.more_queries))
    if any(not q.strip() for q in queries):
        print("vila-tf rank: a query is empty: give the text to look for", file=sys.stderr)
        return EXIT_ERROR
    import vila_tf
    from vila_tf.inputs import image_formats
    from vila_tf.core import ranking
    from vila_tf.cli.progress import Progress
    try:
        model = vila_tf.load(args.model, device=args.device, max_workers=args.decode_threads)
    except (FileNotFoundError, OSError, ValueError, vila_tf.IncompatibleTensorFlowError) as e:
        print(f"vila-tf rank: cannot load model: {e}", file=sys.stderr)
        return EXIT_ERROR
    progress = Progress("rank", args.progress or sys.stderr.isatty())
    progress.count_in_background(args.inputs)
    skipped_files = image_formats.SkipReport()
    done = [0]

    def on_result(r):
        done[0] += 1
        if r.error is not None:
            progress.message(f"vila-tf: {r.source}: {r.error}")
        progress.update(done[0])

    try:
        result = ranking.rank(model, queries, args.inputs, top=args.top, batch_size=args.batch_size,
                              on_result=on_result, skipped=skipped_files)
    except KeyboardInterrupt:
        print("\nvila-tf: interrupted: nothing written", file=sys.stderr)
        return 130
    finally:
        model.close()
    progress.update(done[0], final=True)
    for line in skipped_files.lines():
        print(f"vila-tf: {line}", file=sys.stderr)
    _print(result)
    if args.output:
        _write(result, args.output, args.format or ("jsonl" if args.output.lower().endswith((".jsonl", ".json"))
                                                    else "csv"))
    if result.failed:
        print(f"vila-tf: {result.failed} of {result.seen + result.failed} photos failed", file=sys.stderr)
    return EXIT_SOME_FAILED if result.failed else EXIT_OK


def _print(result) -> None:
    for query, matches in result.matches.items():
        print(f"{query!r}: the best {len(matches)} of {result.seen} photos")
        for m in matches:
            print(f"{m.rank:4d}  {m.similarity:+.4f}  {m.source}")


def _write(result, path: str, fmt: str) -> None:
    from vila_tf.core.atomic import atomic_file
    rows = [{"query": q, "rank": m.rank, "similarity": round(m.similarity, 6), "input": m.source}
            for q, matches in result.matches.items() for m in matches]
    with atomic_file(path, "w", encoding="utf-8", newline="") as f:
        if fmt == "csv":
            w = csv.DictWriter(f, fieldnames=COLUMNS, lineterminator="\n")
            w.writeheader()
            w.writerows(rows)
        else:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"vila-tf: rankings -> {os.path.abspath(path)}", file=sys.stderr)
