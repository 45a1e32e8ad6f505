"""Beam transforms for image datasets in shards: TFRecord, WebDataset, Parquet (see docs/datasets.md).

    patterns -> MatchAll -> shard paths, deduplicated (the grouping spreads the shards over workers)
             -> ReadShardImages: ((id, record), image bytes) ... a bad record -> {"id", "error"}
             -> RunInference(KeyedModelHandler(VilaModelHandler))
             -> Judge: {"id", "score"} results, {"id", "error"} errors, and the records that pass
                --min-score with the score added, for WriteFiltered* in the input's own format

A shard is read whole, in order, by one worker (Parquet: one row group); the shards are the unit
of parallelism. The format parsing itself is `vila_tf.beam.shards` (plain Python).
"""
from __future__ import annotations

import os
import re
import stat
from typing import Optional

import apache_beam as beam
from apache_beam.io.filebasedsink import FileBasedSink
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from vila_tf.core import tasks
from vila_tf.beam import names, shards
from vila_tf.beam.handler import METRICS_NAMESPACE

ERRORS, FILTERED, IMAGES = "errors", "filtered", "images"
_GLOB = re.compile(r"[*?[]")


def _error(sample_id: names.Name, reason: str) -> dict:
    return {"id": names.carry(sample_id), "error": names.shown(reason)}


def beam_pattern(pattern: str) -> str:
    """The pattern as Beam's local filesystem can match it: one without a folder before its first
    wildcard ('*.parquet') lists the folder '' and matches nothing, so it gets './'."""
    literal = _GLOB.split(pattern, 1)[0]
    if _GLOB.search(pattern) and FileSystems.get_scheme(pattern) in (None, "file") and "/" not in literal \
            and os.sep not in literal:
        return "./" + pattern
    return pattern


class _MatchNames(beam.DoFn):
    """A pattern -> the paths it matches, each as `names.carry` (a name that is not UTF-8 as bytes:
    Beam's coders cannot carry it as text)."""

    def process(self, pattern: names.Name):
        for m in FileSystems.match([beam_pattern(names.local(pattern))])[0].metadata_list:
            if not m.path.endswith("/"):  # object stores list folder placeholders too
                yield names.carry(m.path)


class MatchPaths(beam.PTransform):
    """File patterns -> every matched path once (overlapping patterns would read a file twice); the
    grouping also spreads the paths over the workers (one pattern's match would stay on one)."""

    def expand(self, patterns):
        return (patterns
                | "Match" >> beam.ParDo(_MatchNames())
                | "Distinct" >> beam.Distinct())


def not_regular(path: str) -> Optional[str]:
    """Why a local path must not be opened (reading a FIFO or a device would block or never end), or None."""
    if FileSystems.get_scheme(path) not in (None, "file"):
        return None
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None  # opening it says why
    if stat.S_ISREG(mode):
        return None
    kind = ("a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else
            "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a file")
    return f"{path} is {kind}, not a regular file: not read"


def first_file(patterns) -> Optional[str]:
    for pattern in patterns:
        found = FileSystems.match([beam_pattern(pattern)], limits=[1])[0].metadata_list
        if found:
            return found[0].path
    return None


def parquet_schema(patterns):
    """The columns of the first readable Parquet file (in name order): the filtered copy's schema."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    problems = []
    for pattern in patterns:
        for m in sorted(FileSystems.match([beam_pattern(pattern)])[0].metadata_list, key=lambda m: m.path):
            if not_regular(m.path):
                continue
            try:
                with FileSystems.open(m.path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
                    return pq.read_schema(f)
            except (OSError, pa.ArrowException) as e:
                problems.append(f"{m.path}: {e}")
    raise ValueError("no readable Parquet file to take the columns from: " + "; ".join(problems[:3]))


def tfrecord_is_gzip(path: str) -> bool:
    if not_regular(path):
        return False
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        return shards._is_gzip(f.read(12))


# -- reading --------------------------------------------------------------------------------------------

class _ReadShard(beam.DoFn):
    """A shard path (or a Parquet row group) -> ((id, record), image bytes); unreadable samples -> errors."""

    def __init__(self, input_format: str, image_key: Optional[str], id_key: Optional[str], keep_records: bool,
                 schema=None):
        self.input_format, self.image_key, self.id_key, self.keep_records = input_format, image_key, id_key, keep_records
        self.schema = schema  # Parquet with a filtered copy: every file must have the first one's columns
        self.unreadable = Metrics.counter(METRICS_NAMESPACE, "records_unreadable")

    def _samples(self, f, element):
        if self.input_format == "tfrecord":
            return shards.read_tfrecord(f, element, self.image_key or shards.DEFAULT_TFRECORD_IMAGE_KEY,
                                        self.id_key, self.keep_records)
        if self.input_format == "webdataset":
            return shards.read_webdataset(f, element, self.image_key, self.keep_records)
        path, group, first, rows = element
        return shards.read_parquet_row_group(f, path, group, first, rows,
                                             self.image_key or shards.DEFAULT_PARQUET_IMAGE_KEY, self.id_key,
                                             self.keep_records)

    def process(self, element):
        name = element[0] if isinstance(element, tuple) else element  # a path, or (path, row group, ...)
        path = names.local(name)
        element = (path, *element[1:]) if isinstance(element, tuple) else path
        emitted = 0
        problem = not_regular(path)
        if problem:
            self.unreadable.inc()
            yield beam.pvalue.TaggedOutput(ERRORS, _error(name, problem))
            return
        try:
            with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
                for sample in self._samples(f, element):
                    emitted += 1
                    if sample.error:
                        self.unreadable.inc()
                        yield beam.pvalue.TaggedOutput(ERRORS, _error(sample.id, sample.error))
                    else:
                        yield (names.carry(sample.id), _carried(sample.record)), sample.image
        except (OSError, IOError) as e:  # the storage failed us (BeamIOError is an IOError)
            self.unreadable.inc()
            where = f"after {emitted} samples" if emitted else "at its start"
            yield beam.pvalue.TaggedOutput(ERRORS, _error(name, f"cannot read {path} {where}: {e}"))


def _carried(record):
    """A WebDataset record's member extensions come from tar names: carried like them."""
    if isinstance(record, list):
        return [(names.carry(ext), data) for ext, data in record]
    return record


