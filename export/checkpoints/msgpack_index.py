"""A streaming index of a flax-msgpack document: structure and array locations, not array bytes.

flax writes each array as msgpack ext type 1 (ndarray) or 3 (numpy scalar) whose payload is
itself msgpack: [shape, dtype name, raw C-order bytes]. Parsing with `msgpack.unpackb` would copy
every payload twice (ext bytes, then inner bytes); the released VILA checkpoints are 1.25 GB, mostly
optimizer state we never need. This module walks the document with file reads and seeks, records
where each array's bytes are, and lets the caller read only the arrays it wants, straight into
their final numpy buffers. It only interprets data; nothing from the file is ever executed.
"""
from __future__ import annotations

import dataclasses
import os
import struct
from typing import Any, BinaryIO

import numpy as np

EXT_NDARRAY = 1
EXT_NPSCALAR = 3
CHUNKED_KEY = "__msgpack_chunked_array__"


class MsgpackFormatError(ValueError):
    """The file is not a well-formed flax-msgpack document."""


@dataclasses.dataclass(frozen=True)
class ArrayRef:
    """Where one array's raw bytes sit in the file."""
    shape: tuple
    dtype: str
    offset: int
    nbytes: int

    def read(self, f: BinaryIO, path: str) -> np.ndarray:
        dtype = np_dtype(self.dtype, path)
        # Check the size before allocating: a corrupt shape must not allocate terabytes.
        declared = int(np.prod([int(d) for d in self.shape], dtype=object)) * dtype.itemsize
        if any(int(d) < 0 for d in self.shape) or declared != self.nbytes:
            raise MsgpackFormatError(
                f"{path}: array at byte {self.offset} declares shape {list(self.shape)} {self.dtype} "
                f"({declared} bytes) but holds {self.nbytes} bytes")
        arr = aligned_empty(self.shape, dtype)
        f.seek(self.offset)
        got = f.readinto(memoryview(arr.reshape(-1)).cast("B")) if arr.nbytes else 0
        if got != arr.nbytes:
            raise MsgpackFormatError(f"{path}: file is truncated inside the array at byte {self.offset}")
        return arr


@dataclasses.dataclass(frozen=True)
class ChunkedArrayRef:
    """flax splits arrays over 2**30 bytes into flat chunks."""
    shape: tuple
    chunks: tuple  # of ArrayRef

    @property
    def dtype(self) -> str:
        return self.chunks[0].dtype if self.chunks else "float32"

    def read(self, f: BinaryIO, path: str) -> np.ndarray:
        parts = [c.read(f, path).reshape(-1) for c in self.chunks]
        flat = np.concatenate(parts) if parts else np.empty((0,), np_dtype(self.dtype, path))
        if flat.size != int(np.prod(self.shape)):
            raise MsgpackFormatError(f"{path}: chunked array of shape {list(self.shape)} has {flat.size} elements")
        return flat.reshape(self.shape)


def aligned_empty(shape: tuple, dtype: np.dtype, alignment: int = 64) -> np.ndarray:
    """An uninitialised array whose data starts on an `alignment`-byte boundary: TensorFlow
    can then take the buffer without copying it (export.variables_file)."""
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(nbytes + alignment, np.uint8)
    start = -raw.ctypes.data % alignment
    return raw[start:start + nbytes].view(dtype).reshape(shape)


def np_dtype(name: str, path: str = "") -> np.dtype:
    """Plain numeric dtypes only: bytes read into an object array would be taken as pointers."""
    try:
        dtype = np.dtype(name)
        if dtype.kind in "biufc" and dtype.name == name:
            return dtype
    except TypeError:
        pass
    if name == "bfloat16":  # registered by ml_dtypes
        import ml_dtypes
        return np.dtype(ml_dtypes.bfloat16)
    raise MsgpackFormatError(f"{path}: unsupported array dtype {name!r}")


