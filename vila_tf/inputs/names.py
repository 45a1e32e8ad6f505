"""How an input's name is written in a results file, and read back (docs/reliability.md).

File names are bytes on Linux; Python hands the ones that are not valid UTF-8 (an old Latin-1
archive: `caf\\xe9.jpg`) over as text with lone surrogates, which no UTF-8 file can hold. A name
is therefore written as it is when it is valid UTF-8 and holds no backslash escape of its own;
otherwise it is written escaped: each byte that is not UTF-8 as `\\xHH` and each backslash
doubled, as C and Python write such strings. An escaped name always holds `\\\\` or `\\xHH` and a
name written as it is never does, so every written name maps back to exactly one file name
(`source_of`), and `--resume` matches rows by the same written form.

CSV cells are also guarded against spreadsheet formulas (OWASP's advice for CSV injection): a
text cell starting with `=`, `+`, `-`, `@`, a tab or a carriage return gets a leading `'`, which
spreadsheets show as text; `from_csv_cell` takes it off again (a cell that starts with quotes
before such a character gets one more, so the guard can always be undone).
"""
from __future__ import annotations

import os
import re

_ESCAPE = re.compile(r"\\(\\|x[0-9a-f]{2})")
_FORMULA = re.compile(r"^'*[=+\-@\t\r]")


def _raw_bytes(source: str) -> bytes:
    """The bytes of a name as the file system has them (surrogate escapes undone)."""
    try:
        return os.fsencode(source)
    except UnicodeEncodeError:  # a surrogate that is no escaped byte (a Windows name): its UTF-8 form
        return source.encode("utf-8", "surrogatepass")


def written(source: str) -> str:
    """The form of `source` (an input's path or label) written in results files: valid UTF-8 text."""
    try:
        source.encode("utf-8")
        if not _ESCAPE.search(source):
            return source
    except UnicodeEncodeError:
        pass
    text = _raw_bytes(source).decode("utf-8", "surrogateescape")  # bytes that are not UTF-8 -> U+DC80..U+DCFF
    return "".join("\\\\" if c == "\\" else f"\\x{ord(c) - 0xDC00:02x}" if "\udc80" <= c <= "\udcff" else c
                   for c in text)


def source_of(name: str) -> str:
    """The file name (as Python's os functions take it) of a name `written` wrote."""
    if not _ESCAPE.search(name):
        return name
    data, pos = bytearray(), 0
    for m in _ESCAPE.finditer(name):
        data += name[pos:m.start()].encode("utf-8")
        data += b"\\" if m.group(1) == "\\" else bytes([int(m.group(1)[1:], 16)])
        pos = m.end()
    data += name[pos:].encode("utf-8")
    return os.fsdecode(bytes(data))


def csv_cell(text: str) -> str:
    """A text cell as written to CSV: formula-like starts guarded with a leading `'`."""
    return "'" + text if _FORMULA.match(text) else text


def from_csv_cell(cell: str) -> str:
    """A text cell as `csv_cell` got it."""
    return cell[1:] if cell.startswith("'") and _FORMULA.match(cell[1:]) else cell
