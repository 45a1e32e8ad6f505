"""The sha256 of a file, read in blocks: the one implementation that checkpoint provenance, LiteRT
records, package checks and results-file records all use."""
from __future__ import annotations

import hashlib


def file_sha256(path: str, chunk: int = 1 << 24) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while data := f.read(chunk):
            h.update(data)
    return h.hexdigest()
