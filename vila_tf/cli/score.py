"""`vila-tf score | zero-shot | caption | embed MODEL PHOTOS...`: a row per photo, as it is scored.

  vila-tf score MODEL photos/ extra.jpg 'shots/*.png' [--format table|csv|jsonl] [--output FILE]
  vila-tf score MODEL photos/ --contact-sheet sheet.png [--with-captions]
  vila-tf zero-shot MODEL photos/ [--prompt "sharp photo|blurry photo" ...] [--contact-sheet sheet.png]
  vila-tf caption MODEL photos/ ;  vila-tf embed MODEL ... --output emb.jsonl

Rows are written (and flushed per batch) as they are scored; `--resume` continues an interrupted
run into the same --output (docs/streaming.md). The files a run writes are checked, locked and
recorded before the model loads (`vila_tf.output.output_file`, docs/reliability.md). Both
backends run every command their model has the heads for; a command a LiteRT export cannot run
(caption, or `--with-captions`) is refused in one line before any photo is read.
"""
from __future__ import annotations

import heapq
import math
import os
import sys
from typing import Optional

from vila_tf.cli import contact_sheet, options
from vila_tf.core.exits import EXIT_ERROR, EXIT_OK, EXIT_SOME_FAILED, UsageError
from vila_tf.cli.progress import Progress
from vila_tf.core import tasks
from vila_tf.core import zero_shot
from vila_tf.core.atomic import atomic_file
from vila_tf.inputs import image_formats
from vila_tf.inputs import items as inputs_lib
from vila_tf.inputs import names
from vila_tf.output import output_file, results_file

CONTACT_SHEET_MAX = 200  # thumbnails kept (and drawn) at most: the best-scored ones
COMMANDS = {t.command: t.help for t in tasks.TASKS.values()}


def add_parsers(sub) -> None:
    for name, help_text in COMMANDS.items():
        c = sub.add_parser(name, help=help_text, description=help_text)
        options.add_model(c)
        c.add_argument("inputs", nargs="+", help="image files, folders (walked recursively) or glob patterns")
        c.add_argument("--format", choices=["table", "csv", "jsonl"], default=None,
                       help="output format (default: table on a terminal, else csv; embed: jsonl)")
        c.add_argument("--output", "-o", help="write results here instead of stdout (rows appear as they are "
                       "scored; .jsonl/.json: JSON Lines, .csv: CSV unless --format says otherwise)")
        c.add_argument("--resume", action="store_true",
                       help="continue an interrupted run into the same --output: inputs with a row there are "
                            "skipped, a torn last row is repaired")
        options.add_run_options(c)
        if name in ("score", "zero-shot"):
            c.add_argument("--contact-sheet", metavar="PNG", help="write thumbnails sorted by score to this PNG")
            c.add_argument("--contact-sheet-max", metavar="N", type=int, default=CONTACT_SHEET_MAX,
                           help=f"draw the N best-scored images (default {CONTACT_SHEET_MAX})")
        if name == "score":
            c.add_argument("--with-captions", action="store_true",
                           help="explain each score: also caption each image and give its six zero-shot attribute "
                                "scores (columns caption, image, lighting, content, background, foreground, "
                                "composition; bars on the contact sheet)")
        if name == "zero-shot":
            c.add_argument("--with-captions", action="store_true", help="also caption each image")
            c.add_argument("--prompt", action="append", metavar="'GOOD|BAD'",
                           help="score your own good/bad prompt pair instead of the release's six (repeatable): "
                                "softmax of the image's similarity to GOOD against BAD, a column named 'GOOD|BAD'; "
                                "score is the mean over your pairs (a LiteRT export: the pairs baked in with "
                                "`python -m export litert --prompt`)")
        c.set_defaults(run=run)


