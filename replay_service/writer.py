"""The actor side of the replay: `ReplayWriter` cuts each stream's steps into chunks and stores
them through the insert script; a chunk that timed out on the limiter is held and retried.

On a sharded replay every stream of one writer lives on one shard (`shard`, by default picked
from the first stream's name): an actor that blocks on one shard's limiter then never starves
another shard it also feeds. While that shard is down the writer holds its chunks and retries
for `outage_window` seconds."""

from __future__ import annotations

import collections
import json
import zlib
from collections.abc import Callable, Mapping

import redis

from diswm import metrics
from diswm.records import encode
from replay_service.blocks import encode_chunk
from replay_service.chunks import Chunk, ChunkBuilder, Schema, check_finite, describe_schema_change
from replay_service.scripts import INSERT_LUA, script_caller
from replay_service.spec import ReplaySpec, _Backoff, connect


class ReplayWriter:
    """Actor side: cuts each stream's steps into chunks and stores them through the limiter."""

    def __init__(self, spec: ReplaySpec, interrupt: Callable[[], bool] | None = None,
                 shard: int | None = None):
        """`interrupt()` (polled while the limiter blocks an insert) returning True stores the
        chunk past the limiter at once: a stopping actor must not wait, nor lose data. `shard`
        (sharded replays) is where all of this writer's streams go; None picks it from the
        first stream's name (crc32 mod shards); actors pass their index mod shards."""
        if shard is not None and not 0 <= shard < spec.shards:
            raise ValueError(f"shard {shard} does not exist (replay.shards={spec.shards})")
        self.spec = spec
        self.shard = shard
        self.client = connect(spec)
        self._insert = script_caller(self.client, INSERT_LUA, spec.shards > 1)
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

    def _shard_for(self, stream: str) -> int:
        if self.shard is None:
            self.shard = zlib.crc32(stream.encode()) % self.spec.shards
        return self.shard

    def _call(self, fn: Callable, *args, **kwargs):
        """`fn` on this writer's shard; its client waits while the shard is down, for
        `outage_window` seconds, then this says which shard (one Redis: as before)."""
        if self.spec.shards == 1:
            return fn(*args, **kwargs)
        try:
            return fn(*args, **kwargs)
        except redis.AuthenticationError:
            raise
        except (redis.ConnectionError, redis.TimeoutError,
                redis.exceptions.ClusterDownError) as err:
            raise redis.ConnectionError(
                f"replay {self.spec.namespace!r} shard {self.shard}: unreachable for "
                f"{self.spec.outage_window:g} s ({err}); its chunks are held") from None

    def insert_chunk(self, chunk: Chunk, force: bool = False) -> None:
        """Store one closed chunk (what `add` cuts, or a caller's own); ValueError (counted as
        rejected steps) for non-finite values or a schema the namespace does not hold."""
        try:
            check_finite(chunk)
        except ValueError:
            self._m_rejected.inc(chunk.length)
            raise
        prefix = self.spec.shard_prefix(self._shard_for(chunk.stream))
        self._check_schema(chunk, prefix)
        if self.spec.block_steps:  # block record: samplers decode only the steps they use
            record, header = encode_chunk(chunk.data, self.spec.compression,
                                          self.spec.block_steps)
        else:
            record, header = encode(chunk.data, self.spec.compression), b""
        raw_nbytes = sum(v.nbytes for v in chunk.data.values())
        args = [record, chunk.stream, chunk.index, chunk.length, raw_nbytes, self.spec.capacity
                // self.spec.shards, repr(float(self.spec.samples_per_insert)),
                repr(float(self._max_diff)), prefix + "chunk:", header,
                repr(float(self.spec.shard_initial_samples))]
        keys = [prefix + "meta", prefix + "log"]
        backoff = _Backoff(self.spec.wait_timeout)
        while True:
            if force:
                args[6] = "0"  # samples per insert 0: the limiter does not apply
            result = self._call(self._insert, keys=keys, args=args)
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

    def stored_fields(self) -> set[str] | None:
        """The fields of the namespace's step schema (on this writer's shard), or None while
        nothing has been stored: a writer joining an existing replay matches what it holds."""
        if self.shard is None and self.spec.shards > 1:
            return None  # the shard follows the first stream's name: checked at that insert
        raw = self._call(self.client.get, self.spec.shard_prefix(self.shard or 0) + "schema")
        return None if raw is None else set(json.loads(raw))

    def _check_schema(self, chunk: Chunk, prefix: str) -> None:
        """The namespace's schema is stored on every shard the first writer reaches; a writer
        compares with its own shard's and with every other shard it can reach now."""
        schema = {k: (v.dtype.name, tuple(v.shape[1:])) for k, v in sorted(chunk.data.items())}
        if schema == self._schema_checked:
            return
        key = prefix + "schema"
        text = json.dumps({k: [d, list(s)] for k, (d, s) in schema.items()}, sort_keys=True)
        self._call(self.client.set, key, text, nx=True)
        stored = [self._call(self.client.get, key)]
        others = [p for p in self.spec.shard_prefixes if p != prefix]
        probe = connect(self.spec, fail_fast=True) if others else None
        for other in others:
            if other != prefix:
                try:
                    probe.set(other + "schema", text, nx=True)
                    stored.append(probe.get(other + "schema"))
                except (redis.ConnectionError, redis.TimeoutError,
                        redis.exceptions.ClusterDownError):
                    continue  # that shard is down: its first writer after it returns checks
        if probe is not None:
            probe.close()
        for raw in stored:
            expected = {k: (d, tuple(s)) for k, (d, s) in json.loads(raw).items()}
            if expected != schema:
                break
        if expected != schema:
            self._m_rejected.inc(chunk.length)
            raise ValueError(f"replay {self.spec.namespace!r}, stream {chunk.stream!r}: "
                             + describe_schema_change(expected, schema)
                             + " (the namespace already holds steps of another schema)")
        self._schema_checked = schema

    def close(self) -> None:
        self.flush(force=True)
        self.client.close()
