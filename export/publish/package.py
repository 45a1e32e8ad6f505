"""TF Hub compressed packages: `python -m export package` (what `make package` runs).

TF Hub published a model as a gzipped tarball holding the SavedModel at the archive root;
`hub.load(url)` / `hub.KerasLayer(url)` download one, unpack it into TFHUB_CACHE_DIR and load it
from there. This module writes, for each exported SavedModel, into DIST_DIR:

  <name>_<version>.tar.gz          the SavedModel folder, deterministic (same input, same bytes)
  <name>_<version>.tar.gz.sha256   `sha256sum -c` format
  <name>.md                        the model card (export.model_card), read from the SavedModel
and, with `--litert LITERT_DIR` (one SavedModel), its LiteRT models beside it with their sha256 and
an "On device" section in the card (export.publish.on_device).

Determinism: entries are sorted (every folder before its contents), every entry has the same mtime,
owner and mode, and the gzip header carries mtime 0 and no file name. The bytes then depend only
on the files' contents and on zlib, so a re-run (or a colleague's run) can be checked by sha256.
Packaging needs TensorFlow and tensorflow_text only, not jax (tested in a process without it).
"""
from __future__ import annotations

import argparse
import dataclasses
import gzip
import hashlib
import os
import re
import sys
import tarfile
import time
from typing import Callable, Optional

from vila_tf.core.atomic import atomic_file
from ..log import log as _log

from . import model_card, on_device
from .. import PROG

ARCHIVE_MTIME = 0          # every entry's mtime, and the gzip header's
FILE_MODE = 0o644
DIR_MODE = 0o755
GZIP_LEVEL = 6             # gzip's default; on float weights levels 1 and 6 differ by <1% in size, ~10% in time
COPY_CHUNK = 1 << 20
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\Z")  # safe in a URL and a file name


class PackageError(Exception):
    """A problem with the input folder or the arguments that the user can fix."""


@dataclasses.dataclass(frozen=True)
class Package:
    name: str
    version: int
    archive: str       # path of <name>_<version>.tar.gz
    sha256: str        # hex digest of the archive
    size: int          # bytes of the archive
    checksum_file: str
    card: str          # path of <name>.md


def archive_filename(name: str, version: int) -> str:
    return f"{name}_{version}.tar.gz"


def archive_entries(savedmodel_dir: str) -> list[str]:
    """The folder's contents as archive names (posix, relative), each folder before its contents.

    Sorting by path components (not by the joined string) keeps `assets/` ahead of its files even
    though `assets.extra` sorts between `assets` and `assets/...` as plain strings.
    """
    found = []
    for parent, dirs, files in os.walk(savedmodel_dir):
        rel_parent = os.path.relpath(parent, savedmodel_dir)
        for name in dirs + files:
            rel = name if rel_parent == "." else os.path.join(rel_parent, name)
            path = os.path.join(savedmodel_dir, rel)
            # hub's unpacker accepts only plain files and folders; a link would also make the
            # archive depend on what it points to.
            if os.path.islink(path) or not (os.path.isfile(path) or os.path.isdir(path)):
                raise PackageError(f"{path}: not a plain file or folder; a TF Hub package can hold only those")
            found.append(tuple(rel.split(os.sep)))
    return ["/".join(parts) for parts in sorted(found)]


