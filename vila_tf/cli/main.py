"""`vila-tf`: score, zero-shot, caption and embed photos with an exported VILA model.

  vila-tf score MODEL photos/ extra.jpg 'shots/*.png' [--format table|csv|jsonl] [--output FILE]
  vila-tf score MODEL photos/ --contact-sheet sheet.png [--with-captions]
  vila-tf zero-shot MODEL photos/ [--prompt "sharp photo|blurry photo" ...] [--contact-sheet sheet.png]
  vila-tf caption MODEL photos/ ;  vila-tf embed MODEL ... --output emb.jsonl
  vila-tf info MODEL
  vila-tf evaluate MODEL --labels AVA.txt --images DIR --output OUT   (vila_tf/cli/evaluate.py)
  vila-tf rank MODEL 'a misty forest at dawn' library/ [--top K]      (vila_tf/cli/rank.py)

Rows are written (and flushed per batch) as they are scored; `--resume` continues an interrupted
run into the same --output (docs/streaming.md). The files a run writes are checked, locked and
recorded before the model loads (`vila_tf.output.output_file`, docs/reliability.md).

Exit codes: 0 every input processed, 1 some inputs failed (reported on stderr and in the output
with their reason; with --resume, rows kept from the interrupted run count too), 2 usage or
model error, or an output the run must not or cannot write (one line), 130 interrupted by
Ctrl-C. Files of a folder or glob that are not images are not scored and do not fail the run:
one summary line on stderr lists them (docs/formats.md).
"""
from __future__ import annotations

import argparse
import heapq
import math
import os
import sys
import warnings
from typing import Optional

import vila_tf
from vila_tf.core import buckets
from vila_tf.cli import contact_sheet
from vila_tf.inputs import image_formats
from vila_tf.inputs import items as inputs_lib
from vila_tf.core import names
from vila_tf.output import output_file
from vila_tf.output import results_file
from vila_tf.core import tasks
from vila_tf.savedmodel import tf_compat
from vila_tf.core import zero_shot
from vila_tf.cli import evaluate as evaluate_cmd  # commands with their own options and runner
from vila_tf.cli import rank as rank_cmd
from vila_tf.core.atomic import atomic_file
from vila_tf.cli.progress import Progress
from vila_tf.core.results import DemoModelWarning

EXIT_OK, EXIT_SOME_FAILED, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 130
CONTACT_SHEET_MAX = 200  # thumbnails kept (and drawn) at most: the best-scored ones
COMMANDS = {**{t.command: t.help for t in tasks.TASKS.values()},
            "info": "what the model is: kind, config, signatures, source"}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vila-tf", description="Run an exported VILA model on photos.",
        epilog="Batch jobs on Apache Beam: vila-tf beam {score,zero-shot,caption,embed} MODEL --input PATTERN "
               "--output PREFIX [pipeline options] (see vila-tf beam --help).")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        c = sub.add_parser(name, help=help_text, description=help_text)
        c.add_argument("model", help="exported SavedModel folder, or a TF Serving base folder (newest version), "
                                     "or a LiteRT export (python -m export litert)")
        c.add_argument("--variant", choices=["float32", "float16", "int8"], default=None,
                       help="which model of a LiteRT export (default float32)")
        if name == "info":
            continue
        c.add_argument("inputs", nargs="+", help="image files, folders (walked recursively) or glob patterns")
        c.add_argument("--format", choices=["table", "csv", "jsonl"], default=None,
                       help="output format (default: table on a terminal, else csv; embed: jsonl)")
        c.add_argument("--output", "-o", help="write results here instead of stdout (rows appear as they are "
                       "scored; .jsonl/.json: JSON Lines unless --format says otherwise)")
        c.add_argument("--resume", action="store_true",
                       help="continue an interrupted run into the same --output: inputs with a row there are "
                            "skipped, a torn last row is repaired")
        c.add_argument("--batch-size", type=int, default=buckets.MAX_BATCH,
                       help=f"images per model call (at most {buckets.MAX_BATCH})")
        c.add_argument("--device", help="e.g. GPU:0 or CPU:0 (default: TensorFlow's placement: "
                       "its first GPU when it sees one, else the CPU)")
        c.add_argument("--decode-threads", type=int, default=None, metavar="N",
                       help="threads reading and decoding images (default: min(8, CPU count))")
        c.add_argument("--batches-ahead", type=int, default=2, metavar="N",
                       help="batches decoded ahead of the model, at most (default 2)")
        c.add_argument("--progress", action="store_true", help="show the progress bar even when not on a terminal")
        c.add_argument("--decode-budget", type=float, default=None, metavar="MP",
                       help="megapixels the decode threads may decode at once (default 64: one 49 MP TIFF at a "
                            "time, about 1.6 GB; a JPEG counts a quarter of its pixels)")
        c.add_argument("--max-file-size", type=float, default=None, metavar="MB",
                       help="refuse image files larger than this, before reading them (default 500)")
        c.add_argument("--release-exact-orientation", action="store_true",
                       help="score photos as stored, ignoring their EXIF orientation, exactly as the release did "
                            "(default: turned upright as photo viewers show them)")
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
                                "score is the mean over your pairs")
    # Commands with their own options and runner (set_defaults(run=...)), each in its own module.
    evaluate_cmd.add_parser(sub)
    rank_cmd.add_parser(sub)
    return p


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
        images.append(item.data or b"")  # unreadable now: drawn as an empty box
    sheet = contact_sheet.render(images, [e[0] for e in best.heap],
                                 [e[3] for e in best.heap] if with_captions else None,
                                 [names.written(os.path.basename(e[2])) for e in best.heap],
                                 attributes=[e[4] for e in best.heap] if pair_names else None,
                                 attribute_names=pair_names)
    info = PngImagePlugin.PngInfo()
    info.add_text("Software", output_file.SHEET_SOFTWARE)  # so a later run knows it may replace it
    with atomic_file(path, "wb") as f:
        sheet.save(f, format="PNG", pnginfo=info)
    print(f"vila-tf: contact sheet of {len(best.heap)} images"
          + (f" (the best of {best.count})" if best.count > len(best.heap) else "") + f" -> {path}", file=sys.stderr)


