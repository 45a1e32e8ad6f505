"""Turning what users pass (paths, folders, globs, bytes, arrays, PIL images) into items, lazily.

`iter_items` is a generator: it takes one input at a time from any iterable (an endless one too),
walks folders and globs one directory at a time, and never reads a file's contents: a path item
carries the path, and `load` reads it later, in the decode threads (a walked file whose name is
not an image's has its first bytes sniffed, `image_formats.keep`). So memory never depends on how
many inputs there are. Each item keeps a `source` label (the path, or `<bytes 3>` / `<array 0>`) so
failures and results can be reported against what the user gave.

Order: folders are walked recursively, a folder's files (sorted by name) before its sub-folders
(sorted by name); glob matches come in the same directory-by-directory sorted order.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import os
from typing import Any, Iterable, Iterator, Optional, Union

import numpy as np

from vila_tf import image_formats


@dataclasses.dataclass(frozen=True)
class Item:
    source: str
    data: Any = None  # bytes, or a numpy array HWC; None when unreadable or not read yet
    error: str | None = None
    path: Optional[str] = None  # a file still to be read (by `load`, in a decode thread)


def _is_glob(s: str) -> bool:
    return any(c in s for c in "*?[")


# -- walking folders and globs, lazily ----------------------------------------------------------

def _sorted_entries(folder: str) -> tuple[list[str], list[str]]:
    """(file names, sub-folder names) of one folder, sorted; names only, never contents."""
    files, dirs = [], []
    try:
        with os.scandir(folder) as it:
            for e in it:
                try:
                    (dirs if e.is_dir() else files).append(e.name)
                except OSError:
                    files.append(e.name)  # reported when read
    except OSError:
        pass
    return sorted(files), sorted(dirs)


def walk_files(folder: str) -> Iterator[str]:
    """Every file under `folder`, recursively: a folder's files (sorted) before its sub-folders
    (sorted). One folder's names are in memory at a time. Hidden files and folders are left out."""
    files, dirs = _sorted_entries(folder)
    for name in files:
        if not name.startswith("."):
            yield os.path.join(folder, name)
    for name in dirs:
        if not name.startswith("."):
            yield from walk_files(os.path.join(folder, name))


def image_files(folder: str, skipped: Optional[image_formats.SkipReport] = None) -> Iterator[str]:
    """The files of a folder walk that are images (`image_formats.keep`: by name, else by content),
    in walk order; the others are added to `skipped` as the walk meets them (hidden files and
    sidecars silently)."""
    return (p for p in walk_files(folder) if image_formats.keep(p, skipped))


def iglob_sorted(pattern: str) -> Iterator[str]:
    """Files matching a glob pattern (`**` spans folders), lazily, directory by directory in
    sorted order. As `glob`: `*` never matches a leading '.', and `**` skips hidden folders."""
    head, parts = pattern, []
    while head and _is_glob(head):
        head, tail = os.path.split(head)
        parts.insert(0, tail)
        if not tail:  # a trailing or doubled separator
            parts.pop(0)
    base = head or os.curdir

    def strip(p):  # no './' in front when the pattern had none
        return p[len(os.curdir) + 1:] if not head and p.startswith(os.curdir + os.sep) else p

    def match(folder: str, k: int) -> Iterator[str]:
        if k == len(parts):
            if os.path.isfile(folder):
                yield strip(folder)
            return
        part = parts[k]
        if part == "**":
            files, dirs = _sorted_entries(folder)
            if k + 1 == len(parts):  # a trailing '**': every file below
                yield from (strip(os.path.join(folder, f)) for f in files if not f.startswith("."))
            else:
                yield from match(folder, k + 1)  # zero folders
            for d in dirs:
                if not d.startswith("."):
                    yield from match(os.path.join(folder, d), k)
            return
        if not _is_glob(part):
            yield from match(os.path.join(folder, part), k + 1)
            return
        files, dirs = _sorted_entries(folder)
        names = sorted(files + dirs) if k + 1 < len(parts) else files
        for name in names:
            if name.startswith(".") and not part.startswith("."):
                continue
            if fnmatch.fnmatchcase(name, part):
                yield from match(os.path.join(folder, name), k + 1)

    return match(base, 0)


