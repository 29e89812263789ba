"""Batches from block records: which byte ranges a batch needs, and filling a preallocated
(B, T, ...) batch from them in a thread pool.

    builder = BatchBuilder(cache_chunks=256, threads=4)
    wanted = builder.wanted(rows, layouts)        # {(shard, gseq): [section, ...]} not cached
    ...fetch those sections (one STRLEN + GETRANGE pipeline per shard)...
    bad = builder.build(out, rows, layouts, payloads)   # {(shard, gseq): error}; empty: done

A row is one sequence: ``(shard, [(gseq, offset, count), ...])``. Blocks that a sequence covers
whole are decompressed straight into the batch (cache off); the others, and everything when the
cache is on, are decompressed into block arrays and copied. lz4 (through liblz4, which releases
the GIL) and numpy's copies run in parallel threads. The cache keeps decoded blocks and small
fields, least recently used first out, `cache_chunks` chunks' worth.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from diswm.records import CorruptRecord, decode
from replay_service.blocks import BLOCKED_BYTES, Layout, decode_small, decompress_into
from replay_service.chunks import Schema, describe_schema_change

Row = tuple[int, list[tuple[int, int, int]]]  # (shard, [(gseq, offset, count), ...])
ChunkKey = tuple[int, int]  # (shard, gseq)
WHOLE = -1  # the section index that stands for a whole (pre-block) record


def legacy_layout(schema: Schema, length: int, nbytes: int) -> Layout:
    """A stand-in layout for a record written before block records (diswm.records): one block
    the length of the chunk, read whole."""
    fields = tuple((n, d, tuple(s)) for n, (d, s) in sorted(schema.items()))
    blocked = tuple(n for n, d, s in fields
                    if np.dtype(d).itemsize * int(np.prod(s, dtype=np.int64)) >= BLOCKED_BYTES)
    return Layout("none", length, length, fields, blocked, (), nbytes)


def default_threads() -> int:
    """Half the CPUs, 1 to 4: the learner's own threads (torch) need the rest."""
    return max(1, min(4, (os.cpu_count() or 1) // 2))


class _Chunk:
    """One chunk's decoded parts: its small fields, its blocked fields as full-length arrays
    (pages untouched until a block is decoded into them), and which blocks are there."""

    __slots__ = ("small", "big", "have", "layout")

    def __init__(self, layout: Layout):
        self.layout = layout
        self.small: np.ndarray | None = None  # structured: the small fields, step by step
        self.big: dict[str, np.ndarray] = {}  # made when a block is first decoded into it
        self.have: set[tuple[str, int]] = set()

    def array(self, name: str) -> np.ndarray:
        if name not in self.big:
            _, dtype, shape = next(f for f in self.layout.fields if f[0] == name)
            self.big[name] = np.empty((self.layout.length, *shape), dtype)
        return self.big[name]


class BatchBuilder:
    def __init__(self, cache_chunks: int = 256, threads: int = 0):
        self.cache_chunks = cache_chunks
        self.threads = threads or default_threads()
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="replay-decode") \
            if self.threads > 1 else None
        self.cache: OrderedDict[ChunkKey, _Chunk] = OrderedDict()
        self._spares: dict[tuple, list[np.ndarray]] = {}  # block buffers kept for reuse

    def _spare(self, shape: tuple, dtype: np.dtype) -> np.ndarray:
        free = self._spares.get((shape, dtype))
        return free.pop() if free else np.empty(shape, dtype)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)

    # -- what to fetch ------------------------------------------------------------------------
    def wanted(self, rows: list[Row], layouts: Mapping[ChunkKey, Layout]
               ) -> dict[ChunkKey, list[int]]:
        """The sections each chunk must be fetched for (those not in the cache)."""
        want: dict[ChunkKey, set[int]] = {}
        for k, segments in rows:
            for g, offset, count in segments:
                key = (k, g)
                layout, cached = layouts[key], self.cache.get(key)
                if cached is not None:
                    self.cache.move_to_end(key)
                need = want.setdefault(key, set())
                if cached is None or cached.small is None:
                    need.add(0)
                for j in _blocks(layout, offset, count):
                    for name in layout.blocked:
                        if cached is None or (name, j) not in cached.have:
                            need.add(layout.section_of(name, j))
        return {key: [WHOLE] if not layouts[key].sections else sorted(need)
                for key, need in want.items() if need}

    # -- filling a batch ----------------------------------------------------------------------
    def build(self, out: dict[str, np.ndarray], rows: list[Row],
              layouts: Mapping[ChunkKey, Layout], payloads: Mapping[ChunkKey, dict],
              schema: Schema) -> dict[ChunkKey, str]:
        """Fill `out` (B = len(rows)); returns the chunks that failed their checks (then `out`
        is incomplete: replace the rows that use them and build again)."""
        chunks: dict[ChunkKey, _Chunk] = {}
        placed: dict[tuple, tuple[int, int]] = {}  # blocks decoded straight into the batch
        planned: set[tuple] = set()
        scratch: dict[tuple, np.ndarray] = {}  # cache off: partial blocks
        decodes: list[tuple[ChunkKey, Callable[[], None]]] = []
        direct = self.cache_chunks == 0
        for key, sections in payloads.items():
            chunk = chunks[key] = self.cache.get(key) or _Chunk(layouts[key])
            if WHOLE in sections:
                decodes.append((key, _legacy_task(layouts[key], sections[WHOLE], schema, chunk)))
            elif 0 in sections:
                decodes.append((key, _small_task(layouts[key], sections[0], chunk)))
        for b, (k, segments) in enumerate(rows):
            t = 0
            for g, offset, count in segments:
                key = (k, g)
                layout, sections = layouts[key], payloads.get(key, {})
                chunk = chunks.get(key) or self.cache[key]
                chunks[key] = chunk
                for name in layout.blocked if WHOLE not in sections else ():
                    for j in _blocks(layout, offset, count):
                        i = layout.section_of(name, j)
                        if i not in sections or (key, name, j) in planned:
                            continue
                        planned.add((key, name, j))
                        lo, hi = layout.block_rows(j)
                        if direct and offset <= lo and hi <= offset + count:
                            dest = out[name][b, t + lo - offset:t + hi - offset]
                            placed[(key, name, j)] = (b, t + lo - offset)
                            mark = None
                        elif direct:  # a partial block: decoded into a reused buffer
                            dest = scratch[(key, name, j)] = self._spare(
                                (hi - lo, *out[name].shape[2:]), out[name].dtype)
                            mark = None
                        else:
                            dest, mark = chunk.array(name)[lo:hi], (name, j)
                        decodes.append((key, _block_task(layout, sections[i],
                                                         layout.sections[i][2], dest, chunk,
                                                         mark)))
                t += count
        bad = self._run_decodes(decodes)
        if bad:
            return bad

        first_layout = layouts[(rows[0][0], rows[0][1][0][0])]
        small_out = np.empty(out["reward"].shape[:2], first_layout.small_dtype)

        def copy_rows(first: int, last: int) -> None:
            for b in range(first, last):
                k, segments = rows[b]
                t = 0
                for g, offset, count in segments:
                    key = (k, g)
                    layout, chunk = layouts[key], chunks[key]
                    end = offset + count
                    small_out[b, t:t + count] = chunk.small[offset:end]
                    for name in layout.blocked:
                        js = _blocks(layout, offset, count)
                        if all((name, j) in chunk.have for j in js):
                            out[name][b, t:t + count] = chunk.big[name][offset:end]
                            continue
                        for j in js:
                            lo, hi = layout.block_rows(j)
                            a, z = max(offset, lo), min(end, hi)
                            where = placed.get((key, name, j))
                            if where is None:
                                block = scratch.get((key, name, j))
                                src = chunk.big[name][a:z] if block is None else \
                                    block[a - lo:z - lo]
                            elif where == (b, t + lo - offset):
                                continue  # decoded right here
                            else:
                                src = out[name][where[0], where[1] + a - lo:where[1] + z - lo]
                            out[name][b, t + a - offset:t + z - offset] = src
                    t += count

        self._parallel(copy_rows, len(rows))
        for name in small_out.dtype.names:  # (B, T) records -> one array per field
            out[name][...] = small_out[name]
        for block in scratch.values():
            self._spares.setdefault((block.shape, block.dtype), []).append(block)
        if self.cache_chunks:
            for key, chunk in chunks.items():
                self.cache[key] = chunk
                self.cache.move_to_end(key)
            while len(self.cache) > self.cache_chunks:
                self.cache.popitem(last=False)
        return {}

    def _run_decodes(self, decodes: list) -> dict[ChunkKey, str]:
        bad: dict[ChunkKey, str] = {}

        def run(lo: int, hi: int) -> None:
            for key, task in decodes[lo:hi]:
                if key in bad:
                    continue
                try:
                    task()
                except CorruptRecord as err:
                    bad[key] = str(err)

        self._parallel(run, len(decodes))
        for key in bad:
            self.cache.pop(key, None)
        return bad

    def _parallel(self, fn: Callable[[int, int], None], n: int) -> None:
        """fn(lo, hi) over [0, n) in `threads` contiguous parts."""
        parts = min(self.threads, n)
        if self._pool is None or parts <= 1:
            if n:
                fn(0, n)
            return
        bounds = np.linspace(0, n, parts + 1).astype(int)
        futures = [self._pool.submit(fn, int(lo), int(hi))
                   for lo, hi in zip(bounds[:-1], bounds[1:], strict=True) if hi > lo]
        for future in futures:
            future.result()


