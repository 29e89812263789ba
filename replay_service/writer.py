"""The actor side of the replay: `ReplayWriter` cuts each stream's steps into chunks and stores
them through the insert script; a chunk that timed out on the limiter is held and retried."""

from __future__ import annotations

import collections
import json
from collections.abc import Callable, Mapping

from diswm import metrics
from diswm.records import encode
from replay_service.chunks import Chunk, ChunkBuilder, Schema, describe_schema_change
from replay_service.scripts import _INSERT_LUA
from replay_service.spec import ReplaySpec, _Backoff, connect


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