def _info(model) -> int:
    if hasattr(model, "describe"):  # a LiteRT export (vila_tf.litert): its own summary
        print("\n".join(model.describe()))
        return EXIT_OK
    meta = model.metadata
    print(f"model: {model.path}")
    print(f"kind: {meta.model_kind or meta.model_type}" + ("  (DEMO weights: outputs mean nothing)"
                                                           if model.is_demo else ""))
    for k in ("source_checkpoint", "source_sha256", "dtype", "compute_dtype", "platforms",
              "calling_convention_version"):
        value = getattr(meta, k)
        if value not in (None, ()):
            print(f"{k}: {list(value) if isinstance(value, tuple) else value}")
    if meta.tensorflow_support:
        print(f"runs on TensorFlow: {tf_compat.supported_releases(meta)}")
    if meta.config:
        print("config: " + ", ".join(f"{k}={v}" for k, v in sorted(meta.config.items())))
    print("signatures:")
    for name, fn in sorted(model.signatures.items()):
        ins = ", ".join(f"{k} {v.dtype.name}{v.shape}" for k, v in fn.structured_input_signature[1].items())
        outs = ", ".join(f"{k} {v.dtype.name}{v.shape}" for k, v in fn.structured_outputs.items())
        print(f"  {name}({ins}) -> {outs}")
    return EXIT_OK


def _format(args) -> str:
    if args.format:
        return args.format
    if args.output:
        if args.output.lower().endswith((".jsonl", ".json")):
            return "jsonl"
        return "jsonl" if args.command == "embed" else "csv"
    return "jsonl" if args.command == "embed" else ("table" if sys.stdout.isatty() else "csv")


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


def _load(args):
    """The model, or None after a one-line reason on stderr."""
    mb = getattr(args, "max_file_size", None)
    mp = getattr(args, "decode_budget", None)
    try:
        return vila_tf.load(args.model, device=getattr(args, "device", None),
                            max_workers=getattr(args, "decode_threads", None),
                            exif_orientation=not getattr(args, "release_exact_orientation", False),
                            variant=getattr(args, "variant", None),
                            decode_budget_pixels=int(mp * 1e6) if mp else None,
                            max_file_bytes=int(mb * 1e6) if mb else None)
    except (FileNotFoundError, OSError, ValueError, ImportError, vila_tf.IncompatibleTensorFlowError) as e:
        print(f"vila-tf: cannot load model: {e}", file=sys.stderr)
        return None


def _run(args) -> int:
    if getattr(args, "prompt", None):  # a malformed pair fails before the model is loaded
        try:
            zero_shot.pairs_from(args.prompt)
        except zero_shot.PromptError as e:
            print(f"vila-tf: --prompt: {e}", file=sys.stderr)
            return EXIT_ERROR
    if args.command == "info":
        model = _load(args)
        if model is None:
            return EXIT_ERROR
        try:
            return _info(model)
        finally:
            model.close()
    return _score_all(args)


