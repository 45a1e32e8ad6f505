"""A quiet terminal: `vila-tf` shows its own lines, not TensorFlow's native start-up log.

TensorFlow's C++ code logs through absl: CUDA stubs, `failed call to cuInit`, oneDNN notes. Lines
from after absl's logging starts obey TF_CPP_MIN_LOG_LEVEL, which the command line sets to 3
(fatal only) unless the user set it or asked for `--verbose`; the lines from before it starts do
not, so while TensorFlow is imported and the model loaded, file descriptor 2 goes to a temporary
file, and afterwards only Python's own lines from that time (warnings, vila-tf's messages) are
passed on. The library (`vila_tf.load`) changes none of this for its users.
"""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile

# What absl and TensorFlow's native code write before their logging is set up: a line starting
# with a glog prefix (I1208 00:24:11.1 ...), or the notes below.
_NATIVE_PREFIXES = ("WARNING: All log messages before absl::InitializeLog()", "E0000 ", "W0000 ", "I0000 ",
                    "To enable the following instructions", "oneDNN custom operations")


def quiet_native_log(verbose: bool) -> None:
    """TensorFlow's native log at fatal only, unless verbose or the user chose a level."""
    if not verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _native(line: str) -> bool:
    if line.startswith(_NATIVE_PREFIXES):
        return True
    # glog: a severity letter, MMDD, a time (e.g. "I1208 00:24:11.123456  4242 cuda_executor.cc:1]")
    return len(line) > 6 and line[0] in "IWEF" and line[1:5].isdigit() and line[5] == " "


@contextlib.contextmanager
def native_stderr_filtered(verbose: bool):
    """While the block runs (TensorFlow's import, the model load), the native lines written to
    stderr are dropped (kept with `verbose`); every other line is passed on when it ends."""
    if verbose or "TF_CPP_MIN_LOG_LEVEL" in os.environ and os.environ["TF_CPP_MIN_LOG_LEVEL"] != "3":
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real stderr (embedded, pytest's capture): nothing to filter
        yield
        return
    with tempfile.TemporaryFile(mode="w+b") as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            try:
                sys.stderr.flush()
            finally:
                os.dup2(saved, 2)
                os.close(saved)
            capture.seek(0)
            text = capture.read().decode("utf-8", "replace")
            kept = [line for line in text.splitlines() if line.strip() and not _native(line)]
            if kept:
                sys.stderr.write("\n".join(kept) + "\n")
                sys.stderr.flush()
