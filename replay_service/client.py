"""The replay service on Redis: actors write chunks, learners sample sequences.

    spec = ReplaySpec.from_config(cfg, port=server.port, password=server.password)
    writer = ReplayWriter(spec)                  # in each actor
    writer.add("actor3/env0/<uuid>", step)       # may wait on the rate limiter
    sampler = ReplaySampler(spec, seed=0)        # in the learner
    batch = sampler.sample(50, 50)               # dict of contiguous (B, T, ...) numpy arrays
    with sampler.prefetch(50, 50) as batches:    # a background thread keeps batches ready
        batch = next(batches)

The service logic lives in Redis itself, in two Lua scripts that run atomically: one inserts a
chunk (rate limiter check, store, commit log entry, counters, FIFO eviction down to capacity),
the other grants a sample (minimum size and rate limiter). Redis keys, for namespace NS:

    diswm:NS:meta     hash: inserts, samples, size_steps, size_bytes, raw_bytes, gseq, evicted
    diswm:NS:log      stream: one entry per stored chunk (id = gseq): stream, index, length, bytes
    diswm:NS:chunk:G  the chunk record (diswm.records), G = global insertion number
    diswm:NS:schema   the step schema every writer must match (JSON)

Chunks are immutable, so a sampler caches decoded chunks and rebuilds its index from the log
after any restart. Records that fail to decode are skipped, counted and logged, never returned.
"""

from __future__ import annotations

import collections
import json
import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import redis

from diswm import metrics, rediskit
from diswm.records import CorruptRecord, decode, encode
from replay_service.chunks import Chunk, ChunkBuilder, Schema, describe_schema_change
from replay_service.index import SELECTORS, ChunkInfo, SequenceIndex, assemble

log = logging.getLogger(__name__)


class ReplayTimeout(TimeoutError):
    """A blocked insert or sample waited longer than `wait_timeout`."""


@dataclass(frozen=True)
class ReplaySpec:
    """Everything a writer or sampler needs to reach one replay (plain data, safe to ship)."""

    host: str = "127.0.0.1"
    port: int = 6379
    password: str = ""
    namespace: str = "default"
    capacity: int = 1_000_000  # agent steps
    chunk_length: int = 64
    compression: str = "lz4"
    samples_per_insert: float = 0.0  # 0 disables the limiter
    min_size: int = 1  # steps stored before sampling starts
    tolerance: float = 1000.0  # agent steps either side of the target ratio
    wait_timeout: float = 120.0
    selector: str = "uniform"
    outage_window: float = 120.0  # seconds clients retry while Redis is unreachable

    @classmethod
    def from_config(cls, cfg, *, host: str | None = None, port: int, password: str) -> ReplaySpec:
        r = cfg.replay
        return cls(host=host or r.host, port=port, password=password, namespace=r.namespace,
                   capacity=r.capacity, chunk_length=r.chunk_length, compression=r.compression,
                   samples_per_insert=cfg.samples_per_insert if r.rate_limit else 0.0,
                   min_size=max(cfg.train.prefill, cfg.train.batch_length, 1),
                   tolerance=float(r.tolerance), wait_timeout=r.wait_timeout,
                   selector=r.selector, outage_window=r.outage_window)

    @property
    def prefix(self) -> str:
        return f"diswm:{self.namespace}:"

    @property
    def limits(self) -> tuple[float, float]:
        """(min_diff, max_diff) of diff = inserts * spi - samples, as in Reverb."""
        offset = self.samples_per_insert * self.min_size
        slack = self.samples_per_insert * self.tolerance
        return offset - slack, offset + slack


def connect(spec: ReplaySpec) -> redis.Redis:
    """A client that retries through short outages (e.g. a Redis restart)."""
    return rediskit.connect(spec.host, spec.port, spec.password, spec.outage_window)


