"""Self-describing records of numpy arrays (replay chunks, pretraining shards) as bytes: a JSON
header with each array's dtype and shape, then one compressed payload. No pickle anywhere; a
record that fails any check raises `CorruptRecord`.

Layout::

    b"DWMC" | u8 version | u32 header length | header (UTF-8 JSON) | payload (compressed)

The header holds ``codec``, ``crc32`` (of the compressed payload), ``raw_nbytes`` and
``fields``: ``[[name, dtype, shape], ...]`` in payload order.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Mapping

import numpy as np

MAGIC = b"DWMC"
VERSION = 1
_PREFIX = struct.Struct("<4sBI")
CODECS = ("lz4", "zstd", "none")
_ALLOWED_DTYPES = {"uint8", "int8", "int32", "int64", "float16", "float32", "float64", "bool"}
_MAX_HEADER = 1 << 20


class CorruptRecord(ValueError):
    """A stored record is truncated, altered or not a record at all."""


def _compress(codec: str, raw: bytes) -> bytes:
    if codec == "lz4":
        import lz4.block

        return lz4.block.compress(raw, store_size=False)
    if codec == "zstd":
        import zstandard

        return zstandard.ZstdCompressor(level=1).compress(raw)
    if codec == "none":
        return raw
    raise ValueError(f"unknown compression {codec!r}; choose one of {', '.join(CODECS)}")


def _decompress(codec: str, payload: bytes, raw_nbytes: int) -> bytes:
    if codec == "lz4":
        import lz4.block

        return lz4.block.decompress(payload, uncompressed_size=raw_nbytes)
    if codec == "zstd":
        import zstandard

        return zstandard.ZstdDecompressor().decompress(payload, max_output_size=raw_nbytes)
    if codec == "none":
        return payload
    raise CorruptRecord(f"unknown codec {codec!r} in record header")


def decompress_checked(codec: str, payload: bytes, raw_nbytes: int, what: str) -> bytes:
    """`payload` decompressed to exactly `raw_nbytes` bytes; any decoder failure or a wrong size
    is a `CorruptRecord` naming `what` (a record's payload, a block)."""
    try:
        raw = _decompress(codec, payload, raw_nbytes)
    except CorruptRecord:
        raise
    except Exception as err:  # noqa: BLE001 - any decoder failure means a bad record
        raise CorruptRecord(f"{what} does not decompress: {err}") from None
    if len(raw) != raw_nbytes:
        raise CorruptRecord(f"{what} holds {len(raw)} bytes, expected {raw_nbytes}")
    return raw


def encode(arrays: Mapping[str, np.ndarray], codec: str = "lz4") -> bytes:
    """Arrays (any shapes, allowed dtypes) -> one self-describing record."""
    fields, parts = [], []
    for name, array in arrays.items():
        array = np.asarray(array, order="C")  # (ascontiguousarray would make 0-d arrays 1-d)
        if array.dtype.name not in _ALLOWED_DTYPES:
            raise ValueError(f"field {name!r}: dtype {array.dtype} cannot be stored; use one of "
                             + ", ".join(sorted(_ALLOWED_DTYPES)))
        fields.append([name, array.dtype.name, list(array.shape)])
        parts.append(array.tobytes())
    raw = b"".join(parts)
    payload = _compress(codec, raw)
    header = json.dumps({"codec": codec, "crc32": zlib.crc32(payload), "raw_nbytes": len(raw),
                         "fields": fields}, separators=(",", ":")).encode()
    return _PREFIX.pack(MAGIC, VERSION, len(header)) + header + payload


def decode(record: bytes) -> dict[str, np.ndarray]:
    """A record -> its arrays (read-only views of one buffer). Raises `CorruptRecord`."""
    if not isinstance(record, (bytes, bytearray, memoryview)) or len(record) < _PREFIX.size:
        raise CorruptRecord("record is shorter than its fixed header")
    magic, version, header_len = _PREFIX.unpack_from(record)
    if magic != MAGIC:
        raise CorruptRecord(f"bad magic {magic!r}")
    if version != VERSION:
        raise CorruptRecord(f"unsupported record version {version}")
    if header_len > _MAX_HEADER or _PREFIX.size + header_len > len(record):
        raise CorruptRecord("record is truncated inside its header")
    try:
        header = json.loads(bytes(record[_PREFIX.size:_PREFIX.size + header_len]))
        codec, crc, raw_nbytes, fields = (header["codec"], int(header["crc32"]),
                                          int(header["raw_nbytes"]), header["fields"])
    except (ValueError, KeyError, TypeError) as err:
        raise CorruptRecord(f"unreadable header: {err}") from None
    payload = bytes(record[_PREFIX.size + header_len:])
    if zlib.crc32(payload) != crc:
        raise CorruptRecord("payload checksum mismatch (truncated or altered record)")
    raw = decompress_checked(codec, payload, raw_nbytes, "payload")
    out, offset = {}, 0
    try:
        for name, dtype, shape in fields:
            if dtype not in _ALLOWED_DTYPES:
                raise CorruptRecord(f"field {name!r} has disallowed dtype {dtype!r}")
            dt = np.dtype(dtype)
            count = int(np.prod(shape, dtype=np.int64))
            nbytes = count * dt.itemsize
            if count < 0 or offset + nbytes > len(raw):
                raise CorruptRecord(f"field {name!r} runs past the payload")
            out[name] = np.frombuffer(raw, dt, count, offset).reshape(shape)
            offset += nbytes
    except (TypeError, ValueError) as err:
        if isinstance(err, CorruptRecord):
            raise
        raise CorruptRecord(f"bad field table: {err}") from None
    if offset != len(raw):
        raise CorruptRecord("payload has bytes no field accounts for")
    return out
