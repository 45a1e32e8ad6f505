"""Batch scoring on Apache Beam: millions of photos on Dataflow, Flink, Spark or the DirectRunner.

    vila-tf beam score exported/vila_r --input 'gs://bucket/photos/**' --output gs://bucket/vila/run1 \\
        --runner=DataflowRunner --project=... --region=...

The pipeline:

    patterns -> MatchAll -> paths, deduplicated  (the shuffle also spreads them over the workers)
             -> ReadMatches -> (path, bytes)                       an unreadable file -> an error record
             -> RunInference(KeyedModelHandler(VilaModelHandler))  a bad image -> an error record
             -> PREFIX-results-*.jsonl   {"input": path, "score": 0.63}       (or .parquet: --output-format)
                PREFIX-errors-*.jsonl    {"input": path, "error": "not a JPEG, PNG, GIF, BMP, WebP, ... image"}

Datasets in shards (--input-format tfrecord|webdataset|parquet) are read by `vila_tf.beam.io`
instead of ReadMatches, their records are named by id, and --min-score/--filtered-output writes
the passing records back in the input's format (docs/datasets.md).

Decoding, batching (padded to the export's buckets) and per-image failures are `vila_tf.VilaModel`'s;
this module only moves bytes and records. Each worker process loads one copy of the model (Beam's
per-process `Shared` cache). A model under gs:// or s3:// is copied to local disk once per machine.

Needs Apache Beam (`pip install 'vila-tf[beam]'`); `import vila_tf` never imports this module.
"""
try:
    import apache_beam  # noqa: F401
except ImportError as e:  # the runtime works without Beam; only this sub-package needs it
    raise ImportError("vila_tf.beam needs Apache Beam: pip install 'vila-tf[beam]' (or apache-beam)") from e

from vila_tf.beam.cli import main
from vila_tf.beam.handler import TASKS, VilaModelHandler, fetch_savedmodel
from vila_tf.beam.io import WriteJsonLines
from vila_tf.beam.transforms import ReadImages, RunVila, build

__all__ = ["main", "TASKS", "VilaModelHandler", "fetch_savedmodel", "WriteJsonLines", "ReadImages", "RunVila", "build"]