_INSERT_LUA = """
local meta, logkey = KEYS[1], KEYS[2]
-- Check everything before the first write: Redis does not roll back a script that fails
-- midway, which would leave a stored chunk that the counters never include.
local names = {'inserts', 'samples', 'gseq', 'evicted', 'size_steps', 'size_bytes', 'raw_bytes'}
local vals = redis.call('HMGET', meta, unpack(names))
local m = {}
for i, name in ipairs(names) do
  local v = vals[i]
  if v then
    local n = tonumber(v)
    if n == nil or n ~= math.floor(n) then
      return redis.error_reply('replay meta ' .. meta .. ' field ' .. name .. ' holds ' ..
                               string.sub(v, 1, 40) .. ', not an integer; nothing was stored')
    end
    m[name] = n
  else
    m[name] = 0
  end
end
local length, spi = tonumber(ARGV[4]), tonumber(ARGV[7])
if not (length and spi and tonumber(ARGV[5]) and tonumber(ARGV[6]) and tonumber(ARGV[8])) then
  return redis.error_reply('insert arguments are not numbers; nothing was stored')
end
if spi > 0 then
  if m['inserts'] * spi - m['samples'] > tonumber(ARGV[8]) then return {0} end
end
local g = redis.call('HINCRBY', meta, 'gseq', 1)
local nbytes = string.len(ARGV[1])
redis.call('SET', ARGV[9] .. g, ARGV[1])
redis.call('XADD', logkey, g .. '-0', 's', ARGV[2], 'i', ARGV[3], 'n', length, 'b', nbytes,
           'r', ARGV[5])
redis.call('HINCRBY', meta, 'inserts', length)
redis.call('HINCRBY', meta, 'size_bytes', nbytes)
redis.call('HINCRBY', meta, 'raw_bytes', tonumber(ARGV[5]))
local size = redis.call('HINCRBY', meta, 'size_steps', length)
local cap = tonumber(ARGV[6])
local e = m['evicted']
while size > cap and e + 1 < g do
  e = redis.call('HINCRBY', meta, 'evicted', 1)
  local entry = redis.call('XRANGE', logkey, e .. '-0', e .. '-0')
  if #entry == 1 then
    local f = entry[1][2]
    for j = 1, #f, 2 do
      if f[j] == 'n' then size = redis.call('HINCRBY', meta, 'size_steps', -tonumber(f[j+1]))
      elseif f[j] == 'b' then redis.call('HINCRBY', meta, 'size_bytes', -tonumber(f[j+1]))
      elseif f[j] == 'r' then redis.call('HINCRBY', meta, 'raw_bytes', -tonumber(f[j+1])) end
    end
    redis.call('XDEL', logkey, e .. '-0')
  end
  redis.call('DEL', ARGV[9] .. e)
end
return {1, g, size}
"""

_SAMPLE_LUA = """
local meta = KEYS[1]
local m = redis.call('HMGET', meta, 'inserts', 'samples', 'size_steps')
local ins, smp, size = tonumber(m[1] or '0'), tonumber(m[2] or '0'), tonumber(m[3] or '0')
local n, spi = tonumber(ARGV[1]), tonumber(ARGV[2])
if size < tonumber(ARGV[4]) then return {0, 1} end
if spi > 0 and ins * spi - (smp + n) < tonumber(ARGV[3]) then return {0, 2} end
redis.call('HINCRBY', meta, 'samples', n)
return {1, 0}
"""


class _Backoff:
    """Polling with a growing interval and a deadline (the limiter's waits)."""

    def __init__(self, timeout: float):
        self.start = time.monotonic()
        self.deadline = self.start + timeout
        self.delay = 0.0005

    def wait_or_raise(self, what: str) -> None:
        if time.monotonic() > self.deadline:
            raise ReplayTimeout(what)
        time.sleep(self.delay)
        self.delay = min(self.delay * 2, 0.05)

    @property
    def waited(self) -> float:
        return time.monotonic() - self.start


def read_meta(client: redis.Redis, spec: ReplaySpec) -> dict[str, int]:
    raw = client.hgetall(spec.prefix + "meta")
    keys = ("inserts", "samples", "size_steps", "size_bytes", "raw_bytes", "gseq", "evicted")
    return {k: int(raw.get(k.encode(), 0)) for k in keys}


