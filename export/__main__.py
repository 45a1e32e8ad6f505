"""Command line of the build-time toolkit.

  python -m export --checkpoint CKPT_DIR --spm SPM_MODEL --out SAVEDMODEL_DIR   (export one model)
  python -m export convert --checkpoint CKPT_DIR --out DIR                      (paxml -> orbax)
  python -m export all [--vila-dir DIR] --out exported                          (what `make export` runs)
  python -m export package SAVEDMODEL_DIR --out DIST_DIR [--name N --version V] (TF Hub tar.gz + model card)
  python -m export stablehlo SAVEDMODEL_DIR --out BUNDLE_DIR                     (StableHLO for a JAX-only runner)
  python -m export litert SAVEDMODEL_DIR --out LITERT_DIR                        (on-device image heads)
  python -m export --help                                                        (every subcommand)
"""
from __future__ import annotations

import argparse
import os
import sys

from .model.config import ConfigError
from . import PROG
from vila_tf.core.digest import file_sha256

# Every subcommand with its one-line job: what `python -m export --help` lists. Without a
# subcommand the arguments are the one-model export's (`export`).
SUBCOMMANDS = {
    "export": "export one checkpoint as a SavedModel (the default: `python -m export --checkpoint ...`)",
    "all": "export every released checkpoint under --vila-dir, or the demo model (what `make export` runs)",
    "convert": "convert a paxml checkpoint to orbax params + config JSON",
    "package": "TF Hub packages (.tar.gz, .sha256) and model cards of exported SavedModels",
    "stablehlo": "the SavedModel's lowered modules as a JAX-only StableHLO bundle (GPU/TPU runner)",
    "litert": "LiteRT (.tflite) image heads for phones, edge and a TensorFlow-free vila_tf (float32/float16/int8)",
}


def _print_help() -> None:
    prog = PROG
    print(f"usage: {prog} [SUBCOMMAND] ...\n\nThe vila-tf build-time toolkit. Subcommands:\n")
    for name, job in SUBCOMMANDS.items():
        print(f"  {name:<10} {job}")
    print(f"\n`{prog} SUBCOMMAND --help` shows a subcommand's options; `{prog} --checkpoint CKPT --spm SPM "
          "--out DIR` exports one model.")


def _add_overrides(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("config overrides (default: read from the checkpoint's shapes)")
    g.add_argument("--model-type", choices=["vila_r", "vila_p"])
    g.add_argument("--decoding-max-len", type=int, help="caption length incl. BOS (release: 64)")
    g.add_argument("--atten-logit-cap", type=float, help="release: 50.0")
    g.add_argument("--step", type=int, help="checkpoint step (default: the latest)")


def _overrides(args) -> dict:
    return {k: getattr(args, k) for k in ("model_type", "decoding_max_len", "atten_logit_cap")
            if getattr(args, k, None) is not None}


def cmd_convert(argv) -> int:
    p = argparse.ArgumentParser(prog=f"{PROG} convert",
                                description="Convert a paxml VILA checkpoint to orbax params + config JSON.")
    p.add_argument("--checkpoint", required=True, help="paxml checkpoint folder (or checkpoint_<N>)")
    p.add_argument("--out", required=True, help="output folder (written atomically)")
    _add_overrides(p)
    args = p.parse_args(argv)
    from .checkpoints import paxml as checkpoint
    from .cli import _progress
    loaded = checkpoint.read_paxml(args.checkpoint, args.step, _progress("reading"), **_overrides(args))
    loaded.sha256 = file_sha256(loaded.source)
    out = checkpoint.save_converted(loaded, args.out)
    print(f"{loaded.config.model_type} checkpoint {loaded.source} (step {loaded.step}) -> {out}")
    return 0


def _tool_errors() -> tuple:
    from .tools.stablehlo_bundle import BundleError
    from .tools.litert import LiteRTError
    from .tools.litert_source import SourceError
    return BundleError, LiteRTError, SourceError


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["-h"], ["--help"]):
        _print_help()
        return 0
    from .checkpoints.paxml import CheckpointError
    command = argv.pop(0) if argv and argv[0] in SUBCOMMANDS else "export"
    try:
        if command == "convert":
            return cmd_convert(argv)
        if command == "package":  # needs no jax: imported before cli_export
            from .publish import package
            return package.cmd_package(argv)
        if command == "stablehlo":
            from .tools import stablehlo_bundle
            return stablehlo_bundle.cmd_stablehlo(argv)
        if command == "litert":
            from .tools import litert
            return litert.cmd_litert(argv, _add_overrides, _overrides)
        from . import cli as cli_export
        if command == "all":
            return cli_export.cmd_all(argv)
        return cli_export.cmd_export(argv, _add_overrides, _overrides)
    except (CheckpointError, ConfigError, FileNotFoundError, *_tool_errors()) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; no output was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
