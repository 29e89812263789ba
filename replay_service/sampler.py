"""The learner side of the replay: `ReplaySampler` asks the sample script for a grant, keeps an
index of stored chunks from the commit log and a cache of decoded chunks, and assembles batches;
records that fail their checks are skipped, counted and logged."""

from __future__ import annotations

import json
import logging
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import numpy as np

from diswm import metrics
from diswm.records import CorruptRecord, decode
from replay_service.chunks import Schema, describe_schema_change
from replay_service.index import SELECTORS, ChunkInfo, SequenceIndex, assemble
from replay_service.scripts import _SAMPLE_LUA
from replay_service.spec import ReplaySpec, _Backoff, connect, read_meta

log = logging.getLogger(__name__)


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
