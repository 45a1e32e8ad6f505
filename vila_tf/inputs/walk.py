"""Folder walks that visit each real file once and never hang (docs/reliability.md).

Photo libraries (on NAS drives especially) hold links: `x -> .`, `up -> ..`, an album folder that
links to another, a favourite that links to a photo, hard links. Followed naively they loop
forever or score a photo many times. The rules, as `find -L` and rsync follow them:

- each real folder (its `(st_dev, st_ino)`) is walked once; a link to a folder the walk has
  already entered, or to one that contains the folder being walked (`x -> .`, `up -> ..`), is a
  loop and is not followed;
- a link into the folder being walked (`best -> 2023/summer`, `fav.jpg -> 2023/a.jpg`) is not
  followed either: the folder or file is met under its own name; a link that leads outside it is
  followed, once;
- a file with several names (links from outside, hard links) is yielded under the first name met;
- FIFOs, sockets and devices are never opened (a FIFO blocks its reader forever): only regular
  files are yielded.

What is left out is added to the `SkipReport` for the summary line. Memory: the folders walked
and the files that have other names (links, hard links), never every file.
"""
from __future__ import annotations

import fnmatch
import os
import stat
from typing import Iterable, Iterator, Optional

from vila_tf.inputs import image_formats


def _inside(path: str, folder: str) -> Optional[str]:
    """`path` relative to `folder` when it lies inside it (never itself), else None."""
    rel = os.path.relpath(path, folder)
    return None if rel == os.curdir or rel == os.pardir or rel.startswith(os.pardir + os.sep) else rel


def _hidden(rel: str) -> bool:
    return any(part.startswith(".") for part in rel.split(os.sep))