def _blocks(layout: Layout, offset: int, count: int) -> range:
    return range(offset // layout.block, (offset + count - 1) // layout.block + 1)


def _small_task(layout: Layout, payload, chunk: _Chunk) -> Callable[[], None]:
    def run() -> None:
        chunk.small = decode_small(layout, payload)
    return run


def _legacy_task(layout: Layout, record, schema: Schema, chunk: _Chunk) -> Callable[[], None]:
    def run() -> None:
        data = decode(bytes(record))
        got = {k: (v.dtype.name, tuple(v.shape[1:])) for k, v in sorted(data.items())}
        if got != schema:
            raise CorruptRecord("schema mismatch: " + describe_schema_change(schema, got))
        lengths = {v.shape[0] if v.ndim else -1 for v in data.values()}
        if lengths != {layout.length}:
            raise CorruptRecord(f"field lengths {sorted(lengths)} != logged length "
                                f"{layout.length}")
        small = np.empty(layout.length, layout.small_dtype)
        for name in small.dtype.names:
            small[name] = data[name]
        chunk.small = small
        for name in layout.blocked:
            chunk.big[name] = data[name]
            chunk.have.add((name, 0))
    return run


def _block_task(layout: Layout, payload, crc: int, dest: np.ndarray, chunk: _Chunk,
                mark: tuple[str, int] | None) -> Callable[[], None]:
    def run() -> None:
        decompress_into(layout.codec, payload, crc, dest)
        if mark is not None:
            chunk.have.add(mark)
    return run
