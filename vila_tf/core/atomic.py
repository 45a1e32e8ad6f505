"""Writing folders and files so that a reader never sees them half-written.

Everything is written to a temporary sibling (same filesystem) and moved into place at the end.
A folder that already exists is swapped with the new one in a single `renameat2(RENAME_EXCHANGE)`
call where the kernel offers it, so even a SIGKILL at any instant leaves either the previous
complete folder or the new complete one at the path (TF Serving polls version folders and would
load a half-written one). Temporary siblings start with '.', which TF Serving ignores, and stale
ones left by a killed run are removed by the next run.

The results get the modes a plain `open()` / `mkdir` would give them (0644 / 0755 under the usual
umask), not the private 0600 / 0700 of the temporaries: a web server or a model server running as
another user must be able to read a published checksum, a model card or a SavedModel.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import shutil
import tempfile

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def umask() -> int:
    """The process's umask, read without changing it (Linux: /proc), else by setting and restoring it."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _tmp_prefix(path: str) -> str:
    return f".{os.path.basename(path)}.tmp-"


def _old_prefix(path: str) -> str:
    return f".{os.path.basename(path)}.old-"


def remove_stale(path: str) -> None:
    """Removes temporaries of earlier runs for `path` whose writer process is gone."""
    parent = os.path.dirname(path) or "."
    if not os.path.isdir(parent):
        return
    for name in os.listdir(parent):
        if name.startswith((_tmp_prefix(path), _old_prefix(path))):
            pid = name.rsplit("-", 2)[-2] if name.count("-") >= 2 else ""
            if pid.isdigit() and _alive(int(pid)):
                continue  # another live export of the same path
            target = os.path.join(parent, name)
            shutil.rmtree(target, ignore_errors=True) if os.path.isdir(target) else os.unlink(target)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # our own leftovers from an earlier call are stale too
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _exchange(a: str, b: str) -> bool:
    """Atomically swaps two paths (Linux renameat2); False where unsupported."""
    libc_name = ctypes.util.find_library("c")
    if not libc_name:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is None:
        return False
    rc = fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    return rc == 0


def move_into_place(src: str, dst: str) -> None:
    """Moves folder or file `src` to `dst`, replacing `dst` atomically if it exists."""
    if not os.path.lexists(dst) or os.path.isfile(dst) and os.path.isfile(src):
        os.replace(src, dst)
        return
    if _exchange(src, dst):
        shutil.rmtree(src, ignore_errors=True) if os.path.isdir(src) else os.unlink(src)
        return
    # Fallback (no renameat2): a short window where dst is absent, never partial.
    old = os.path.join(os.path.dirname(dst), f"{_old_prefix(dst)}{os.getpid()}-x")
    os.replace(dst, old)
    os.replace(src, dst)
    shutil.rmtree(old, ignore_errors=True)


def probe_folder(folder: str) -> None:
    """Creates `folder` if needed and proves a file can be created and removed in it, what an
    atomic write there needs; OSError when it cannot."""
    os.makedirs(folder, exist_ok=True)
    fd, probe = tempfile.mkstemp(prefix=".vila-tf-probe-", dir=folder)
    os.close(fd)
    os.unlink(probe)


@contextlib.contextmanager
def atomic_dir(path: str):
    """`with atomic_dir(out) as tmp:` write into tmp; on success it becomes `out`, else vanishes."""
    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    remove_stale(path)
    tmp = tempfile.mkdtemp(prefix=f"{_tmp_prefix(path)}{os.getpid()}-", dir=parent)
    try:
        os.chmod(tmp, 0o777 & ~umask())  # mkdtemp makes it 0700
        yield tmp
        move_into_place(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_file(path: str, mode: str = "w", **open_kwargs):
    """`with atomic_file(out) as f:` the file appears at `out` complete, or not at all."""
    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    remove_stale(path)
    fd, tmp = tempfile.mkstemp(prefix=f"{_tmp_prefix(path)}{os.getpid()}-", dir=parent)
    try:
        os.fchmod(fd, 0o666 & ~umask())  # mkstemp makes it 0600 (the caller may fchmod it again)
        with os.fdopen(fd, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