def _write_table(rows: list[dict], out) -> None:
    """The terminal table (collected: its column widths depend on every row)."""
    columns = list(dict.fromkeys(k for r in rows for k in r))
    cells = [[str(r.get(c, "")) if not isinstance(r.get(c), list) else f"[{len(r[c])} floats]" for c in columns]
             for r in rows]
    widths = [min(60, max([len(c)] + [len(row[k]) for row in cells])) for k, c in enumerate(columns)]
    out.write("  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip() + "\n")
    for row in cells:
        out.write("  ".join(v[:w].ljust(w) for v, w in zip(row, widths)).rstrip() + "\n")


class _Best:
    """The `size` best-scored rows seen (a min-heap): all a bounded contact sheet needs."""

    def __init__(self, size: int):
        self.size, self.heap, self.count = max(0, size), [], 0

    def add(self, score: float, source: str, caption: Optional[str], pairs: Optional[tuple] = None) -> None:
        if not math.isfinite(score):
            return
        self.count += 1
        entry = (score, -self.count, source, caption, pairs)  # ties: the earlier input wins
        if len(self.heap) < self.size:
            heapq.heappush(self.heap, entry)
        elif self.heap and entry > self.heap[0]:
            heapq.heapreplace(self.heap, entry)


def _write_contact_sheet(best: _Best, path: str, with_captions: bool, pair_names: tuple = ()) -> None:
    from PIL import PngImagePlugin
    images = []
    for _, _, source, _, _ in best.heap:  # only the drawn images are read again, at the end
        item = inputs_lib.load(inputs_lib.Item(source, path=source))
        # unreadable now: drawn as an empty box; a RAW file: its embedded preview
        images.append(image_formats.display_bytes(item.data, source) if item.data else b"")
    sheet = contact_sheet.render(images, [e[0] for e in best.heap],
                                 [e[3] for e in best.heap] if with_captions else None,
                                 [names.written(os.path.basename(e[2])) for e in best.heap],
                                 attributes=[e[4] for e in best.heap] if pair_names else None,
                                 attribute_names=pair_names)
    info = PngImagePlugin.PngInfo()
    info.add_text("Software", output_file.SHEET_SOFTWARE)  # so a later run knows it may replace it
    with atomic_file(path, "wb") as f:
        sheet.save(f, format="PNG", pnginfo=info)
    print(f"vila-tf: contact sheet of {len(best.heap)} image{'s' if len(best.heap) != 1 else ''}"
          + (f" (the best of {best.count})" if best.count > len(best.heap) else "") + f" -> {path}", file=sys.stderr)


def _format(args) -> str:
    if args.format:
        return args.format
    default = "jsonl" if args.command == "embed" else "csv"
    if args.output:
        return options.output_format(args.output, None, default)
    return default if args.command == "embed" or not sys.stdout.isatty() else "table"


def _format_reason(args) -> str:
    """Why this run writes the format it does, for a --resume refusal."""
    if args.format:
        return f"--format {args.format}"
    return f"chosen by the name {args.output}" if args.output else "the default"


class _Skipper:
    """--resume: passes on the inputs that have no row in the output yet.

    The rows of an interrupted run are a prefix of the inputs, in order; while the inputs match
    them one by one they are skipped in constant memory, and the finished file is in the order of
    an uninterrupted run. If they stop matching (inputs added or removed since), every source
    with a row is looked up in a set instead, and the missing inputs are appended in input order.
    """

    def __init__(self, path: str, fmt: str, cols: list[str], command: str, best: Optional[_Best],
                 pair_names: tuple = ()):
        self.path, self.fmt, self.cols, self.best, self.pair_names = path, fmt, cols, best, pair_names
        self.rows = results_file.read_rows(path, fmt, cols)
        self.value_column = tasks.BY_COMMAND[command].field
        self.skipped = self.failed = 0
        self.done: Optional[dict] = None  # source -> row, once the inputs stopped matching the rows

    def _count(self, row: dict) -> None:
        self.skipped += 1
        self.failed += "error" in row
        if self.best is not None and "error" not in row:
            pairs = tuple(float(row[n]) for n in self.pair_names) if self.pair_names else None
            self.best.add(float(row[self.value_column]), names.source_of(row["input"]), row.get("caption"), pairs)

    def filter(self, items):
        for item in items:
            written = names.written(item.source)  # rows hold names as results files write them
            if self.done is None:
                row = next(self.rows, None)
                if row is not None and row.get("input") == written:
                    self._count(row)
                    continue
                # Every earlier row matched (the rest is new), or the inputs changed since: look
                # rows up by source from here on (the rows' sources in memory, not their values).
                self.done = {}
                if row is not None:
                    keep = ("input", "error", self.value_column, "caption", *self.pair_names) \
                        if self.best is not None else ("input", "error")
                    for r in results_file.read_rows(self.path, self.fmt, self.cols):
                        self.done[r.get("input")] = {k: r[k] for k in keep if k in r}
            row = self.done.pop(written, None)
            if row is not None:
                self._count(row)
                continue
            yield item


def _prepare_outputs(args, fmt: str, cols: list[str], model: dict):
    """The checks on every file the run will write, before the model loads: the locked
    --output (None for stdout) and the --contact-sheet path. Raises output_file.OutputError."""
    output = None
    if args.output:
        record = output_file.run_record(args.command, fmt, cols, model,
                                        exif_orientation=not args.release_exact_orientation)
        output = output_file.ResultsOutput(args.output, fmt, cols, record, args.resume, args.inputs,
                                           _format_reason(args)).prepare()
    try:
        if getattr(args, "contact_sheet", None):
            output_file.check_contact_sheet(args.contact_sheet, args.inputs, args.output)
    except output_file.OutputError:
        if output is not None:
            output.abandon()
        raise
    return output


def _write_failed(args, e: OSError, written: int) -> int:
    import errno
    full = e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
    print(f"vila-tf: cannot write {args.output}: {e.strerror or e}; the {written} rows written before it are kept: "
          + ("free some space, then rerun" if full else "rerun") + " the same command with --resume to continue",
          file=sys.stderr)
    return EXIT_ERROR


def _unpack(values: Optional[tuple], tasks: list) -> tuple:
    """One `stream` value over `tasks` -> (the score, embedding or caption of the command, the
    caption or None, the zero-shot scores by pair name or None)."""
    if values is None:
        return None, None, None
    value = caption = pairs = None
    for task, v in zip(tasks, values):
        if task == "caption" and len(tasks) > 1:
            caption = v
        elif isinstance(v, dict):  # zero-shot by pairs: the mean is zero-shot's own score
            pairs = {k: x for k, x in v.items() if k != "score"}
            value = v["score"] if value is None else value
        else:
            value = v
    return value, caption, pairs


def _pair_names(args, with_captions: bool) -> tuple:
    """The zero-shot columns by pair: what `zero-shot` computes; the explanation `score
    --with-captions` adds to each score (the release's six attributes). Known before the model loads."""
    if args.command == "zero-shot" or (args.command == "score" and with_captions):
        prompts = getattr(args, "prompt", None)
        if prompts is None:
            return tuple(zero_shot.release_task().names)
        return tuple(zero_shot.pair_name(p) for p in zero_shot.pairs_from(prompts))
    return ()


def run(args) -> int:
    """The command: UsageError for anything the user must change (one line, exit 2)."""
    options.check(args)
    if getattr(args, "prompt", None):  # a malformed pair fails before the model is loaded
        try:
            zero_shot.pairs_from(args.prompt)
        except zero_shot.PromptError as e:
            raise UsageError(f"--prompt: {e}") from None
    if getattr(args, "contact_sheet_max", 1) < 1:
        raise UsageError("--contact-sheet-max must be >= 1")
    fmt = _format(args)
    if args.resume and (not args.output or fmt == "table"):
        raise UsageError("--resume needs --output FILE in csv or jsonl format")
    with_captions = bool(getattr(args, "with_captions", False))
    pair_names = _pair_names(args, with_captions)
    cols = results_file.columns(args.command, with_captions, pair_names)
    model_record = options.check_model(args)
    missing = options.check_inputs(args.inputs)
    try:
        output = _prepare_outputs(args, fmt, cols, model_record)
    except output_file.OutputError as e:
        raise UsageError(str(e)) from None
    try:
        needs = [tasks.BY_COMMAND[args.command].name] + (["caption"] if with_captions else [])
        if pair_names:
            needs.append("zero_shot_prompts" if getattr(args, "prompt", None) else "zero_shot_attributes")
        model = options.load(args, tuple(needs), model_record)
        for path in missing:  # reported before the photos are read; each keeps its row
            print(f"vila-tf: {names.written(path)}: no such file or folder", file=sys.stderr)
        try:
            return _stream_rows(args, model, output, fmt, cols, with_captions, pair_names, set(missing))
        finally:
            model.close()  # queued decodes are cancelled, so an interrupted run exits at once
    finally:
        if output is not None:
            output.abandon()  # nothing when the rows were written (closed already)


def _stream_rows(args, model, output, fmt: str, cols: list[str], with_captions: bool, pair_names: tuple,
                 reported: set = frozenset()) -> int:
    try:
        pair_task = model.zero_shot_task(getattr(args, "prompt", None)) if pair_names else None
    except ValueError as e:  # a pair a LiteRT export does not have baked in
        raise UsageError(f"{args.model}: {e}") from None
    best = _Best(args.contact_sheet_max) if getattr(args, "contact_sheet", None) else None
    # Files of folder/glob walks that are not images: listed in one summary line at the end.
    skipped_files = image_formats.SkipReport()
    exclude = [output.identity] if output is not None and output.identity else []
    sheet = getattr(args, "contact_sheet", None)
    if sheet and os.path.isfile(sheet):
        st = os.stat(sheet)
        exclude.append((st.st_dev, st.st_ino))  # our own outputs are never inputs
    items = inputs_lib.iter_items(args.inputs, skipped_files, exclude=exclude)
    skipper = None
    if args.resume:
        skipper = _Skipper(args.output, fmt, cols, args.command, best, pair_names)
        items = skipper.filter(items)
        print(f"vila-tf: resuming {args.output}: {output.kept} rows already there", file=sys.stderr)
    for note in output.notes if output is not None else ():
        print(f"vila-tf: {note}", file=sys.stderr)
    progress = Progress(args.command, args.progress or sys.stderr.isatty())
    progress.count_in_background(args.inputs)
    table: Optional[list] = [] if fmt == "table" else None
    if output is not None:
        out = output.begin()
        fresh = output.fresh
    else:
        fresh, out = True, sys.stdout
    failed = processed = flushed = 0
    step = args.batch_size
    try:
        writer = results_file.RowWriter(out, fmt, cols, header=fresh) if table is None else None
        run_tasks = [pair_task if args.command == "zero-shot" else tasks.BY_COMMAND[args.command].name]
        run_tasks += ["caption"] if with_captions else []
        run_tasks += [pair_task] if pair_task is not None and args.command != "zero-shot" else []
        for r in model.stream(tuple(run_tasks), items, batch_size=args.batch_size, batches_ahead=args.batches_ahead):
            value, caption, pairs = _unpack(r.value, run_tasks)
            row = results_file.make_row(args.command, r.source, value, r.error, caption, with_captions, pairs)
            if table is not None:
                table.append(row)
            else:
                writer.write(row)
            if r.error is not None:
                failed += 1
                if r.source not in reported:
                    progress.message(f"vila-tf: {names.written(r.source)}: {r.error}")
            elif best is not None:
                best.add(value, r.source, caption, tuple(pairs.values()) if pairs else None)
            processed += 1
            if processed % step == 0:  # one batch: on disk (a SIGKILL loses at most what is in flight)
                out.flush()
                flushed = processed
            progress.update(processed, skipper.skipped if skipper else 0)  # from the first photo
        if table is not None:
            _write_table(table, out)
        out.flush()
        flushed = processed
        if output is not None:
            output.close()
    except OSError as e:
        if output is None:
            raise
        output_file.close_quietly(out)
        return _write_failed(args, e, flushed + output.kept)
    skipped = skipper.skipped if skipper else 0
    failed += skipper.failed if skipper else 0
    progress.update(processed, skipped, final=True)
    if best is not None:
        _write_contact_sheet(best, args.contact_sheet, with_captions, pair_names)
    for line in skipped_files.lines():
        print(f"vila-tf: {line}", file=sys.stderr)
    if failed:
        print(f"vila-tf: {failed} of {processed + skipped} inputs failed", file=sys.stderr)
    return EXIT_SOME_FAILED if failed else EXIT_OK

