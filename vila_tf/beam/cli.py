"""`vila-tf beam`: the command line of a Beam job (its own parser: unknown flags are Beam's
pipeline options), checked before any worker starts; a user error is one line and exit 2."""
from __future__ import annotations


import argparse
import json
import logging
import os
import sys
import time
import traceback
from typing import Optional

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions

from vila_tf.core import buckets
from vila_tf.core import zero_shot
from vila_tf.beam import io as beam_io, names, overlap, shards
from vila_tf.beam.leftovers import TempFolders
from vila_tf.core.exits import EXIT_ERROR, EXIT_OK, EXIT_SOME_FAILED
from vila_tf.beam.handler import (ERRORS, METRICS_NAMESPACE, RESULTS, TASKS,
                                  is_remote, log, remote_savedmodel)
from vila_tf.beam.transforms import build
from vila_tf.core import metadata as export_metadata
from vila_tf.core.metadata import ExportMetadata
from vila_tf.core.signatures import METADATA_RELATIVE
from vila_tf.core.versions import resolve_savedmodel

# -- the command ------------------------------------------------------------------------------------------

_FILTERED_ENDING = {"tfrecord": "tfrecord*", "webdataset": "tar", "parquet": "parquet"}
_FILTERED_SUFFIXES = {"tfrecord": (".tfrecord", ".tfrecord.gz"), "webdataset": (".tar",), "parquet": (".parquet",)}

