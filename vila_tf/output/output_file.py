"""The files a `vila-tf` run writes: checked before the model loads, locked while written, and
recorded, so that nothing else is ever overwritten and `--resume` never mixes runs
(docs/reliability.md).

- Refused before the model loads (the CLI's exit 2, one line): an `--output` that is a folder,
  one of the inputs, an existing file that is not a results file (a photo is never truncated),
  or in a folder the user cannot write to; the same for `--contact-sheet`.
- Locked: `flock(LOCK_EX | LOCK_NB)` on the results file itself, taken before anything in it
  changes and held until the run ends (the kernel drops it when the process dies, even by
  SIGKILL). A second run on the same file is refused, naming the process that holds it (Linux
  lists it in /proc/locks). Never two writers, so rows are never torn or interleaved.
- Recorded: `OUTPUT.vila-tf.json` beside the file, written atomically when the run starts, says
  what writes it: the command, format and columns, the model (path, kind, and the SHA-256 of its
  SavedModel fingerprint) and the options that change values (EXIF orientation). `--resume`
  compares it with its own run and refuses a mismatch, saying what differs. The record is a
  sidecar, as CSV on the Web keeps `-metadata.json` beside a CSV, so the results file itself
  stays plain rows that pandas, spreadsheets and `jq` read as they are.
"""
from __future__ import annotations

import csv
import errno
import io
import json
import os
import stat
from typing import Iterable, Optional

from vila_tf.inputs import image_formats
from vila_tf.core import atomic, metadata
from vila_tf.output import results_file
from vila_tf.core import tasks
from vila_tf.core import versions
from vila_tf.core.digest import file_sha256

try:
    import fcntl
except ImportError:  # not POSIX (Windows): outputs are not locked there
    fcntl = None

RECORD_SUFFIX = image_formats.RECORD_SUFFIX
RECORD_VERSION = 1
RANK_COLUMNS = ["query", "rank", "similarity", "input"]  # `vila-tf rank --output`
SHEET_SOFTWARE = "vila-tf contact sheet"  # the PNG text chunk that marks a sheet as ours


class OutputError(Exception):
    """A file the run must not or cannot write; the message is one line for the user."""


def record_path(path: str) -> str:
    return path + RECORD_SUFFIX


# -- what writes a results file ---------------------------------------------------------------------

def model_record(model_path: str, variant: Optional[str] = None) -> dict:
    """The model as a record names it: where it is, what it is, and its identity (the SHA-256 of
    the SavedModel's fingerprint.pb, which hashes its graph and weights; of saved_model.pb when an
    export has no fingerprint; for a LiteRT export, the SHA-256 of the variant's .tflite file its
    metadata records). Reads no weights and needs no TensorFlow."""
    from vila_tf.litert import format as litert_format
    litert = litert_format.resolve(model_path)
    if litert is not None:
        meta = litert_format.read_metadata(litert)
        variant = variant or litert_format.DEFAULT_VARIANT
        file = litert_format.variant_path(litert, meta, variant)
        sha = meta.get("variants", {}).get(variant, {}).get("sha256")
        if not sha:
            sha = file_sha256(file)
        return {"path": os.path.abspath(litert), "kind": f"LiteRT {variant} {meta.get('model_type', '')}".strip(),
                "identity": f"{os.path.basename(file)} sha256 {sha}"}
    path = os.path.abspath(versions.resolve_savedmodel(model_path))
    meta = metadata.read(path)  # MetadataError (a ValueError) for an export that is not complete
    ident = os.path.join(path, "fingerprint.pb")
    if not os.path.isfile(ident):
        ident = os.path.join(path, versions.SAVEDMODEL_FILE)
    return {"path": path, "kind": meta.model_kind or meta.model_type,
            "identity": f"{os.path.basename(ident)} sha256 {file_sha256(ident)}"}


