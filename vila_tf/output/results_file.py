"""Result rows as CSV or JSON Lines, appended row by row, and `--resume`'s reading of a file an
interrupted run left behind.

Rows are only ever appended, whole, by one run at a time (the output is locked:
`vila_tf.output.output_file`), so after a crash or SIGKILL a file holds complete rows, then at most one
torn row at the end (a write cut short). `repair` finds the end of the last complete row (a CSV
record with balanced quotes, a JSON line that parses) and truncates the rest. A file damaged some
other way (NUL bytes left by a machine crash, rows interleaved by two runs of an older version)
is cleaned by `clean`: damaged rows dropped, each input's first row kept.

Input names are written as `vila_tf.inputs.names.written` gives them (valid UTF-8, lossless), CSV text
cells with the spreadsheet-formula guard of `vila_tf.inputs.names.csv_cell`.
"""
from __future__ import annotations

import array
import csv
import hashlib
import io
import json
import os
from typing import Iterator, NamedTuple, Optional

from vila_tf.inputs import names
from vila_tf.core import tasks

FORMATS = ("csv", "jsonl")


def columns(command: str, with_captions: bool = False, pair_names=()) -> list[str]:
    """The CSV columns of a command: fixed up front, since rows are written as they come.
    `pair_names`: a zero-shot column per attribute or prompt pair (vila_tf.core.zero_shot), after the
    caption."""
    return (["input", tasks.BY_COMMAND[command].field] + (["caption"] if with_captions else []) + list(pair_names)
            + ["error"])


def make_row(command: str, source: str, value, error: Optional[str], caption: Optional[str] = None,
             with_captions: bool = False, pairs: Optional[dict] = None) -> dict:
    """One output row. A failed input has its `error` and no value. `pairs`: zero-shot scores by
    column name."""
    row: dict = {"input": names.written(source)}
    if error is not None:
        row["error"] = error
        return row
    task = tasks.BY_COMMAND[command]
    row[task.field] = task.json_value(value)
    if with_captions and task.field == "score":
        row["caption"] = caption
    for name, v in (pairs or {}).items():
        row[name] = tasks.json_value("score", v)
    return row


def _csv_field(value, guard: bool = True) -> str:
    """One CSV field. Quoted when it holds a comma, a quote, or a line break of either kind (the
    csv module leaves a lone carriage return unquoted when lines end in a newline, and readers
    then split the row there); text cells carry the formula guard (not the header's names)."""
    if value is None:
        return ""
    if isinstance(value, list):
        text = json.dumps(value)
    elif isinstance(value, str):
        text = names.csv_cell(value) if guard else value
    else:
        text = str(value)
    if any(c in text for c in ',"\r\n'):
        return '"' + text.replace('"', '""') + '"'
    return text


def csv_line(cells) -> str:
    return ",".join(_csv_field(c) for c in cells) + "\n"


class RowWriter:
    """Appends rows to an open text file (newline='') as CSV or JSON Lines."""

    def __init__(self, f, fmt: str, cols: list[str], header: bool):
        if fmt not in FORMATS:
            raise ValueError(f"format {fmt!r}: one of {', '.join(FORMATS)}")
        self.f, self.fmt, self.cols = f, fmt, cols
        self._csv = fmt == "csv"
        if header and self._csv:
            f.write(",".join(_csv_field(c, guard=False) for c in cols) + "\n")  # a pair's name may hold a comma

    def write(self, row: dict) -> None:
        if self._csv:
            unknown = set(row) - set(self.cols)
            if unknown:
                raise ValueError(f"row keys {sorted(unknown)} are not columns {self.cols}")
            self.f.write(csv_line(row.get(c) for c in self.cols))
        else:
            # ensure_ascii=False keeps captions readable; json.dumps escapes newlines: one row, one line
            self.f.write(json.dumps(row, ensure_ascii=False) + "\n")

    def flush(self) -> None:
        self.f.flush()


def _records(f, fmt: str) -> Iterator[tuple[int, Optional[list | dict], bytes]]:
    """(byte offset after the record, the parsed record or None if it is broken, its bytes) for
    each complete record of a binary file; a torn tail (no final newline, or open CSV quotes) is
    not yielded. A record holding NUL bytes is broken: no row of ours has one (JSON escapes it),
    while a machine crash leaves runs of them where data had not reached the disk."""
    offset, pending = 0, b""
    for line in f:
        pending += line
        if not pending.endswith(b"\n"):
            return  # torn: the last write was cut short
        if fmt == "csv" and pending.count(b'"') % 2:
            continue  # inside a quoted field spanning lines
        offset += len(pending)
        record, pending = pending, b""
        try:
            if b"\0" in record:
                raise ValueError("NUL bytes")
            text = record.decode("utf-8")
            parsed = next(csv.reader(io.StringIO(text))) if fmt == "csv" else json.loads(text)
        except (UnicodeDecodeError, ValueError, StopIteration, csv.Error):
            parsed = None
        yield offset, parsed, record


class ResumeError(ValueError):
    """The file cannot be continued by this run (another command's columns, a broken row)."""


