"""Keeps the export's resident memory near one copy of the weights (docs/accelerators.md, lean
export).

glibc keeps freed memory for reuse instead of returning it to the OS: blocks up to 32 MB in
per-thread arenas, where TensorFlow's threads cannot reuse what JAX's freed, and the holes that
tracing and lowering leave in the heap. Left alone, that retained memory made a third of the
full-size export's peak. Elsewhere than glibc these are no-ops.
"""
from __future__ import annotations

import ctypes
import functools

_M_MMAP_THRESHOLD = -3


@functools.lru_cache(maxsize=None)
def _libc():
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt, libc.malloc_trim  # noqa: B018 - both must exist
        return libc
    except (OSError, AttributeError):
        return None  # not glibc: nothing to tune


def map_large_blocks() -> None:
    """Every block of 1 MB or more becomes its own mmap, which free() returns at once (weights,
    arrays, buffers), instead of a heap block that stays resident after it is freed."""
    libc = _libc()
    if libc is not None:
        libc.mallopt(_M_MMAP_THRESHOLD, 1 << 20)


def release_freed() -> None:
    """Hands the heap's free pages back to the OS (malloc_trim): called after each stage that
    allocates and frees a lot of small objects (tracing, lowering, random initialisation)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