def run_record(command: str, fmt: str, cols: list[str], model: dict, exif_orientation: bool) -> dict:
    """The record of a run: what `--resume` must find unchanged before it appends rows."""
    return {"written_by": "vila-tf", "record": RECORD_VERSION, "command": command, "format": fmt,
            "columns": list(cols), "model": model, "options": {"exif_orientation": bool(exif_orientation)}}


def _orientation(value: bool) -> str:
    return "turned upright by EXIF" if value else "as stored (--release-exact-orientation)"


def differences(old: dict, new: dict, format_reason: str = "") -> list[str]:
    """What differs between the record of a results file and this run, in words."""
    out = []
    if old.get("command") != new["command"]:
        out.append(f"it holds `{old.get('command')}` results, this run is `{new['command']}`")
    if old.get("format") != new["format"]:
        out.append(f"it is {old.get('format')}, this run writes {new['format']}"
                   f"{f' ({format_reason})' if format_reason else ''}: resume with --format {old.get('format')}")
    elif old.get("command") == new["command"] and old.get("columns") != new["columns"]:
        out.append(f"its columns are {','.join(old.get('columns') or [])}, this run's are {','.join(new['columns'])} "
                   "(--with-captions, --prompt)")
    om, nm = old.get("model") or {}, new["model"]
    if om.get("identity") != nm["identity"]:
        same_path = om.get("path") == nm["path"]
        out.append(f"it was scored by {'another export at ' if same_path else ''}{om.get('path')} "
                   f"({om.get('identity', 'unknown')[:40]}), this run uses {nm['path']} ({nm['identity'][:40]})")
    oo, no = old.get("options") or {}, new["options"]
    if oo.get("exif_orientation") != no["exif_orientation"]:
        out.append(f"its photos were scored {_orientation(oo.get('exif_orientation'))}, this run scores them "
                   f"{_orientation(no['exif_orientation'])}")
    return out


def _read_record(path: str) -> Optional[dict]:
    try:
        with open(record_path(path), encoding="utf-8") as f:
            rec = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise OutputError(f"--resume: cannot read {record_path(path)} (the record of what wrote {path}): "
                          f"{getattr(e, 'strerror', None) or e}: move both away, or choose another --output") from None
    if not isinstance(rec, dict) or rec.get("written_by") != "vila-tf":
        raise OutputError(f"--resume: {record_path(path)} is not a record vila-tf wrote: move it away, or "
                          "choose another --output")
    return rec


