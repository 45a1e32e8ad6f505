"""The files of `vila-tf cull` besides the sidecars (vila_tf.output.sidecars): the CSV of decisions
and the report, checked before the model loads like every output (vila_tf.output.output_file),
and written atomically once the whole shoot is decided. The scores the run computes go to a
results file of its own (`scores_path`), appended and recorded like `vila-tf embed`'s, which is
what `--resume` continues."""
from __future__ import annotations

import os
import stat
from typing import Iterable, Optional

from vila_tf.output import output_file

COLUMNS = ["input", "group", "score", "rating", "pick", "reason", "captured", "sidecar", "error"]
SCORES_COLUMNS = ["input", "captured", "score", "attributes", "caption", "embedding", "error"]
REPORT_FORMATS = (".html", ".png")
HTML_MARK = "<!-- vila-tf cull report -->"
REPORT_SOFTWARE = output_file.SHEET_SOFTWARE + " (cull report)"


def scores_path(output: str) -> str:
    """Where a run keeps the model's outputs for each photo: beside --output, named after it."""
    return os.path.splitext(output)[0] + ".scores.jsonl"


def _ours(path: str, first: bytes) -> bool:
    text = first.decode("utf-8", "replace")
    if path.lower().endswith(".csv"):
        return text.rstrip("\r\n") == ",".join(COLUMNS)
    if path.lower().endswith(".html"):
        return HTML_MARK in text
    return output_file.is_contact_sheet(path) and REPORT_SOFTWARE in _png_software(path)


def _png_software(path: str) -> str:
    from PIL import Image
    try:
        with Image.open(path) as im:
            return str(im.info.get("Software", ""))
    except Exception:  # noqa: BLE001
        return ""


def check(path: str, flag: str, inputs: Iterable, others: Iterable[Optional[str]] = ()) -> None:
    """OutputError (one line) when `path` must not or cannot be written: a folder, one of the
    inputs, another output of the run, a file that is not one cull wrote, a read-only folder, a
    name of another format."""
    named = output_file.named_inputs(inputs)
    st = output_file._check_target(path, flag, named)
    for other in others:
        if other and os.path.abspath(other) == os.path.abspath(path):
            raise output_file.OutputError(f"{flag} {path} is also another output of this run: choose another file")
    ext = os.path.splitext(path)[1].lower()
    if flag == "--report" and ext not in REPORT_FORMATS:
        raise output_file.OutputError(f"--report {path}: give a name ending in .html (every group) or .png "
                                      "(a picture of the first groups)")
    if flag == "--output" and ext != ".csv":
        raise output_file.OutputError(f"--output {path}: cull writes CSV: give a name ending in .csv")
    if st is not None:
        if not stat.S_ISREG(st.st_mode):
            raise output_file.OutputError(f"{flag} {path} is not a regular file: choose a file name")
        if st.st_size:
            with open(path, "rb") as f:
                first = f.read(4096).split(b"\n", 1)[0] if ext == ".csv" else f.read(4096)
            if not _ours(path, first):
                raise output_file.OutputError(
                    f"{flag} {path} exists and is not a file vila-tf cull wrote ({output_file._describe(path)}): "
                    "not overwritten; choose another file, or delete it first")
    output_file._check_writable_folder(path, flag)
