"""Result rows as CSV or JSON Lines, appended row by row, and `--resume`'s reading of a file an
interrupted run left behind.

Rows are only ever appended, whole, so after a crash or SIGKILL a file holds complete rows, then
at most one torn row at the end (a write cut short). `repair` finds the end of the last complete
row (a CSV record with balanced quotes, a JSON line that parses) and truncates the rest.
"""
from __future__ import annotations

import csv
import io
import json
import os
from typing import Iterator, Optional


from vila_tf import tasks

FORMATS = ("csv", "jsonl")


def columns(command: str, with_captions: bool = False, pair_names=()) -> list[str]:
    """The CSV columns of a command: fixed up front, since rows are written as they come.
    `pair_names`: a zero-shot column per attribute or prompt pair (vila_tf.zero_shot), after the
    caption."""
    return (["input", tasks.BY_COMMAND[command].field] + (["caption"] if with_captions else []) + list(pair_names)
            + ["error"])


def make_row(command: str, source: str, value, error: Optional[str], caption: Optional[str] = None,
             with_captions: bool = False, pairs: Optional[dict] = None) -> dict:
    """One output row. A failed input has its `error` and no value. `pairs`: zero-shot scores by
    column name."""
    row: dict = {"input": source}
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


class RowWriter:
    """Appends rows to an open text file (newline='') as CSV or JSON Lines."""

    def __init__(self, f, fmt: str, cols: list[str], header: bool):
        if fmt not in FORMATS:
            raise ValueError(f"format {fmt!r}: one of {', '.join(FORMATS)}")
        self.f, self.fmt, self.cols = f, fmt, cols
        self._csv = csv.DictWriter(f, fieldnames=cols, lineterminator="\n") if fmt == "csv" else None
        if header and self._csv:
            self._csv.writeheader()

    def write(self, row: dict) -> None:
        if self._csv:
            self._csv.writerow({k: (json.dumps(v) if isinstance(v, list) else v) for k, v in row.items()})
        else:
            # ensure_ascii=False keeps captions readable; json.dumps escapes newlines: one row, one line
            self.f.write(json.dumps(row, ensure_ascii=False) + "\n")

    def flush(self) -> None:
        self.f.flush()


def _records(f, fmt: str) -> Iterator[tuple[int, Optional[list | dict]]]:
    """(byte offset after the record, the parsed record or None if it is broken) for each complete
    record of a binary file; a torn tail (no final newline, or open CSV quotes) is not yielded."""
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
            text = record.decode("utf-8")
            parsed = next(csv.reader(io.StringIO(text))) if fmt == "csv" else json.loads(text)
        except (UnicodeDecodeError, ValueError, StopIteration, csv.Error):
            parsed = None
        yield offset, parsed


class ResumeError(ValueError):
    """The file cannot be continued by this run (another command's columns, a broken row)."""


def repair(path: str, fmt: str, cols: list[str]) -> int:
    """Truncates a torn last row of `path`; returns how many complete result rows it holds.
    A missing or empty file holds 0 rows (and gets a header when written)."""
    if not os.path.exists(path):
        return 0
    good_end, rows = 0, 0
    with open(path, "rb") as f:
        for n, (offset, rec) in enumerate(_records(f, fmt)):
            if fmt == "csv" and n == 0:
                if rec != cols:
                    raise ResumeError(f"{path}: its columns {rec} are not this run's {cols}: resume with the "
                                      "same command and options (or another --output)")
            elif rec is None or (fmt == "csv" and len(rec) != len(cols)) or \
                    (fmt == "jsonl" and not (isinstance(rec, dict) and "input" in rec)):
                raise ResumeError(f"{path}: row {n + 1} is not a {fmt} result row of this command: "
                                  "not a file this command wrote?")
            elif fmt == "jsonl" and "error" not in rec and set(rec) != set(cols) - {"error"}:
                # (a CSV file's header was compared above)
                raise ResumeError(f"{path}: row {n + 1} has the columns {sorted(rec)}, not this run's "
                                  f"{sorted(set(cols) - {'error'})}: resume with the same command and options "
                                  "(or another --output)")
            else:
                rows += 1
            good_end = offset
    if good_end != os.path.getsize(path):
        with open(path, "r+b") as f:
            f.truncate(good_end)
    return rows


def read_rows(path: str, fmt: str, cols: list[str]) -> Iterator[dict]:
    """The complete rows of a (repaired) file, lazily, as dicts (CSV: empty cells left out)."""
    if not os.path.exists(path):
        return
    with open(path, "rb") as f:
        for n, (_, rec) in enumerate(_records(f, fmt)):
            if fmt == "csv":
                if n:
                    yield {k: v for k, v in zip(cols, rec) if v != ""}
            else:
                yield rec