def _write_record(path: str, record: dict) -> None:
    from vila_tf.core.atomic import atomic_file
    with atomic_file(record_path(path), "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1)
        f.write("\n")


# -- what a file is -----------------------------------------------------------------------------------

def _first_line(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read(65536).split(b"\n", 1)[0]


def _looks_like_results(path: str) -> Optional[str]:
    """'csv' / 'jsonl' when a file's first line is a results header or row of ours, else None."""
    line = _first_line(path)
    try:
        text = line.decode("utf-8").rstrip("\r")
    except UnicodeDecodeError:
        return None
    if text.startswith("{"):
        try:
            return "jsonl" if "input" in json.loads(text) else None
        except (ValueError, TypeError):
            return None
    try:  # a header of ours: input, the command's columns, error (zero-shot pair names vary)
        cells = next(csv.reader(io.StringIO(text)))
    except (csv.Error, StopIteration):
        return None
    fields = {t.field for t in tasks.BY_COMMAND.values()}
    if cells == RANK_COLUMNS:  # `vila-tf rank --output`
        return "csv"
    return "csv" if len(cells) >= 3 and cells[0] == "input" and cells[1] in fields and cells[-1] == "error" else None


def _describe(path: str) -> str:
    """A few words on what a foreign file is."""
    try:
        with open(path, "rb") as f:
            head = f.read(image_formats.HEAD_BYTES)
    except OSError as e:
        return e.strerror or str(e)
    kind = image_formats.sniff(head)
    if kind:
        return f"it is a{'n' if kind[0] in 'aeiou' else ''} {image_formats.DISPLAY.get(kind, kind)} image"
    try:
        text = head.decode("utf-8").split("\n")[0]
    except UnicodeDecodeError:
        return "it holds binary data"
    return f"it starts with {text[:40]!r}"


# What each format's file is called: an output named for another format is refused, never written
# in the wrong one (a .jpg holding PNG bytes, a .csv holding JSON Lines).
EXTENSIONS = {"csv": (".csv",), "jsonl": (".jsonl", ".json"), "png": (".png",)}
_KNOWN = {ext: fmt for fmt, exts in EXTENSIONS.items() for ext in exts} | {
    ext: "another format" for ext in (".jpg", ".jpeg", ".tsv", ".txt.gz", ".parquet", ".webp", ".gif", ".tif", ".tiff")}


def check_extension(path: str, fmt: str, flag: str) -> None:
    """OutputError when `path`'s extension names another format than `fmt` (a name with no known
    extension is taken as it is; a contact sheet must be a .png)."""
    if path in ("-", os.devnull) or (os.path.exists(path) and not os.path.isfile(path)):
        return  # a device or FIFO: no name to mislead anyone
    ext = os.path.splitext(path)[1].lower()
    if fmt == "png" and ext != ".png":
        raise OutputError(f"{flag} {path}: a contact sheet is a PNG image: give a name ending in .png")
    named = _KNOWN.get(ext)
    if named is not None and named != fmt and fmt in EXTENSIONS:
        raise OutputError(f"{flag} {path}: the name says {named if named != 'another format' else ext}, but the rows "
                          f"are written as {fmt}: name it {os.path.splitext(path)[0]}{EXTENSIONS[fmt][0]}, or "
                          f"choose --format {named if named in EXTENSIONS else fmt}")


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def named_inputs(inputs: Iterable) -> list[str]:
    """The inputs that name a file (not a folder or pattern): what an output must not be."""
    return [os.fspath(x) for x in inputs if isinstance(x, (str, os.PathLike)) and os.path.isfile(x)]


def _check_writable_folder(path: str, flag: str) -> None:
    """Creates the folder of `path` if needed and proves a file can be created in it (what an
    atomic write needs), so a read-only folder is found before the model loads."""
    parent = os.path.dirname(os.path.abspath(path))
    try:
        atomic.probe_folder(parent)
    except OSError as e:
        raise OutputError(f"cannot write {flag} {path}: {e.strerror or e} (in {parent}): choose a folder you can "
                          "write to") from None


def _check_target(path: str, flag: str, inputs: list[str]) -> Optional[os.stat_result]:
    """The checks shared by every file a run writes; returns its stat if it exists."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise OutputError(f"cannot write {flag} {path}: {e.strerror or e}") from None
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise OutputError(f"{flag} {path} is a folder: give a file name, e.g. "
                          f"{os.path.join(path, 'scores.csv' if flag == '--output' else 'sheet.png')}")
    if st is not None and any(_same_file(path, x) for x in inputs):
        raise OutputError(f"{flag} {path} is also one of the inputs: it would be overwritten; choose another "
                          f"{flag}")
    return st


# -- the results file ---------------------------------------------------------------------------------

def lock_holder(fd: int) -> Optional[int]:
    """The process holding a flock on the file open at `fd` (Linux /proc/locks), or None."""
    st = os.fstat(fd)
    want = (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
    try:
        with open("/proc/locks") as f:
            for line in f:
                fields = line.split()
                if len(fields) < 6 or fields[1] == "->" or fields[1] != "FLOCK":
                    continue
                major, minor, inode = fields[5].split(":")
                if (int(major, 16), int(minor, 16), int(inode)) == want:
                    return int(fields[4])
    except (OSError, ValueError):
        pass
    return None


class ResultsOutput:
    """`--output FILE` of one run. `prepare()` before the model loads: every refusal, the lock,
    and for `--resume` the record check and the repair. `begin()` once the model is loaded: the
    file to append rows to (a fresh run truncates it only now). `close()` releases the lock."""

    def __init__(self, path: str, fmt: str, cols: list[str], record: dict, resume: bool,
                 inputs: Iterable = (), format_reason: str = ""):
        self.path, self.fmt, self.cols, self.record, self.resume = path, fmt, cols, record, resume
        self.inputs = named_inputs(inputs)
        self.format_reason = format_reason
        self.fd: Optional[int] = None
        self.file = None
        self.stream = False  # a FIFO or device (/dev/null): written as it is, no lock, no record
        self.created = False
        self.kept = 0  # rows a resumed run keeps
        self.notes: list[str] = []  # what the run should tell the user

    # -- before the model loads ---------------------------------------------------------------------
    def prepare(self) -> "ResultsOutput":
        try:
            return self._prepare()
        except OSError as e:  # unreadable, vanished, or the disk filled while a damaged file was cleaned
            self.abandon()
            raise OutputError(f"cannot use --output {self.path}: {e.strerror or e}") from None

    def _prepare(self) -> "ResultsOutput":
        st = _check_target(self.path, "--output", self.inputs)
        if st is not None and not stat.S_ISREG(st.st_mode):
            if self.resume:
                raise OutputError(f"--resume: --output {self.path} is not a regular file: nothing to continue")
            self.stream = True
            return self
        _check_writable_folder(self.path, "--output")
        if st is not None and st.st_size and not os.path.exists(record_path(self.path)) \
                and not _looks_like_results(self.path):
            raise OutputError(f"--output {self.path} exists and is not a results file of vila-tf "
                              f"({_describe(self.path)}): not overwritten; choose another --output, or delete it first")
        if not self.resume:  # a resumed file's format is checked against its record instead
            check_extension(self.path, self.fmt, "--output")
        self._lock()
        try:
            if self.resume and os.path.getsize(self.path):
                self._check_resume()
        except BaseException:
            self.abandon()  # releases the lock
            raise
        return self

    def _lock(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
            self.created = True
        except FileExistsError:
            try:
                fd = os.open(self.path, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
            except OSError as e:
                raise OutputError(f"cannot write --output {self.path}: {e.strerror or e}") from None
        except OSError as e:
            raise OutputError(f"cannot write --output {self.path}: {e.strerror or e}") from None
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                # A file system without locks (some network mounts): written unlocked, and said so.
                self.notes.append(f"{self.path}: its file system cannot lock files ({e.strerror}): make sure no "
                                  "other run writes it at the same time")
                self.fd = fd
                return
            holder = lock_holder(fd) if e.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES) else None
            os.close(fd)
            if e.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
                raise OutputError(f"cannot lock --output {self.path}: {e.strerror or e}") from None
            who = f"process {holder}" if holder else "another process"
            raise OutputError(f"--output {self.path} is being written by another vila-tf run ({who}): wait for it "
                              "to finish (then --resume continues it), or choose another --output") from None
        self.fd = fd

    def _check_resume(self) -> None:
        old = _read_record(self.path)
        if old is None:  # a file of an earlier vila-tf, or one moved without its record
            found = _looks_like_results(self.path)
            if found and found != self.fmt:
                raise OutputError(f"--resume: {self.path} holds {found} rows, this run writes {self.fmt}"
                                  f"{f' ({self.format_reason})' if self.format_reason else ''}: resume with "
                                  f"--format {found}")
            try:
                self.kept = results_file.repair(self.path, self.fmt, self.cols)
            except results_file.ResumeError as e:
                raise OutputError(f"--resume: {e}") from None
            self.notes.append(f"{self.path} has no record of the run that wrote it ({record_path(self.path)}): its "
                              "columns were checked, its model and options could not be")
            return
        diffs = differences(old, self.record, self.format_reason)
        if diffs:
            raise OutputError(f"--resume: {self.path} was written by another kind of run: " + "; ".join(diffs)
                              + f" ({record_path(self.path)}); resume with the same command, model and options, "
                              "or choose another --output")
        try:
            cleaned = results_file.clean(self.path, self.fmt, self.cols)
        except results_file.ResumeError as e:
            raise OutputError(f"--resume: {e}") from None
        if cleaned.rewritten:  # a new file at the path: lock it instead (refused if another run got it first)
            os.close(self.fd)
            self.fd = None
            self._lock()
        self.kept = cleaned.rows
        dropped = []
        if cleaned.damaged:
            dropped.append(f"{cleaned.damaged} damaged row{'s' if cleaned.damaged > 1 else ''} (NUL bytes or cut "
                           "short, as a machine crash or two runs at once leave them)")
        if cleaned.repeated:
            dropped.append(f"{cleaned.repeated} repeated row{'s' if cleaned.repeated > 1 else ''} (inputs that "
                           "already had one)")
        if dropped:
            self.notes.append(f"{self.path}: dropped {' and '.join(dropped)}; their inputs are scored again")

    @property
    def identity(self) -> Optional[tuple]:
        """(st_dev, st_ino) of the file: walks of the inputs never yield it."""
        if self.fd is None:
            return None
        st = os.fstat(self.fd)
        return st.st_dev, st.st_ino

    # -- once the model is loaded -------------------------------------------------------------------
    def begin(self):
        """The text file rows are appended to; `self.fresh`: whether it needs a header."""
        if self.stream:
            self.fresh = True
            self.file = open(self.path, "w", encoding="utf-8", newline="")
            return self.file
        self.fresh = not self.resume or os.fstat(self.fd).st_size == 0
        if self.fresh:
            os.ftruncate(self.fd, 0)
        _write_record(self.path, self.record)
        os.lseek(self.fd, 0, os.SEEK_END)
        self.file = open(self.fd, "w", encoding="utf-8", newline="", closefd=True)  # owns fd and lock now
        return self.file

    def close(self) -> None:
        """Closes the file and so releases the lock. A write error while flushing is raised (the
        caller reports it); `close_quietly` is for after one."""
        f, fd, self.file, self.fd = self.file, self.fd, None, None
        if f is not None:
            f.close()
        elif fd is not None:
            os.close(fd)

    def abandon(self) -> None:
        """The run stopped before writing anything: a file this run created is removed again."""
        created = self.created and self.file is None and self.fd is not None and not os.fstat(self.fd).st_size
        path = self.path
        self.close()
        if created:
            try:
                os.unlink(path)
            except OSError:
                pass


def close_quietly(f) -> None:
    """Closes a file after a write error without raising that error a second time (its buffer
    still holds what could not be written, and close would try again)."""
    try:
        f.close()
    except OSError:
        try:
            os.close(f.fileno())
        except (OSError, ValueError):
            pass


# -- the contact sheet --------------------------------------------------------------------------------

def check_contact_sheet(path: str, inputs: Iterable, output: Optional[str]) -> None:
    """Refuses a --contact-sheet path that would overwrite something that is not a sheet of ours,
    or that cannot be written, before anything is scored."""
    named = named_inputs(inputs)
    st = _check_target(path, "--contact-sheet", named)
    if output and (os.path.abspath(path) == os.path.abspath(output) or _same_file(path, output)):
        raise OutputError(f"--contact-sheet {path} is also the --output: choose another file")
    if st is not None:
        if not stat.S_ISREG(st.st_mode):
            raise OutputError(f"--contact-sheet {path} is not a regular file: choose a .png file name")
        if st.st_size and not is_contact_sheet(path):
            raise OutputError(f"--contact-sheet {path} exists and is not a contact sheet of vila-tf "
                              f"({_describe(path)}): not overwritten; choose another file, or delete it first")
    check_extension(path, "png", "--contact-sheet")
    _check_writable_folder(path, "--contact-sheet")


def is_contact_sheet(path: str) -> bool:
    """Whether a PNG is a contact sheet vila-tf drew (its Software text chunk says so)."""
    from PIL import Image
    try:
        with Image.open(path) as im:
            return im.format == "PNG" and str(im.info.get("Software", "")).startswith(SHEET_SOFTWARE)
    except Exception:  # noqa: BLE001  (not an image at all)
        return False
