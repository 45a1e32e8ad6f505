"""Reading images out of dataset shards, and writing the shards back with a score added.

Three layouts that image collections live in (see docs/datasets.md):

  tfrecord     `tf.train.Example` records, optionally GZIP-compressed (detected from the bytes)
  webdataset   tar shards: the members `<key>.<ext>` of one sample are consecutive; id = `__key__`
  parquet      a table with an image column (binary, or a `{bytes, path}` struct) and an optional id column

Each reader takes an open binary file and yields `Sample`s in shard order. A sample the reader
cannot turn into image bytes (a corrupt record, a missing key, a truncated shard) comes out as a
Sample with `error` set and its id, never as an exception: one bad record must not stop a job over
millions. `record` carries the sample as stored (only when asked for: it doubles the memory per
sample) so that the passing ones can be written back, with their score, in the same format.

Plain Python (TensorFlow only for `tf.train.Example`, pyarrow only for Parquet, both imported when
used); the Beam transforms around these are in `vila_tf.beam.io`.
"""
from __future__ import annotations

import gzip
import io
import re
import struct
import tarfile
import zlib
from typing import Any, BinaryIO, Iterator, NamedTuple, Optional, Sequence

from vila_tf.beam import names

FORMATS = ("tfrecord", "webdataset", "parquet")
# The largest record (TFRecord) or member (WebDataset) read into memory: far above any image the
# model takes, and a bound on what a corrupt length field can make a worker allocate (2^40 bytes
# with a valid length checksum was a MemoryError that failed the whole job).
MAX_RECORD_BYTES = 256 << 20
_CHUNK = 16 << 20
SCORE_KEY = "vila_score"  # the feature / column / member that the filtered copies add
DEFAULT_TFRECORD_IMAGE_KEY = "image/encoded"
DEFAULT_PARQUET_IMAGE_KEY = "image"
WEBDATASET_IMAGE_EXTENSIONS = ("jpg", "jpeg", "png")  # the default choice, in this order
# File name endings that name a format unambiguously (for --input-format inference).
EXTENSIONS = {".tfrecord": "tfrecord", ".tfrecords": "tfrecord", ".tfrec": "tfrecord",
              ".tfrecord.gz": "tfrecord", ".tfrecords.gz": "tfrecord", ".tfrec.gz": "tfrecord",
              ".tar": "webdataset", ".parquet": "parquet", ".pq": "parquet"}


class Sample(NamedTuple):
    id: str
    image: Optional[bytes] = None  # the encoded image; None when `error` is set
    error: Optional[str] = None
    record: Any = None  # the sample as stored, for the filtered copy (None unless kept)


def format_of(path: str) -> Optional[str]:
    """The format a file name (or pattern) names by its ending, or None."""
    lower = path.lower()
    for ending in sorted(EXTENSIONS, key=len, reverse=True):
        if lower.endswith(ending):
            return EXTENSIONS[ending]
    return None


# -- TFRecord -----------------------------------------------------------------------------------------

def _crc32c(data: bytes) -> int:
    import google_crc32c
    return google_crc32c.value(data)


def masked_crc32c(data: bytes) -> int:
    """TFRecord's checksum: CRC-32C, rotated and offset (so a checksum of checksums is not trivial)."""
    crc = _crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord_frame(data: bytes) -> bytes:
    """One TFRecord: length, its checksum, the data, its checksum."""
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked_crc32c(length)) + data + struct.pack("<I", masked_crc32c(data))


def _is_gzip(head: bytes) -> bool:
    """GZIP unless the first 12 bytes are a valid TFRecord header (whose length could start with 1f 8b)."""
    if len(head) >= 12 and struct.unpack("<I", head[8:12])[0] == masked_crc32c(head[:8]):
        return False
    return head[:2] == b"\x1f\x8b"


def _read_exactly(f: BinaryIO, size: int) -> bytes:
    """Up to `size` bytes, read in chunks: a length that overstates the data costs what is there, not `size`."""
    chunks, left = [], size
    while left > 0:
        chunk = f.read(min(left, _CHUNK))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _skip(f: BinaryIO, size: int) -> int:
    """Reads past `size` bytes without keeping them (GZIP streams cannot seek); the bytes skipped."""
    left = size
    while left > 0:
        chunk = f.read(min(left, _CHUNK))
        if not chunk:
            break
        left -= len(chunk)
    return size - left