def _tarinfo(name: str, path: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mtime = ARCHIVE_MTIME
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if os.path.isdir(path):
        info.type, info.mode, info.size = tarfile.DIRTYPE, DIR_MODE, 0
    else:
        info.type, info.mode, info.size = tarfile.REGTYPE, FILE_MODE, os.path.getsize(path)
    return info


class _HashingWriter:
    """Writes through to a file while hashing, so a 1 GB archive is not read back for its sha256."""

    def __init__(self, raw):
        self.raw = raw
        self.digest = hashlib.sha256()

    def write(self, data) -> int:
        self.digest.update(data)
        return self.raw.write(data)

    def flush(self) -> None:
        self.raw.flush()


def write_archive(savedmodel_dir: str, archive_path: str) -> str:
    """Writes the SavedModel folder as a deterministic tar.gz at `archive_path` (atomically);
    returns its sha256."""
    entries = archive_entries(savedmodel_dir)
    with atomic_file(archive_path, "wb") as raw:
        hashing = _HashingWriter(raw)
        # filename="" keeps the temporary file's name out of the gzip header.
        with gzip.GzipFile(filename="", mode="wb", fileobj=hashing, compresslevel=GZIP_LEVEL,
                           mtime=ARCHIVE_MTIME) as gz:
            # GNU format: no pax headers (which may carry times) and no 8 GB size limit.
            with tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tar:
                for name in entries:
                    path = os.path.join(savedmodel_dir, *name.split("/"))
                    info = _tarinfo(name, path)
                    if info.isdir():
                        tar.addfile(info)
                    else:
                        with open(path, "rb") as f:
                            tar.addfile(info, f)
        os.fchmod(raw.fileno(), FILE_MODE)  # mkstemp makes it 0600; a web server must read it
    return hashing.digest.hexdigest()


def write_text(path: str, text: str) -> None:
    """Writes a small text file atomically (a web server never serves half a checksum)."""
    with atomic_file(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)


def default_name_version(savedmodel_dir: str) -> tuple[str, int]:
    """`exported/vila_r/1` -> ("vila_r", 1) (the TF Serving layout); `some/model` -> ("model", 1)."""
    path = os.path.abspath(savedmodel_dir)
    base = os.path.basename(path)
    if base.isdigit():
        return os.path.basename(os.path.dirname(path)), int(base)
    return base, 1


def check_name_version(name: str, version: int) -> None:
    if not NAME_PATTERN.match(name or ""):
        raise PackageError(f"package name {name!r}: use letters, digits, '_', '.', '-' "
                           "(it becomes part of a URL and a file name); pass --name")
    if version < 0:
        raise PackageError(f"version {version}: must be a non-negative integer (--version)")


def find_savedmodels(path: str) -> list[tuple[str, str, int]]:
    """(folder, name, version) of each SavedModel at `path`: a SavedModel folder, a model folder
    holding <version>/ folders, or a TF Serving base folder holding <name>/<version>/ folders."""
    if not os.path.isdir(path):
        raise PackageError(f"{path}: no such folder")
    if os.path.isfile(os.path.join(path, "saved_model.pb")):
        return [(path, *default_name_version(path))]
    versions = sorted(int(v) for v in os.listdir(path)
                      if v.isdigit() and os.path.isfile(os.path.join(path, v, "saved_model.pb")))
    if versions:
        name = os.path.basename(os.path.abspath(path))
        return [(os.path.join(path, str(v)), name, v) for v in versions]
    from . import serving_layout
    found = [(os.path.join(path, name, str(v)), name, v)
             for name, vs in serving_layout.model_versions(path).items() for v in vs]
    if not found:
        raise PackageError(f"{path}: no SavedModel here ({os.path.join(path, 'saved_model.pb')} is missing "
                           "and no <name>/<version>/saved_model.pb below it); run `make export` first")
    return found


def package_savedmodel(savedmodel_dir: str, dist_dir: str, name: Optional[str] = None,
                       version: Optional[int] = None, base_url: Optional[str] = None,
                       log: Callable[[str], None] = lambda msg: None, litert_dir: Optional[str] = None) -> Package:
    """Writes the archive, its checksum and its model card for one SavedModel into `dist_dir`
    (and its LiteRT models from `litert_dir`, export.publish.on_device)."""
    default_name, default_version = default_name_version(savedmodel_dir)
    name = name or default_name
    version = default_version if version is None else version
    check_name_version(name, version)
    if not os.path.isfile(os.path.join(savedmodel_dir, "saved_model.pb")):
        raise PackageError(f"{os.path.join(savedmodel_dir, 'saved_model.pb')}: not found; "
                           "SAVEDMODEL_DIR must be an exported SavedModel folder")
    source, dist = os.path.realpath(savedmodel_dir), os.path.realpath(dist_dir)
    if os.path.commonpath([source, dist]) == source:
        raise PackageError(f"--out {dist_dir} is inside {savedmodel_dir}: the archive would contain itself")
    # Read everything the card needs first: a SavedModel that does not load is never packaged.
    log(f"reading {savedmodel_dir}")
    facts = model_card.read_facts(savedmodel_dir)
    litert_meta = on_device.read_litert(litert_dir, facts.metadata) if litert_dir else None
    os.makedirs(dist_dir, exist_ok=True)
    archive = os.path.join(dist_dir, archive_filename(name, version))
    log(f"compressing {savedmodel_dir} -> {archive}")
    sha256 = write_archive(savedmodel_dir, archive)
    size = os.path.getsize(archive)
    checksum_file = archive + ".sha256"
    write_text(checksum_file, f"{sha256}  {os.path.basename(archive)}\n")
    section = ""
    if litert_meta is not None:
        log(f"copying the LiteRT models of {litert_dir}")
        published = on_device.publish(litert_dir, litert_meta, dist_dir, name, version)
        section = on_device.card_section(litert_meta, published, base_url)
        for p in published:
            log(f"{p.file}\t{p.size / 1e6:.1f} MB\tsha256 {p.sha256}")
    card = os.path.join(dist_dir, f"{name}.md")
    write_text(card, model_card.render(facts, model_card.PackageInfo(
        name=name, version=version, archive=os.path.basename(archive), sha256=sha256, size=size,
        base_url=base_url), section))
    return Package(name, version, archive, sha256, size, checksum_file, card)


def cmd_package(argv) -> int:
    p = argparse.ArgumentParser(
        prog=f"{PROG} package",
        description="Write TF Hub compressed packages (<name>_<version>.tar.gz, its .sha256, <name>.md "
                    "model card) for exported SavedModels; hub.load(URL) and hub.KerasLayer(URL) load them.")
    p.add_argument("savedmodels", nargs="+", metavar="SAVEDMODEL_DIR",
                   help="a SavedModel folder (exported/vila_r/1), a model folder (exported/vila_r) "
                        "or a TF Serving base folder (exported): every SavedModel found is packaged")
    p.add_argument("--out", required=True, metavar="DIST_DIR", help="folder for the packages (e.g. dist)")
    p.add_argument("--name", help="package name (default: the model folder's name, e.g. vila_r)")
    p.add_argument("--version", type=int, help="package version (default: the version folder's number, else 1)")
    p.add_argument("--litert", metavar="LITERT_DIR",
                   help="also publish this LiteRT export of the SavedModel (python -m export litert): its "
                        ".tflite files with their sha256, and an On device section in the card")
    p.add_argument("--base-url", help="where DIST_DIR will be served from (e.g. https://models.example.com/vila); "
                                      "the model card's examples then use the real URL")
    args = p.parse_args(argv)
    try:
        found = [m for path in args.savedmodels for m in find_savedmodels(path)]
        if len(found) > 1 and args.litert:
            raise PackageError(f"--litert goes with one SavedModel, but {len(found)} were found: "
                               + ", ".join(d for d, _, _ in found))
        if len(found) > 1 and (args.name or args.version is not None):
            raise PackageError(f"--name/--version apply to one SavedModel, but {len(found)} were found: "
                               + ", ".join(d for d, _, _ in found))
        t0 = time.time()
        for folder, name, version in found:
            pkg = package_savedmodel(folder, args.out, args.name or name,
                                     version if args.version is None else args.version,
                                     args.base_url, log=_log, litert_dir=args.litert)
            print(f"{pkg.archive}\t{pkg.size / 1e6:.1f} MB\tsha256 {pkg.sha256}")
            print(f"{pkg.checksum_file}\n{pkg.card}")
        _log(f"packaged {len(found)} model(s) in {time.time() - t0:.0f} s")
    except (PackageError, model_card.ModelCardError, on_device.OnDeviceError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
