"""Warnings that point at the user's line: the first frame outside the vila_tf package, however
deep inside the runtime the warning is raised (a fixed `stacklevel` is right for one call path and
wrong for the next)."""
from __future__ import annotations

import os
import sys
import warnings

# this file is vila_tf/inputs/warn.py: the package is two levels up
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def caller_stacklevel() -> int:
    """The `stacklevel` for `warnings.warn` called from the caller of this function that names the
    nearest frame outside vila_tf."""
    level, frame = 1, sys._getframe(1)  # the frame that will call warnings.warn
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE_DIR):
        frame = frame.f_back
        level += 1
    return level


def warn(message: str, category: type[Warning] = RuntimeWarning) -> None:
    """`warnings.warn` attributed to the user's code."""
    warnings.warn(message, category, stacklevel=caller_stacklevel())
