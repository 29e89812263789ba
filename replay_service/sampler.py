"""The learner side of the replay: `ReplaySampler` asks the sample script for a grant, keeps an
index of stored chunks from the commit log and a cache of decoded chunks, and assembles batches;
records that fail their checks are skipped, counted and logged.

On a sharded replay (``spec.shards > 1``) each shard has its own index, grant and limiter; a
batch's sequences are split over the shards in proportion to their sizes (a multinomial draw:
uniform over every stored step), each shard's chunks come in one MGET (one slot), and a shard
that is down is left out, logged and counted (``diswm_replay_shards_unreachable``) until it
answers again."""

from __future__ import annotations

import json
import logging
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import numpy as np
import redis

from diswm import metrics
from diswm.records import CorruptRecord, decode
from replay_service.chunks import Schema, describe_schema_change
from replay_service.index import SELECTORS, ChunkInfo, SequenceIndex, assemble
from replay_service.scripts import _SAMPLE_LUA
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
        self.down_since: float | None = None
        self.probed = 0.0


class ReplaySampler:
    """Learner side: samples (B, T) sequences through the limiter, skipping corrupt records."""

    def __init__(self, spec: ReplaySpec, seed: int = 0, cache_chunks: int = 256):
        self.spec = spec
        self.client = connect(spec)
        # The sample path fails fast on a shard that is down (and leaves it out); one Redis
        # retries through an outage, as before.
        self._data = self.client if spec.shards == 1 else connect(spec, fail_fast=True)
        if spec.shards == 1:
            self._grant = self.client.register_script(_SAMPLE_LUA)
        else:  # EVAL, routed by the keys' slot: a restarted node needs no SCRIPT LOAD
            def grant(keys, args):
                return self._data.eval(_SAMPLE_LUA, len(keys), *keys, *args)
            self._grant = grant
        self._rng = np.random.default_rng(seed)
        self._shards = [_Shard(k, p, SELECTORS[spec.selector]())
                        for k, p in enumerate(spec.shard_prefixes)]
        self._cache: OrderedDict[tuple[int, int], dict[str, np.ndarray]] = OrderedDict()
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
        self._m_down = metrics.REPLAY_SHARDS_UNREACHABLE.labels(ns)

    @property
    def _index(self) -> SequenceIndex:
        """The unsharded replay's index (shard 0)."""
        return self._shards[0].index

    # -- public ------------------------------------------------------------------------------
    def sample(self, batch_size: int, length: int, timeout: float | None = None
               ) -> dict[str, np.ndarray]:
        """Wait for the limiter, then return a batch of `batch_size` sequences of `length`."""
        backoff = _Backoff(self.spec.wait_timeout if timeout is None else timeout)
        sequences: list[list[tuple]] = []
        waited = 0.0
        start = time.perf_counter()
        while len(sequences) < batch_size:
            wait_start = time.perf_counter()
            grants = self._acquire(batch_size - len(sequences), length, backoff)
            waited += time.perf_counter() - wait_start
            for shard, n in grants.items():
                try:
                    sequences += self._sequences(shard, n, length)
                except _ShardDown:
                    continue  # its grant is lost with it; the others make up the batch
        self._m_wait.observe(waited)
        batch = self._assemble(sequences, length)
        self._m_duration.observe(time.perf_counter() - start - waited)
        self._m_sampled.inc(batch_size)
        return batch

    @contextmanager
    def prefetch(self, batch_size: int, length: int, depth: int = 2
                 ) -> Iterator[Iterator[dict[str, np.ndarray]]]:
        """A background thread keeps `depth` batches ready; errors surface on `next()`."""
        from replay_service.prefetch import Prefetcher  # it builds on this module

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
                "samples_per_insert_observed": (meta["samples"] / max(
                    meta["inserts"] - self.spec.min_size, 1)),
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
        args = [n, repr(float(self.spec.samples_per_insert)), repr(float(self._min_diff)), need]
        granted, reason = (int(x) for x in self._grant(keys=[shard.prefix + "meta"], args=args))
        return granted, reason

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
        logkey = shard.prefix + "log"
        while True:
            entries = self._data.xrange(logkey, min=b"(" + shard.last_log_id, count=5000)
            for entry_id, fields in entries:
                gseq = int(entry_id.split(b"-")[0])
                shard.index.add(ChunkInfo(gseq, fields[b"s"].decode(), int(fields[b"i"]),
                                          int(fields[b"n"])))
                shard.last_log_id = entry_id
            if len(entries) < 5000:
                break
        meta = read_meta(self._data, self.spec, shard.k)
        for info in shard.index.evict_upto(meta["evicted"]):
            self._cache.pop((shard.k, info.gseq), None)
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

    def _sequences(self, shard: _Shard, n: int, length: int) -> list[list[tuple]]:
        """`n` sequences from `shard`, their chunks loaded into the cache; segments are
        ((shard, gseq), offset, count)."""
        self._sync(shard)
        for _ in range(100):
            sequences = shard.index.sample(self._rng, n, length)
            used = {(shard.k, g) for seq in sequences for g, _, _ in seq}
            for key in used & self._cache.keys():
                self._cache.move_to_end(key)  # keep this batch's chunks through the trim below
            missing = sorted(used - self._cache.keys())
            if not missing or not self._on(shard, self._load, shard, missing):
                return [[((shard.k, g), o, c) for g, o, c in seq] for seq in sequences]
        raise RuntimeError(f"replay {self.spec.namespace!r}: could not assemble a batch; "
                           "too many chunks vanished or failed to decode")

    def _assemble(self, sequences: list[list[tuple]], length: int) -> dict[str, np.ndarray]:
        used = {key for seq in sequences for key, _, _ in seq}
        batch = assemble(sequences, {key: self._cache[key] for key in used}, length, self._schema)
        while len(self._cache) > self._cache_size:  # this batch's chunks were used already
            self._cache.popitem(last=False)
        return batch

    def _load(self, shard: _Shard, keys: list[tuple[int, int]]) -> bool:
        """Fetch and decode chunks into the cache (one MGET: one shard, one slot); drops bad
        ones from the index."""
        gseqs = [g for _, g in keys]
        records = self._data.mget([f"{shard.prefix}chunk:{g}" for g in gseqs])
        bad = False
        for gseq, record in zip(gseqs, records, strict=True):
            if record is None:  # evicted since the index was synced
                shard.index.remove(gseq)
                bad = True
                continue
            try:
                data = decode(record)
                self._check_chunk(shard, gseq, data)
            except CorruptRecord as err:
                self.corrupt += 1
                self._m_corrupt.inc()
                where = f" (shard {shard.k})" if self.spec.shards > 1 else ""
                log.warning("replay %r: skipping corrupt chunk %d%s: %s", self.spec.namespace,
                            gseq, where, err)
                shard.index.remove(gseq)
                bad = True
                continue
            self._cache[(shard.k, gseq)] = data
        return bad

    def _check_chunk(self, shard: _Shard, gseq: int, data: Mapping[str, np.ndarray]) -> None:
        schema = {k: (v.dtype.name, tuple(v.shape[1:])) for k, v in sorted(data.items())}
        if self._schema is None:
            raw = self._data.get(shard.prefix + "schema")
            if raw is None:
                raise CorruptRecord("the namespace has no schema record")
            self._schema = {k: (d, tuple(s)) for k, (d, s) in json.loads(raw).items()}
        if schema != self._schema:
            raise CorruptRecord("schema mismatch: " + describe_schema_change(self._schema, schema))
        lengths = {v.shape[0] if v.ndim else -1 for v in data.values()}
        info = shard.index.info(gseq)
        expected = info.length if info else -1
        if lengths != {expected}:
            raise CorruptRecord(f"field lengths {sorted(lengths)} != logged length {expected}")
