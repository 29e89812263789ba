"""The learner side of the replay: `ReplaySampler` asks the sample script for a grant, keeps an
index of stored chunks (and their block layouts) from the commit log, fetches exactly the blocks
a batch needs in one round trip per shard, and decodes them into a preallocated batch in a
thread pool (replay_service/batch.py, with its cache of decoded blocks); records that fail their
checks are skipped, counted and logged.

On a sharded replay (``spec.shards > 1``) each shard has its own index, grant and limiter; a
batch's sequences are split over the shards in proportion to their sizes (a multinomial draw:
uniform over every stored step), each shard's byte ranges come in one pipeline (one slot), and a shard
that is down is left out, logged and counted (``diswm_replay_shards_unreachable``) until it
answers again."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Protocol

import numpy as np
import redis

from diswm import metrics
from diswm.records import CorruptRecord
from replay_service.batch import WHOLE, BatchBuilder, legacy_layout
from replay_service.blocks import Layout, parse_header
from replay_service.chunks import Schema, describe_schema_change
from replay_service.index import SELECTORS, ChunkInfo, SequenceIndex
from replay_service.prefetch import Prefetcher
from replay_service.redis_cluster import placement
from replay_service.scripts import SAMPLE_LUA, script_caller
from replay_service.spec import META_FIELDS, ReplaySpec, ReplayTimeout, _Backoff, connect, read_meta

log = logging.getLogger(__name__)

_DOWN = (redis.ConnectionError, redis.TimeoutError, redis.exceptions.ClusterDownError)
_PROBE_EVERY = 1.0  # seconds between attempts to reach a shard that is down


class _ShardDown(Exception):
    """A shard's node did not answer; the sampler leaves it out for now."""


class _Shard:
    """One shard's view: its keys, its index of stored chunks and how far the log was read."""

    def __init__(self, k: int, prefix: str, selector):
        self.k, self.prefix = k, prefix
        self.index = SequenceIndex(selector)
        self.last_log_id = b"0-0"
        self.size = 0  # size_steps at the last sync
        self.synced_gseq = 0  # the last chunk the index holds from the log
        self.counters: dict[str, int] | None = None  # from the last grant, until a sync uses them
        self.layouts: dict[int, Layout | str | None] = {}  # None: a whole-chunk record;
        self.nbytes: dict[int, int] = {}                     # str: why its header is bad
        self.down_since: float | None = None
        self.probed = 0.0


class BatchArrays(Protocol):
    """Where a batch's arrays live: (batch size, length, step schema) -> empty arrays to fill."""

    def __call__(self, batch_size: int, length: int, schema: Schema) -> dict[str, np.ndarray]: ...


class ReusedArrays:
    """A batch's arrays in this process: arrays that nobody holds any more (not the caller, no
    view, no tensor made from them) are filled again, so their pages are not faulted in and
    zeroed anew for every batch; otherwise new ones (up to `keep` batches are kept)."""

    def __init__(self, keep: int = 4):
        self.keep = keep
        self._spare: list[dict[str, np.ndarray]] = []

    def __call__(self, batch_size: int, length: int, schema: Schema) -> dict[str, np.ndarray]:
        shapes = {k: ((batch_size, length, *shape), np.dtype(dtype))
                  for k, (dtype, shape) in schema.items()}
        for arrays in self._spare:
            if unheld(arrays) and {k: (a.shape, a.dtype) for k, a in arrays.items()} == shapes:
                return dict(arrays)
        arrays = {k: np.empty(shape, dtype) for k, (shape, dtype) in shapes.items()}
        self._spare.append(arrays)
        del self._spare[:-self.keep]
        return dict(arrays)