def tfrecord_payloads(f: BinaryIO, path: str, max_bytes: int = MAX_RECORD_BYTES
                      ) -> Iterator[tuple[int, Optional[bytes], Optional[str]]]:
    """(record number, payload, None) per record, or (number, None, reason) for a record that cannot be read.

    A payload whose checksum fails is skipped alone (the framing still holds); so is a record
    longer than `max_bytes`, read past without keeping it, when the shard holds that many bytes.
    A length whose checksum fails, or a shard that ends inside a record (or before the length a
    header claims), ends the shard: the reason says where, and that the rest cannot be read.
    """
    head = f.read(12)
    if _is_gzip(head):
        f.seek(0)
        f = gzip.GzipFile(fileobj=f, mode="rb")
        head = b""
    n, offset = 0, 0
    try:
        while True:
            header = head + f.read(12 - len(head))
            head = b""
            if not header:
                return
            if len(header) < 12:
                yield n, None, f"shard truncated: {path} ends inside the header of record {n} (byte {offset})"
                return
            length, length_crc = struct.unpack("<QI", header)
            if length_crc != masked_crc32c(header[:8]):
                yield n, None, (f"corrupt shard: the length of record {n} (byte {offset} of {path}) fails its "
                                "checksum; this record and the rest of the shard cannot be read")
                return
            if length > max_bytes:
                if _skip(f, length + 4) < length + 4:
                    yield n, None, (f"corrupt shard: record {n} (byte {offset} of {path}) claims {length} bytes, "
                                    f"more than the rest of the shard holds; nothing after it can be read")
                    return
                yield n, None, (f"record {n} (byte {offset} of {path}) is {length} bytes, over the limit of "
                                f"{max_bytes} bytes: skipped")
            else:
                data = _read_exactly(f, length)
                footer = f.read(4)
                if len(data) < length or len(footer) < 4:
                    yield n, None, (f"shard truncated: {path} ends inside record {n} (byte {offset}, "
                                    f"{12 + length + 4} bytes long); nothing after it can be read")
                    return
                if struct.unpack("<I", footer)[0] != masked_crc32c(data):
                    yield n, None, f"corrupt record: its data fails its checksum (record {n}, byte {offset} of {path})"
                else:
                    yield n, data, None
            n += 1
            offset += 12 + length + 4
    except (EOFError, OSError, zlib.error) as e:  # a GZIP stream cut short or damaged
        yield n, None, (f"shard truncated or damaged: {path} cannot be decompressed past record {n} "
                        f"({type(e).__name__}: {e}); nothing after it can be read")


def _feature_value(feature, key: str) -> tuple[Any, Optional[str]]:
    kind = feature.WhichOneof("kind")
    values = getattr(feature, kind).value if kind else []
    if not values:
        return None, f"feature {key!r} is empty"
    return values[0], None


def read_tfrecord(f: BinaryIO, path: str, image_key: str = DEFAULT_TFRECORD_IMAGE_KEY,
                  id_key: Optional[str] = None, keep_records: bool = False) -> Iterator[Sample]:
    """Samples of a TFRecord shard of `tf.train.Example`s; id = the `id_key` feature, else `<path>:<n>`."""
    from tensorflow.core.example import example_pb2
    from google.protobuf.message import DecodeError
    for n, payload, error in tfrecord_payloads(f, path):
        sample_id = f"{path}:{n}"
        if error:
            yield Sample(sample_id, error=error)
            continue
        try:
            example = example_pb2.Example.FromString(payload)
        except DecodeError as e:
            yield Sample(sample_id, error=f"not a tf.train.Example: {e}")
            continue
        features = example.features.feature
        if id_key:
            if id_key not in features:
                yield Sample(sample_id, error=f"no id feature {id_key!r}")
                continue
            value, error = _feature_value(features[id_key], id_key)
            if error:
                yield Sample(sample_id, error=error)
                continue
            sample_id = value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else str(value)
        if image_key not in features:
            yield Sample(sample_id, error=f"no image feature {image_key!r} (features: {', '.join(sorted(features))})")
            continue
        feature = features[image_key]
        if feature.WhichOneof("kind") != "bytes_list":
            yield Sample(sample_id, error=f"image feature {image_key!r} is not a bytes feature")
            continue
        image, error = _feature_value(feature, image_key)
        if error:
            yield Sample(sample_id, error=error)
            continue
        yield Sample(sample_id, image, record=payload if keep_records else None)


def tfrecord_with_score(payload: bytes, score: float) -> bytes:
    """The serialized Example with a float feature `vila_score` (replacing one already there)."""
    from tensorflow.core.example import example_pb2
    example = example_pb2.Example.FromString(payload)
    example.features.feature[SCORE_KEY].float_list.value[:] = [score]
    return example.SerializeToString()