class _ParquetRowGroups(beam.DoFn):
    """A Parquet path -> (path, row group, first row, rows) per row group; an unusable file -> one error."""

    def __init__(self, image_key: str, id_key: Optional[str], schema=None):
        self.image_key, self.id_key, self.schema = image_key, id_key, schema
        self.unreadable = Metrics.counter(METRICS_NAMESPACE, "records_unreadable")

    def process(self, name: names.Name):
        import pyarrow as pa
        path = names.local(name)
        problem = not_regular(path)
        if problem:
            self.unreadable.inc()
            yield beam.pvalue.TaggedOutput(ERRORS, _error(name, problem))
            return
        try:
            with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
                schema, groups = shards.parquet_row_groups(f)
        except (OSError, IOError, pa.ArrowException) as e:
            self.unreadable.inc()
            yield beam.pvalue.TaggedOutput(ERRORS, _error(name, f"cannot read {path} as Parquet (truncated or not "
                                                                 f"Parquet?): nothing in it was read: {e}"))
            return
        problem = shards.parquet_missing_column(schema, self.image_key, self.id_key)
        if not problem and self.schema is not None and not schema.equals(self.schema):
            problem = "its columns differ from the first file's, which the filtered copy is written with"
        if problem:
            self.unreadable.inc()
            yield beam.pvalue.TaggedOutput(ERRORS, _error(name, f"{path}: {problem}; nothing in it was read"))
            return
        for group, first, rows in groups:
            yield name, group, first, rows


class ReadShardImages(beam.PTransform):
    """File patterns -> ((id, record), image bytes) in `images`, unreadable samples in `errors`.

    `record` is the sample as stored when `keep_records` (for a filtered copy), else None.
    """

    def __init__(self, input_format: str, image_key: Optional[str] = None, id_key: Optional[str] = None,
                 keep_records: bool = False, parquet_schema=None):
        super().__init__()
        if input_format not in shards.FORMATS:
            raise ValueError(f"unknown dataset format {input_format!r}; choose one of {', '.join(shards.FORMATS)}")
        if input_format == "webdataset" and id_key:
            raise ValueError("WebDataset samples are named by their __key__: there is no id key to choose")
        self.input_format, self.image_key, self.id_key = input_format, image_key, id_key
        self.keep_records, self.parquet_schema = keep_records, parquet_schema

    def expand(self, patterns):
        paths = patterns | "Paths" >> MatchPaths()
        read = _ReadShard(self.input_format, self.image_key, self.id_key, self.keep_records)
        if self.input_format != "parquet":
            shard = paths | "Read" >> beam.ParDo(read).with_outputs(ERRORS, main=IMAGES)
            return {IMAGES: shard[IMAGES], ERRORS: shard[ERRORS]}
        groups = paths | "RowGroups" >> beam.ParDo(_ParquetRowGroups(
            self.image_key or shards.DEFAULT_PARQUET_IMAGE_KEY, self.id_key,
            self.parquet_schema if self.keep_records else None)).with_outputs(ERRORS, main="groups")
        rows = (groups.groups
                | "SpreadRowGroups" >> beam.Reshuffle()
                | "Read" >> beam.ParDo(read).with_outputs(ERRORS, main=IMAGES))
        errors = (groups[ERRORS], rows[ERRORS]) | "ReadErrors" >> beam.Flatten()
        return {IMAGES: rows[IMAGES], ERRORS: errors}


# -- judging ------------------------------------------------------------------------------------------

_WITH_SCORE = {"tfrecord": shards.tfrecord_with_score, "parquet": shards.parquet_with_score}


