"""`vila-tf`: score, zero-shot, caption, embed, rank and evaluate photos with an exported VILA
model (a SavedModel or a LiteRT export), and `vila-tf beam ...` for Apache Beam.

  vila-tf score MODEL photos/ extra.jpg 'shots/*.png' [--format table|csv|jsonl] [--output FILE]
  vila-tf zero-shot MODEL photos/ [--prompt "sharp photo|blurry photo" ...] [--contact-sheet sheet.png]
  vila-tf caption MODEL photos/ ;  vila-tf embed MODEL ... --output emb.jsonl
  vila-tf info MODEL
  vila-tf rank MODEL 'a misty forest at dawn' library/ [--top K]              (vila_tf/cli/rank.py)
  vila-tf evaluate MODEL --labels AVA.txt --images DIR --output OUT           (vila_tf/cli/evaluate.py)
  vila-tf fit MODEL --labels LABELS [--images DIR] --output OUT               (vila_tf/cli/fit.py)
  vila-tf cull MODEL shoot/ [--output cull.csv] [--sidecars darktable|lightroom|none] [--report r.html]
                                                                              (vila_tf/cli/cull.py)

One module per command; each declares its parser and `run(args)`; the run options are declared
once (vila_tf/cli/options.py), as are the exit codes (vila_tf/core/exits.py, shared with `vila-tf beam`): 0 every input
processed, 1 some inputs failed (reported on stderr and in the output with their reason), 2 usage
or model error, or an output the run must not or cannot write (one line), 130 interrupted by
Ctrl-C. Files of a folder or glob that are not images are not scored and do not fail the run:
one summary line on stderr lists them (docs/formats.md).
"""
from __future__ import annotations

import argparse
import atexit
import logging
import os
import sys
import threading
import warnings
from typing import Optional

from vila_tf.cli import cull, evaluate, fit, info, rank, score, terminal
from vila_tf.core.exits import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, UsageError
from vila_tf.core.results import DemoModelWarning
from vila_tf.savedmodel.compile_cache import CacheWriteError




def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vila-tf", description="Run an exported VILA model on photos.",
        epilog="Batch jobs on Apache Beam: vila-tf beam {score,zero-shot,caption,embed} MODEL --input PATTERN "
               "--output PREFIX [pipeline options] (see vila-tf beam --help).")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    score.add_parsers(sub)
    info.add_parser(sub)
    rank.add_parser(sub)
    evaluate.add_parser(sub)
    fit.add_parser(sub)
    cull.add_parser(sub)
    return p


def main(argv: Optional[list] = None) -> int:
    if argv is not None:
        return _main(list(argv), as_command=False)
    argv = sys.argv[1:]
    code = _main(argv, as_command=True)
    return code if argv[:1] == ["beam"] else _leave(code)


def _leave(code: int) -> int:
    """The console script's end once everything is written and closed: the exit handlers run,
    then the process ends without the interpreter's teardown, which for a loaded model is ~1 s of
    TensorFlow freeing memory the process gives back anyway. A thread still working (none in the
    commands) gets the normal exit."""
    main_thread = threading.main_thread()
    if any(t.is_alive() and not t.daemon and t is not main_thread for t in threading.enumerate()):
        return code
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        return code  # the normal exit reports it
    atexit._run_exitfuncs()  # tqdm, logging and weakref finalizers close as they would at exit
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    os._exit(code)


def _main(argv: list, as_command: bool) -> int:
    if argv[:1] == ["beam"]:  # `vila-tf beam ...`: own parser, since unknown flags belong to Beam
        terminal.quiet_native_log(False)
        # Beam's import logs a note on the root logger ("apitools not found"): not shown, the
        # command's own warnings after it are
        quiet = logging.NullHandler()
        logging.getLogger().addHandler(quiet)
        try:
            from vila_tf.beam import cli as beam_cli  # an optional integration: Apache Beam
        except ImportError as e:
            print(f"vila-tf: {e}", file=sys.stderr)
            return EXIT_ERROR
        finally:
            logging.getLogger().removeHandler(quiet)
        return beam_cli.main(argv[1:])
    args = _parser().parse_args(argv)
    args.as_command = as_command
    terminal.quiet_native_log(getattr(args, "verbose", False))
    warnings.simplefilter("ignore", RuntimeWarning)  # per-image failures are reported by the commands instead
    warnings.simplefilter("always", DemoModelWarning)
    warnings.formatwarning = lambda msg, cat, *a, **k: f"vila-tf: WARNING: {msg}\n"
    try:
        with terminal.native_stderr_hidden(getattr(args, "verbose", False)):
            return _run(args)
    except BrokenPipeError:  # `vila-tf ... | head`: the reader has what it wanted
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return EXIT_OK


def _run(args) -> int:
    try:
        return args.run(args)
    except CacheWriteError as e:
        print(f"vila-tf: {e}", file=sys.stderr)
        return EXIT_ERROR
    except UsageError as e:
        prefix = "vila-tf" if args.command in ("score", "zero-shot", "caption", "embed", "info") else \
            f"vila-tf {args.command}"
        print(f"{prefix}: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("\nvila-tf: interrupted (rows written so far are complete: rerun with --resume to continue)",
              file=sys.stderr)
        if args.as_command:
            # The rows are flushed and the output closed (the finally blocks ran). A decode thread
            # may still be blocked in a read (a hung network mount): exiting normally would wait
            # for it forever, so the command ends here.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(EXIT_INTERRUPTED)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
