"""Turning what users pass (paths, folders, globs, bytes, arrays, PIL images) into items.

Each item keeps a `source` label (the path, or `<bytes 3>` / `<array 0>`) so failures and results
can be reported against what the user gave.
"""
from __future__ import annotations

import dataclasses
import glob
import os
from typing import Any, Iterable, Optional, Union

import numpy as np

from vila_tf import image_formats


@dataclasses.dataclass(frozen=True)
class Item:
    source: str
    data: Any = None  # bytes, or a numpy array HWC; None when unreadable
    error: str | None = None


def _is_glob(s: str) -> bool:
    return any(c in s for c in "*?[")


def _image_files(folder: str, skipped: Optional[image_formats.SkipReport] = None) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        # Images by content; the rest goes to `skipped` (hidden files and sidecars silently).
        out += [p for p in (os.path.join(dirpath, f) for f in sorted(filenames)) if image_formats.keep(p, skipped)]
    return out


def _read(path: str) -> Item:
    try:
        with open(path, "rb") as f:
            return Item(path, f.read())
    except OSError as e:
        return Item(path, error=f"cannot read: {e.strerror or e}")


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


def expand(inputs: Union[Any, Iterable[Any]], skipped: Optional[image_formats.SkipReport] = None) -> list[Item]:
    """Flattens user inputs into items, in order. Folders are walked (sorted, recursively) and glob
    patterns expanded (sorted), keeping the files that are images (`image_formats.keep`): the
    others are listed in `skipped`. A pattern or folder that matches no image becomes one failed
    item, so nothing the user named disappears silently."""
    if isinstance(inputs, (str, os.PathLike, bytes, bytearray, memoryview, np.ndarray)) or _is_pil(inputs):
        inputs = [inputs]
    items: list[Item] = []
    counters = {"bytes": 0, "array": 0, "image": 0}
    for x in inputs:
        if isinstance(x, Item):  # already expanded (e.g. by the CLI, to report progress)
            items.append(x)
        elif isinstance(x, (bytes, bytearray, memoryview)):
            items.append(Item(f"<bytes {counters['bytes']}>", bytes(x)))
            counters["bytes"] += 1
        elif isinstance(x, np.ndarray):
            batch = x if x.ndim == 4 else [x]
            for a in batch:
                items.append(_from_array(np.asarray(a), f"<array {counters['array']}>"))
                counters["array"] += 1
        elif _is_pil(x):
            src = getattr(x, "filename", "") or f"<image {counters['image']}>"
            counters["image"] += 1
            items.append(_from_array(np.asarray(x.convert("RGB")), src))
        elif isinstance(x, (str, os.PathLike)):
            path = os.fspath(x)
            if os.path.isdir(path):
                files = _image_files(path, skipped)
                items += [_read(f) for f in files] or [Item(path, error="folder holds no image files")]
            elif _is_glob(path) and not os.path.exists(path):
                files = sorted(f for f in glob.glob(path, recursive=True) if os.path.isfile(f))
                matched = bool(files)
                files = [f for f in files if image_formats.keep(f, skipped)]
                items += [_read(f) for f in files] or [
                    Item(path, error="pattern matches no image files" if matched else "pattern matches no files")]
            else:
                items.append(_read(path) if os.path.exists(path) else Item(path, error="no such file"))
        else:
            items.append(Item(repr(x)[:60], error=f"unsupported input type {type(x).__name__}"))
    return items


def _is_pil(x) -> bool:
    try:
        from PIL import Image
    except ImportError:
        return False
    return isinstance(x, Image.Image)
