"""Batch scoring on Apache Beam: millions of photos on Dataflow, Flink, Spark or the DirectRunner.

    vila-tf beam score exported/vila_r --input 'gs://bucket/photos/**' --output gs://bucket/vila/run1 \\
        --runner=DataflowRunner --project=... --region=...

The pipeline:

    patterns -> MatchAll -> paths, deduplicated  (the shuffle also spreads them over the workers)
             -> ReadMatches -> (path, bytes)                       an unreadable file -> an error record
             -> RunInference(KeyedModelHandler(VilaModelHandler))  a bad image -> an error record
             -> PREFIX-results-*.jsonl   {"input": path, "score": 0.63}       (or .parquet: --output-format)
                PREFIX-errors-*.jsonl    {"input": path, "error": "not a JPEG, PNG, GIF, BMP, WebP, ... image"}

Datasets in shards (--input-format tfrecord|webdataset|parquet) are read by `vila_tf.beam_io`
instead of ReadMatches, their records are named by id, and --min-score/--filtered-output writes
the passing records back in the input's format (docs/datasets.md).

Decoding, batching (padded to the export's buckets) and per-image failures are `vila_tf.VilaModel`'s;
this module only moves bytes and records. Each worker process loads one copy of the model (Beam's
per-process `Shared` cache). A model under gs:// or s3:// is copied to local disk once per machine.

Needs Apache Beam (`pip install 'vila-tf[beam]'`); `import vila_tf` never imports this module.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import traceback
import warnings
from typing import Any, Iterable, NamedTuple, Optional, Sequence

try:
    import apache_beam as beam
except ImportError as e:  # the runtime works without Beam; only this module needs it
    raise ImportError("vila_tf.beam needs Apache Beam: pip install 'vila-tf[beam]' (or apache-beam)") from e
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, PredictionResult, RunInference
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions

from vila_tf import beam_io, buckets, shards

log = logging.getLogger("vila_tf.beam")
EXIT_OK, EXIT_SOME_FAILED, EXIT_ERROR = 0, 1, 2
METRICS_NAMESPACE = "vila_tf"
RESULTS, ERRORS = "results", "errors"
FAILED_ON_IMAGE = "the model failed on this image"


class Task(NamedTuple):
    method: str  # the VilaModel method that runs it
    field: str  # the key of its value in a result record (as the `vila-tf` command's jsonl output)
    help: str


TASKS = {
    "score": Task("score", "score", "aesthetic score per image (VILA-R; zero-shot score for a pretrain model)"),
    "zero-shot": Task("zero_shot", "score", "zero-shot quality score from the release's good/bad prompt pairs"),
    "caption": Task("caption", "caption", "an aesthetic comment per image (greedy decoding)"),
    "embed": Task("image_embedding", "embedding", "l2-normalized image embeddings"),
}


def _json_value(field: str, value) -> Any:
    # Same rounding as `vila-tf ... --format jsonl`, so both commands write the same records.
    if field == "embedding":
        return [round(float(x), 7) for x in value]
    if field == "caption":
        return value
    return round(float(value), 6)


# -- the model on a worker ---------------------------------------------------------------------------

def _is_remote(path: str) -> bool:
    return FileSystems.get_scheme(path) not in (None, "file")


def _remote_savedmodel(path: str) -> str:
    """The SavedModel folder at a remote `path`, or the newest numbered version under it (TF Serving layout)."""
    path = path.rstrip("/")
    if FileSystems.exists(FileSystems.join(path, "saved_model.pb")):
        return path
    found = FileSystems.match([FileSystems.join(path, "*", "saved_model.pb")])[0].metadata_list
    versions = {}
    for m in found:
        folder = m.path[: -len("/saved_model.pb")]
        name = folder.rsplit("/", 1)[-1]
        if name.isdigit():
            versions[int(name)] = folder
    if not versions:
        raise FileNotFoundError(f"{path}: not a SavedModel folder (no saved_model.pb) nor a TF Serving base "
                                "folder with numbered versions")
    return versions[max(versions)]


def fetch_savedmodel(path: str, cache_dir: Optional[str] = None) -> str:
    """Copies a SavedModel from any Beam filesystem (gs://, s3://, ...) to local disk and returns the copy.

    TensorFlow reads SavedModels from local disk on every platform, and each of a machine's worker
    processes would otherwise download its own copy (1.2 GB at full size): the copy is shared by
    the machine's processes, named after the source, and renamed into place only when complete.
    """
    source = _remote_savedmodel(path)
    cache_dir = cache_dir or os.path.join(tempfile.gettempdir(), "vila_tf-models")
    dest = os.path.join(cache_dir, hashlib.sha256(source.encode()).hexdigest()[:16])
    if os.path.isfile(os.path.join(dest, "saved_model.pb")):
        return dest
    os.makedirs(cache_dir, exist_ok=True)
    partial = tempfile.mkdtemp(prefix=".partial-", dir=cache_dir)
    try:
        for m in FileSystems.match([source + "/**"])[0].metadata_list:
            relative = m.path[len(source):].strip("/")
            if not relative or m.path.endswith("/"):  # object stores list folder placeholders too
                continue
            local = os.path.join(partial, *relative.split("/"))
            os.makedirs(os.path.dirname(local), exist_ok=True)
            with FileSystems.open(m.path, compression_type=CompressionTypes.UNCOMPRESSED) as src, \
                    open(local, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 22)
        os.rename(partial, dest)
        log.info("copied %s to %s", source, dest)
    except OSError:
        if not os.path.isfile(os.path.join(dest, "saved_model.pb")):
            raise
        # Another process on this machine finished the same copy first: use theirs.
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return dest


class VilaModelHandler(ModelHandler[bytes, PredictionResult, Any]):
    """RunInference handler for an exported VILA model: encoded image bytes in, one record body out.

    Each inference is `{"score": 0.63}` (`{"caption": ...}`, `{"embedding": [...]}`), or
    `{"error": reason}` for an image the model could not read. Wrap it in `KeyedModelHandler` to keep
    file names with the results. Batches are exactly `batch_size` images (one of the export's
    buckets, so no padding) except the last of each bundle, which VilaModel pads to the next bucket.
    """

    def __init__(self, model_path: str, task: str = "score", batch_size: int = buckets.MAX_BATCH,
                 device: Optional[str] = None, raw_values: bool = False, exif_orientation: bool = True):
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
        if batch_size not in buckets.BUCKETS:
            raise ValueError(f"batch size {batch_size} is not one of the export's buckets {buckets.BUCKETS}")
        # Leaving share_model_across_processes() False: Beam keeps one model per worker process,
        # shared by that process's threads (VilaModel is thread-safe).
        super().__init__(min_batch_size=batch_size, max_batch_size=batch_size)
        self.model_path, self.task, self.batch_size, self.device = model_path, task, batch_size, device
        # raw_values: the model's float32 values (np.float32 / arrays) instead of JSON-rounded ones,
        # for writers that keep full precision (Parquet) or compare scores to a threshold.
        self.raw_values = raw_values
        self.exif_orientation = exif_orientation  # False: photos as stored, as the release scored them

    def load_model(self):
        from vila_tf import model as model_lib  # TensorFlow is imported on the workers only
        # Failed images go to the errors output; VilaModel's warning per failed image (named "<bytes i>",
        # as the handler passes bytes) would only flood the worker logs.
        warnings.filterwarnings("ignore", message=r"<bytes \d+>: ", category=RuntimeWarning, module=r"vila_tf\.")
        path = fetch_savedmodel(self.model_path) if _is_remote(self.model_path) else self.model_path
        log.info("vila_tf.beam: process %d loads %s", os.getpid(), path)
        return model_lib.load(path, device=self.device, exif_orientation=self.exif_orientation)

    def run_inference(self, batch: Sequence[bytes], model, inference_args: Optional[dict] = None
                      ) -> Iterable[PredictionResult]:
        field = TASKS[self.task].field
        batch = list(batch)
        try:
            values, failed = self._run(model, batch)
        except Exception as batch_error:  # noqa: BLE001
            values, failed = self._run_one_by_one(model, batch, batch_error)
        value = (lambda v: v) if self.raw_values else (lambda v: _json_value(field, v))
        return [PredictionResult(example, {"error": failed[i]} if i in failed else {field: value(values[i])},
                                 self.model_path)
                for i, example in enumerate(batch)]

    def _run(self, model, images: list) -> tuple[list, dict]:
        """VilaModel reports the images it cannot read (NaN rows) instead of raising."""
        values, errors = getattr(model, TASKS[self.task].method)(images, batch_size=self.batch_size,
                                                                  return_errors=True)
        return list(values), {e.index: e.reason for e in errors}

    def _run_one_by_one(self, model, batch: list, batch_error: Exception) -> tuple[list, dict]:
        """After a batch raised: each image alone, so one image the model chokes on fails alone."""
        values, failed, raised = [None] * len(batch), {}, 0
        for i, image in enumerate(batch):
            try:
                value, errors = self._run(model, [image])
                values[i] = value[0]
                if errors:
                    failed[i] = errors[0]
            except Exception as e:  # noqa: BLE001
                raised += 1
                failed[i] = f"{FAILED_ON_IMAGE}: {type(e).__name__}: {str(e).strip()[:300]}"
        if raised == len(batch) > 1:
            raise batch_error  # every image fails alone too: the model or the worker is broken, not the images
        return values, failed

    def get_num_bytes(self, batch: Sequence[bytes]) -> int:
        return sum(len(b) for b in batch)  # the default pickles the whole batch to measure it

    def get_metrics_namespace(self) -> str:
        return METRICS_NAMESPACE


# -- the pipeline ---------------------------------------------------------------------------------------

class _ReadBytes(beam.DoFn):
    """ReadableFile -> (path, bytes); a file that cannot be read -> an error record."""

    def __init__(self):
        self.unreadable = Metrics.counter(METRICS_NAMESPACE, "files_unreadable")

    def process(self, readable: fileio.ReadableFile):
        path = readable.metadata.path
        try:
            yield path, readable.read()
        except (OSError, IOError) as e:  # BeamIOError is an IOError
            self.unreadable.inc()
            yield beam.pvalue.TaggedOutput(ERRORS, {"input": path, "error": f"cannot read: {e}"})


class ReadImages(beam.PTransform):
    """File patterns -> (path, image bytes), with unreadable files in the `errors` output."""

    def expand(self, patterns):
        return (patterns
                | "Match" >> fileio.MatchAll(empty_match_treatment=fileio.EmptyMatchTreatment.ALLOW)
                | "Paths" >> beam.Map(lambda metadata: metadata.path)
                # Overlapping patterns would score a file twice; the grouping also redistributes the
                # files, which one pattern's match would otherwise leave on a single worker.
                | "Distinct" >> beam.Distinct()
                # Bytes as stored: AUTO would decompress a photo whose name ends in .gz or .bz2.
                | "Open" >> fileio.ReadMatches(compression=CompressionTypes.UNCOMPRESSED)
                | "Read" >> beam.ParDo(_ReadBytes()).with_outputs(ERRORS, main="images"))


class RunVila(beam.PTransform):
    """(key, image bytes) -> result records, with the images the model could not read in `errors`.

    The key is a file path (records `{"input": path, ...}`) or, from `beam_io.ReadShardImages`, an
    (id, record) pair (records `{"id": id, ...}`). Values are the model's own float32 (the writers
    round them for JSON). With `min_score`, the records scoring at least that come out, with their
    score added, in the `filtered` output (for `beam_io.WriteFiltered`).
    """

    def __init__(self, model_path: str, task: str = "score", batch_size: int = buckets.MAX_BATCH,
                 device: Optional[str] = None, input_format: Optional[str] = None,
                 min_score: Optional[float] = None, id_field: str = "input", exif_orientation: bool = True):
        super().__init__()
        self.handler = KeyedModelHandler(VilaModelHandler(model_path, task, batch_size, device, raw_values=True,
                                                          exif_orientation=exif_orientation))
        self.judge = beam_io.Judge(TASKS[task].field, input_format, min_score, id_field)

    def expand(self, images):
        return (images
                | "RunInference" >> RunInference(self.handler)
                | "Judge" >> beam.ParDo(self.judge).with_outputs(ERRORS, beam_io.FILTERED, main=RESULTS))


WriteJsonLines = beam_io.WriteJsonLines  # records -> PREFIX-00000-of-0000N.jsonl


def build(pipeline: beam.Pipeline, model_path: str, task: str, patterns: Sequence[str], output: str,
          batch_size: int = buckets.MAX_BATCH, device: Optional[str] = None, *, input_format: str = "files",
          image_key: Optional[str] = None, id_key: Optional[str] = None, output_format: str = "jsonl",
          min_score: Optional[float] = None, filtered_output: Optional[str] = None,
          embedding_size: Optional[int] = None, exif_orientation: bool = True) -> None:
    """Adds the whole job to `pipeline`: PATTERNS -> OUTPUT-results-*.jsonl|parquet, OUTPUT-errors-*.jsonl,
    and with `filtered_output`, the records scoring >= `min_score` in the input's format (datasets only)."""
    field = TASKS[task].field
    keep = filtered_output is not None
    if keep and (input_format == "files" or min_score is None):
        raise ValueError("a filtered copy needs a dataset input format and min_score")
    patterns = list(patterns)
    sources = pipeline | "Patterns" >> beam.Create(patterns)
    parquet_schema = gzip = None
    if input_format == "files":
        read = sources | "ReadImages" >> ReadImages()
        images, read_errors, id_field = read.images, read[ERRORS], "input"
    else:
        first = beam_io.first_file(patterns) if keep else None
        if keep and input_format == "parquet":
            parquet_schema = beam_io.parquet_schema(patterns)
        gzip = keep and input_format == "tfrecord" and beam_io.tfrecord_is_gzip(first)
        read = sources | "ReadShards" >> beam_io.ReadShardImages(input_format, image_key, id_key, keep,
                                                                 parquet_schema)
        images, read_errors, id_field = read[beam_io.IMAGES], read[ERRORS], "id"
    judged = images | "RunVila" >> RunVila(model_path, task, batch_size, device, input_format,
                                           min_score if keep else None, id_field, exif_orientation)
    if output_format == "parquet":
        _ = judged[RESULTS] | "WriteResults" >> beam_io.WriteParquetResults(f"{output}-{RESULTS}", field,
                                                                             embedding_size, id_field)
    else:
        _ = judged[RESULTS] | "WriteResults" >> WriteJsonLines(f"{output}-{RESULTS}")
    _ = ((read_errors, judged[ERRORS]) | "AllErrors" >> beam.Flatten()
         | "WriteErrors" >> WriteJsonLines(f"{output}-{ERRORS}"))
    if keep:
        _ = judged[beam_io.FILTERED] | "WriteFiltered" >> beam_io.WriteFiltered(input_format, filtered_output, gzip,
                                                                                parquet_schema)