# -- WebDataset ---------------------------------------------------------------------------------------

def _split_name(name: str) -> tuple[str, str]:
    """WebDataset's convention: the key is the path up to the first dot of the file name."""
    folder, slash, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{folder}/{stem}" if slash else stem), ext.lower() if dot else ""


def _webdataset_image(key: str, members: Sequence[tuple[str, bytes]], image_key: Optional[str]
                      ) -> tuple[Optional[bytes], Optional[str]]:
    found = dict(members)
    if image_key:
        if image_key in found:
            return found[image_key], None
        return None, f"no .{image_key} member (members: {', '.join('.' + e for e, _ in members) or 'none'})"
    for ext in WEBDATASET_IMAGE_EXTENSIONS:
        if ext in found:
            return found[ext], None
    return None, (f"no .jpg, .jpeg or .png member (members: {', '.join('.' + e for e, _ in members) or 'none'})")


class _Counting:
    """A read-only stream that counts the bytes read through it."""

    def __init__(self, f: BinaryIO):
        self.f, self.n = f, 0

    def read(self, size: int = -1) -> bytes:
        data = self.f.read(size)
        self.n += len(data)
        return data


def read_webdataset(f: BinaryIO, path: str, image_key: Optional[str] = None,
                    keep_records: bool = False) -> Iterator[Sample]:
    """Samples of a WebDataset tar shard (plain, or GZIP-compressed), one per `__key__`.

    `record` is the sample's [(extension, bytes), ...] in shard order. A key seen again later in
    the shard (its members were not consecutive) is reported rather than scored twice.
    """
    seen: set[str] = set()
    key, members, problems, count = None, [], [], 0

    def finish():
        if key is None:
            return None
        if key in seen:
            return Sample(key, error=f"key {key!r} appears twice in {path} (a sample's members must be consecutive)")
        seen.add(key)
        if problems:  # the sample would be copied without these members, or unsafely: reported, not scored
            return Sample(key, error="; ".join(problems))
        image, error = _webdataset_image(key, members, image_key)
        if error:
            return Sample(key, error=error)
        return Sample(key, image, record=list(members) if keep_records else None)

    def truncated(reason: str) -> Sample:
        where = f"ends inside sample {key!r}" if key is not None else "ends before its first sample"
        return Sample(key if key is not None else path,
                      error=(f"shard truncated or damaged: {path} {where} after {count} complete samples "
                             f"({reason}); nothing after it can be read"))

    gzipped = f.read(2) == b"\x1f\x8b"
    f.seek(0)
    # Decompressing here rather than in tarfile: GzipFile raises on a cut stream, tarfile's does not.
    stream = _Counting(gzip.GzipFile(fileobj=f, mode="rb") if gzipped else f)
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for info in tar:
                if info.isdir():
                    continue
                member_key, ext = _split_name(info.name)
                if member_key != key:
                    done = finish()
                    if done:
                        count += 1
                        yield done
                    key, members, problems = member_key, [], []
                problem = member_problem(info)
                if problem:
                    problems.append(problem)
                    continue
                members.append((ext, tar.extractfile(info).read()))
            header_at = tar.offset
            while stream.read(1 << 16):  # the end-of-archive blocks and padding
                pass
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        yield truncated(f"{type(e).__name__}: {e}")
        return
    # tarfile ends quietly at a cut header; a whole shard has a zero block where the next header would be.
    if stream.n < header_at + tarfile.BLOCKSIZE:
        yield truncated(f"cut at byte {stream.n}, where a member header should be")
        return
    done = finish()
    if done:
        yield done


def webdataset_with_score(members: Sequence[tuple[str, bytes]], score: float) -> list[tuple[str, bytes]]:
    """The sample's members plus `.vila_score` (the score as text, as WebDataset's .cls/.txt members)."""
    return [(e, b) for e, b in members if e != SCORE_KEY] + [(SCORE_KEY, f"{score:.6f}".encode())]


def unsafe_name(name: str) -> bool:
    """A member name that a naive extractor would write outside its folder: absolute (also a
    Windows drive), or with a '..' part (also between backslashes)."""
    return (name.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", name) is not None
            or ".." in re.split(r"[/\\]", name))