# -- items -----------------------------------------------------------------------------------------

def load(item: Item) -> Item:
    """The item with its file read (a path item), or the item itself."""
    if item.path is None or item.data is not None or item.error:
        return item
    try:
        with open(item.path, "rb") as f:
            return Item(item.source, f.read())
    except OSError as e:
        return Item(item.source, error=f"cannot read: {e.strerror or e}")


def _file(path: str) -> Item:
    return Item(path, path=path)


def _from_array(arr: np.ndarray, source: str) -> Item:
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3, 4):
        return Item(source, error=f"expected an HWC image array with 1, 3 or 4 channels, got shape {arr.shape}")
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    if arr.shape[-1] == 4:  # as decode_image(channels=3): alpha dropped
        arr = arr[..., :3]
    if arr.dtype == np.uint8:
        return Item(source, np.ascontiguousarray(arr))
    if np.issubdtype(arr.dtype, np.floating):
        if arr.size and (np.nanmin(arr) < 0 or np.nanmax(arr) > 1 or not np.all(np.isfinite(arr))):
            return Item(source, error="float image arrays must hold finite values in [0, 1]")
        return Item(source, np.ascontiguousarray(arr, np.float32))
    return Item(source, error=f"unsupported image array dtype {arr.dtype} (use uint8, or float in [0, 1])")


def _path_items(path: str, skipped: Optional[image_formats.SkipReport]) -> Iterator[Item]:
    if os.path.isdir(path):
        empty = True
        for f in image_files(path, skipped):
            empty = False
            yield _file(f)
        if empty:
            yield Item(path, error="folder holds no image files")
    elif _is_glob(path) and not os.path.exists(path):
        matched = kept = False
        for f in iglob_sorted(path):
            matched = True
            if image_formats.keep(f, skipped):
                kept = True
                yield _file(f)
        if not kept:
            yield Item(path, error="pattern matches no image files" if matched else "pattern matches no files")
    else:
        yield _file(path) if os.path.exists(path) else Item(path, error="no such file")


def is_single(inputs) -> bool:
    """One input given bare rather than in a list."""
    return isinstance(inputs, (str, os.PathLike, bytes, bytearray, memoryview, np.ndarray)) or _is_pil(inputs)


def iter_items(inputs: Union[Any, Iterable[Any]],
               skipped: Optional[image_formats.SkipReport] = None) -> Iterator[Item]:
    """User inputs as items, in order, one at a time. Folders are walked (recursively) and glob
    patterns matched (both in sorted order, lazily), keeping the files that are images
    (`image_formats.keep`): the others are added to `skipped` as the walk meets them. A pattern
    or folder that matches no image becomes one failed item, so nothing the user named
    disappears silently. Path items are not read here (see `load`)."""
    if is_single(inputs):
        inputs = [inputs]
    counters = {"bytes": 0, "array": 0, "image": 0}
    for x in inputs:
        if isinstance(x, Item):  # already expanded
            yield x
        elif isinstance(x, (bytes, bytearray, memoryview)):
            yield Item(f"<bytes {counters['bytes']}>", bytes(x))
            counters["bytes"] += 1
        elif isinstance(x, np.ndarray):
            for a in (x if x.ndim == 4 else [x]):
                yield _from_array(np.asarray(a), f"<array {counters['array']}>")
                counters["array"] += 1
        elif _is_pil(x):
            src = getattr(x, "filename", "") or f"<image {counters['image']}>"
            counters["image"] += 1
            yield _from_array(np.asarray(x.convert("RGB")), src)
        elif isinstance(x, (str, os.PathLike)):
            yield from _path_items(os.fspath(x), skipped)
        else:
            yield Item(repr(x)[:60], error=f"unsupported input type {type(x).__name__}")


def expand(inputs: Union[Any, Iterable[Any]], skipped: Optional[image_formats.SkipReport] = None) -> list[Item]:
    """All items as a list, their files read (memory grows with the inputs: prefer iter_items)."""
    return [load(it) for it in iter_items(inputs, skipped)]


def _is_pil(x) -> bool:
    try:
        from PIL import Image
    except ImportError:
        return False
    return isinstance(x, Image.Image)
