"""One shard of the replay as a sampler sees it: its keys, its index of stored chunks (read from
the commit log), its health, and its reads. An unsharded replay is one shard.

    shard = ShardView(0, spec.shard_prefixes[0], spec, data_client, grant_script)
    ok, reason = shard.call(shard.grant, n, need)    # the sample script: limiter and minimum size
    shard.sync()                                     # the log past what the index holds
    payloads = shard.call(shard.fetch, wanted, layouts)

On a sharded replay `call` marks a shard whose node does not answer as down (logged once, the
sampler counts it in ``diswm_replay_shards_unreachable``) and raises `ShardDown`; the sampler
leaves it out and probes it again every `PROBE_EVERY` seconds, and marks it back when it answers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping

import redis

from diswm.records import CorruptRecord
from replay_service.batch import WHOLE, legacy_layout
from replay_service.blocks import Layout, parse_header
from replay_service.chunks import Schema, describe_schema_change
from replay_service.index import ChunkInfo, SequenceIndex
from replay_service.spec import ReplaySpec, read_meta

log = logging.getLogger(__name__)

DOWN_ERRORS = (redis.ConnectionError, redis.TimeoutError, redis.exceptions.ClusterDownError)
PROBE_EVERY = 1.0  # seconds between attempts to reach a shard that is down
GRANT_COUNTERS = ("gseq", "evicted", "size_steps", "size_bytes", "raw_bytes")


class ShardDown(Exception):
    """A shard's node did not answer; the sampler leaves it out for now."""