# -- the command ------------------------------------------------------------------------------------------

_FILTERED_ENDING = {"tfrecord": "tfrecord*", "webdataset": "tar", "parquet": "parquet"}

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
    p.add_argument("--batch-size", type=int, default=buckets.MAX_BATCH, choices=buckets.BUCKETS,
                   help=f"images per model call (default {buckets.MAX_BATCH})")
    p.add_argument("--device", help="e.g. GPU:0 on GPU workers (default: TensorFlow's choice)")
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
        if not _is_remote(pattern) and os.path.isdir(pattern):
            raise UsageError(f"--input {pattern} is a folder: give a pattern, e.g. '{pattern.rstrip('/')}/*' "
                             f"or '{pattern.rstrip('/')}/**' (recursive)")
        try:
            found = FileSystems.match([pattern], limits=[1])[0].metadata_list
        except Exception as e:  # noqa: BLE001  (Beam raises BeamIOError or ValueError, per filesystem)
            raise UsageError(f"--input {pattern}: {e}") from e
        if not found:
            raise UsageError(f"--input {pattern}: matches no files")


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
    from vila_tf.signatures import METADATA_RELATIVE
    folder = _remote_savedmodel(path) if _is_remote(path) else _local_savedmodel(path)
    meta_path = FileSystems.join(folder, *METADATA_RELATIVE.split("/"))
    try:
        with FileSystems.open(meta_path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            size = json.load(f).get("config", {}).get("model_dims")
    except Exception as e:  # noqa: BLE001
        raise UsageError(f"--output-format parquet: cannot read the embedding size from {meta_path}: {e}") from e
    if not size:
        raise UsageError(f"--output-format parquet: {meta_path} does not give the embedding size (config.model_dims)")
    return int(size)


def _local_savedmodel(path: str) -> str:
    from vila_tf.model import resolve_savedmodel
    return resolve_savedmodel(path)


def _check_model(path: str, runner: str) -> None:
    if _is_remote(path):
        try:
            _remote_savedmodel(path)
        except Exception as e:  # noqa: BLE001
            raise UsageError(f"cannot use model {path}: {e}") from e
    elif os.path.exists(path) or runner in StandardOptions.LOCAL_RUNNERS:
        from vila_tf.model import resolve_savedmodel
        try:
            resolve_savedmodel(path)
        except FileNotFoundError as e:
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
          embedding_size=embedding_size, exif_orientation=not getattr(args, "release_exact_orientation", False))
    results = f"{args.output}-{RESULTS}-*.{args.output_format}"
    filtered = f"{args.filtered_output}-*.{_FILTERED_ENDING.get(args.input_format)}"
    start = time.time()
    result = pipeline.run()
    if args.detach:
        print(f"vila-tf beam: job submitted ({getattr(result, 'state', 'unknown state')})", file=sys.stderr)
        return EXIT_OK
    result.wait_until_finish()
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


if __name__ == "__main__":
    # Run the importable module, not this __main__ copy, so the classes pickled for the workers
    # resolve there as vila_tf.beam.*.
    from vila_tf import beam as _beam
    sys.exit(_beam.main())