class ReplayWriter:
    """Actor side: cuts each stream's steps into chunks and stores them through the limiter."""

    def __init__(self, spec: ReplaySpec, interrupt: Callable[[], bool] | None = None):
        """`interrupt()` (polled while the limiter blocks an insert) returning True stores the
        chunk past the limiter at once: a stopping actor must not wait, nor lose data."""
        self.spec = spec
        self.client = connect(spec)
        self._insert = self.client.register_script(_INSERT_LUA)
        self._interrupt = interrupt or (lambda: False)
        self._builders: dict[str, ChunkBuilder] = {}
        self._pending: collections.deque[Chunk] = collections.deque()  # closed, not yet stored
        self._schema_checked: Schema | None = None
        _, self._max_diff = spec.limits
        ns = spec.namespace
        self._m_steps = metrics.REPLAY_INSERTED_STEPS.labels(ns)
        self._m_chunks = metrics.REPLAY_INSERTED_CHUNKS.labels(ns)
        self._m_bytes = metrics.REPLAY_INSERTED_BYTES.labels(ns)
        self._m_wait = metrics.REPLAY_INSERT_WAIT.labels(ns)
        self._m_rejected = metrics.REPLAY_REJECTED_STEPS.labels(ns)

    def add(self, stream: str, step: Mapping[str, object]) -> int:
        """Add one step of `stream`; returns how many chunks this stored (0 mostly).

        A chunk whose insert times out on the limiter (`ReplayTimeout`) is held, not lost: the
        next `add`, `flush` or `close` retries it before anything newer (`pending_steps`)."""
        builder = self._builders.get(stream)
        if builder is None:
            builder = self._builders[stream] = ChunkBuilder(stream, self.spec.chunk_length)
        try:
            chunks = builder.add(step)
        except ValueError:
            self._m_rejected.inc()
            raise
        self._pending.extend(chunks)
        return self._drain()

    def pending_steps(self) -> int:
        """Steps in closed chunks not yet stored (held after a limiter timeout)."""
        return sum(chunk.length for chunk in self._pending)

    def _drain(self, force: bool = False) -> int:
        """Store the held chunks in order; a timeout leaves the rest held."""
        stored = 0
        while self._pending:
            try:
                self.insert_chunk(self._pending[0], force=force)
            except ValueError:  # a schema the namespace refuses: counted as rejected, dropped
                self._pending.popleft()
                raise
            self._pending.popleft()
            stored += 1
        return stored

    def flush(self, force: bool = False) -> int:
        """Store every stream's open chunk (and any held one) now (on shutdown: nothing is left
        behind); `force` stores past the rate limiter."""
        for builder in self._builders.values():
            chunk = builder.flush()
            if chunk is not None:
                self._pending.append(chunk)
        return self._drain(force)

    def end_stream(self, stream: str) -> None:
        """Flush and forget `stream` (its env is gone)."""
        builder = self._builders.pop(stream, None)
        if builder is not None and (chunk := builder.flush()) is not None:
            self._pending.append(chunk)
        self._drain()

    def insert_chunk(self, chunk: Chunk, force: bool = False) -> None:
        self._check_schema(chunk)
        record = encode(chunk.data, self.spec.compression)
        raw_nbytes = sum(v.nbytes for v in chunk.data.values())
        args = [record, chunk.stream, chunk.index, chunk.length, raw_nbytes, self.spec.capacity,
                repr(float(self.spec.samples_per_insert)), repr(float(self._max_diff)),
                self.spec.prefix + "chunk:"]
        keys = [self.spec.prefix + "meta", self.spec.prefix + "log"]
        backoff = _Backoff(self.spec.wait_timeout)
        while True:
            if force:
                args[6] = "0"  # samples per insert 0: the limiter does not apply
            result = self._insert(keys=keys, args=args)
            if int(result[0]) == 1:
                break
            force = self._interrupt()
            if force:
                continue
            backoff.wait_or_raise(
                f"insert into replay {self.spec.namespace!r} waited {self.spec.wait_timeout:g} s "
                "on the rate limiter: the learner is not sampling (stopped or too slow?)")
        self._m_wait.observe(backoff.waited)
        self._m_steps.inc(chunk.length)
        self._m_chunks.inc()
        self._m_bytes.inc(len(record))

    def _check_schema(self, chunk: Chunk) -> None:
        schema = {k: (v.dtype.name, tuple(v.shape[1:])) for k, v in sorted(chunk.data.items())}
        if schema == self._schema_checked:
            return
        key = self.spec.prefix + "schema"
        text = json.dumps({k: [d, list(s)] for k, (d, s) in schema.items()}, sort_keys=True)
        self.client.set(key, text, nx=True)
        stored = json.loads(self.client.get(key))
        expected = {k: (d, tuple(s)) for k, (d, s) in stored.items()}
        if expected != schema:
            self._m_rejected.inc(chunk.length)
            raise ValueError(f"replay {self.spec.namespace!r}, stream {chunk.stream!r}: "
                             + describe_schema_change(expected, schema)
                             + " (the namespace already holds steps of another schema)")
        self._schema_checked = schema

    def close(self) -> None:
        self.flush(force=True)
        self.client.close()