def member_problem(info: tarfile.TarInfo) -> Optional[str]:
    """Why a tar member cannot be part of a sample (scored and copied), or None."""
    if unsafe_name(info.name):
        return (f"member name {info.name!r} is unsafe (an absolute path or a '..' part): a copy would make "
                "extractors write outside their folder")
    if info.issym() or info.islnk():
        kind = "a symbolic link" if info.issym() else "a hard link"
        return f"member {info.name!r} is {kind} to {info.linkname!r}: links are neither followed nor copied"
    if not info.isfile():
        return f"member {info.name!r} is not a regular file (tar type {info.type!r})"
    if info.size > MAX_RECORD_BYTES:
        return f"member {info.name!r} is {info.size} bytes, over the limit of {MAX_RECORD_BYTES} bytes"
    return None


class TarShardWriter:
    """Writes WebDataset samples to a binary stream as a tar shard (streaming: no seeking).

    POSIX (pax) format: member names of any length and in any bytes, as read (ustar stops at 100
    characters: "name is too long" failed the whole job). Unsafe names are refused (the reader
    reports such samples instead of passing them on)."""

    def __init__(self, stream: BinaryIO):
        self._tar = tarfile.open(fileobj=stream, mode="w|", format=tarfile.PAX_FORMAT)

    def write(self, key: str, members: Sequence[tuple[str, bytes]]) -> None:
        key = names.local(key)
        for ext, data in members:
            ext = names.local(ext)
            name = f"{key}.{ext}" if ext else key
            if unsafe_name(name):
                raise ValueError(f"unsafe tar member name {name!r}")
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            self._tar.addfile(info, io.BytesIO(data))

    def close(self) -> None:
        self._tar.close()  # writes the end-of-archive blocks; the stream stays open (it is the caller's)


# -- Parquet ------------------------------------------------------------------------------------------

def parquet_row_groups(f: BinaryIO) -> tuple[Any, list[tuple[int, int, int]]]:
    """(schema, [(row group, first row, rows), ...]): the units a Parquet file is split into."""
    import pyarrow.parquet as pq
    meta = pq.ParquetFile(f).metadata
    groups, first = [], 0
    for i in range(meta.num_row_groups):
        rows = meta.row_group(i).num_rows
        groups.append((i, first, rows))
        first += rows
    return meta.schema.to_arrow_schema(), groups


def _parquet_image(value) -> tuple[Optional[bytes], Optional[str]]:
    if isinstance(value, dict):  # e.g. Hugging Face's Image feature: {bytes, path}
        value = value.get("bytes")
    if value is None:
        return None, None
    if isinstance(value, (bytes, bytearray)):
        return bytes(value), None
    return None, f"is {type(value).__name__}, not bytes"


def parquet_missing_column(schema, image_key: str, id_key: Optional[str]) -> Optional[str]:
    """Why a file with this schema cannot be read with these columns, or None."""
    for key, what in ((image_key, "image"), (id_key, "id")):
        if key and key not in schema.names:
            return f"no {what} column {key!r} (columns: {', '.join(schema.names)})"
    return None


def read_parquet_row_group(f: BinaryIO, path: str, group: int, first_row: int, rows: int,
                           image_key: str = DEFAULT_PARQUET_IMAGE_KEY, id_key: Optional[str] = None,
                           keep_records: bool = False) -> Iterator[Sample]:
    """Samples of one row group; id = the `id_key` column, else `<path>:<row>` (row number in the file)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    columns = None if keep_records else [c for c in (image_key, id_key) if c]
    try:
        table = pq.ParquetFile(f).read_row_group(group, columns=columns)
    except (OSError, pa.ArrowException) as e:
        yield Sample(f"{path}:{first_row}-{first_row + rows - 1}",
                     error=f"cannot read row group {group} (rows {first_row}-{first_row + rows - 1}): {e}")
        return
    for n, row in enumerate(table.to_pylist(), first_row):
        sample_id = f"{path}:{n}"
        if id_key:
            if row[id_key] is None:
                yield Sample(sample_id, error=f"id column {id_key!r} is null")
                continue
            sample_id = str(row[id_key])
        image, error = _parquet_image(row[image_key])
        if image is None:
            yield Sample(sample_id, error=f"image column {image_key!r} {error or 'is null'}")
            continue
        yield Sample(sample_id, image, record=row if keep_records else None)


def parquet_schema_with_score(schema):
    import pyarrow as pa
    if SCORE_KEY in schema.names:
        schema = schema.remove(schema.get_field_index(SCORE_KEY))
    return schema.append(pa.field(SCORE_KEY, pa.float32()))


def parquet_with_score(row: dict, score: float) -> dict:
    return {**row, SCORE_KEY: score}
