"""The in-process replay: the same chunking, index and sampling as the Redis service, with chunks
kept as numpy arrays in a dict. Used by the serial runner, by tests, and as the benchmark's
baseline.

    buf = SequenceBuffer(capacity=100_000, chunk_length=64, seed=0)
    buf.add("actor0/env0", step)            # env obs + action + policy_version
    batch = buf.sample(batch_size=50, length=50)   # dict of contiguous (B, T, ...) arrays
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from replay_service.chunks import Chunk, ChunkBuilder, check_finite, describe_schema_change
from replay_service.index import ChunkInfo, SequenceIndex, assemble


class SequenceBuffer:
    def __init__(self, capacity: int, seed: int = 0, chunk_length: int = 64, selector=None):
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1 step, got {capacity}")
        self.capacity = capacity
        self.chunk_length = chunk_length
        self._rng = np.random.default_rng(seed)
        self._index = SequenceIndex(selector)
        self._chunks: dict[int, dict[str, np.ndarray]] = {}
        self._builders: dict[str, ChunkBuilder] = {}
        self._schema = None
        self._gseq = 0
        self.inserted_steps = 0
        self.sampled_sequences = 0

    def __len__(self) -> int:
        """Steps stored and sampleable (open chunks not included)."""
        return self._index.steps

    @property
    def num_chunks(self) -> int:
        return len(self._index)

    def add(self, stream: str, step: Mapping[str, object]) -> None:
        builder = self._builders.get(stream)
        if builder is None:
            builder = self._builders[stream] = ChunkBuilder(stream, self.chunk_length)
        for chunk in builder.add(step):
            self.add_chunk(chunk)

    def flush(self) -> None:
        """Store every open chunk now."""
        for builder in self._builders.values():
            chunk = builder.flush()
            if chunk is not None:
                self.add_chunk(chunk)

    def add_chunk(self, chunk: Chunk) -> None:
        check_finite(chunk)
        schema = {k: (v.dtype.name, v.shape[1:]) for k, v in sorted(chunk.data.items())}
        if self._schema is None:
            self._schema = schema
        elif schema != self._schema:
            raise ValueError(f"stream {chunk.stream!r}: "
                             + describe_schema_change(self._schema, schema))
        self._gseq += 1
        self._chunks[self._gseq] = chunk.data
        self._index.add(ChunkInfo(self._gseq, chunk.stream, chunk.index, chunk.length))
        self.inserted_steps += chunk.length
        while self._index.steps > self.capacity:
            oldest = self._index.oldest()
            self._index.remove(oldest.gseq)
            del self._chunks[oldest.gseq]

    def sample(self, batch_size: int, length: int) -> dict[str, np.ndarray]:
        sequences = self._index.sample(self._rng, batch_size, length)
        self.sampled_sequences += batch_size
        return assemble(sequences, self._chunks, length, self._schema)