class UsageError(Exception):
    """A problem the user fixes in the command line (exit code 2)."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vila-tf beam", allow_abbrev=False,  # no abbreviations: they would swallow Beam's flags
        description="Run an exported VILA model over image files, or the images in TFRecord, WebDataset or "
                    "Parquet shards, matched by patterns, on Apache Beam.",
        epilog="Every other --flag is a Beam pipeline option (--runner, --project, --region, "
               "--direct_num_workers, ...). Writes PREFIX-results-*.jsonl (or .parquet) and "
               "PREFIX-errors-*.jsonl. "
               "Exit code 0: every input processed; 1: some failed (see the errors files); 2: a usage error, "
               "or the job itself failed.")
    p.add_argument("task", choices=list(TASKS), metavar="COMMAND",
                   help="; ".join(f"{name}: {t.help}" for name, t in TASKS.items()))
    p.add_argument("model", metavar="MODEL", help="exported SavedModel folder, or a TF Serving base folder (newest version); "
                                 "local, or on any Beam filesystem (gs://, s3://)")
    p.add_argument("--input", action="append", required=True, metavar="PATTERN",
                   help="files or shards to process, e.g. 'photos/*.jpg', 'gs://bucket/photos/**' (** crosses folders); "
                        "repeat for several patterns")
    p.add_argument("--output", required=True, metavar="PREFIX", help="where the outputs go: PREFIX-results-*, PREFIX-errors-*")
    d = p.add_argument_group("datasets in shards (see docs/datasets.md)")
    d.add_argument("--input-format", choices=("files",) + shards.FORMATS,
                   help="files: each file is an image (the default); tfrecord: tf.train.Example records (plain or "
                        "GZIP); webdataset: tar shards; parquet: a binary image column. Default: inferred from "
                        "the patterns' extension (.tfrecord[.gz], .tfrec, .tar, .parquet) when they agree")
    d.add_argument("--image-key", metavar="KEY",
                   help=f"tfrecord: the bytes feature (default {shards.DEFAULT_TFRECORD_IMAGE_KEY}); webdataset: the "
                        "member extension (default: the first of jpg, jpeg, png); parquet: the column "
                        f"(default {shards.DEFAULT_PARQUET_IMAGE_KEY})")
    d.add_argument("--id-key", metavar="KEY",
                   help="tfrecord: a bytes/int feature naming the record; parquet: a column (default: "
                        "<file>:<record or row number>); webdataset samples are named by their __key__")
    d.add_argument("--output-format", choices=("jsonl", "parquet"), default="jsonl",
                   help="results as JSON Lines (default) or Parquet (one row per id; embeddings as a fixed-size "
                        "float32 list); errors are always JSON Lines")
    d.add_argument("--min-score", type=float, metavar="X",
                   help="with --filtered-output: keep the records scoring >= X (score and zero-shot)")
    d.add_argument("--filtered-output", metavar="PREFIX",
                   help="write the records that pass --min-score in the input's own format with the score added "
                        f"(a {shards.SCORE_KEY} feature / column / .{shards.SCORE_KEY} member)")
    p.add_argument("--prompt", action="append", metavar="'GOOD|BAD'",
                   help="zero-shot: score your own good/bad prompt pair instead of the release's six attributes "
                        "(repeatable); each a column named 'GOOD|BAD', score their mean")
    p.add_argument("--batch-size", type=int, default=buckets.MAX_BATCH, choices=buckets.BUCKETS,
                   help=f"images per model call (default {buckets.MAX_BATCH})")
    p.add_argument("--device", help="e.g. GPU:0 on GPU workers (default: TensorFlow's placement: "
                                    "its first GPU when it sees one, else the CPU)")
    p.add_argument("--release-exact-orientation", action="store_true",
                   help="score photos as stored, ignoring their EXIF orientation, exactly as the release did")
    p.add_argument("--detach", action="store_true",
                   help="return once a remote runner has accepted the job instead of waiting for it")
    return p


def _runner_name(options: PipelineOptions) -> str:
    runner = options.view_as(StandardOptions).runner or StandardOptions.DEFAULT_RUNNER
    return runner if isinstance(runner, str) else type(runner).__name__


def _pipeline_options(beam_args: list[str]) -> PipelineOptions:
    options = PipelineOptions(beam_args)
    logging.getLogger("apache_beam.options.pipeline_options").setLevel(logging.ERROR)  # we report them
    unknown = set(options.get_all_options(retain_unknown_options=True)) - set(options.get_all_options())
    # Beam drops words that follow no --flag (e.g. a second model or an image given without --input).
    stray = [a for i, a in enumerate(beam_args)
             if not a.startswith("-") and not (i and beam_args[i - 1].startswith("--") and "=" not in beam_args[i - 1])]
    if unknown or stray:
        names = ", ".join(sorted(f"--{u}" for u in unknown) + stray)
        raise UsageError(f"unrecognized arguments: {names} (neither a vila-tf beam option nor a Beam pipeline "
                         "option; see vila-tf beam --help)")
    direct = options.view_as(DirectOptions)
    if _runner_name(options) == "DirectRunner" and direct.direct_running_mode != "in_memory":
        # The DirectRunner hands a pipeline to Prism when it can download it, and Prism ignores the
        # direct_* worker flags; the FnApiRunner is the local runner that implements them.
        options.view_as(StandardOptions).runner = "FnApiRunner"
    return options


def _check_inputs(patterns: list[str]) -> None:
    """Fails before the job starts when a pattern matches nothing (a typo would give empty outputs)."""
    for pattern in patterns:
        if not is_remote(pattern) and os.path.isdir(pattern):
            raise UsageError(f"--input {pattern} is a folder: give a pattern, e.g. '{pattern.rstrip('/')}/*' "
                             f"or '{pattern.rstrip('/')}/**' (recursive)")
        try:
            found = FileSystems.match([beam_io.beam_pattern(pattern)], limits=[1])[0].metadata_list
        except Exception as e:  # noqa: BLE001  (Beam raises BeamIOError or ValueError, per filesystem)
            raise UsageError(f"--input {pattern}: {e}") from e
        if not found:
            raise UsageError(f"--input {pattern}: matches no files")


def _outputs(args: argparse.Namespace) -> list:
    """Every output prefix of the job, with the endings Beam gives its files."""
    out = [overlap.Output(f"--output {args.output}", f"{args.output}-{RESULTS}", (f".{args.output_format}",)),
           overlap.Output(f"--output {args.output}", f"{args.output}-{ERRORS}", (".jsonl",))]
    if args.filtered_output is not None:
        out.append(overlap.Output(f"--filtered-output {args.filtered_output}", args.filtered_output,
                                  _FILTERED_SUFFIXES[args.input_format]))
    return out


def _local_matches(pattern: str) -> list:
    if is_remote(pattern):
        return []
    return [m.path for m in FileSystems.match([beam_io.beam_pattern(pattern)])[0].metadata_list]


def _check_outputs(args: argparse.Namespace) -> None:
    """No output may replace an input (a filtered copy named like its input shards replaced them)."""
    for flag, prefix in (("--output", args.output), ("--filtered-output", args.filtered_output)):
        if prefix is not None and names.carry(prefix) != prefix:  # Beam passes its file names as UTF-8 text
            raise UsageError(f"{flag} {names.shown(prefix)}: Beam cannot write file names that are not UTF-8; "
                             "choose a UTF-8 prefix (inputs may have any names)")
    problem = overlap.overwritten_input(args.input, _outputs(args), _local_matches)
    if problem:
        raise UsageError(problem)


def _input_format(args: argparse.Namespace) -> str:
    """--input-format, or the one format all the patterns' extensions name, or files."""
    if args.input_format:
        return args.input_format
    # The pattern's ending, else its first file's ('data/train-*' matching train-00000.tfrecord).
    named = {shards.format_of(p) or shards.format_of(beam_io.first_file([p]) or "") for p in args.input}
    if len(named) == 1:
        return named.pop() or "files"
    raise UsageError(f"the --input patterns name different formats ({', '.join(sorted(str(n) for n in named))}): "
                     "give --input-format")


