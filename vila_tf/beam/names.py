"""File names that are not UTF-8 (old archives, copies from other systems), through a Beam job and
into its records without loss (docs/beam.md, "File names that are not UTF-8").

Python reads such a name with each undecodable byte as a lone surrogate (U+DC80..U+DCFF,
`os.fsdecode`). Beam's coders encode every element as UTF-8, which a lone surrogate cannot be, so
a job carrying such a path as text failed as a whole. Inside the job a name is therefore carried
as text when it is UTF-8 and as its bytes when it is not (`carry`), and turned back into the
surrogate form only where a file is opened (`local`) or a record is written. Records (JSON Lines
and Parquet) hold a name exactly as `vila-tf score` writes it (`vila_tf.inputs.names.written`:
each undecodable byte as `\\xNN`, a backslash doubled when the name needs escaping), so the rows of
both commands join on `input`; `names.source_of` gives the file name back. Messages show each
undecodable byte as `\\xNN` too.
"""
from __future__ import annotations

import json
from typing import Union

from vila_tf.inputs.names import written

Name = Union[str, bytes]  # what the pipeline carries: text when UTF-8, else the name's bytes
NAME_KEYS = ("input", "id")  # the record fields that hold a file name or sample key


def _raw(text: str) -> bytes:
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate no file system decoding makes (U+D800..U+DC7F): kept as such
        return text.encode("utf-8", "surrogatepass")


def carry(name: str) -> Name:
    """The form a name travels in through Beam's coders: unchanged when UTF-8, else its bytes."""
    if isinstance(name, bytes):
        return name
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        return _raw(name)


def local(name: Name) -> str:
    """The name as Python's file functions take it (`os.fsdecode` form)."""
    return name.decode("utf-8", "surrogateescape") if isinstance(name, bytes) else name


def shown(text: Name) -> str:
    """Text for a message: an undecodable byte as `\\xNN` (always valid UTF-8)."""
    return (text if isinstance(text, bytes) else _raw(text)).decode("utf-8", "backslashreplace")


def record_name(name: Name) -> str:
    """A name as records write it: the form `vila-tf score` writes (valid UTF-8, lossless)."""
    return written(local(name))


def json_line(record: dict) -> str:
    """One JSON object, UTF-8 text, its names as `vila-tf score` writes them."""
    return json.dumps({k: record_name(v) if k in NAME_KEYS or isinstance(v, bytes) else v
                       for k, v in record.items()}, ensure_ascii=False)


def parquet_text(name: Name) -> str:
    """A name as a Parquet string (UTF-8): the form `vila-tf score` writes."""
    return record_name(name)
