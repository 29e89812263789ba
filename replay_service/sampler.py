"""The learner side of the replay: `ReplaySampler` asks each shard's sample script for a grant,
draws sequences from the shard's index of stored chunks (replay_service/shard.py: the index, its
block layouts and the shard's reads), fetches exactly the blocks a batch needs in one round trip
per shard, and decodes them into the batch's arrays in a thread pool (replay_service/batch.py,
with its cache of decoded blocks); records that fail their checks are skipped, counted and
logged.

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

from diswm import metrics
from diswm.records import CorruptRecord
from replay_service.batch import BatchBuilder
from replay_service.blocks import Layout
from replay_service.chunks import Schema
from replay_service.index import SELECTORS
from replay_service.prefetch import Prefetcher
from replay_service.redis_cluster import placement
from replay_service.scripts import SAMPLE_LUA, script_caller
from replay_service.shard import ShardDown, ShardView
from replay_service.spec import META_FIELDS, ReplaySpec, ReplayTimeout, _Backoff, connect, read_meta

log = logging.getLogger(__name__)


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
        grant = script_caller(self._data, SAMPLE_LUA, spec.shards > 1)
        self._rng = np.random.default_rng(seed)
        self._shards = [ShardView(k, p, spec, self._data, grant, SELECTORS[spec.selector](),
                                  on_health=self._count_down)
                        for k, p in enumerate(spec.shard_prefixes)]
        self._builder = BatchBuilder(cache_chunks, spec.sample_threads)
        self._schema: Schema | None = None
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
            lost = [b for b, shard in redo if not shard.up]
            for b, shard in redo:
                if shard.up:
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
              ) -> list[tuple[ShardView, list]]:
        """`n` granted sequences, as (shard, segments)."""
        rows: list[tuple[ShardView, list]] = []
        while len(rows) < n:
            wait_start = time.perf_counter()
            grants = self._acquire(n - len(rows), length, backoff)
            clock["waited"] += time.perf_counter() - wait_start
            for shard, m in grants.items():
                try:
                    self._sync(shard)
                except ShardDown:
                    continue  # its grant is lost with it; the others make up the batch
                rows += [(shard, seq) for seq in self._draw(shard, m, length)]
        return rows

    def _draw(self, shard: ShardView, n: int, length: int) -> list[list[tuple[int, int, int]]]:
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
                "shards_unreachable": [s.k for s in self._shards if not s.up]}

    def _live_meta(self) -> dict[str, int]:
        """Counters summed over the shards that answer (a shard that is down is marked)."""
        total: dict[str, int] = {}
        for shard in self._shards:
            try:
                meta = shard.call(read_meta, self._data, self.spec, shard.k)
            except ShardDown:
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
    def _count_down(self) -> None:
        self._m_down.set(sum(not s.up for s in self._shards))

    def _acquire(self, n: int, length: int, backoff: _Backoff) -> dict[ShardView, int]:
        """Grants for `n` sequences: all from the one Redis, or split over the shards in
        proportion to their sizes; waits (polling with a deadline) on the limiter.

        A shard whose limiter refuses its share (its writers are behind) hands that share to
        the other shards, drawn again in proportion to their sizes, as Reverb's per-server
        samplers do: each shard's own ratio holds, and one idle shard never stalls the learner
        (nor, through it, the writers of the others)."""
        if self.spec.shards == 1:
            return {self._shards[0]: self._grant_one(self._shards[0], n, length, backoff)}
        granted: dict[ShardView, int] = {}
        need = max(self.spec.shard_min_size, length)
        while True:
            for shard in [s for s in self._shards if s.worth_trying(time.monotonic())]:
                try:
                    self._sync(shard)
                except ShardDown:
                    continue
            eligible = [s for s in self._shards if s.up and s.size >= need]
            refused: set[ShardView] = set()
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
                        ok, _ = shard.call(shard.grant, int(m), need)
                    except ShardDown:
                        ok = False
                    if ok:
                        granted[shard] = granted.get(shard, 0) + int(m)
                    else:
                        refused.add(shard)
            if sum(granted.values()) == n:
                return granted
            down = [s.k for s in self._shards if not s.up]
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

    def _grant_one(self, shard: ShardView, n: int, length: int, backoff: _Backoff) -> int:
        need = max(self.spec.min_size, length)
        while True:
            granted, reason = shard.grant(n, need)
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

    def _sync(self, shard: ShardView) -> None:
        meta = shard.sync()
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
                    raw = shard.call(self._data.get, shard.prefix + "schema")
                except ShardDown:
                    continue
                if raw is not None:
                    self._schema = {k: (d, tuple(s)) for k, (d, s) in json.loads(raw).items()}
                    break
            else:
                raise RuntimeError(f"replay {self.spec.namespace!r} has no schema record; "
                                   "its chunks cannot be checked")
        return self._schema

    def _fill(self, out: dict[str, np.ndarray], rows: list[tuple[ShardView, list]]
              ) -> list[tuple[int, ShardView]]:
        """Fetch what the rows need and fill `out`; returns the rows to draw again."""
        layouts: dict[tuple[int, int], Layout] = {}
        failed: set[tuple[int, int]] = set()
        for shard, segments in rows:
            for g, _, _ in segments:
                if (shard.k, g) not in layouts and (shard.k, g) not in failed:
                    try:
                        layouts[(shard.k, g)] = shard.layout(g, self._schema)
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
                    got = shard.call(shard.fetch, mine, layouts)
                except ShardDown:
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

    def _corrupt(self, shard: ShardView, gseq: int, why: str) -> None:
        self.corrupt += 1
        self._m_corrupt.inc()
        where = f" (shard {shard.k})" if self.spec.shards > 1 else ""
        log.warning("replay %r: skipping corrupt chunk %d%s: %s", self.spec.namespace, gseq,
                    where, why)
        shard.forget(gseq)


def unheld(arrays: Mapping[str, np.ndarray]) -> bool:
    """Whether nobody but `arrays` holds its arrays (not a caller, a view or a tensor made from
    them): two references each, the mapping's and getrefcount's argument."""
    return all(sys.getrefcount(arrays[k]) == 2 for k in arrays)