class Judge(beam.DoFn):
    """((id, record), PredictionResult) -> {"id", field: value}; errors; the records scoring >= min_score.

    The values are the model's own (float32, unrounded): each writer rounds as its format needs.
    """

    def __init__(self, field: str, input_format: Optional[str] = None, min_score: Optional[float] = None,
                 id_field: str = "id"):
        self.field, self.input_format, self.min_score, self.id_field = field, input_format, min_score, id_field
        self.done = Metrics.counter(METRICS_NAMESPACE, "images_done")
        self.failed = Metrics.counter(METRICS_NAMESPACE, "images_failed")
        self.kept = Metrics.counter(METRICS_NAMESPACE, "records_kept")

    def process(self, keyed):
        key, prediction = keyed
        sample_id, record = key if isinstance(key, tuple) else (key, None)  # loose files: the key is the path
        inference = prediction.inference
        if "error" in inference:
            self.failed.inc()
            yield beam.pvalue.TaggedOutput(ERRORS, {self.id_field: sample_id, "error": inference["error"]})
            return
        self.done.inc()
        value = inference[self.field]
        yield {self.id_field: sample_id, **inference}  # zero-shot: the score and a column per pair
        if self.min_score is not None and float(value) >= self.min_score:
            self.kept.inc()
            score = float(value)
            if self.input_format == "webdataset":
                yield beam.pvalue.TaggedOutput(FILTERED, (sample_id, shards.webdataset_with_score(record, score)))
            else:
                yield beam.pvalue.TaggedOutput(FILTERED, _WITH_SCORE[self.input_format](record, score))


# -- writing ------------------------------------------------------------------------------------------

def json_record(record: dict) -> dict:
    """Same rounding as `vila-tf ... --format jsonl`, so both commands write the same records."""
    # zero-shot's pair columns (Python floats) are scores too
    return {k: tasks.json_value("score" if isinstance(v, float) else k, v) for k, v in record.items()}


class WriteJsonLines(beam.PTransform):
    """Records -> PREFIX-00000-of-0000N.jsonl (one JSON object a line; always at least one file)."""

    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def expand(self, records):
        return (records
                | "Json" >> beam.Map(lambda r: names.json_line(json_record(r)))
                | "Write" >> beam.io.WriteToText(self.prefix, file_name_suffix=".jsonl"))


def results_schema(field: str, embedding_size: Optional[int] = None, id_field: str = "id", pair_names=()):
    """One row per id: score float32, caption string, embedding a fixed-size float32 list; zero-shot
    adds a float32 column per attribute or prompt pair (`pair_names`)."""
    import pyarrow as pa
    if field == "embedding":
        if not embedding_size:
            raise ValueError("the Parquet results of embed need the embedding size")
        value = pa.list_(pa.float32(), embedding_size)
    else:
        value = pa.string() if field == "caption" else pa.float32()
    return pa.schema([pa.field(id_field, pa.string(), nullable=False), pa.field(field, value)]
                     + [pa.field(name, pa.float32()) for name in pair_names])


def _parquet_row(record: dict) -> dict:
    return {k: (v.tolist() if hasattr(v, "tolist") else names.parquet_text(v)
                if k in names.NAME_KEYS or isinstance(v, bytes) else v)
            for k, v in record.items()}


class WriteParquetResults(beam.PTransform):
    """Result records -> PREFIX-00000-of-0000N.parquet."""

    def __init__(self, prefix: str, field: str, embedding_size: Optional[int] = None, id_field: str = "id",
                 pair_names=()):
        super().__init__()
        self.prefix, self.schema = prefix, results_schema(field, embedding_size, id_field, pair_names)

    def expand(self, records):
        return (records
                | "Row" >> beam.Map(_parquet_row)
                | "Write" >> beam.io.WriteToParquet(self.prefix, self.schema, file_name_suffix=".parquet"))


class _TarSink(FileBasedSink):
    """(key, [(extension, bytes), ...]) samples -> WebDataset tar shards."""

    def __init__(self, prefix: str):
        super().__init__(prefix, coder=None, file_name_suffix=".tar", mime_type="application/x-tar",
                         compression_type=CompressionTypes.UNCOMPRESSED)

    def open(self, temp_path):
        stream = super().open(temp_path)
        return stream, shards.TarShardWriter(stream)

    def write_record(self, file_handle, value):
        key, members = value
        file_handle[1].write(key, members)

    def close(self, file_handle):
        stream, writer = file_handle
        writer.close()
        stream.close()


class WriteFiltered(beam.PTransform):
    """Records with their score added -> PREFIX-*.tfrecord[.gz] / PREFIX-*.tar / PREFIX-*.parquet."""

    def __init__(self, input_format: str, prefix: str, gzip: bool = False, parquet_schema=None):
        super().__init__()
        self.input_format, self.prefix, self.gzip, self.parquet_schema = input_format, prefix, gzip, parquet_schema

    def expand(self, records):
        if self.input_format == "tfrecord":
            return records | "Write" >> beam.io.WriteToTFRecord(
                self.prefix, file_name_suffix=".tfrecord.gz" if self.gzip else ".tfrecord",
                compression_type=CompressionTypes.GZIP if self.gzip else CompressionTypes.UNCOMPRESSED)
        if self.input_format == "webdataset":
            return records | "Write" >> beam.io.Write(_TarSink(self.prefix))
        schema = shards.parquet_schema_with_score(self.parquet_schema)
        return records | "Write" >> beam.io.WriteToParquet(self.prefix, schema, file_name_suffix=".parquet")
