"""Removes the temporary folders of a job that failed (docs/beam.md).

Beam writes each output's files into `<folder>/beam-temp-<name>-<uuid1>/` and renames them into
place when the job succeeds; a failed job leaves those folders behind, half-written. The command
lists them before the job and, when it fails, removes the ones that appeared since, whose uuid1
time says they were made after the job started (a concurrent job's older folders are not touched).
"""
from __future__ import annotations

import logging
import os
import shutil
import uuid
from typing import Iterable

from apache_beam.io.filesystems import FileSystems

log = logging.getLogger("vila_tf.beam")
_UUID1_EPOCH = 0x01B21DD213814000  # 1582-10-15 to 1970-01-01 in uuid1's 100 ns ticks


def _folders(prefix: str) -> set:
    folder, name = FileSystems.split(prefix)
    start = f"beam-temp-{name}-"
    if FileSystems.get_scheme(prefix) in (None, "file"):
        try:
            return {os.path.join(folder or ".", e) for e in os.listdir(folder or ".") if e.startswith(start)}
        except OSError:
            return set()
    try:  # an object store has no folders: the objects under one name it
        found = FileSystems.match([FileSystems.join(folder, start + "*")])[0].metadata_list
    except Exception:  # noqa: BLE001  (listing is best effort: this only cleans up)
        return set()
    return {m.path.split(start, 1)[0] + start + m.path.split(start, 1)[1].split("/", 1)[0] for m in found}


def _made_after(path: str, start: float) -> bool:
    try:
        made = uuid.UUID(hex=path.rstrip("/").rsplit("-", 1)[-1])
    except ValueError:
        return False
    return made.version == 1 and (made.time - _UUID1_EPOCH) / 1e7 >= start - 60  # allows for clock skew


class TempFolders:
    """`before = TempFolders(prefixes)`, then `before.remove_new(start)` after a failed job."""

    def __init__(self, prefixes: Iterable[str]):
        self.prefixes = [p for p in prefixes if p]
        self.before = set().union(*(_folders(p) for p in self.prefixes)) if self.prefixes else set()

    def remove_new(self, start: float) -> list:
        removed = []
        for prefix in self.prefixes:
            for path in sorted(_folders(prefix) - self.before):
                if not _made_after(path, start):
                    continue
                try:
                    if FileSystems.get_scheme(path) in (None, "file"):
                        shutil.rmtree(path)
                    else:
                        FileSystems.delete([path + "/"])
                    removed.append(path)
                except Exception as e:  # noqa: BLE001  (cleaning up must not hide the job's own failure)
                    log.warning("could not remove the failed job's temporary folder %s: %s", path, e)
        return removed