class ReplaySampler:
    """Learner side: samples (B, T) sequences through the limiter, skipping corrupt records."""

    def __init__(self, spec: ReplaySpec, seed: int = 0, cache_chunks: int = 256,
                 arrays: BatchArrays | None = None):
        """`arrays` gives each batch's arrays (default `ReusedArrays`: this process's memory,
        reused once nobody holds it; the sampler processes' pool puts them in shared memory)."""
        self.spec = spec
        self._arrays = arrays if arrays is not None else ReusedArrays()
        self.client = connect(spec)
        # The sample path fails fast on a shard that is down (and leaves it out); one Redis
        # retries through an outage, as before.
        self._data = self.client if spec.shards == 1 else connect(spec, fail_fast=True)
        self._grant = script_caller(self._data, SAMPLE_LUA, spec.shards > 1)
        self._rng = np.random.default_rng(seed)
        self._shards = [_Shard(k, p, SELECTORS[spec.selector]())
                        for k, p in enumerate(spec.shard_prefixes)]
        self._builder = BatchBuilder(cache_chunks, spec.sample_threads)
        self._schema: Schema | None = None
        self._min_diff, _ = spec.limits
        self.corrupt = 0
        self.last_duration = 0.0  # seconds the last batch took, waiting on the limiter aside
        ns = spec.namespace
        self._m_sampled = metrics.REPLAY_SAMPLED_SEQUENCES.labels(ns)
        self._m_wait = metrics.REPLAY_SAMPLE_WAIT.labels(ns)
        self._m_duration = metrics.REPLAY_SAMPLE_DURATION.labels(ns)
        self._m_corrupt = metrics.REPLAY_CORRUPT_RECORDS.labels(ns)
        self._m_size_steps = metrics.REPLAY_SIZE_STEPS.labels(ns)
        self._m_size_bytes = metrics.REPLAY_SIZE_BYTES.labels(ns)
        self._m_ratio = metrics.REPLAY_COMPRESSION_RATIO.labels(ns)
        self._m_down = metrics.REPLAY_SHARDS_UNREACHABLE.labels(ns)
        if spec.shards > 1:
            masters = placement(self._data, spec.shard_prefixes)
            if len(set(masters)) < spec.shards:
                log.warning("replay %r: %d shards on %d masters (%s): the cluster's slots are "
                            "not split evenly over %d masters, so some shards share a node",
                            ns, spec.shards, len(set(masters)), ", ".join(masters), spec.shards)

    @property
    def cache_chunks(self) -> int:
        """How many chunks' decoded blocks the sampler's cache keeps (0: none)."""
        return self._builder.cache_chunks

    @property
    def _index(self) -> SequenceIndex:
        """The unsharded replay's index (shard 0)."""
        return self._shards[0].index

    # -- public ------------------------------------------------------------------------------
    def sample(self, batch_size: int, length: int, timeout: float | None = None
               ) -> dict[str, np.ndarray]:
        """Wait for the limiter, then return a batch of `batch_size` sequences of `length`."""
        backoff = _Backoff(self.spec.wait_timeout if timeout is None else timeout)
        clock = {"waited": 0.0}
        start = time.perf_counter()
        rows = self._rows(batch_size, length, backoff, clock)
        out = None
        for _ in range(100):
            if out is None:
                out = self._arrays(batch_size, length, self._namespace_schema(rows))
            redo = self._fill(out, rows)
            if not redo:
                break
            # Rows whose chunks vanished or failed their checks are drawn again from their
            # shard (its grant holds); rows of a shard that went down, from the others.
            lost = [b for b, shard in redo if shard.down_since is not None]
            for b, shard in redo:
                if shard.down_since is None:
                    rows[b] = (shard, self._draw(shard, 1, length)[0])
            if lost:
                fresh = self._rows(len(lost), length, backoff, clock)
                for b, row in zip(lost, fresh, strict=True):
                    rows[b] = row
        else:
            raise RuntimeError(f"replay {self.spec.namespace!r}: could not assemble a batch; "
                               "too many chunks vanished or failed to decode")
        self.last_duration = time.perf_counter() - start - clock["waited"]
        self._m_wait.observe(clock["waited"])
        self._m_duration.observe(self.last_duration)
        self._m_sampled.inc(batch_size)
        return out

    def _rows(self, n: int, length: int, backoff: _Backoff, clock: dict
              ) -> list[tuple[_Shard, list]]:
        """`n` granted sequences, as (shard, segments)."""
        rows: list[tuple[_Shard, list]] = []
        while len(rows) < n:
            wait_start = time.perf_counter()
            grants = self._acquire(n - len(rows), length, backoff)
            clock["waited"] += time.perf_counter() - wait_start
            for shard, m in grants.items():
                try:
                    self._sync(shard)
                except _ShardDown:
                    continue  # its grant is lost with it; the others make up the batch
                rows += [(shard, seq) for seq in self._draw(shard, m, length)]
        return rows

    def _draw(self, shard: _Shard, n: int, length: int) -> list[list[tuple[int, int, int]]]:
        return shard.index.sample(self._rng, n, length)

    @contextmanager
    def prefetch(self, batch_size: int, length: int, depth: int = 2
                 ) -> Iterator[Iterator[dict[str, np.ndarray]]]:
        """A background thread keeps `depth` batches ready; errors surface on `next()`."""
        prefetcher = Prefetcher(self, batch_size, length, depth)

        def batches() -> Iterator[dict[str, np.ndarray]]:
            while True:
                yield prefetcher.get()

        try:
            yield batches()
        finally:
            prefetcher.close()

    def stats(self) -> dict[str, float]:
        """What an operator wants to know (cf. Reverb's TableInfo)."""
        meta = read_meta(self.client, self.spec) if self.spec.shards == 1 else self._live_meta()
        self._publish_size(meta)
        ratio = meta["raw_bytes"] / meta["size_bytes"] if meta["size_bytes"] else 0.0
        return {**meta, "chunks": meta["gseq"] - meta["evicted"], "compression_ratio": ratio,
                "samples_per_insert_target": self.spec.samples_per_insert,
                "samples_per_insert_observed": (max(meta["samples"] - self.spec.initial_samples, 0)
                                                / max(meta["inserts"] - self.spec.min_size, 1)),
                "corrupt_records_skipped": self.corrupt,
                "shards": self.spec.shards,
                "shards_unreachable": [s.k for s in self._shards if s.down_since is not None]}

    def _live_meta(self) -> dict[str, int]:
        """Counters summed over the shards that answer (a shard that is down is marked)."""
        total: dict[str, int] = {}
        for shard in self._shards:
            try:
                meta = self._on(shard, read_meta, self._data, self.spec, shard.k)
            except _ShardDown:
                continue
            for name, value in meta.items():
                total[name] = total.get(name, 0) + value
        return total or dict.fromkeys(META_FIELDS, 0)

    def snapshot(self) -> None:
        """Persist Redis now (the `snapshot` mode calls this at checkpoints)."""
        if self.spec.shards == 1:
            self.client.save()
        else:
            self.client.save(target_nodes="primaries")

    def close(self) -> None:
        self._builder.close()
        self.client.close()
        if self._data is not self.client:
            self._data.close()

    # -- internals -----------------------------------------------------------------------------
    def _on(self, shard: _Shard, fn, *args):
        """`fn(*args)` against `shard`; a shard that does not answer is marked down (logged and
        counted once) and raises `_ShardDown`; one that answers again is marked back."""
        if self.spec.shards == 1:
            return fn(*args)
        try:
            result = fn(*args)
        except _DOWN as err:
            if shard.down_since is None:
                shard.down_since = time.monotonic()
                self._m_down.set(sum(s.down_since is not None for s in self._shards))
                live = sum(s.down_since is None for s in self._shards)
                log.warning("replay %r: shard %d ({%s}) is unreachable (%s); sampling from the "
                            "other %d shard(s) until it is back", self.spec.namespace, shard.k,
                            shard.prefix.split("{")[-1].rstrip(":}"), type(err).__name__, live)
            shard.probed = time.monotonic()
            raise _ShardDown(shard.k) from None
        if shard.down_since is not None:
            log.warning("replay %r: shard %d is back after %.1f s", self.spec.namespace, shard.k,
                        time.monotonic() - shard.down_since)
            shard.down_since = None
            self._m_down.set(sum(s.down_since is not None for s in self._shards))
        return result

    def _reachable(self) -> list[_Shard]:
        """Shards that are up, plus those down long enough to be probed again."""
        now = time.monotonic()
        return [s for s in self._shards
                if s.down_since is None or now - s.probed >= _PROBE_EVERY]

    def _acquire(self, n: int, length: int, backoff: _Backoff) -> dict[_Shard, int]:
        """Grants for `n` sequences: all from the one Redis, or split over the shards in
        proportion to their sizes; waits (polling with a deadline) on the limiter.

        A shard whose limiter refuses its share (its writers are behind) hands that share to
        the other shards, drawn again in proportion to their sizes, as Reverb's per-server
        samplers do: each shard's own ratio holds, and one idle shard never stalls the learner
        (nor, through it, the writers of the others)."""
        if self.spec.shards == 1:
            return {self._shards[0]: self._grant_one(self._shards[0], n, length, backoff)}
        granted: dict[_Shard, int] = {}
        need = max(self.spec.shard_min_size, length)
        while True:
            for shard in self._reachable():
                try:
                    self._sync(shard)
                except _ShardDown:
                    continue
            eligible = [s for s in self._shards if s.down_since is None and s.size >= need]
            refused: set[_Shard] = set()
            while sum(granted.values()) < n:
                open_ = [s for s in eligible if s not in refused]
                if not open_:
                    break
                sizes = np.array([s.size for s in open_], np.float64)
                draw = self._rng.multinomial(n - sum(granted.values()), sizes / sizes.sum())
                for shard, m in zip(open_, draw, strict=True):
                    if not m:
                        continue
                    try:
                        ok, _ = self._on(shard, self._grant_call, shard, int(m), need)
                    except _ShardDown:
                        ok = False
                    if ok:
                        granted[shard] = granted.get(shard, 0) + int(m)
                    else:
                        refused.add(shard)
            if sum(granted.values()) == n:
                return granted
            down = [s.k for s in self._shards if s.down_since is not None]
            why = ("no shard holds enough steps" if not eligible else
                   "the rate limiter waits for more inserts")
            try:
                backoff.wait_or_raise(
                    f"sampling from replay {self.spec.namespace!r} waited "
                    f"{backoff.deadline - backoff.start:.0f}s: {why} (shard sizes "
                    f"{[s.size for s in self._shards]} steps, min {need} each; shards down: "
                    f"{down or 'none'}); are the actors running?")
            except ReplayTimeout:
                if granted:  # sequences already granted are served, not lost
                    return granted
                raise

    def _grant_call(self, shard: _Shard, n: int, need: int) -> tuple[int, int]:
        args = [n, repr(float(self.spec.samples_per_insert)), repr(float(self._min_diff)), need,
                repr(float(self.spec.shard_initial_samples))]
        reply = [int(x) for x in self._grant(keys=[shard.prefix + "meta"], args=args)]
        shard.counters = dict(zip(("gseq", "evicted", "size_steps", "size_bytes", "raw_bytes"),
                                  reply[2:], strict=True))
        return reply[0], reply[1]

    def _grant_one(self, shard: _Shard, n: int, length: int, backoff: _Backoff) -> int:
        need = max(self.spec.min_size, length)
        while True:
            granted, reason = self._grant_call(shard, n, need)
            if granted:
                return n
            meta = read_meta(self.client, self.spec)
            why = ("the replay holds fewer steps than the minimum" if reason == 1
                   else "the rate limiter waits for more inserts")
            backoff.wait_or_raise(
                f"sampling from replay {self.spec.namespace!r} waited "
                f"{backoff.deadline - backoff.start:.0f}s: {why} (size {meta['size_steps']} "
                f"steps, min {need}; inserts {meta['inserts']}, "
                f"samples {meta['samples']}); are the actors running?")

    def _sync(self, shard: _Shard) -> None:
        self._on(shard, self._sync_call, shard)

    def _sync_call(self, shard: _Shard) -> None:
        """Read the log past what the index holds and apply evictions. Right after a grant its
        counters say whether anything changed (then no round trip at all)."""
        meta, shard.counters = shard.counters, None
        if meta is not None and meta["gseq"] <= shard.synced_gseq:
            self._apply(shard, meta)
            return
        logkey = shard.prefix + "log"
        while True:
            entries = self._data.xrange(logkey, min=b"(" + shard.last_log_id, count=5000)
            for entry_id, fields in entries:
                gseq = int(entry_id.split(b"-")[0])
                shard.index.add(ChunkInfo(gseq, fields[b"s"].decode(), int(fields[b"i"]),
                                          int(fields[b"n"])))
                shard.nbytes[gseq] = int(fields[b"b"])
                header = fields.get(b"h")
                if header is not None:
                    try:
                        shard.layouts[gseq] = parse_header(header, shard.nbytes[gseq])
                    except CorruptRecord as err:
                        shard.layouts[gseq] = str(err)
                shard.last_log_id = entry_id
                shard.synced_gseq = gseq
            if len(entries) < 5000:
                break
        self._apply(shard, meta or read_meta(self._data, self.spec, shard.k))

    def _apply(self, shard: _Shard, meta: Mapping[str, int]) -> None:
        for info in shard.index.evict_upto(meta["evicted"]):
            shard.layouts.pop(info.gseq, None)
            shard.nbytes.pop(info.gseq, None)
        shard.size = meta["size_steps"]
        if self.spec.shards == 1:
            self._publish_size(meta)

    def _publish_size(self, meta: Mapping[str, int]) -> None:
        if not meta:
            return
        self._m_size_steps.set(meta["size_steps"])
        self._m_size_bytes.set(meta["size_bytes"])
        if meta["size_bytes"]:
            self._m_ratio.set(meta["raw_bytes"] / meta["size_bytes"])

    def _namespace_schema(self, rows) -> Schema:
        if self._schema is None:
            for shard in dict.fromkeys(shard for shard, _ in rows):
                try:
                    raw = self._on(shard, self._data.get, shard.prefix + "schema")
                except _ShardDown:
                    continue
                if raw is not None:
                    self._schema = {k: (d, tuple(s)) for k, (d, s) in json.loads(raw).items()}
                    break
            else:
                raise RuntimeError(f"replay {self.spec.namespace!r} has no schema record; "
                                   "its chunks cannot be checked")
        return self._schema

    def _layout(self, shard: _Shard, gseq: int) -> Layout:
        """The chunk's layout (checked against the namespace's schema and the log); raises
        CorruptRecord."""
        layout = shard.layouts.get(gseq)
        info = shard.index.info(gseq)
        if isinstance(layout, str):
            raise CorruptRecord(layout)
        if layout is None:
            return legacy_layout(self._schema, info.length, shard.nbytes.get(gseq, 0))
        if layout.schema() != self._schema:
            raise CorruptRecord("schema mismatch: "
                                + describe_schema_change(self._schema, layout.schema()))
        if info is None or layout.length != info.length:
            raise CorruptRecord(f"header length {layout.length} != logged length "
                                f"{info.length if info else -1}")
        return layout

    def _fill(self, out: dict[str, np.ndarray], rows: list[tuple[_Shard, list]]
              ) -> list[tuple[int, _Shard]]:
        """Fetch what the rows need and fill `out`; returns the rows to draw again."""
        layouts: dict[tuple[int, int], Layout] = {}
        failed: set[tuple[int, int]] = set()
        for shard, segments in rows:
            for g, _, _ in segments:
                if (shard.k, g) not in layouts and (shard.k, g) not in failed:
                    try:
                        layouts[(shard.k, g)] = self._layout(shard, g)
                    except CorruptRecord as err:
                        self._corrupt(shard, g, str(err))
                        failed.add((shard.k, g))
        plain = [(shard.k, segs) for shard, segs in rows]
        if not failed:
            wanted = self._builder.wanted(plain, layouts)
            payloads: dict[tuple[int, int], dict] = {}
            for shard in dict.fromkeys(shard for shard, _ in rows):
                mine = {key: secs for key, secs in wanted.items() if key[0] == shard.k}
                if not mine:
                    continue
                try:
                    got = self._on(shard, self._fetch, shard, mine, layouts)
                except _ShardDown:
                    return [(b, s) for b, (s, _) in enumerate(rows) if s is shard]
                for key, value in got.items():
                    if isinstance(value, str):
                        if value == "evicted":
                            shard.index.remove(key[1])
                        else:
                            self._corrupt(shard, key[1], value)
                        failed.add(key)
                    else:
                        payloads[key] = value
            if not failed:
                bad = self._builder.build(out, plain, layouts, payloads, self._schema)
                for (k, g), why in bad.items():
                    self._corrupt(self._shards[k], g, why)
                failed |= set(bad)
        return [(b, shard) for b, (shard, segs) in enumerate(rows)
                if any((shard.k, g) in failed for g, _, _ in segs)]

    def _fetch(self, shard: _Shard, wanted: dict[tuple[int, int], list[int]],
               layouts: Mapping[tuple[int, int], Layout]) -> dict[tuple[int, int], object]:
        """The wanted sections of one shard's chunks in one round trip (a pipeline of STRLEN
        and GETRANGE; one shard's keys share a slot): {key: {section: bytes}}, or "evicted",
        or why the record is bad. (A Lua script returning the ranges costs Redis ~10x more:
        it copies every byte into Lua strings and out again.)"""
        where = []
        with self._data.pipeline(transaction=False) as pipe:
            for key, sections in wanted.items():
                layout, name = layouts[key], f"{shard.prefix}chunk:{key[1]}"
                pipe.strlen(name)
                runs = _runs(sections) if sections != [WHOLE] else [(WHOLE, WHOLE)]
                for first, last in runs:
                    if first == WHOLE:
                        lo, hi = 0, -1
                    else:
                        lo = layout.sections[first][0]
                        hi = layout.sections[last][0] + layout.sections[last][1] - 1
                    pipe.getrange(name, lo, hi)
                where.append((key, runs))
            reply = iter(pipe.execute())
        out: dict[tuple[int, int], object] = {}
        for key, runs in where:
            layout, strlen = layouts[key], int(next(reply))
            datas = [next(reply) for _ in runs]
            if strlen == 0:
                out[key] = "evicted"
            elif strlen != layout.nbytes:
                out[key] = (f"record holds {strlen} bytes, the log says {layout.nbytes} "
                            "(truncated or altered)")
            elif runs[0][0] == WHOLE:
                out[key] = {WHOLE: datas[0]}
            else:
                sections = out[key] = {}
                for (first, last), data in zip(runs, datas, strict=True):
                    view, lo = memoryview(data), layout.sections[first][0]
                    for j in range(first, last + 1):
                        offset, clen, _ = layout.sections[j]
                        sections[j] = view[offset - lo:offset - lo + clen]
        return out

    def _corrupt(self, shard: _Shard, gseq: int, why: str) -> None:
        self.corrupt += 1
        self._m_corrupt.inc()
        where = f" (shard {shard.k})" if self.spec.shards > 1 else ""
        log.warning("replay %r: skipping corrupt chunk %d%s: %s", self.spec.namespace, gseq,
                    where, why)
        shard.index.remove(gseq)
        shard.layouts.pop(gseq, None)


def unheld(arrays: Mapping[str, np.ndarray]) -> bool:
    """Whether nobody but `arrays` holds its arrays (not a caller, a view or a tensor made from
    them): two references each, the mapping's and getrefcount's argument."""
    return all(sys.getrefcount(arrays[k]) == 2 for k in arrays)


def _runs(sections: list[int]) -> list[tuple[int, int]]:
    """Sorted section numbers -> runs of consecutive ones, (first, last)."""
    runs: list[tuple[int, int]] = []
    for i in sections:
        if runs and runs[-1][1] == i - 1:
            runs[-1] = (runs[-1][0], i)
        else:
            runs.append((i, i))
    return runs