def _check_dataset_args(args: argparse.Namespace) -> None:
    fmt = args.input_format
    if fmt == "files" and (args.image_key or args.id_key):
        raise UsageError("--image-key and --id-key are for datasets in shards: give --input-format "
                         "tfrecord, webdataset or parquet")
    if fmt == "webdataset" and args.id_key:
        raise UsageError("--id-key: WebDataset samples are named by their __key__")
    if args.prompt is not None:
        if args.task != "zero-shot":
            raise UsageError(f"--prompt is for zero-shot, not {args.task}")
        try:
            zero_shot.pairs_from(args.prompt)
        except zero_shot.PromptError as e:
            raise UsageError(f"--prompt: {e}") from e
    if (args.min_score is None) != (args.filtered_output is None):
        raise UsageError("--min-score and --filtered-output go together")
    if args.filtered_output is not None:
        if fmt == "files":
            raise UsageError("--filtered-output copies records of a dataset in shards: give --input-format "
                             "tfrecord, webdataset or parquet")
        if TASKS[args.task].field != "score":
            raise UsageError(f"--min-score filters on a score: use score or zero-shot, not {args.task}")


def _embedding_size(path: str) -> int:
    """The embedding width, from the export's metadata (the Parquet column is a fixed-size list)."""
    folder = remote_savedmodel(path) if is_remote(path) else resolve_savedmodel(path)
    meta_path = FileSystems.join(folder, *METADATA_RELATIVE.split("/"))
    try:
        with FileSystems.open(meta_path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            size = ExportMetadata.from_json(json.load(f), meta_path).model_dims
    except Exception as e:  # noqa: BLE001  (any filesystem's error: the message names the file)
        raise UsageError(f"--output-format parquet: cannot read the embedding size from {meta_path}: {e}") from e
    if not size:
        raise UsageError(f"--output-format parquet: {meta_path} does not give the embedding size (config.model_dims)")
    return int(size)


def _check_model(path: str, runner: str) -> None:
    if is_remote(path):
        try:
            remote_savedmodel(path)
        except Exception as e:  # noqa: BLE001
            raise UsageError(f"cannot use model {path}: {e}") from e
    elif os.path.exists(path) or runner in StandardOptions.LOCAL_RUNNERS:
        from vila_tf.litert import format as litert_format
        if litert_format.is_litert_dir(path):
            raise UsageError(f"cannot use model {path}: a LiteRT export; Beam runs the SavedModel (its workers "
                             "batch on TensorFlow): give the SavedModel it was converted from, or use "
                             "`vila-tf score` on the LiteRT folder")
        try:
            export_metadata.read(resolve_savedmodel(path))  # before any worker starts
        except (FileNotFoundError, export_metadata.MetadataError) as e:
            raise UsageError(f"cannot use model: {e}") from e
    else:
        log.warning("model %s is not on this machine: the %s workers must have it at that path "
                    "(in their container), or give a gs:// / s3:// path", path, runner)


def _counter(result, name: str) -> Optional[int]:
    try:
        found = result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE).with_name(name))
        return sum(int(c.result or 0) for c in found["counters"])
    except Exception:  # noqa: BLE001  (not every runner reports metrics)
        return None


