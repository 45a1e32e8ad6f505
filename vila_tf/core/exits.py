"""The exit codes of both command lines (`vila-tf` and `vila-tf beam`), and the error a command raises for the user to act on."""
from __future__ import annotations

EXIT_OK = 0  # every input processed
EXIT_SOME_FAILED = 1  # some inputs failed: reported on stderr and in the output, with their reason
EXIT_ERROR = 2  # usage or model error, or an output the run must not or cannot write: one line
EXIT_INTERRUPTED = 130  # Ctrl-C


class UsageError(Exception):
    """Something the user must change: one line on stderr (`vila-tf: ...`), exit 2."""
