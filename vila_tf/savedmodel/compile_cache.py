"""XLA's persistent compilation cache for the SavedModel's signatures: the first call of a fresh
process loads the compiled program instead of compiling it again (~3 s on the full-size model).

Where: `$VILA_TF_CACHE_DIR`, else `$XDG_CACHE_HOME/vila-tf`, else `~/.cache/vila-tf`, then
`xla/<machine>/<export>/`: `<machine>` hashes the CPU's model and instruction-set flags and the
TensorFlow release (a program compiled for one CPU must not run on another), `<export>` is the
export's identity (the sha256 of its fingerprint.pb), so a new export never shares a folder with
an old one. XLA itself also checks each entry's HLO against the program it needs before using it.
Several processes may share the folder: XLA writes each entry to a temporary file and renames it
into place. `VILA_TF_CACHE_DIR=off` turns the cache off; deleting the folder is always safe.

XLA fails the call when it cannot write an entry, so the cache is only turned on when a file can
be created in the folder, 2 GB are free and no file-size limit (ulimit -f) is below that; otherwise
it is read-only (entries already there are used) or off: a read-only home, a full disk or a size
limit costs speed, never a failure. (A disk that fills up during the run is the one case left:
the command then stops with one line saying to rerun with VILA_TF_CACHE_DIR=off.) No TensorFlow here:
this sets TF_XLA_FLAGS, which TensorFlow reads when it first compiles, so it must run before then.
"""
from __future__ import annotations

import hashlib
import os
import platform
import shutil
from typing import Optional

from vila_tf.core import atomic

FLAG = "--tf_xla_persistent_cache_directory"
READ_ONLY_FLAG = "--tf_xla_persistent_cache_read_only"
MIN_FREE_BYTES = 2_000_000_000  # a full-size model's entries are ~100 MB; keep well clear of a full disk


def root() -> Optional[str]:
    """The cache's top folder, or None when turned off."""
    chosen = os.environ.get("VILA_TF_CACHE_DIR")
    if chosen is not None:
        return None if chosen.strip().lower() in ("", "off", "0", "none") else chosen
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "vila-tf")


def machine_key() -> str:
    """What a compiled CPU program depends on: the CPU model and flags, the TensorFlow release."""
    cpu = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            lines = [line for line in f if line.startswith(("model name", "flags", "Features", "CPU part"))]
        cpu = "".join(sorted(set(lines)))
    except OSError:
        cpu = platform.processor()
    try:
        from importlib.metadata import version
        tf_release = version("tensorflow")
    except Exception:  # noqa: BLE001  (a broken install: the key still separates machines)
        tf_release = "unknown"
    return hashlib.sha256(f"{platform.machine()}\n{cpu}\n{tf_release}".encode()).hexdigest()[:16]


def folder_for(identity: str) -> Optional[str]:
    top = root()
    if top is None:
        return None
    export = hashlib.sha256(identity.encode()).hexdigest()[:16]
    return os.path.join(top, "xla", machine_key(), export)


def _file_size_limit() -> Optional[int]:
    """The process's largest writable file (ulimit -f), None when unlimited."""
    try:
        import resource
        soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
        return None if soft == resource.RLIM_INFINITY else int(soft)
    except (ImportError, OSError, ValueError):
        return None


def _writable(folder: str) -> bool:
    limit = _file_size_limit()
    if limit is not None and limit < MIN_FREE_BYTES:
        return False  # an entry could be cut short, and XLA would fail the call
    try:
        atomic.probe_folder(folder)
        return shutil.disk_usage(folder).free >= MIN_FREE_BYTES
    except OSError:
        return False


class CacheWriteError(RuntimeError):
    """XLA could not write an entry (the disk filled during the run): one line saying how to go on."""


def check_call_error(err: Exception) -> None:
    """Raises CacheWriteError when a TensorFlow call failed because the cache could not be
    written (XLA fails the call then); returns otherwise."""
    text = str(getattr(err, "message", "") or err)
    if FLAG not in os.environ.get("TF_XLA_FLAGS", "") or "xla_compile_cache" not in text:
        return
    raise CacheWriteError(f"the compilation cache could not be written ({text.strip().splitlines()[-1][-160:]}): "
                          "free some space, or rerun with VILA_TF_CACHE_DIR=off") from None


def enable(identity: str) -> Optional[str]:
    """Points XLA's persistent cache at this export's folder (read-only when it cannot be written
    safely); returns the folder, or None when the cache stays off (turned off, no usable folder, or
    the user's own TF_XLA_FLAGS already choose a cache)."""
    flags = os.environ.get("TF_XLA_FLAGS", "")
    if FLAG in flags:
        return None  # the user's (or a test run's) own cache
    folder = folder_for(identity)
    if folder is None:
        return None
    if _writable(folder):
        extra = f"{FLAG}={folder}"
    elif os.path.isdir(folder) and os.access(folder, os.R_OK | os.X_OK):
        extra = f"{FLAG}={folder} {READ_ONLY_FLAG}=true"
    else:
        return None
    os.environ["TF_XLA_FLAGS"] = f"{flags} {extra}".strip()
    return folder