class ReplaySampler:
    """Learner side: samples (B, T) sequences through the limiter, skipping corrupt records."""

    def __init__(self, spec: ReplaySpec, seed: int = 0, cache_chunks: int = 256):
        self.spec = spec
        self.client = connect(spec)
        self._grant = self.client.register_script(_SAMPLE_LUA)
        self._rng = np.random.default_rng(seed)
        self._index = SequenceIndex(SELECTORS[spec.selector]())
        self._last_log_id = b"0-0"
        self._cache: OrderedDict[int, dict[str, np.ndarray]] = OrderedDict()
        self._cache_size = cache_chunks
        self._schema: Schema | None = None
        self._min_diff, _ = spec.limits
        self.corrupt = 0
        ns = spec.namespace
        self._m_sampled = metrics.REPLAY_SAMPLED_SEQUENCES.labels(ns)
        self._m_wait = metrics.REPLAY_SAMPLE_WAIT.labels(ns)
        self._m_duration = metrics.REPLAY_SAMPLE_DURATION.labels(ns)
        self._m_corrupt = metrics.REPLAY_CORRUPT_RECORDS.labels(ns)
        self._m_size_steps = metrics.REPLAY_SIZE_STEPS.labels(ns)
        self._m_size_bytes = metrics.REPLAY_SIZE_BYTES.labels(ns)
        self._m_ratio = metrics.REPLAY_COMPRESSION_RATIO.labels(ns)

    # -- public ------------------------------------------------------------------------------
    def sample(self, batch_size: int, length: int, timeout: float | None = None
               ) -> dict[str, np.ndarray]:
        """Wait for the limiter, then return a batch of `batch_size` sequences of `length`."""
        self._acquire(batch_size, length, timeout)
        start = time.perf_counter()
        batch = self._fetch(batch_size, length)
        self._m_duration.observe(time.perf_counter() - start)
        self._m_sampled.inc(batch_size)
        return batch

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
        meta = read_meta(self.client, self.spec)
        self._publish_size(meta)
        ratio = meta["raw_bytes"] / meta["size_bytes"] if meta["size_bytes"] else 0.0
        return {**meta, "chunks": meta["gseq"] - meta["evicted"], "compression_ratio": ratio,
                "samples_per_insert_target": self.spec.samples_per_insert,
                "samples_per_insert_observed": (meta["samples"] / max(
                    meta["inserts"] - self.spec.min_size, 1)),
                "corrupt_records_skipped": self.corrupt}

    def snapshot(self) -> None:
        """Persist Redis now (the `snapshot` mode calls this at checkpoints)."""
        self.client.save()

    def close(self) -> None:
        self.client.close()

    # -- internals -----------------------------------------------------------------------------
    def _acquire(self, batch_size: int, length: int, timeout: float | None) -> None:
        backoff = _Backoff(self.spec.wait_timeout if timeout is None else timeout)
        keys = [self.spec.prefix + "meta"]
        args = [batch_size, repr(float(self.spec.samples_per_insert)),
                repr(float(self._min_diff)), max(self.spec.min_size, length)]
        while True:
            granted, reason = (int(x) for x in self._grant(keys=keys, args=args))
            if granted:
                break
            meta = read_meta(self.client, self.spec)
            why = ("the replay holds fewer steps than the minimum" if reason == 1
                   else "the rate limiter waits for more inserts")
            backoff.wait_or_raise(
                f"sampling from replay {self.spec.namespace!r} waited "
                f"{backoff.deadline - backoff.start:.0f}s: {why} (size {meta['size_steps']} "
                f"steps, min {max(self.spec.min_size, length)}; inserts {meta['inserts']}, "
                f"samples {meta['samples']}); are the actors running?")
        self._m_wait.observe(backoff.waited)

    def _sync_index(self) -> None:
        logkey = self.spec.prefix + "log"
        while True:
            entries = self.client.xrange(logkey, min=b"(" + self._last_log_id, count=5000)
            for entry_id, fields in entries:
                gseq = int(entry_id.split(b"-")[0])
                self._index.add(ChunkInfo(gseq, fields[b"s"].decode(), int(fields[b"i"]),
                                          int(fields[b"n"])))
                self._last_log_id = entry_id
            if len(entries) < 5000:
                break
        meta = read_meta(self.client, self.spec)
        for info in self._index.evict_upto(meta["evicted"]):
            self._cache.pop(info.gseq, None)
        self._publish_size(meta)

    def _publish_size(self, meta: Mapping[str, int]) -> None:
        self._m_size_steps.set(meta["size_steps"])
        self._m_size_bytes.set(meta["size_bytes"])
        if meta["size_bytes"]:
            self._m_ratio.set(meta["raw_bytes"] / meta["size_bytes"])

    def _fetch(self, batch_size: int, length: int) -> dict[str, np.ndarray]:
        self._sync_index()
        for _ in range(100):
            sequences = self._index.sample(self._rng, batch_size, length)
            used = {g for seq in sequences for g, _, _ in seq}
            for g in used & self._cache.keys():
                self._cache.move_to_end(g)  # keep this batch's chunks through the trim below
            if not self._load(sorted(used - self._cache.keys()), keep=len(used)):
                chunks = {g: self._cache[g] for g in used}
                return assemble(sequences, chunks, length, self._schema)
        raise RuntimeError(f"replay {self.spec.namespace!r}: could not assemble a batch; "
                           "too many chunks vanished or failed to decode")

    def _load(self, gseqs: list[int], keep: int) -> bool:
        """Fetch and decode chunks into the cache; drops bad ones from the index."""
        if not gseqs:
            return False
        records = self.client.mget([f"{self.spec.prefix}chunk:{g}" for g in gseqs])
        bad = False
        for gseq, record in zip(gseqs, records, strict=True):
            if record is None:  # evicted since the index was synced
                self._index.remove(gseq)
                bad = True
                continue
            try:
                data = decode(record)
                self._check_chunk(gseq, data)
            except CorruptRecord as err:
                self.corrupt += 1
                self._m_corrupt.inc()
                log.warning("replay %r: skipping corrupt chunk %d: %s", self.spec.namespace,
                            gseq, err)
                self._index.remove(gseq)
                bad = True
                continue
            self._cache[gseq] = data
        while len(self._cache) > max(self._cache_size, keep):
            self._cache.popitem(last=False)
        return bad

    def _check_chunk(self, gseq: int, data: Mapping[str, np.ndarray]) -> None:
        schema = {k: (v.dtype.name, tuple(v.shape[1:])) for k, v in sorted(data.items())}
        if self._schema is None:
            raw = self.client.get(self.spec.prefix + "schema")
            if raw is None:
                raise CorruptRecord("the namespace has no schema record")
            self._schema = {k: (d, tuple(s)) for k, (d, s) in json.loads(raw).items()}
        if schema != self._schema:
            raise CorruptRecord("schema mismatch: " + describe_schema_change(self._schema, schema))
        lengths = {v.shape[0] if v.ndim else -1 for v in data.values()}
        info = self._index.info(gseq)
        expected = info.length if info else -1
        if lengths != {expected}:
            raise CorruptRecord(f"field lengths {sorted(lengths)} != logged length {expected}")


