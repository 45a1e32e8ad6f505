"""A quiet terminal: `vila-tf` shows its own lines, not TensorFlow's native log.

TensorFlow's C++ code (and libjpeg inside it) writes straight to file descriptor 2: CUDA stubs,
`failed call to cuInit`, oneDNN notes, "Improper call to JPEG library". TF_CPP_MIN_LOG_LEVEL hides
only the lines absl writes after its logging has started, so for the run of a command the native
code's descriptor 2 goes to /dev/null while Python's `sys.stderr` (vila-tf's messages, warnings,
the progress bar) writes to the terminal through a descriptor of its own. `--verbose`, or a
TF_CPP_MIN_LOG_LEVEL the user set, leaves the terminal as it is. The library (`vila_tf.load`)
changes none of this for its users.
"""
from __future__ import annotations

import contextlib
import io
import os
import sys

USER_LEVEL = "TF_CPP_MIN_LOG_LEVEL" in os.environ  # set by the user before vila-tf started


def quiet_native_log(verbose: bool) -> None:
    """TensorFlow's native log at fatal only, unless verbose or the user chose a level."""
    if not verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@contextlib.contextmanager
def native_stderr_hidden(verbose: bool):
    """While the block runs, what native code writes to descriptor 2 is dropped and Python's
    sys.stderr still reaches the terminal. Nothing changes with `verbose`, a level the user set,
    or a sys.stderr that is not descriptor 2 (an embedding program's, a test's capture)."""
    try:
        real = sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):
        real = False
    if verbose or USER_LEVEL or not real:
        yield
        return
    sys.stderr.flush()
    own = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    saved = sys.stderr
    sys.stderr = io.TextIOWrapper(io.FileIO(own, "w", closefd=False), encoding=saved.encoding or "utf-8",
                                  errors="backslashreplace", line_buffering=True, write_through=True)
    try:
        yield
    finally:
        try:
            sys.stderr.flush()
        finally:
            sys.stderr = saved
            os.dup2(own, 2)
            os.close(own)
