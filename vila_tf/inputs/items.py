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
import os
import stat
from typing import Any, Iterable, Iterator, Optional, Union

import numpy as np

from vila_tf.inputs import image_formats
from vila_tf.inputs import walk

# Files larger than this are refused before a byte is read (`vila_tf.load(max_file_bytes=)`,
# `--max-file-size`): the largest image within the 50-megapixel limit, stored uncompressed as
# 16-bit RGBA TIFF, is 400 MB.
DEFAULT_MAX_FILE_BYTES = 500_000_000
_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a folder"))


@dataclasses.dataclass(frozen=True)
class Item:
    source: str
    data: Any = None  # bytes, or a numpy array HWC; None when unreadable or not read yet
    error: str | None = None
    path: Optional[str] = None  # a file still to be read (by `load`, in a decode thread)


def _is_glob(s: str) -> bool:
    return walk.is_glob(s)


# -- walking folders and globs, lazily (vila_tf.inputs.walk: each real file once, no FIFOs, no loops) -------

def walk_files(folder: str, skipped: Optional[image_formats.SkipReport] = None) -> Iterator[str]:
    """Every regular file under `folder`, recursively: a folder's files (sorted) before its
    sub-folders (sorted). One folder's names are in memory at a time. Hidden files and folders
    are left out, links that loop are not followed (`vila_tf.inputs.walk`)."""
    return walk.Walk(skipped).files(folder)


def image_files(folder: str, skipped: Optional[image_formats.SkipReport] = None) -> Iterator[str]:
    """The files of a folder walk that are images (`image_formats.keep`: by name, else by content),
    in walk order; the others are added to `skipped` as the walk meets them (hidden files and
    sidecars silently)."""
    return (p for p in walk_files(folder, skipped) if image_formats.keep(p, skipped))


def iglob_sorted(pattern: str, skipped: Optional[image_formats.SkipReport] = None) -> Iterator[str]:
    """Regular files matching a glob pattern (`**` spans folders), lazily, directory by directory in
    sorted order. As `glob`: `*` never matches a leading '.', and `**` skips hidden folders."""
    return walk.Walk(skipped).glob(pattern)


# -- items -----------------------------------------------------------------------------------------

def _not_regular(mode: int) -> Optional[str]:
    """Why a file of this mode is not read, or None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
    return f"not a regular file ({kind}): not read"


def size_text(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n} bytes"


def too_large(size: int, max_file_bytes: int) -> str:
    return (f"file of {size_text(size)}, more than the {size_text(max_file_bytes)} an image may have "
            "(max_file_bytes; vila-tf --max-file-size): not read")


def load(item: Item, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES) -> Item:
    """The item with its file read (a path item), or the item itself. Only a regular file of at
    most `max_file_bytes` is read: the size is checked before the first byte (and the read stops
    one byte past the cap should the file grow), and a FIFO is never waited on (O_NONBLOCK)."""
    if item.path is None or item.data is not None or item.error:
        return item
    try:
        why = _not_regular(os.stat(item.path).st_mode)
        if why:
            return Item(item.source, error=why)
        fd = os.open(item.path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(fd)  # the file opened, which may not be the one stat saw
            why = _not_regular(st.st_mode) or (too_large(st.st_size, max_file_bytes)
                                               if st.st_size > max_file_bytes else None)
            if why:
                return Item(item.source, error=why)
            data = f.read(max_file_bytes + 1)
        if len(data) > max_file_bytes:
            return Item(item.source, error=too_large(len(data), max_file_bytes))
        return Item(item.source, data)
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


def _path_items(path: str, walker: walk.Walk) -> Iterator[Item]:
    skipped = walker.report
    if os.path.isdir(path):
        if walker.walked(path):
            skipped.loops.append(path)  # given twice, or inside a folder given before: walked once
            return
        empty = True
        for f in walker.files(path):
            if image_formats.keep(f, skipped):
                empty = False
                yield _file(f)
        if empty:
            yield Item(path, error="folder holds no image files")
    elif _is_glob(path) and not os.path.exists(path):
        matched = kept = False
        for f in walker.glob(path):
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
               skipped: Optional[image_formats.SkipReport] = None, exclude: Iterable[tuple] = ()) -> Iterator[Item]:
    """User inputs as items, in order, one at a time. Folders are walked (recursively) and glob
    patterns matched (both in sorted order, lazily), keeping the files that are images
    (`image_formats.keep`): the others are added to `skipped` as the walk meets them. A pattern
    or folder that matches no image becomes one failed item, so nothing the user named
    disappears silently. Path items are not read here (see `load`). Folder walks and patterns
    meet each real file once (`vila_tf.inputs.walk`); `exclude` lists `(st_dev, st_ino)` of files they
    never yield (a run's own output)."""
    if is_single(inputs):
        inputs = [inputs]
    walker = walk.Walk(skipped, exclude)
    counters = {"bytes": 0, "array": 0, "image": 0}
    yield from _items(inputs, walker, counters)


def _items(inputs: Iterable[Any], walker: walk.Walk, counters: dict, depth: int = 0) -> Iterator[Item]:
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
            yield from _path_items(os.fspath(x), walker)
        elif depth < 8 and (isinstance(x, (list, tuple)) or hasattr(x, "__next__")):
            # a list or generator among the inputs (["photos/", more_photos()]): its items in turn, lazily
            yield from _items(x, walker, counters, depth + 1)
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
