"""Chunk records in blocks: a sequence decodes only the steps it uses.

A replay chunk is stored as one record whose large per-step fields (the images: any field of
at least `BLOCKED_BYTES` per step) are compressed in blocks of `block` steps, each on its own,
and whose small fields (actions, rewards, flags, ...) are compressed together in one section::

    b"DWMB" | u8 version | u32 header length | header (UTF-8 JSON) | sections

The header holds ``codec``, ``length`` (steps), ``block`` (steps per block), ``fields``
(``[[name, dtype, per-step shape], ...]``), ``blocked`` (the names stored in blocks) and
``sections``: ``[[offset, compressed bytes, crc32], ...]``, offsets from the record's start;
section 0 is the small fields, step by step (a numpy structured array of `length` records whose
fields are the small fields in field order, packed), then each blocked field's blocks in order. The insert script also logs the header, so a sampler reads exactly the
byte ranges a sequence needs (GETRANGE) and decompresses each block straight into its batch.
No pickle; every section is checked (length, CRC, decompressed size) before use.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from diswm.records import _ALLOWED_DTYPES, CODECS, CorruptRecord, _compress, decompress_checked

MAGIC = b"DWMB"
VERSION = 1
_PREFIX = struct.Struct("<4sBI")
BLOCKED_BYTES = 1024  # fields at least this large per step are stored in blocks
_MAX_HEADER = 1 << 20


@dataclass(frozen=True)
class Layout:
    """A block record's header, parsed and checked."""

    codec: str
    length: int
    block: int
    fields: tuple[tuple[str, str, tuple[int, ...]], ...]
    blocked: tuple[str, ...]
    sections: tuple[tuple[int, int, int], ...]
    nbytes: int  # the whole record's size

    @property
    def small(self) -> list[tuple[str, np.dtype, tuple[int, ...]]]:
        return [(n, np.dtype(d), s) for n, d, s in self.fields if n not in self.blocked]

    @property
    def small_dtype(self) -> np.dtype:
        """One step of the small fields, packed (section 0's record type)."""
        return small_dtype([(n, d, s) for n, d, s in self.fields if n not in self.blocked])

    @property
    def num_blocks(self) -> int:
        return -(-self.length // self.block)

    def block_rows(self, j: int) -> tuple[int, int]:
        return j * self.block, min((j + 1) * self.block, self.length)

    def section_of(self, name: str, j: int) -> int:
        return 1 + self.blocked.index(name) * self.num_blocks + j

    def schema(self) -> dict[str, tuple[str, tuple[int, ...]]]:
        return {n: (d, s) for n, d, s in sorted(self.fields)}


def encode_chunk(arrays: Mapping[str, np.ndarray], codec: str = "lz4", block: int = 8
                 ) -> tuple[bytes, bytes]:
    """A chunk's arrays (each (length, ...)) -> (record, header); the header is the record's
    own (the insert script logs it beside the chunk)."""
    if block < 1:
        raise ValueError(f"block must be >= 1 step, got {block}")
    arrays = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
    lengths = {v.shape[0] for v in arrays.values()}
    if len(lengths) != 1:
        raise ValueError(f"chunk fields have different lengths {sorted(lengths)}")
    length = lengths.pop()
    fields, blocked = [], []
    for name, array in arrays.items():
        if array.dtype.name not in _ALLOWED_DTYPES:
            raise ValueError(f"field {name!r}: dtype {array.dtype} cannot be stored")
        fields.append([name, array.dtype.name, list(array.shape[1:])])
        if array[:1].nbytes >= BLOCKED_BYTES:
            blocked.append(name)
    small = np.empty(length, small_dtype([f for f in fields if f[0] not in blocked]))
    for name in small.dtype.names:
        small[name] = arrays[name]
    parts = [_compress(codec, small.tobytes())]
    for name in blocked:
        for start in range(0, length, block):
            parts.append(_compress(codec, arrays[name][start:start + block].tobytes()))
    template = {"codec": codec, "length": length, "block": block, "fields": fields,
                "blocked": blocked}
    # Offsets depend on the header's size, which depends on the offsets. Reserve a width, lay
    # the sections out behind it, and pad the JSON with spaces up to that width (json.loads
    # ignores them); if the offsets' digits outgrow the reservation, reserve more and redo.
    # Each retry reserves what the last attempt needed plus slack, so this ends in a round or
    # two (a fixed number of fixed-point rounds did not: offsets crossing a power of ten grew
    # the header again, about once in 10,000 chunks).
    sections = [[0, len(p), zlib.crc32(p)] for p in parts]
    width = len(json.dumps({**template, "sections": sections}, separators=(",", ":"))) + 16
    while True:
        offset = _PREFIX.size + width
        for section, part in zip(sections, parts, strict=True):
            section[0] = offset
            offset += len(part)
        header = json.dumps({**template, "sections": sections}, separators=(",", ":")).encode()
        if len(header) <= width:
            header = header.ljust(width)
            break
        width = len(header) + 16
    return _PREFIX.pack(MAGIC, VERSION, len(header)) + header + b"".join(parts), header


def parse_header(header: bytes, nbytes: int) -> Layout:
    """The logged header of a record of `nbytes` bytes -> its `Layout`; `CorruptRecord` if it
    does not describe such a record."""
    try:
        h = json.loads(header)
        codec, length, block = h["codec"], int(h["length"]), int(h["block"])
        fields = tuple((str(n), str(d), tuple(int(x) for x in s)) for n, d, s in h["fields"])
        blocked = tuple(str(n) for n in h["blocked"])
        sections = tuple((int(o), int(c), int(r)) for o, c, r in h["sections"])
    except (ValueError, KeyError, TypeError) as err:
        raise CorruptRecord(f"unreadable block header: {err}") from None
    if codec not in CODECS or length < 1 or block < 1:
        raise CorruptRecord(f"block header: codec {codec!r}, length {length}, block {block}")
    if any(d not in _ALLOWED_DTYPES for _, d, _ in fields):
        raise CorruptRecord("block header names a disallowed dtype")
    names = [n for n, _, _ in fields]
    if len(set(names)) != len(names) or not set(blocked) <= set(names):
        raise CorruptRecord("block header: bad field list")
    layout = Layout(codec, length, block, fields, blocked, sections, nbytes)
    if len(sections) != 1 + len(blocked) * layout.num_blocks:
        raise CorruptRecord(f"block header lists {len(sections)} sections, expected "
                            f"{1 + len(blocked) * layout.num_blocks}")
    end = _PREFIX.size + len(header)
    for offset, clen, _ in sections:
        if offset != end or clen < 0:
            raise CorruptRecord("block header: sections are not contiguous")
        end = offset + clen
    if end != nbytes:
        raise CorruptRecord(f"block header describes {end} bytes, the record has {nbytes}")
    return layout


def split_record(record: bytes) -> tuple[bytes, Layout]:
    """A whole record -> (header bytes, layout)."""
    if len(record) < _PREFIX.size:
        raise CorruptRecord("record is shorter than its fixed header")
    magic, version, header_len = _PREFIX.unpack_from(record)
    if magic != MAGIC or version != VERSION:
        raise CorruptRecord(f"not a block record (magic {magic!r}, version {version})")
    if header_len > _MAX_HEADER or _PREFIX.size + header_len > len(record):
        raise CorruptRecord("record is truncated inside its header")
    header = bytes(record[_PREFIX.size:_PREFIX.size + header_len])
    return header, parse_header(header, len(record))


# -- decompression straight into a destination ----------------------------------------------------

def _liblz4():
    path = ctypes.util.find_library("lz4")
    if path is None:
        return None
    try:
        lib = ctypes.CDLL(path)  # a CDLL call releases the GIL: blocks decode in parallel
        fn = lib.LZ4_decompress_safe
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


_LZ4_DECOMPRESS = _liblz4()


def decompress_into(codec: str, payload: bytes, crc: int, out: np.ndarray) -> None:
    """Check `payload`'s CRC and decompress it into the C-contiguous array `out`, which it must
    fill exactly; `CorruptRecord` otherwise."""
    if zlib.crc32(payload) != crc:
        raise CorruptRecord("block checksum mismatch (truncated or altered record)")
    if not out.flags.c_contiguous:
        raise ValueError("decompress_into needs a C-contiguous destination")
    want = out.nbytes
    if codec == "lz4" and _LZ4_DECOMPRESS is not None:
        src = np.frombuffer(payload, np.uint8)  # a view: no copy of the payload
        got = _LZ4_DECOMPRESS(src.ctypes.data, out.ctypes.data, src.nbytes, want)
        if got != want:
            raise CorruptRecord(f"block decompresses to {got} bytes, expected {want}")
        return
    raw = decompress_checked(codec, payload, want, "block")
    out.reshape(-1).view(np.uint8)[:] = np.frombuffer(raw, np.uint8)


@lru_cache(maxsize=64)
def _small_dtype(fields: tuple) -> np.dtype:
    return np.dtype([(n, np.dtype(d), tuple(s)) for n, d, s in fields])


def small_dtype(fields) -> np.dtype:
    """The packed record of the small fields `[(name, dtype, shape), ...]`, by name: one
    schema has one record type whatever order a writer's step dict had."""
    return _small_dtype(tuple(sorted((n, d, tuple(s)) for n, d, s in fields)))


def decode_small(layout: Layout, payload: bytes) -> np.ndarray:
    """Section 0 -> the small fields as a structured array of `length` steps."""
    out = np.empty(layout.length, layout.small_dtype)
    decompress_into(layout.codec, payload, layout.sections[0][2], out)
    return out


def decode_chunk(record: bytes) -> dict[str, np.ndarray]:
    """A whole block record -> its arrays (tests, tools; the sampler reads parts)."""
    _, layout = split_record(record)
    view = memoryview(record)

    def section(i: int) -> bytes:
        offset, clen, _ = layout.sections[i]
        return bytes(view[offset:offset + clen])

    small = decode_small(layout, section(0))
    out = {name: small[name].copy() for name in small.dtype.names}
    for name, dtype, shape in layout.fields:
        if name not in layout.blocked:
            continue
        array = np.empty((layout.length, *shape), dtype)
        for j in range(layout.num_blocks):
            lo, hi = layout.block_rows(j)
            i = layout.section_of(name, j)
            decompress_into(layout.codec, section(i), layout.sections[i][2], array[lo:hi])
        out[name] = array
    return {name: out[name] for name, _, _ in layout.fields}