class _Parser:
    def __init__(self, f: BinaryIO, path: str, size: int):
        self.f, self.path, self.size = f, path, size

    def _where(self) -> str:
        return f"{self.path} (byte {self.f.tell()} of {self.size})"

    def read(self, n: int) -> bytes:
        data = self.f.read(n)
        if len(data) != n:
            raise MsgpackFormatError(f"{self._where()}: file is truncated: needed {n} more bytes, found {len(data)}")
        return data

    def skip(self, n: int) -> int:
        start = self.f.tell()
        if start + n > self.size:
            raise MsgpackFormatError(
                f"{self._where()}: file is truncated: an item of {n} bytes runs past the end of the file")
        self.f.seek(start + n)
        return start

    def _unpack(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.read(struct.calcsize(fmt)))[0]

    def value(self, in_ext: bool = False) -> Any:
        b = self.read(1)[0]
        if b <= 0x7F:
            return b
        if b >= 0xE0:
            return b - 0x100
        if 0x80 <= b <= 0x8F:
            return self._map(b & 0x0F)
        if 0x90 <= b <= 0x9F:
            return self._array(b & 0x0F)
        if 0xA0 <= b <= 0xBF:
            return self._str(b & 0x1F)
        simple = {0xC0: None, 0xC2: False, 0xC3: True}
        if b in simple:
            return simple[b]
        fixed = {0xCA: ">f", 0xCB: ">d", 0xCC: ">B", 0xCD: ">H", 0xCE: ">I", 0xCF: ">Q",
                 0xD0: ">b", 0xD1: ">h", 0xD2: ">i", 0xD3: ">q"}
        if b in fixed:
            return self._unpack(fixed[b])
        lengths = {0xC4: ">B", 0xC5: ">H", 0xC6: ">I", 0xD9: ">B", 0xDA: ">H", 0xDB: ">I",
                   0xDC: ">H", 0xDD: ">I", 0xDE: ">H", 0xDF: ">I", 0xC7: ">B", 0xC8: ">H", 0xC9: ">I"}
        if b in lengths:
            n = self._unpack(lengths[b])
            if b <= 0xC6:
                return _Bin(self.skip(n), n)  # raw bytes: located, read on demand
            if b <= 0xC9:
                return self._ext(self._unpack(">b"), n)
            if b <= 0xDB:
                return self._str(n)
            if b <= 0xDD:
                return self._array(n)
            return self._map(n)
        fixext = {0xD4: 1, 0xD5: 2, 0xD6: 4, 0xD7: 8, 0xD8: 16}
        if b in fixext:
            return self._ext(self._unpack(">b"), fixext[b])
        raise MsgpackFormatError(f"{self._where()}: byte 0x{b:02x} is not valid msgpack")

    def _str(self, n: int) -> str:
        try:
            return self.read(n).decode("utf-8")
        except UnicodeDecodeError:
            raise MsgpackFormatError(f"{self._where()}: invalid UTF-8 in a string") from None

    def _array(self, n: int) -> list:
        return [self.value() for _ in range(n)]

    def _map(self, n: int) -> Any:
        d = {}
        for _ in range(n):
            k = self.value()
            if not isinstance(k, (str, int)) or isinstance(k, bool):
                raise MsgpackFormatError(f"{self._where()}: map key of type {type(k).__name__}; expected a string")
            d[k] = self.value()
        if d.get(CHUNKED_KEY):
            chunks = d.get("chunks", {})
            chunks = ([chunks[k] for k in sorted(chunks, key=lambda k: int(k) if str(k).isdigit() else -1)]
                      if isinstance(chunks, dict) else chunks)
            if not isinstance(chunks, list):
                raise MsgpackFormatError(f"{self._where()}: malformed chunked array")
            shape = d.get("shape", {})
            shape = [shape[k] for k in sorted(shape, key=str)] if isinstance(shape, dict) else shape
            if (not all(isinstance(c, ArrayRef) for c in chunks) or not isinstance(shape, list)
                    or not all(isinstance(d, int) and d >= 0 for d in shape)):
                raise MsgpackFormatError(f"{self._where()}: malformed chunked array")
            return ChunkedArrayRef(tuple(shape), tuple(chunks))
        return d

    def _ext(self, code: int, n: int) -> Any:
        end = self.f.tell() + n
        if end > self.size:
            raise MsgpackFormatError(
                f"{self._where()}: file is truncated: an array of {n} bytes runs past the end of the file")
        if code not in (EXT_NDARRAY, EXT_NPSCALAR):
            raise MsgpackFormatError(f"{self._where()}: unsupported msgpack extension type {code}")
        inner = self.value()
        if (not isinstance(inner, list) or len(inner) != 3 or not isinstance(inner[0], list)
                or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in inner[0])
                or not isinstance(inner[1], str) or not isinstance(inner[2], _Bin)):
            raise MsgpackFormatError(f"{self._where()}: array payload is not [shape, dtype, bytes]")
        if self.f.tell() != end:
            raise MsgpackFormatError(f"{self._where()}: array payload length does not match its header")
        return ArrayRef(tuple(int(s) for s in inner[0]), inner[1], inner[2].offset, inner[2].nbytes)


@dataclasses.dataclass(frozen=True)
class _Bin:
    offset: int
    nbytes: int


def index_file(f: BinaryIO, path: str) -> Any:
    """Parses the whole document; arrays become ArrayRef/ChunkedArrayRef, nothing large is read."""
    size = os.fstat(f.fileno()).st_size
    if size == 0:
        raise MsgpackFormatError(f"{path}: file is empty")
    f.seek(0)
    parser = _Parser(f, path, size)
    try:
        doc = parser.value()
    except RecursionError:
        raise MsgpackFormatError(f"{path}: nesting too deep for a checkpoint (corrupt structure)") from None
    if f.tell() != size:
        raise MsgpackFormatError(f"{path}: {size - f.tell()} unexpected bytes after the msgpack document")
    return doc


def pack_array(arr: np.ndarray) -> bytes:
    """flax's on-disk form of one array (ext type 1), for writers of test checkpoints."""
    import msgpack
    arr = np.asarray(arr)  # tobytes() is C order; ascontiguousarray would make 0-d arrays 1-d
    payload = msgpack.packb([list(arr.shape), arr.dtype.name, arr.tobytes()], use_bin_type=True)
    return msgpack.packb(msgpack.ExtType(EXT_NDARRAY, payload), use_bin_type=True)
