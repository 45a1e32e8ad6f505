"""The run options of every `vila-tf` command that runs a model, declared once (same names, same
defaults, same checks), the one model loader, and the check of the inputs before it loads.

A command adds `add_model(c)` and `add_run_options(c)` to its parser, calls `check(args)` first
(every setting honoured or refused in one line, before anything loads or is written), then
`check_inputs(args.inputs)` and `load(args)` (a model, or UsageError naming what to do)."""
from __future__ import annotations

import glob
import os
from typing import Optional

from vila_tf.core.exits import UsageError
from vila_tf.core import buckets, pipeline
from vila_tf.litert import format as litert_format

MODEL_HELP = ("exported SavedModel folder, or a TF Serving base folder (newest version), or a LiteRT export "
              "(python -m export litert)")


def add_model(c, optional: bool = False) -> None:
    kwargs = {"nargs": "?"} if optional else {}
    c.add_argument("model", help=MODEL_HELP + (" (leave out with --scores)" if optional else ""), **kwargs)
    c.add_argument("--variant", choices=litert_format.VARIANTS, default=None,
                   help="which model of a LiteRT export (default float32); only a LiteRT export has variants")


def add_run_options(c) -> None:
    """The options of running a model over photos (score, zero-shot, caption, embed, rank, evaluate)."""
    c.add_argument("--batch-size", type=int, default=buckets.MAX_BATCH,
                   help=f"images per model call, 1 to {buckets.MAX_BATCH} (default %(default)s)")
    c.add_argument("--device", help="e.g. GPU:0 or CPU:0 (default: TensorFlow's placement: its first GPU when it "
                                    "sees one, else the CPU); a LiteRT export runs on the CPU")
    c.add_argument("--decode-threads", type=int, default=None, metavar="N",
                   help="threads reading and decoding images (default: min(8, CPU count))")
    c.add_argument("--batches-ahead", type=int, default=pipeline.DEFAULT_BATCHES_AHEAD, metavar="N",
                   help="batches decoded ahead of the model, at most (default %(default)s)")
    c.add_argument("--decode-budget", type=float, default=None, metavar="MP",
                   help="megapixels the decode threads may decode at once (default 64: one 49 MP TIFF at a "
                        "time, about 1.6 GB; a JPEG counts a quarter of its pixels)")
    c.add_argument("--max-file-size", type=float, default=None, metavar="MB",
                   help="refuse image files larger than this, before reading them (default 500)")
    c.add_argument("--release-exact-orientation", action="store_true",
                   help="score photos as stored, ignoring their EXIF orientation, exactly as the release did "
                        "(default: turned upright as photo viewers show them)")
    c.add_argument("--progress", action="store_true", help="show the progress bar even when not on a terminal")
    c.add_argument("--verbose", action="store_true", help="also show TensorFlow's own log lines")


def check(args) -> None:
    """UsageError for a setting out of range, before anything loads."""
    if not 1 <= args.batch_size <= buckets.MAX_BATCH:
        raise UsageError(f"--batch-size {args.batch_size}: give 1 to {buckets.MAX_BATCH} (the largest batch the "
                         "exports are compiled for)")
    for flag in ("batches_ahead", "decode_threads", "decode_budget", "max_file_size"):
        value = getattr(args, flag, None)
        if value is not None and not value > 0:
            raise UsageError(f"--{flag.replace('_', '-')} must be > 0")


def check_model(args) -> dict:
    """The model's record (what it is, its identity) read without loading it: UsageError naming
    what is wrong with MODEL, before the inputs are looked at."""
    from vila_tf.output import output_file
    try:
        return output_file.model_record(args.model, getattr(args, "variant", None))
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot load model: {_first_line(e)}") from None


def check_inputs(inputs: list[str]) -> list[str]:
    """The named files and folders that do not exist (a glob pattern that matches nothing is
    reported as a failed row, like a folder without images); UsageError when none of the inputs
    exists, before the model loads."""
    missing = [p for p in inputs if not glob.has_magic(p) and not os.path.lexists(p)]
    if missing and len(missing) == len(inputs):
        raise UsageError(f"{missing[0]}: no such file or folder" + (f" (nor {len(missing) - 1} more)"
                                                                   if len(missing) > 1 else "")
                         + ": give image files, folders or glob patterns")
    return missing


def load_kwargs(args) -> dict:
    mb, mp = getattr(args, "max_file_size", None), getattr(args, "decode_budget", None)
    return dict(device=getattr(args, "device", None), max_workers=getattr(args, "decode_threads", None),
                exif_orientation=not getattr(args, "release_exact_orientation", False),
                variant=getattr(args, "variant", None), decode_budget_pixels=int(mp * 1e6) if mp else None,
                max_file_bytes=int(mb * 1e6) if mb else None)


def load(args, needs: tuple = (), record: Optional[dict] = None):
    """The model of `args.model`, able to do every task in `needs`; UsageError (one line) when it
    cannot be loaded or cannot do one of them. `record`: what `check_model` already returned."""
    record = record or check_model(args)
    if not record["kind"].startswith("LiteRT"):
        # Before TensorFlow is imported: the first call then loads the program compiled by an
        # earlier run instead of compiling it again.
        from vila_tf.savedmodel import compile_cache, tf_import
        compile_cache.enable(record["identity"])
        tf_import.tensorflow(lean=True)  # no command calls Keras or JAX: 1-2 s less start-up
    import vila_tf
    try:
        model = vila_tf.load(args.model, **load_kwargs(args))
    except ImportError as e:
        raise UsageError(f"cannot load model: {e}") from None
    except (OSError, ValueError, vila_tf.IncompatibleTensorFlowError) as e:
        raise UsageError(f"cannot load model: {_first_line(e)}") from None
    try:
        model.require(*needs)
    except vila_tf.UnsupportedTaskError as e:
        model.close()
        raise UsageError(str(e)) from None
    return model


def _first_line(e: Exception) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]


def output_format(path: Optional[str], chosen: Optional[str], default: str) -> str:
    """An output's format: --format, else by its name (.jsonl/.json: JSON Lines, .csv: CSV), else `default`."""
    if chosen:
        return chosen
    if path and path.lower().endswith((".jsonl", ".json")):
        return "jsonl"
    if path and path.lower().endswith(".csv"):
        return "csv"
    return default