class Walk:
    """One walk over any number of folders and glob patterns (each real file once across them).
    `exclude`: `(st_dev, st_ino)` of files never yielded (the run's own output files)."""

    def __init__(self, report: Optional[image_formats.SkipReport] = None, exclude: Iterable[tuple] = ()):
        self.report = report if report is not None else image_formats.SkipReport()
        self.exclude = set(exclude)
        self._dirs: set = set()  # (st_dev, st_ino) of the folders entered
        self._named: set = set()  # (st_dev, st_ino) of files yielded that have other names
        self._roots: list[str] = []  # real paths of the folders walked (links into them are not followed)

    # -- entries -----------------------------------------------------------------------------------
    def _entries(self, folder: str, hidden: bool = False) -> tuple[list, list, list]:
        """(files, folders, others) of one folder, sorted by name: (name, stat or None, is a link),
        and the names of what is neither a regular file nor a folder. Hidden names are left out
        unless `hidden`."""
        files, dirs, others = [], [], []
        try:
            with os.scandir(folder) as it:
                for e in it:
                    if e.name.startswith(".") and not hidden:
                        continue
                    try:
                        link = e.is_symlink()
                        st = e.stat()  # follows links
                    except OSError:
                        files.append((e.name, None, False))  # a broken link, or gone: reported when read
                        continue
                    if stat.S_ISDIR(st.st_mode):
                        dirs.append((e.name, st, link))
                    elif stat.S_ISREG(st.st_mode):
                        files.append((e.name, st, link))
                    else:
                        others.append(e.name)
        except OSError:
            pass
        return sorted(files, key=lambda x: x[0]), sorted(dirs, key=lambda x: x[0]), sorted(others)

    def _in_walked_folder(self, path: str) -> bool:
        """Whether a link's target lies in a folder walked under its own names (not hidden)."""
        real = os.path.realpath(path)
        for root in self._roots:
            rel = _inside(real, root)
            if rel is not None and not _hidden(rel):
                return True
        return False

    def _take_file(self, path: str, st: Optional[os.stat_result], link: bool, linked_folder: bool,
                   links_into_roots: bool = True) -> bool:
        """Whether a file met in a walk is yielded (each real file once). `linked_folder`: met in a
        folder reached through a link, so it may have other names too."""
        if st is None:
            return True  # unreadable: `load` reports why, against this name
        key = (st.st_dev, st.st_ino)
        if key in self.exclude:
            return False
        if key in self._named or (link and links_into_roots and self._in_walked_folder(path)):
            self.report.other_names.append(path)
            return False
        if link or linked_folder or st.st_nlink > 1:
            self._named.add(key)
        return True

    def _enter(self, path: str, st: os.stat_result, link: bool, current_real: str, visited: set,
               key: tuple, links_into_roots: bool = True) -> bool:
        """Whether a sub-folder met in a walk is walked (`key` in `visited`: entered already)."""
        if key in visited:
            self.report.loops.append(path)
            return False
        if link:
            real = os.path.realpath(path)
            if real == current_real or _inside(current_real, real) is not None:
                self.report.loops.append(path)  # an ancestor: x -> ., up -> ..
                return False
            if links_into_roots and self._in_walked_folder(path):
                self.report.other_names.append(path)  # walked under its own name
                return False
        return True

    # -- folders -----------------------------------------------------------------------------------
    def walked(self, folder: str) -> bool:
        """Whether this walk has entered `folder` already."""
        try:
            st = os.stat(folder)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) in self._dirs

    def files(self, folder: str) -> Iterator[str]:
        """Every regular file under `folder`, recursively: a folder's files (sorted) before its
        sub-folders (sorted). One folder's names are in memory at a time. Hidden files and folders
        are left out."""
        try:
            st = os.stat(folder)
        except OSError:
            return
        if (st.st_dev, st.st_ino) in self._dirs:
            self.report.loops.append(folder)  # given twice, or inside a folder given before
            return
        real = os.path.realpath(folder)
        self._roots.append(real)
        yield from self._walk(folder, real, st)

    def _walk(self, folder: str, real: str, st: os.stat_result, linked: bool = False) -> Iterator[str]:
        self._dirs.add((st.st_dev, st.st_ino))
        files, dirs, others = self._entries(folder)
        self.report.special.extend(os.path.join(folder, name) for name in others)
        for name, fst, link in files:
            path = os.path.join(folder, name)
            if self._take_file(path, fst, link, linked):
                yield path
        for name, dst, link in dirs:
            path = os.path.join(folder, name)
            if self._enter(path, dst, link, real, self._dirs, (dst.st_dev, dst.st_ino)):
                if link:  # a folder outside the walk: links into it are now links into walked files
                    sub_real = os.path.realpath(path)
                    self._roots.append(sub_real)
                    yield from self._walk(path, sub_real, dst, linked=True)
                else:
                    yield from self._walk(path, os.path.join(real, name), dst, linked)

    # -- glob patterns -------------------------------------------------------------------------------
    def glob(self, pattern: str) -> Iterator[str]:
        """Regular files matching a glob pattern (`**` spans folders), lazily, directory by
        directory in sorted order. As `glob`: `*` never matches a leading '.', and `**` skips hidden
        folders. `**` enters each real folder once and follows no link that loops; a file with
        other names (links, hard links) is yielded under the first name met."""
        head, parts = pattern, []
        while head and is_glob(head):
            head, tail = os.path.split(head)
            parts.insert(0, tail)
            if not tail:  # a trailing or doubled separator
                parts.pop(0)
        base = head or os.curdir
        entered: set = set()  # (st_dev, st_ino, pattern position) of the folders `**` entered

        def strip(p):  # no './' in front when the pattern had none
            return p[len(os.curdir) + 1:] if not head and p.startswith(os.curdir + os.sep) else p

        def take(path: str, linked: bool) -> bool:
            try:
                link, st = os.path.islink(path), os.stat(path)
            except OSError:
                return False
            if stat.S_ISREG(st.st_mode):
                return self._take_file(path, st, link, linked, links_into_roots=False)
            if not stat.S_ISDIR(st.st_mode):
                self.report.special.append(path)
            return False

        def match(folder: str, k: int, linked: bool) -> Iterator[str]:
            if k == len(parts):
                if take(folder, linked):
                    yield strip(folder)
                return
            part = parts[k]
            if part == "**":
                try:
                    st = os.stat(folder)
                except OSError:
                    return
                entered.add((st.st_dev, st.st_ino, k))
                real = os.path.realpath(folder)
                files, dirs, others = self._entries(folder)
                if k + 1 == len(parts):  # a trailing '**': every file below
                    self.report.special.extend(os.path.join(folder, o) for o in others)
                    for name, _, _ in files:
                        if take(os.path.join(folder, name), linked):
                            yield strip(os.path.join(folder, name))
                else:
                    yield from match(folder, k + 1, linked)  # zero folders
                for name, dst, link in dirs:
                    path = os.path.join(folder, name)
                    if self._enter(path, dst, link, real, entered, (dst.st_dev, dst.st_ino, k),
                                   links_into_roots=False):
                        yield from match(path, k, linked or link)
                return
            if not is_glob(part):
                yield from match(os.path.join(folder, part), k + 1, linked or os.path.islink(folder))
                return
            files, dirs, others = self._entries(folder, hidden=True)
            names = sorted([f for f, _, _ in files] + others + ([d for d, _, _ in dirs] if k + 1 < len(parts) else []))
            for name in names:
                if name.startswith(".") and not part.startswith("."):
                    continue
                if fnmatch.fnmatchcase(name, part):
                    path = os.path.join(folder, name)
                    yield from match(path, k + 1, linked or os.path.islink(path))

        return match(base, 0, False)


def is_glob(s: str) -> bool:
    return any(c in s for c in "*?[")