class Prefetcher:
    """Samples in a background thread so batches are ready when the learner asks.

    `get(timeout)` returns the next batch, or None if none came within `timeout` (the learner can
    then check its stop flag); an error in the thread (e.g. `ReplayTimeout` after the spec's
    `wait_timeout`, unless `patient`) is raised by `get`. `close()` stops the thread within about
    `poll` seconds.
    """

    def __init__(self, sampler: ReplaySampler, batch_size: int, length: int, depth: int = 2,
                 *, patient: bool = False, poll: float = 0.5):
        self._sampler, self._shape = sampler, (batch_size, length)
        self._ready: queue.Queue = queue.Queue(maxsize=max(depth, 1))
        self._stop = threading.Event()
        self._patient, self._poll = patient, poll
        self._thread = threading.Thread(target=self._work, name="replay-prefetch", daemon=True)
        self._thread.start()

    def _sample(self) -> dict[str, np.ndarray] | None:
        waited = 0.0
        while not self._stop.is_set():
            try:
                return self._sampler.sample(*self._shape, timeout=self._poll)
            except ReplayTimeout:
                waited += self._poll
                if not self._patient and waited >= self._sampler.spec.wait_timeout:
                    raise
        return None

    def _work(self) -> None:
        while not self._stop.is_set():
            try:
                item: object = self._sample()
            except Exception as err:  # noqa: BLE001 - handed to the consumer
                item = err
            if item is None:
                return
            while not self._stop.is_set():
                try:
                    self._ready.put(item, timeout=self._poll)
                    break
                except queue.Full:
                    continue
            if isinstance(item, Exception):
                return

    def get(self, timeout: float | None = None) -> dict[str, np.ndarray] | None:
        try:
            item = self._ready.get(timeout=timeout)
        except queue.Empty:
            return None
        if isinstance(item, Exception):
            raise item
        return item

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self._poll * 4 + 5)