def _row_input(rec, fmt: str, cols: list[str]) -> Optional[str]:
    """The input of a parsed record if it is a result row of these columns, else None."""
    if fmt == "csv":
        return rec[0] if isinstance(rec, list) and len(rec) == len(cols) and rec[0] else None
    if not isinstance(rec, dict) or not isinstance(rec.get("input"), str) or not set(rec) <= set(cols):
        return None
    return rec["input"]


def repair(path: str, fmt: str, cols: list[str]) -> int:
    """Truncates a torn last row of `path`; returns how many complete result rows it holds.
    A missing or empty file holds 0 rows (and gets a header when written). Any other broken row
    raises ResumeError (a file nothing vouches for is not ours to change: see `clean`)."""
    if not os.path.exists(path):
        return 0
    good_end, rows = 0, 0
    with open(path, "rb") as f:
        for n, (offset, rec, _) in enumerate(_records(f, fmt)):
            if fmt == "csv" and n == 0:
                if rec != cols:
                    raise ResumeError(f"{path}: its columns {rec} are not this run's {cols}: resume with the "
                                      "same command and options (or another --output)")
            elif fmt == "jsonl" and isinstance(rec, dict) and isinstance(rec.get("input"), str) and (
                    not set(rec) <= set(cols) or ("error" not in rec and set(rec) != set(cols) - {"error"})):
                # a row of another command or other options (a CSV file's header was compared above)
                raise ResumeError(f"{path}: row {n + 1} has the columns {sorted(rec)}, not this run's "
                                  f"{sorted(set(cols) - {'error'})}: resume with the same command and options "
                                  "(or another --output)")
            elif _row_input(rec, fmt, cols) is None:
                raise ResumeError(f"{path}: row {n + 1} is not a {fmt} result row of this command: "
                                  "not a file this command wrote?")
            else:
                rows += 1
            good_end = offset
    if good_end != os.path.getsize(path):
        with open(path, "r+b") as f:
            f.truncate(good_end)
    return rows


class Cleaned(NamedTuple):
    rows: int  # result rows kept
    damaged: int  # rows dropped as damaged (NUL bytes, cut, not a row of these columns)
    repeated: int  # rows dropped because their input already had a row
    torn: bool  # a torn last row was cut off
    rewritten: bool  # the file was replaced by a cleaned copy (a new inode: re-open and re-lock it)


def _key(name: str) -> int:
    return int.from_bytes(hashlib.blake2b(name.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big")


def clean(path: str, fmt: str, cols: list[str]) -> Cleaned:
    """`repair` for a file known to be ours (its record matches): damaged rows are dropped and
    only each input's first row is kept, so `--resume` scores the inputs they held once more
    instead of refusing the file or writing an input twice. A clean file is only truncated (a torn
    last row); a damaged one is replaced atomically by a copy holding its good rows, byte for byte.
    Memory: 8 bytes per row (a hash of each input, to find repeated ones)."""
    if not os.path.exists(path):
        return Cleaned(0, 0, 0, False, False)
    keys, damaged, good_end = array.array("Q"), 0, 0
    with open(path, "rb") as f:
        for n, (offset, rec, _) in enumerate(_records(f, fmt)):
            good_end = offset
            if fmt == "csv" and n == 0:
                if rec != cols:
                    raise ResumeError(f"{path}: its first line is not the header {','.join(cols)} of this "
                                      "command: not continued (move it away, or choose another --output)")
                continue
            name = _row_input(rec, fmt, cols)
            if name is None:
                damaged += 1
            else:
                keys.append(_key(name))
    size = os.path.getsize(path)
    torn = good_end != size
    ordered = sorted(keys)
    repeated_keys = {a for a, b in zip(ordered, ordered[1:]) if a == b}
    if not damaged and not repeated_keys:
        if torn:
            with open(path, "r+b") as f:
                f.truncate(good_end)
        return Cleaned(len(keys), 0, 0, torn, False)
    from vila_tf.core.atomic import atomic_file
    seen, kept, repeated = set(), 0, 0
    mode = os.stat(path).st_mode & 0o7777
    with open(path, "rb") as src, atomic_file(path, "wb") as dst:
        os.fchmod(dst.fileno(), mode)
        for n, (_, rec, raw) in enumerate(_records(src, fmt)):
            if fmt == "csv" and n == 0:
                dst.write(raw)
                continue
            name = _row_input(rec, fmt, cols)
            if name is None:
                continue
            if _key(name) in repeated_keys:
                if name in seen:
                    repeated += 1
                    continue
                seen.add(name)
            dst.write(raw)
            kept += 1
    return Cleaned(kept, damaged, repeated, torn, True)


def read_rows(path: str, fmt: str, cols: list[str]) -> Iterator[dict]:
    """The complete rows of a (repaired) file, lazily, as dicts (CSV: empty cells left out, the
    formula guard taken off)."""
    if not os.path.exists(path):
        return
    with open(path, "rb") as f:
        for n, (_, rec, _) in enumerate(_records(f, fmt)):
            if fmt == "csv":
                if n:
                    yield {k: names.from_csv_cell(v) for k, v in zip(cols, rec) if v != ""}
            else:
                yield rec
