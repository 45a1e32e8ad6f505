"""`python -m export` (one model), `python -m export all` (what `make export` runs) and
`python -m export convert`: their options, over the library in export/exporter.py."""
from __future__ import annotations

import argparse
import os
import time

from . import PROG, exporter, overrides
from .log import log, progress
from vila_tf.core.digest import file_sha256


def _add_dtype_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                   help="weight storage type; bfloat16 halves the size")
    p.add_argument("--compute-dtype", choices=["float32", "bfloat16"], default="float32",
                   help="matmul/convolution dtype (float32 accumulation; norms, softmax, decode logits and "
                        "scores stay float32): bfloat16 for GPU/TPU serving, see docs/accelerators.md")


def _add_target(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target-tensorflow", metavar="X.Y", default=None,
                   help="lower for TensorFlow / TF Serving X.Y and newer (default: this TensorFlow); "
                        "docs/compatibility.md lists the reachable releases and what old targets lose")


def _check_target(p: argparse.ArgumentParser, release: str | None) -> None:
    if release:
        from .savedmodel import tf_targets
        try:
            tf_targets.target(release)
        except ValueError as e:
            p.error(str(e))


def cmd_export(argv) -> int:
    p = argparse.ArgumentParser(prog=PROG,
                                description="Export a VILA checkpoint as a TensorFlow SavedModel.")
    p.add_argument("--checkpoint", required=True,
                   help="paxml checkpoint folder (e.g. vila_rank_tuned) or a converted folder")
    p.add_argument("--spm", required=True, help="SentencePiece model (spm_model/spm.model)")
    p.add_argument("--out", required=True, help="SavedModel folder to write (atomically)")
    _add_dtype_args(p)
    _add_target(p)
    overrides.add(p)
    args = p.parse_args(argv)
    _check_target(p, args.target_tensorflow)
    out = exporter.export_checkpoint(args.checkpoint, args.spm, args.out, args.dtype, args.step, overrides.read(args),
                            args.compute_dtype, args.target_tensorflow)
    log(f"wrote {out}")
    return 0


def cmd_all(argv) -> int:
    p = argparse.ArgumentParser(prog=f"{PROG} all",
                                description="Export every released checkpoint under --vila-dir "
                                            "(or the full-size demo model) to OUT/<name>/<version>/.")
    p.add_argument("--vila-dir", default="",
                   help="copy of gs://gresearch/vila: checkpoints/{vila_rank_tuned,vila_pretrain,laion_pretrain}/ "
                        "and spm_model/spm.model (the checkpoints/ folder itself, or a flat copy, also work)")
    p.add_argument("--out", default="exported")
    p.add_argument("--version", type=int, default=1)
    _add_dtype_args(p)
    _add_target(p)
    args = p.parse_args(argv)
    _check_target(p, args.target_tensorflow)
    t0 = time.time()
    written = exporter.export_all(args.vila_dir, args.out, args.version, args.dtype, args.compute_dtype,
                                  args.target_tensorflow)
    for w in written:
        size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(w) for f in fs)
        print(f"{w}\t{size / 1e9:.2f} GB")
    print(f"done in {time.time() - t0:.0f} s")
    return 0


def cmd_convert(argv) -> int:
    p = argparse.ArgumentParser(prog=f"{PROG} convert",
                                description="Convert a paxml VILA checkpoint to orbax params + config JSON.")
    p.add_argument("--checkpoint", required=True, help="paxml checkpoint folder (or checkpoint_<N>)")
    p.add_argument("--out", required=True, help="output folder (written atomically)")
    overrides.add(p)
    args = p.parse_args(argv)
    from .checkpoints import paxml as checkpoint
    loaded = checkpoint.read_paxml(args.checkpoint, args.step, progress("reading"), **overrides.read(args))
    loaded.sha256 = file_sha256(loaded.source)
    out = checkpoint.save_converted(loaded, args.out)
    print(f"{loaded.config.model_type} checkpoint {loaded.source} (step {loaded.step}) -> {out}")
    return 0
