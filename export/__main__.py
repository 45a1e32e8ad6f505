"""Command line of the build-time toolkit: only the dispatch to each subcommand's module.

  python -m export --checkpoint CKPT_DIR --spm SPM_MODEL --out SAVEDMODEL_DIR   (export one model)
  python -m export convert --checkpoint CKPT_DIR --out DIR                      (paxml -> orbax)
  python -m export all [--vila-dir DIR] --out exported                          (what `make export` runs)
  python -m export package SAVEDMODEL_DIR --out DIST_DIR [--name N --version V] (TF Hub tar.gz + model card)
  python -m export stablehlo SAVEDMODEL_DIR --out BUNDLE_DIR                     (StableHLO for a JAX-only runner)
  python -m export litert SAVEDMODEL_DIR --out LITERT_DIR                        (on-device image heads)
  python -m export --help                                                        (every subcommand)
"""
from __future__ import annotations

import sys

from .model.config import ConfigError
from . import PROG

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
            from . import cli
            return cli.cmd_convert(argv)
        if command == "package":  # needs no jax: imported before cli_export
            from .publish import package
            return package.cmd_package(argv)
        if command == "stablehlo":
            from .tools import stablehlo_bundle
            return stablehlo_bundle.cmd_stablehlo(argv)
        if command == "litert":
            from .tools import litert
            return litert.cmd_litert(argv)
        from . import cli
        return cli.cmd_all(argv) if command == "all" else cli.cmd_export(argv)
    except (CheckpointError, ConfigError, FileNotFoundError, *_tool_errors()) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; no output was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