def run(args: argparse.Namespace, options: PipelineOptions) -> int:
    pipeline = beam.Pipeline(options=options)
    embedding_size = _embedding_size(args.model) if args.output_format == "parquet" and args.task == "embed" else None
    build(pipeline, args.model, args.task, args.input, args.output, args.batch_size, args.device,
          input_format=args.input_format, image_key=args.image_key, id_key=args.id_key,
          output_format=args.output_format, min_score=args.min_score, filtered_output=args.filtered_output,
          embedding_size=embedding_size, exif_orientation=not getattr(args, "release_exact_orientation", False),
          prompts=args.prompt)
    results = f"{args.output}-{RESULTS}-*.{args.output_format}"
    filtered = f"{args.filtered_output}-*.{_FILTERED_ENDING.get(args.input_format)}"
    start = time.time()
    temp = TempFolders(o.prefix for o in _outputs(args))
    try:
        result = pipeline.run()
        if args.detach:
            print(f"vila-tf beam: job submitted ({getattr(result, 'state', 'unknown state')})", file=sys.stderr)
            return EXIT_OK
        result.wait_until_finish()
    except BaseException:
        # A failed (or interrupted) job leaves its outputs' half-written temporary folders behind.
        for path in temp.remove_new(start):
            log.info("removed the failed job's temporary folder %s", path)
        raise
    seconds = time.time() - start
    done, failed = _counter(result, "images_done"), _counter(result, "images_failed")
    unreadable = (_counter(result, "files_unreadable") or 0) + (_counter(result, "records_unreadable") or 0)
    if done is None or failed is None:
        print(f"vila-tf beam: finished in {seconds:.1f} s; results in {results}, "
              f"failures in {args.output}-{ERRORS}-*.jsonl"
              + (f", filtered copy in {filtered}" if args.filtered_output else ""), file=sys.stderr)
        return EXIT_OK
    failed += unreadable
    kept = (f"; {_counter(result, 'records_kept') or 0} scoring >= {args.min_score:g} -> {filtered}"
            if args.filtered_output else "")
    print(f"vila-tf beam: {done} images -> {results}, {failed} failed -> "
          f"{args.output}-{ERRORS}-*.jsonl{kept} ({seconds:.1f} s with start-up)", file=sys.stderr)
    return EXIT_SOME_FAILED if failed else EXIT_OK


def main(argv: Optional[list] = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args, beam_args = _parser().parse_known_args(argv)
    try:
        options = _pipeline_options(beam_args)
        _check_inputs(args.input)
        args.input_format = _input_format(args)
        _check_dataset_args(args)
        _check_outputs(args)
        _check_model(args.model, _runner_name(options))
    except UsageError as e:
        print(f"vila-tf beam: {e}", file=sys.stderr)
        return EXIT_ERROR
    try:
        return run(args, options)
    except KeyboardInterrupt:
        print("vila-tf beam: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001  (a failed job: the model, the workers or the storage, not an image)
        traceback.print_exc()
        print(f"vila-tf beam: the job failed: {type(e).__name__}: {(str(e).strip().splitlines() or [''])[-1][:500]}",
              file=sys.stderr)
        return EXIT_ERROR
