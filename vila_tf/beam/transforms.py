"""The Beam transforms of a `vila-tf beam` job: file patterns -> image bytes -> results and error
records, and `build`, which adds the whole job to a pipeline."""
from __future__ import annotations


from typing import Optional, Sequence

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference

from vila_tf.beam import io as beam_io, names
from vila_tf.core import buckets
from vila_tf.core import zero_shot

from vila_tf.beam.handler import ERRORS, METRICS_NAMESPACE, RESULTS, TASKS, VilaModelHandler

# -- the pipeline ---------------------------------------------------------------------------------------

class _ReadBytes(beam.DoFn):
    """A path (`names.carry` form) -> (path, bytes); a file that cannot be read -> an error record."""

    def __init__(self):
        self.unreadable = Metrics.counter(METRICS_NAMESPACE, "files_unreadable")

    def process(self, name: names.Name):
        path = names.local(name)
        problem = beam_io.not_regular(path)
        if problem:
            self.unreadable.inc()
            yield beam.pvalue.TaggedOutput(ERRORS, {"input": name, "error": names.shown(problem)})
            return
        try:
            # Bytes as stored: AUTO would decompress a photo whose name ends in .gz or .bz2.
            with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
                yield name, f.read()
        except (OSError, IOError) as e:  # BeamIOError is an IOError
            self.unreadable.inc()
            yield beam.pvalue.TaggedOutput(ERRORS, {"input": name, "error": names.shown(f"cannot read: {e}")})


class ReadImages(beam.PTransform):
    """File patterns -> (path, image bytes), with unreadable files in the `errors` output. A path
    that is not UTF-8 travels as its bytes (`vila_tf.beam.names`)."""

    def expand(self, patterns):
        return (patterns
                | "Paths" >> beam_io.MatchPaths()
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
                 min_score: Optional[float] = None, id_field: str = "input", exif_orientation: bool = True,
                 prompts: Optional[Sequence] = None):
        super().__init__()
        self.handler = KeyedModelHandler(VilaModelHandler(model_path, task, batch_size, device, raw_values=True,
                                                          exif_orientation=exif_orientation, prompts=prompts))
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
          embedding_size: Optional[int] = None, exif_orientation: bool = True,
          prompts: Optional[Sequence] = None) -> None:
    """Adds the whole job to `pipeline`: PATTERNS -> OUTPUT-results-*.jsonl|parquet, OUTPUT-errors-*.jsonl,
    and with `filtered_output`, the records scoring >= `min_score` in the input's format (datasets only).
    zero-shot records hold a column per pair: the release's six attributes, or your `prompts`."""
    field = TASKS[task].field
    pair_names = ()
    if task == "zero-shot":
        pair_names = zero_shot.ZERO_SHOT_ATTRIBUTES if prompts is None else \
            tuple(zero_shot.pair_name(p) for p in zero_shot.pairs_from(prompts))
    keep = filtered_output is not None
    if keep and (input_format == "files" or min_score is None):
        raise ValueError("a filtered copy needs a dataset input format and min_score")
    patterns = list(patterns)
    sources = pipeline | "Patterns" >> beam.Create([names.carry(p) for p in patterns])
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
                                           min_score if keep else None, id_field, exif_orientation, prompts)
    if output_format == "parquet":
        _ = judged[RESULTS] | "WriteResults" >> beam_io.WriteParquetResults(f"{output}-{RESULTS}", field,
                                                                             embedding_size, id_field, pair_names)
    else:
        _ = judged[RESULTS] | "WriteResults" >> WriteJsonLines(f"{output}-{RESULTS}")
    _ = ((read_errors, judged[ERRORS]) | "AllErrors" >> beam.Flatten()
         | "WriteErrors" >> WriteJsonLines(f"{output}-{ERRORS}"))
    if keep:
        _ = judged[beam_io.FILTERED] | "WriteFiltered" >> beam_io.WriteFiltered(input_format, filtered_output, gzip,
                                                                                parquet_schema)