class ShardView:
    """One shard's keys (``prefix``), its index of stored chunks and how far the log was read,
    the chunks' block layouts, and whether its node answers."""

    def __init__(self, k: int, prefix: str, spec: ReplaySpec, data, grant_script, selector, *,
                 on_health: Callable[[], None] = lambda: None):
        self.k, self.prefix, self.spec = k, prefix, spec
        self._data, self._grant = data, grant_script
        self._on_health = on_health  # called when the shard goes down or comes back
        self.index = SequenceIndex(selector)
        self.last_log_id = b"0-0"
        self.size = 0  # size_steps at the last sync
        self.synced_gseq = 0  # the last chunk the index holds from the log
        self.counters: dict[str, int] | None = None  # from the last grant, until a sync uses them
        self.layouts: dict[int, Layout | str | None] = {}  # None: a whole-chunk record;
        self.nbytes: dict[int, int] = {}                     # str: why its header is bad
        self.down_since: float | None = None
        self.probed = 0.0

    # -- health --------------------------------------------------------------------------------
    def call(self, fn, *args):
        """`fn(*args)` against this shard; a shard that does not answer is marked down (logged
        once) and raises `ShardDown`; one that answers again is marked back. Unsharded, errors
        pass through (the client retries through an outage)."""
        if self.spec.shards == 1:
            return fn(*args)
        try:
            result = fn(*args)
        except DOWN_ERRORS as err:
            if self.down_since is None:
                self.down_since = time.monotonic()
                self._on_health()
                log.warning("replay %r: shard %d ({%s}) is unreachable (%s); sampling from the "
                            "other shard(s) until it is back", self.spec.namespace, self.k,
                            self.prefix.split("{")[-1].rstrip(":}"), type(err).__name__)
            self.probed = time.monotonic()
            raise ShardDown(self.k) from None
        if self.down_since is not None:
            log.warning("replay %r: shard %d is back after %.1f s", self.spec.namespace, self.k,
                        time.monotonic() - self.down_since)
            self.down_since = None
            self._on_health()
        return result

    @property
    def up(self) -> bool:
        return self.down_since is None

    def worth_trying(self, now: float) -> bool:
        """Up, or down long enough to be probed again."""
        return self.down_since is None or now - self.probed >= PROBE_EVERY

    # -- the limiter ---------------------------------------------------------------------------
    def grant(self, n: int, need: int) -> tuple[int, int]:
        """The sample script for `n` sequences with at least `need` stored steps: (granted,
        reason); the shard's counters come back with it for the next `sync`."""
        spec = self.spec
        args = [n, repr(float(spec.samples_per_insert)), repr(float(spec.limits[0])), need,
                repr(float(spec.shard_initial_samples))]
        reply = [int(x) for x in self._grant(keys=[self.prefix + "meta"], args=args)]
        self.counters = dict(zip(GRANT_COUNTERS, reply[2:], strict=True))
        return reply[0], reply[1]

    # -- the index -----------------------------------------------------------------------------
    def sync(self) -> Mapping[str, int]:
        """Read the log past what the index holds and apply evictions; returns the counters
        applied. Right after a grant its counters say whether anything changed (then no round
        trip at all)."""
        return self.call(self._sync)

    def _sync(self) -> Mapping[str, int]:
        meta, self.counters = self.counters, None
        if meta is not None and meta["gseq"] <= self.synced_gseq:
            self._apply(meta)
            return meta
        logkey = self.prefix + "log"
        while True:
            entries = self._data.xrange(logkey, min=b"(" + self.last_log_id, count=5000)
            for entry_id, fields in entries:
                gseq = int(entry_id.split(b"-")[0])
                self.index.add(ChunkInfo(gseq, fields[b"s"].decode(), int(fields[b"i"]),
                                         int(fields[b"n"])))
                self.nbytes[gseq] = int(fields[b"b"])
                header = fields.get(b"h")
                if header is not None:
                    try:
                        self.layouts[gseq] = parse_header(header, self.nbytes[gseq])
                    except CorruptRecord as err:
                        self.layouts[gseq] = str(err)
                self.last_log_id = entry_id
                self.synced_gseq = gseq
            if len(entries) < 5000:
                break
        meta = meta or read_meta(self._data, self.spec, self.k)
        self._apply(meta)
        return meta

    def _apply(self, meta: Mapping[str, int]) -> None:
        for info in self.index.evict_upto(meta["evicted"]):
            self.layouts.pop(info.gseq, None)
            self.nbytes.pop(info.gseq, None)
        self.size = meta["size_steps"]

    def forget(self, gseq: int) -> None:
        """Drop a chunk that failed its checks from the index."""
        self.index.remove(gseq)
        self.layouts.pop(gseq, None)

    # -- reads ---------------------------------------------------------------------------------
    def layout(self, gseq: int, schema: Schema) -> Layout:
        """The chunk's layout (checked against the namespace's schema and the log); raises
        CorruptRecord."""
        layout = self.layouts.get(gseq)
        info = self.index.info(gseq)
        if isinstance(layout, str):
            raise CorruptRecord(layout)
        if layout is None:
            return legacy_layout(schema, info.length, self.nbytes.get(gseq, 0))
        if layout.schema() != schema:
            raise CorruptRecord("schema mismatch: " + describe_schema_change(schema,
                                                                             layout.schema()))
        if info is None or layout.length != info.length:
            raise CorruptRecord(f"header length {layout.length} != logged length "
                                f"{info.length if info else -1}")
        return layout

    def fetch(self, wanted: dict[tuple[int, int], list[int]],
              layouts: Mapping[tuple[int, int], Layout]) -> dict[tuple[int, int], object]:
        """The wanted sections of this shard's chunks in one round trip (a pipeline of STRLEN
        and GETRANGE; one shard's keys share a slot): {key: {section: bytes}}, or "evicted",
        or why the record is bad. (A Lua script returning the ranges costs Redis ~10x more:
        it copies every byte into Lua strings and out again.)"""
        where = []
        with self._data.pipeline(transaction=False) as pipe:
            for key, sections in wanted.items():
                layout, name = layouts[key], f"{self.prefix}chunk:{key[1]}"
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


def _runs(sections: list[int]) -> list[tuple[int, int]]:
    """Sorted section numbers -> runs of consecutive ones, (first, last)."""
    runs: list[tuple[int, int]] = []
    for i in sections:
        if runs and runs[-1][1] == i - 1:
            runs[-1] = (runs[-1][0], i)
        else:
            runs.append((i, i))
    return runs