def _missing_task(args, model) -> Optional[str]:
    """Why `model` cannot run this command (a LiteRT export has the image heads only), or None."""
    wanted = [tasks.BY_COMMAND[args.command].name] + (["caption"] if getattr(args, "with_captions", False) else [])
    missing = [t for t in wanted if t not in getattr(model, "tasks", wanted)]
    if missing:
        return (f"{args.model}: no {missing[0]} in this export: a LiteRT export holds the image heads "
                "(score, zero-shot, embed); captions need the SavedModel")
    return None


def _prepare_outputs(args, fmt: str, cols: list[str]):
    """The checks on every file the run will write, before the model loads: the locked
    --output (None for stdout) and the --contact-sheet path. Raises output_file.OutputError."""
    output = None
    if args.output:
        try:
            model = output_file.model_record(args.model, getattr(args, "variant", None))
        except (FileNotFoundError, OSError, ValueError) as e:
            raise output_file.OutputError(f"cannot load model: {e}") from None
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


def _score_all(args) -> int:
    for flag in ("batch_size", "batches_ahead", "decode_threads", "decode_budget", "max_file_size"):
        if getattr(args, flag) is not None and getattr(args, flag) <= 0:
            print(f"vila-tf: --{flag.replace('_', '-')} must be > 0", file=sys.stderr)
            return EXIT_ERROR
    fmt = _format(args)
    if args.resume and (not args.output or fmt == "table"):
        print("vila-tf: --resume needs --output FILE in csv or jsonl format", file=sys.stderr)
        return EXIT_ERROR
    with_captions = bool(getattr(args, "with_captions", False))
    pair_names = _pair_names(args, with_captions)
    cols = results_file.columns(args.command, with_captions, pair_names)
    try:
        output = _prepare_outputs(args, fmt, cols)
    except output_file.OutputError as e:
        print(f"vila-tf: {e}", file=sys.stderr)
        return EXIT_ERROR
    model = _load(args)
    why = _missing_task(args, model) if model is not None else None
    if model is None or why:
        if why:
            print(f"vila-tf: {why}", file=sys.stderr)
            model.close()
        if output is not None:
            output.abandon()
        return EXIT_ERROR
    try:
        return _stream_rows(args, model, output, fmt, cols, with_captions, pair_names)
    finally:
        if output is not None:
            output.abandon()  # nothing when the rows were written (closed already)
        model.close()  # queued decodes are cancelled, so an interrupted run exits at once


def _stream_rows(args, model, output, fmt: str, cols: list[str], with_captions: bool, pair_names: tuple) -> int:
    pair_task = model.zero_shot_task(getattr(args, "prompt", None)) if pair_names else None
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
    step = max(1, min(args.batch_size, buckets.MAX_BATCH))
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
                progress.message(f"vila-tf: {names.written(r.source)}: {r.error}")
            elif best is not None:
                best.add(value, r.source, caption, tuple(pairs.values()) if pairs else None)
            processed += 1
            if processed % step == 0:  # one batch: on disk (a SIGKILL loses at most what is in flight)
                out.flush()
                flushed = processed
                progress.update(processed, skipper.skipped if skipper else 0)
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


def main(argv: Optional[list] = None) -> int:
    as_command = argv is None  # the console script, not a call from Python
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["beam"]:  # `vila-tf beam ...`: own parser, since unknown flags belong to Beam
        try:
            from vila_tf.beam import cli as beam_cli  # an optional integration: Apache Beam
        except ImportError as e:
            print(f"vila-tf: {e}", file=sys.stderr)
            return EXIT_ERROR
        return beam_cli.main(argv[1:])
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = _parser().parse_args(argv)
    warnings.simplefilter("ignore", RuntimeWarning)  # per-image failures are reported below instead
    warnings.simplefilter("always", DemoModelWarning)
    warnings.formatwarning = lambda msg, cat, *a, **k: f"vila-tf: WARNING: {msg}\n"
    try:
        return args.run(args) if hasattr(args, "run") else _run(args)
    except KeyboardInterrupt:
        print("\nvila-tf: interrupted (rows written so far are complete: rerun with --resume to continue)",
              file=sys.stderr)
        if as_command:
            # The rows are flushed and the output closed (the finally blocks ran). A decode thread
            # may still be blocked in a read (a hung network mount): exiting normally would wait
            # for it forever, so the command ends here.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(EXIT_INTERRUPTED)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
